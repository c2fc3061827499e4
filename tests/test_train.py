"""Training: resume equals an uninterrupted run, densification keeps features with their Gaussians."""

from __future__ import annotations

import pytest
import torch

from cgc_core.config import TrainConfig, evolve
from cgc_core.train import TrainingError, load_newest_checkpoint, train


def _cfg(densify=None, regularizer=None, **kw):
    growth = {"refine_start_iter": 4, "refine_every": 4, "refine_stop_iter": 16, **(densify or {})}
    return evolve(TrainConfig(), **{"iterations": 20, "checkpoint_every": 10, "backend": "torch", **kw,
                                    "regularizer": {"samples": 50, **(regularizer or {})}, "densify": growth})


class _Kill(Exception):
    pass


def test_resume_equals_uninterrupted_run(tiny_inputs, tmp_path):
    scene, store = tiny_inputs
    full = train(scene, store, tmp_path / "full", _cfg())

    def kill(step, total, losses):
        if step == 15:
            raise _Kill()

    with pytest.raises(_Kill):
        train(scene, store, tmp_path / "killed", _cfg(), progress=kill)
    state, path = load_newest_checkpoint(tmp_path / "killed")
    assert state["step"] == 10 and path.name == "step_000010.pt"
    resumed = train(scene, store, tmp_path / "killed", _cfg())
    assert resumed.resumed_from == 10
    assert set(resumed.params) == set(full.params)
    for name in full.params:
        torch.testing.assert_close(resumed.params[name], full.params[name], rtol=0, atol=0)


