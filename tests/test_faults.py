"""Fault injection and bad input, on the tiny synthetic preset.

`fault`: a run killed with SIGKILL during masks and during training, then rerun; bytes flipped in a
cached Parquet file and in a checkpoint; a stage folder filled halfway by hand. `bad_input`: one
case per broken input, each expecting an error that names the input and nothing half-written.
`benchmarks/fault_check.py` runs both groups and counts them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgc_core.config import ConfigError, load_config
from cgc_core.pipeline import run_scene_stage, scene_stage
from cgc_core.stage import MANIFEST

TINY = ["synthetic.preset=tiny", "synthetic.supersample=1", "calibrate.mode=known_poses", "train.iterations=30",
        "train.checkpoint_every=10", "train.refine_start_iter=5", "train.refine_every=5", "train.reg_samples=50",
        "cluster.min_cluster_size=20"]
ROOT = Path(__file__).resolve().parent.parent


def _cfg(data_dir: Path, *extra: str):
    return load_config(None, [f"data_dir={data_dir}", f"reports_dir={data_dir.parent / 'reports'}", *TINY, *extra])


def _run_until(data_dir: Path, stage: str, kill_at: int, *extra: str) -> int:
    """Run one stage in a child process that SIGKILLs itself when its progress reaches `kill_at`."""
    script = textwrap.dedent(f"""
        import os, signal
        from cgc_core.config import load_config
        from cgc_core.pipeline import run_scene_stage
        cfg = load_config(None, {[f"data_dir={data_dir}", *TINY, *extra]!r})
        def progress(done, total, detail):
            if done == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)
        run_scene_stage(cfg, "synthetic", {stage!r}, progress=progress)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode


def _stages_up_to(cfg, last: str):
    for stage in ("scene", "calibrate", "masks", "train", "evaluate"):
        _, result = run_scene_stage(cfg, "synthetic", stage)
        if stage == last:
            return result


