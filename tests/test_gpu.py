"""Training, clustering and selection on CUDA (gsplat backend): run by scripts/gpu_check.sh on a
GPU machine; skipped (and only these may skip under CI) where there is no CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: these run the gsplat backend")]


def test_training_on_cuda_keeps_its_state_there_and_writes_a_cpu_model(tmp_path):
    pytest.importorskip("gsplat")
    from cgc_core.config import load_config
    from cgc_core.gaussians import load_ply
    from cgc_core.pipeline import run_scene_stage
    from cgc_core.train import Trainer

    cfg = load_config(None, [f"data_dir={tmp_path}", "synthetic.preset=tiny", "synthetic.supersample=1",
                             "calibrate.mode=known_poses", "train.backend=gsplat", "train.iterations=60",
                             "train.checkpoint_every=30", "train.densify.refine_start_iter=10",
                             "train.densify.refine_every=10"])
    for stage in ("scene", "calibrate", "masks"):
        scene, result = run_scene_stage(cfg, "synthetic", stage)
    trainer = Trainer(scene, result.outputs.store, tmp_path / "train", cfg.train)
    trainer.restore()
    assert trainer.device.type == "cuda" and trainer.params["means"].is_cuda
    n0 = trainer.params["means"].shape[0]
    while trainer.step_count < cfg.train.iterations:
        latest = trainer.step()
    assert all(np.isfinite(v) for v in latest.values())
    assert trainer.params["means"].shape[0] != n0  # gsplat's strategy densified on CUDA
    done = trainer.finish()
    assert not done.params["means"].is_cuda
    assert load_ply(done.ply)["means"].shape[0] == done.params["means"].shape[0]
    # A resumed trainer reads the CPU checkpoint back onto the GPU.
    again = Trainer(scene, result.outputs.store, tmp_path / "train", cfg.train)
    assert again.restore() == cfg.train.iterations and again.params["features"].is_cuda


def test_the_whole_scene_pipeline_runs_on_cuda(tmp_path):
    pytest.importorskip("gsplat")
    from cgc_core.config import load_config
    from cgc_core.pipeline import run_scene_stage

    cfg = load_config(None, [f"data_dir={tmp_path}", "synthetic.preset=tiny", "synthetic.supersample=1",
                             "calibrate.mode=known_poses", "train.backend=gsplat", "train.iterations=300",
                             "cluster.min_cluster_size=20", "evaluate.protocol=[click-oracle, click-oracle-steps]"])
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
        _, result = run_scene_stage(cfg, "synthetic", stage)
    summary = result.outputs.summary
    assert 0.0 <= summary["miou"] <= 1.0 and set(summary["protocols"]) == {"click-oracle", "click-oracle-steps"}