def test_zero_feature_gradient_between_contrastive_steps_moves_features_on_momentum(tiny_inputs, tmp_path):
    # Two iterations, the contrastive loss on the first only (contrastive.every=2), no regulariser and no
    # densification: with `none` the second iteration leaves the features where the first put
    # them; with the released code's `zero` gradient (our default: the one-pass render of colour
    # and features hands them zeros), Adam moves them again on its momentum.
    scene, store = tiny_inputs
    results = {}
    for mode in ("none", "zero"):
        for iterations in (1, 2):
            cfg = _cfg(iterations=iterations, regularizer={"enabled": False}, densify={"strategy": "none"},
                       checkpoint_every=100, contrastive={"every": 2, "features_grad_between": mode})
            results[mode, iterations] = train(scene, store, tmp_path / f"{mode}{iterations}", cfg).params["features"]
    torch.testing.assert_close(results["none", 1], results["zero", 1], rtol=0, atol=0)  # same first step
    torch.testing.assert_close(results["none", 2], results["none", 1], rtol=0, atol=0)
    assert (results["zero", 2] - results["zero", 1]).abs().max() > 1e-4


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tiny_inputs, tmp_path):
    scene, store = tiny_inputs
    train(scene, store, tmp_path, _cfg(iterations=20, checkpoint_every=5))
    newest = sorted((tmp_path / "checkpoints").glob("*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    state, path = load_newest_checkpoint(tmp_path)
    assert path != newest and state["step"] < 20


def test_densification_keeps_features_with_their_gaussians(tiny_inputs, tmp_path):
    scene, store = tiny_inputs
    # Features are tagged with the Gaussian's own colour coefficient and neither is trained: after
    # clone, split and prune, every row must still carry its own tag.
    cfg = _cfg(iterations=12, lr={"features": 0.0, "sh0": 0.0}, densify=dict(grow_grad2d=1e-12, refine_start_iter=2,
                                                                          refine_every=4), contrastive={"enabled": False}, regularizer={"enabled": False}, checkpoint_every=0)
    import cgc_core.train as train_module

    original = train_module.init_params

    def tagged(*args, **kwargs):
        params = original(*args, **kwargs)
        params["features"][:, :3] = params["sh0"][:, 0, :]
        return params

    train_module.init_params = tagged
    try:
        result = train(scene, store, tmp_path, cfg)
    finally:
        train_module.init_params = original
    n0 = len(scene.points)
    assert result.params["means"].shape[0] > n0  # densification happened
    torch.testing.assert_close(result.params["features"][:, :3], result.params["sh0"][:, 0, :])


def test_non_finite_loss_stops_with_a_clear_error(tiny_inputs, tmp_path):
    scene, store = tiny_inputs
    cfg = _cfg(contrastive={"temperature_clip": None})
    cfg.contrastive.temperature_scale = float("nan")  # past the config's own check, as a diverging run would be
    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        train(scene, store, tmp_path, cfg)


def test_cuda_out_of_memory_retries_at_a_coarser_resolution(tiny_inputs, tmp_path, monkeypatch, caplog):
    import cgc_core.train as train_module
    from cgc_core.train import train_with_oom_retries

    scene, store = tiny_inputs
    real_train = train_module.train
    seen = []

    def train_that_runs_out_of_memory(scene, store, out_dir, cfg, progress=None):
        seen.append(cfg.downscale)
        if cfg.downscale < 4:  # as a GPU too small for full and half resolution would
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(scene, store, out_dir, cfg, progress)

    monkeypatch.setattr(train_module, "train", train_that_runs_out_of_memory)
    with caplog.at_level("WARNING", logger="cgc"):
        result, downscale = train_with_oom_retries(scene, store, tmp_path / "ok", _cfg(iterations=4))
    assert seen == [1, 2, 4] and downscale == 4 and result.steps == 4
    assert "retrying at train.downscale=2" in caplog.text and "retrying at train.downscale=4" in caplog.text
    with pytest.raises(TrainingError, match="out of GPU memory at train.downscale=2 after 1 retries"):
        train_with_oom_retries(scene, store, tmp_path / "fail", _cfg(iterations=4, oom_retries=1))


def test_a_trained_3dgs_model_trains_only_its_features_when_frozen(tiny_inputs, tmp_path):
    # A model trained elsewhere (here: a few iterations of ours, saved without features, as an
    # Inria/gsplat/splatfacto export is) is loaded; with frozen geometry only the features move.
    from cgc_core.gaussians import GaussianFileError, load_ply, save_ply

    scene, store = tiny_inputs
    base = train(scene, store, tmp_path / "base", _cfg(iterations=8, contrastive={"enabled": False}, regularizer={"enabled": False})).params
    model = save_ply({k: v for k, v in base.items() if k != "features"}, tmp_path / "model.ply")
    frozen = train(scene, store, tmp_path / "frozen", _cfg(iterations=6, init_ply=str(model), frozen={"enabled": True},
                                                           contrastive={"every": 1}, checkpoint_every=3))
    loaded = load_ply(model)
    assert frozen.params["means"].shape == loaded["means"].shape  # no densification
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        torch.testing.assert_close(frozen.params[name], loaded[name], rtol=0, atol=0)
    initial = train(scene, store, tmp_path / "zero", _cfg(iterations=1, init_ply=str(model), frozen={"enabled": True},
                                                          contrastive={"enabled": False}, regularizer={"enabled": False}, checkpoint_every=0))
    assert (frozen.params["features"] - initial.params["features"]).abs().max() > 1e-4
    # The fast path (each view's blending weights, once) trains the same features as rendering
    # every step with the dense reference renderer.
    short = dict(iterations=3, init_ply=str(model), contrastive={"every": 1}, checkpoint_every=0, downscale=2,
                 frozen={"enabled": True, "back_project": False},  # the fast path only (its oracle: test_render)
                 health={"every": 0, "views": 1})
    fast = train(scene, store, tmp_path / "fast", _cfg(**short))
    oracle = train(scene, store, tmp_path / "oracle", _cfg(**short, backend="reference"))
    torch.testing.assert_close(fast.params["features"], oracle.params["features"], rtol=1e-4, atol=1e-5)
    assert (fast.params["features"] - initial.params["features"]).abs().max() > 1e-4
    with pytest.raises(TrainingError, match="frozen.enabled needs train.init_ply"):
        train(scene, store, tmp_path / "bad", _cfg(frozen={"enabled": True}))
    with pytest.raises(GaussianFileError, match="nothing.ply"):
        train(scene, store, tmp_path / "bad2", _cfg(init_ply=str(tmp_path / "nothing.ply")))


def test_depth_split_cuts_the_masks_with_the_models_depth_and_a_resumed_run_reads_the_same_cut(tiny_inputs, tmp_path):
    import json

    import numpy as np

    from cgc_core.masks.depth_split import split_at_depth_edges
    from cgc_core.render import Gaussians, render
    from cgc_core.train import SPLIT_LABELS_NAME, label_map_at, train_view

    scene, store = tiny_inputs
    cfg = _cfg(depth_split={"at": 0.5, "jump": 0.02})  # the cut at step 10 of 20
    full = train(scene, store, tmp_path / "full", cfg)
    record = json.loads((tmp_path / "full" / "train.json").read_text())["depth_split"]
    assert record["segments_per_view_after"] > record["segments_per_view_before"] > 0
    # The stored cut is the masks split with the depth of the model as it was at step 10.
    params = torch.load(tmp_path / "full" / "checkpoints" / "step_000010.pt", weights_only=True)["params"]
    stored = np.load(tmp_path / "full" / SPLIT_LABELS_NAME)
    name = sorted(scene.train_names)[0]
    camera, image = train_view(scene, name, cfg.downscale)
    depth = render(Gaussians.from_params(params), camera, sh_degree=0, backend="torch").depth.numpy()
    labels = label_map_at(store, name, *image.shape[:2])[0].numpy()
    np.testing.assert_array_equal(stored[name][0], split_at_depth_edges(
        labels, depth, 0.02, min_pixels=cfg.depth_split.min_pixels, sharpness=cfg.depth_split.sharpness,
        fill_distance=cfg.depth_split.fill))
    assert cfg.depth_split.fill > 0 and cfg.depth_split.sharpness > 0  # the defaults this checks
    assert 0 < record["supervised_share_after"] <= 1

    def kill(step, total, losses):
        if step == 15:
            raise _Kill()

    with pytest.raises(_Kill):
        train(scene, store, tmp_path / "killed", cfg, progress=kill)
    resumed = train(scene, store, tmp_path / "killed", cfg)
    assert resumed.resumed_from == 10
    for key in full.params:
        torch.testing.assert_close(resumed.params[key], full.params[key], rtol=0, atol=0)
    # Off (the paper's schedule), the masks are read as generated and nothing is stored.
    train(scene, store, tmp_path / "off", _cfg(iterations=2, depth_split={"at": 0.0}))
    assert not (tmp_path / "off" / SPLIT_LABELS_NAME).exists()
    assert json.loads((tmp_path / "off" / "train.json").read_text())["depth_split"] is None


def test_depth_split_with_creases_cuts_with_each_views_intrinsics(tiny_inputs, tmp_path):
    import numpy as np

    from cgc_core.masks.depth_split import concave_creases, split_at_depth_edges
    from cgc_core.render import Gaussians, render
    from cgc_core.train import SPLIT_LABELS_NAME, label_map_at, train_view

    scene, store = tiny_inputs
    cfg = _cfg(iterations=4, checkpoint_every=2, depth_split={"at": 0.5, "jump": 0.02, "crease_angle": 30.0})
    train(scene, store, tmp_path / "creases", cfg)
    stored = np.load(tmp_path / "creases" / SPLIT_LABELS_NAME)
    params = torch.load(tmp_path / "creases" / "checkpoints" / "step_000002.pt", weights_only=True)["params"]
    name = sorted(scene.train_names)[0]
    camera, image = train_view(scene, name, cfg.downscale)
    depth = render(Gaussians.from_params(params), camera, sh_degree=0, backend="torch").depth.numpy()
    creases = concave_creases(depth, camera.K, 30.0)
    assert creases.any()
    labels = label_map_at(store, name, *image.shape[:2])[0].numpy()
    np.testing.assert_array_equal(stored[name][0], split_at_depth_edges(
        labels, depth, 0.02, min_pixels=cfg.depth_split.min_pixels, sharpness=cfg.depth_split.sharpness,
        fill_distance=cfg.depth_split.fill, extra_edges=creases))


def test_depth_split_of_the_finest_level_only_keeps_the_coarser_levels_as_generated(tiny_inputs, tmp_path):
    import numpy as np

    from cgc_core.train import SPLIT_LABELS_NAME, label_map_at, train_view

    scene, store = tiny_inputs
    stored = {}
    for levels in ("all", "finest"):
        cfg = _cfg(iterations=4, checkpoint_every=2, contrastive={"mask_levels": 2},
                   depth_split={"at": 0.5, "jump": 0.02, "levels": levels})
        train(scene, store, tmp_path / levels, cfg)
        stored[levels] = np.load(tmp_path / levels / SPLIT_LABELS_NAME)
    cut_any_coarse = False
    for name in sorted(scene.train_names):
        camera, image = train_view(scene, name, 1)
        generated = label_map_at(store, name, *image.shape[:2], 2).numpy()
        # Both cut the finest level alike (same model at the cut); only `all` cuts the coarser one.
        np.testing.assert_array_equal(stored["finest"][name][0], stored["all"][name][0])
        np.testing.assert_array_equal(stored["finest"][name][1], generated[1])
        cut_any_coarse |= not np.array_equal(stored["all"][name][1], generated[1])
    assert cut_any_coarse  # so the comparison above could have failed


def test_a_diverged_gaussian_is_left_out_of_the_saved_model_and_counted(tiny_inputs, tmp_path, caplog):
    # A Gaussian whose parameters went non-finite renders nothing (culled), so the loss never shows
    # it; the saved model must not hold it. Put a NaN into the final checkpoint and let train()
    # write the model from it again.
    import json

    from cgc_core.gaussians import load_ply
    from cgc_core.stage import hash_file

    scene, store = tiny_inputs
    cfg = _cfg(iterations=10, checkpoint_every=5, densify={"strategy": "none"})
    first = train(scene, store, tmp_path, cfg)
    n = first.params["means"].shape[0]
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["non_finite_dropped"] == 0 and record["n_gaussians"] == n
    state, path = load_newest_checkpoint(tmp_path)
    state["params"]["scales"][3, 1] = float("inf")
    state["params"]["shN"][7, 0, 2] = float("nan")
    torch.save(state, path)
    path.with_suffix(".pt.sha256").write_text(hash_file(path))
    (tmp_path / "point_cloud.ply").unlink()
    with caplog.at_level("WARNING", logger="cgc"):
        again = train(scene, store, tmp_path, cfg)
    assert "2 of" in caplog.text and "non-finite" in caplog.text
    saved = load_ply(tmp_path / "point_cloud.ply")
    assert saved["means"].shape[0] == n - 2 == again.params["means"].shape[0]
    assert all(torch.isfinite(v).all() for v in saved.values())
    kept = [i for i in range(n) if i not in (3, 7)]
    torch.testing.assert_close(saved["means"], first.params["means"][kept])
    assert json.loads((tmp_path / "train.json").read_text())["non_finite_dropped"] == 2