def assert_nothing_half_written(data_dir: Path) -> None:
    """Every stage folder under data_dir is finished (has its manifest); no temporary folder is left."""
    if not data_dir.exists():
        return
    for scene in data_dir.iterdir():
        for entry in scene.iterdir():
            assert ".tmp-" not in entry.name and ".old-" not in entry.name, f"left behind: {entry}"
            if entry.is_dir() and not entry.name.startswith("."):
                assert (entry / MANIFEST).is_file(), f"{entry} has no manifest but looks like an output"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: every stage run without interruption."""
    data_dir = tmp_path_factory.mktemp("uninterrupted") / "data"
    cfg = _cfg(data_dir)
    evaluated = _stages_up_to(cfg, "evaluate")
    return data_dir, json.loads((evaluated.stage_dir / "summary.json").read_text())


def _params(data_dir: Path) -> dict:
    from cgc_core.gaussians import load_ply

    return load_ply(data_dir / "synthetic" / "train" / "point_cloud.ply")


@pytest.mark.fault
def test_sigkill_during_masks_keeps_finished_images(tmp_path, uninterrupted):
    data_dir = tmp_path / "data"
    cfg = _cfg(data_dir)
    _stages_up_to(cfg, "calibrate")
    assert _run_until(data_dir, "masks", kill_at=6) == -9  # SIGKILL
    partial = next((data_dir / "synthetic").glob(".masks.partial-*"))
    assert len(list((partial / "store").glob("*.parquet"))) == 6
    assert not (data_dir / "synthetic" / "masks").exists()  # never taken as finished
    _, masks = run_scene_stage(cfg, "synthetic", "masks")
    assert masks.manifest.info["reused"] == 6 and masks.manifest.info["generated"] == 15
    reference = uninterrupted[0] / "synthetic" / "masks"
    assert masks.manifest.outputs == json.loads((reference / MANIFEST).read_text())["outputs"]  # same bytes
    assert_nothing_half_written(data_dir)


@pytest.mark.fault
def test_sigkill_during_training_resumes_and_reports_the_same_numbers(tmp_path, uninterrupted):
    data_dir = tmp_path / "data"
    cfg = _cfg(data_dir)
    _stages_up_to(cfg, "masks")
    assert _run_until(data_dir, "train", kill_at=15) == -9
    partial = next((data_dir / "synthetic").glob(".train.partial-*"))
    assert sorted(p.name for p in (partial / "checkpoints").glob("*.pt")) == ["step_000010.pt"]
    _, trained = run_scene_stage(cfg, "synthetic", "train")
    assert trained.manifest.info["resumed_from"] == 10
    reference = _params(uninterrupted[0])
    for key, value in _params(data_dir).items():
        assert torch.equal(value, reference[key]), key
    _, evaluated = run_scene_stage(cfg, "synthetic", "evaluate")
    summary = json.loads((evaluated.stage_dir / "summary.json").read_text())
    assert {k: summary[k] for k in ("miou", "mbiou", "psnr")} == {k: uninterrupted[1][k] for k in ("miou", "mbiou", "psnr")}
    assert_nothing_half_written(data_dir)


@pytest.mark.fault
def test_flipped_byte_in_a_cached_parquet_file_is_detected_and_recomputed(tmp_path):
    data_dir = tmp_path / "data"
    cfg = _cfg(data_dir)
    first = _stages_up_to(cfg, "masks")
    victim = sorted((first.stage_dir / "store").glob("*.parquet"))[3]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    _, again = run_scene_stage(cfg, "synthetic", "masks")
    assert not again.cached and f"store/{victim.name} does not match its checksum" in again.reason
    assert again.manifest.outputs == first.manifest.outputs  # recomputed to the same content
    _, third = run_scene_stage(cfg, "synthetic", "masks")
    assert third.cached


@pytest.mark.fault
def test_flipped_byte_in_a_checkpoint_is_skipped_on_resume(tmp_path, uninterrupted, caplog):
    data_dir = tmp_path / "data"
    cfg = _cfg(data_dir)
    _stages_up_to(cfg, "masks")
    assert _run_until(data_dir, "train", kill_at=25) == -9
    partial = next((data_dir / "synthetic").glob(".train.partial-*"))
    newest = partial / "checkpoints" / "step_000020.pt"
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    newest.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="cgc"):
        _, trained = run_scene_stage(cfg, "synthetic", "train")
    assert "step_000020.pt: skipped" in caplog.text and "checksum mismatch" in caplog.text
    assert trained.manifest.info["resumed_from"] == 10
    reference = _params(uninterrupted[0])
    assert all(torch.equal(v, reference[k]) for k, v in _params(data_dir).items())


@pytest.mark.fault
def test_half_filled_or_damaged_stage_folders_are_not_taken_as_finished(tmp_path):
    data_dir = tmp_path / "data"
    cfg = _cfg(data_dir)
    calibrated = _stages_up_to(cfg, "calibrate")
    # By hand: a masks folder with some files but no manifest.
    fake = data_dir / "synthetic" / "masks" / "store"
    fake.mkdir(parents=True)
    (fake / "view_000.png.parquet").write_bytes(b"PAR1 half")
    _, masks = run_scene_stage(cfg, "synthetic", "masks")
    assert not masks.cached and "no manifest (unfinished)" in masks.reason
    assert masks.manifest.info["generated"] == 21
    # A finished calibration missing one of its files: recomputed, not used.
    (calibrated.stage_dir / "points3D.ply").unlink()
    _, again = run_scene_stage(cfg, "synthetic", "calibrate")
    assert not again.cached and "points3D.ply is missing" in again.reason
    # A stage whose computation fails leaves nothing behind.
    from cgc_core.stage import run_stage

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_stage(data_dir / "synthetic" / "broken", "broken", {}, None, broken)
    assert not (data_dir / "synthetic" / "broken").exists()
    assert_nothing_half_written(data_dir)


# --- bad input ------------------------------------------------------------------------------------

def _copy_scene(tiny_scene_dir: Path, tmp_path: Path, keep_ground_truth: bool = False) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(tiny_scene_dir, root)
    if not keep_ground_truth:
        shutil.rmtree(root / "ground_truth")  # an ordinary LERF-Mask folder
    return root


def _calibrate(tmp_path: Path, source: Path, *extra: str):
    from cgc_core.pipeline import calibrate_stage

    cfg = _cfg(tmp_path / "data", *extra)
    scene, _ = scene_stage(cfg, str(source))
    return calibrate_stage(cfg, scene)


def _case_missing_images_folder(tiny_scene_dir, tmp_path):
    root = _copy_scene(tiny_scene_dir, tmp_path)
    shutil.rmtree(root / "images")
    shutil.rmtree(root / "images_train")
    shutil.rmtree(root / "test_mask")
    return lambda: scene_stage(_cfg(tmp_path / "data"), str(root)), "images: image folder not found"


def _case_image_not_an_image(tiny_scene_dir, tmp_path):
    root = _copy_scene(tiny_scene_dir, tmp_path)
    (root / "images" / "view_003.png").write_text("this is not a PNG")
    return lambda: _calibrate(tmp_path, root), "images/view_003.png: not an image"


def _case_images_of_mixed_sizes(tiny_scene_dir, tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    for i, src in enumerate(sorted((tiny_scene_dir / "images").glob("*.png"))[:6]):
        img = Image.open(src)
        (img.resize((96, 72)) if i == 4 else img).save(root / "images" / src.name)
    return lambda: _calibrate(tmp_path, root, "calibrate.mode=sfm"), "view_004.png: images of mixed sizes"


def _case_colmap_images_missing(tiny_scene_dir, tmp_path):
    root = _copy_scene(tiny_scene_dir, tmp_path)
    (root / "images" / "view_002.png").unlink()
    return lambda: scene_stage(_cfg(tmp_path / "data"), str(root)), "the COLMAP model names images that are not there"


def _case_transforms_missing_frame(tiny_scene_dir, tmp_path):
    root = tmp_path / "blender"
    (root / "train").mkdir(parents=True)
    Image.new("RGBA", (16, 16)).save(root / "train" / "r_0.png")
    frames = [{"file_path": f"./train/r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(2)]
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return lambda: scene_stage(_cfg(tmp_path / "data"), str(root)), "train/r_1.png: image file not found"


def _case_test_mask_wrong_size(tiny_scene_dir, tmp_path):
    root = _copy_scene(tiny_scene_dir, tmp_path)
    victim = sorted((root / "test_mask" / "0").glob("*.png"))[0]
    Image.open(victim).resize((10, 10)).save(victim)
    return lambda: _calibrate(tmp_path, root), f"{victim.name}: ground-truth mask is 10x10 but its test image"


def _case_prompt_absent_from_every_view(tiny_scene_dir, tmp_path):
    from cgc_core.config import EvaluateConfig
    from cgc_core.evaluate import evaluate_scene
    from cgc_core.scene import load_scene

    root = _copy_scene(tiny_scene_dir, tmp_path)
    for mask in root.glob("test_mask/*/red sphere.png"):
        Image.new("L", Image.open(mask).size).save(mask)  # the prompt's file is there, its object is not
    scene = load_scene(root)
    features = lambda view: torch.rand(scene.cameras[view].height, scene.cameras[view].width, 16)  # noqa: E731
    out = tmp_path / "stage-temp"  # inside a stage, the temporary folder that run_stage removes on error
    return lambda: evaluate_scene(scene, features, out, EvaluateConfig(), 0.7), "red sphere"


def _case_config_unknown_key(tiny_scene_dir, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  iteratons: 10\n")
    return lambda: load_config(path), "cfg.yaml: train.iteratons: unknown key"


def _case_config_negative_learning_rate(tiny_scene_dir, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr_opacities: -0.05\n")
    return lambda: load_config(path), "cfg.yaml: train.lr_opacities must be > 0, got -0.05"


def _case_sam_checkpoint_not_a_checkpoint(tiny_scene_dir, tmp_path):
    from cgc_core.config import SamConfig
    from cgc_core.masks.generators import load_sam

    path = tmp_path / "sam_vit_b.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    return lambda: load_sam(SamConfig(model_type="vit_b", checkpoint=str(path), device="cpu")), \
        "sam_vit_b.pth: not a valid SAM vit_b checkpoint"


def _case_prompt_name_with_dotdot(tiny_scene_dir, tmp_path):
    root = tmp_path / "ovs"
    (root / "images").mkdir(parents=True)
    for src in sorted((tiny_scene_dir / "images").glob("*.png"))[:3]:
        shutil.copy(src, root / "images" / src.name)
    poses = np.zeros((3, 17))
    poses[:, :15] = np.concatenate([np.eye(3, 4), [[72.0], [96.0], [100.0]]], axis=1).reshape(-1)
    poses[:, 15:] = [0.1, 10.0]
    np.save(root / "poses_bounds.npy", poses)
    (root / "segmentations").mkdir()
    (root / "segmentations" / "classes.txt").write_text("cup\n../../etc/evil\n")
    return lambda: scene_stage(_cfg(tmp_path / "data"), str(root)), "'../../etc/evil' cannot be a file name"


def _case_empty_scene(tiny_scene_dir, tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    return lambda: scene_stage(_cfg(tmp_path / "data"), str(root)), "images: no images"


BAD_INPUTS = {name.removeprefix("_case_"): fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_nothing_half_written(case, tiny_scene_dir, tmp_path):
    from cgc_core.calibrate import CalibrationError
    from cgc_core.masks.generators import MaskGeneratorError
    from cgc_core.metrics import MissingPredictionError
    from cgc_core.scene import SceneError

    action, expected = BAD_INPUTS[case](tiny_scene_dir, tmp_path)
    with pytest.raises((SceneError, ConfigError, CalibrationError, MaskGeneratorError, MissingPredictionError)) as info:
        action()
    assert expected in str(info.value)
    assert_nothing_half_written(tmp_path / "data")
