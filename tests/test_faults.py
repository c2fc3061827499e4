"""Fault injection and bad input, on the tiny synthetic preset.

`fault`: a run killed with SIGKILL during masks and during training, then rerun; bytes flipped in a
cached Parquet file and in a checkpoint; a stage folder filled halfway by hand. `bad_input`: one
case per broken input, each expecting an error that names the input and nothing half-written.
`benchmarks/fault_check.py` runs both groups and counts them.
"""

from __future__ import annotations

import errno
import json
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
        "train.checkpoint_every=10", "train.densify.refine_start_iter=5", "train.densify.refine_every=5", "train.regularizer.samples=50",
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
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
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
    _, evaluated = run_scene_stage(cfg, "synthetic", "evaluate", run_upstream=True)
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


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _finished_stage(tmp_path: Path, stage: str):
    """A config over a fresh data folder, with `stage` and everything before it finished; and
    that stage's manifest, to compare with after a failed rerun."""
    cfg = _cfg(tmp_path / "data")
    first = _stages_up_to(cfg, stage)
    return cfg, first.stage_dir, json.loads((first.stage_dir / MANIFEST).read_text())


def _rerun_fills_the_disk(cfg, stage: str, stage_dir: Path, before: dict):
    """Force `stage` while the disk fills up (patched by the caller): a `StageWriteError` naming
    the stage and folder, the previous output intact and verified, no work folder left."""
    from cgc_core.stage import StageWriteError, check_stage_dir

    with pytest.raises(StageWriteError) as info:
        run_scene_stage(cfg, "synthetic", stage, force=True)
    assert info.value.errno == errno.ENOSPC and f"{stage} stage: no space left" in str(info.value)
    assert str(stage_dir) in str(info.value) and "the previous output is unchanged" in str(info.value)
    assert json.loads((stage_dir / MANIFEST).read_text()) == before
    assert check_stage_dir(stage_dir, before["key"]) is None  # every file still has its checksum
    assert not list(stage_dir.parent.glob(f".{stage}.partial-*"))  # the work folder is gone
    assert_nothing_half_written(Path(cfg.data_dir))


@pytest.mark.fault
def test_disk_full_while_writing_masks_keeps_the_previous_output(tmp_path, monkeypatch):
    from cgc_core.masks.store import MaskStore

    cfg, stage_dir, before = _finished_stage(tmp_path, "masks")
    written = []
    real_write = MaskStore.write_image

    def write_then_fill_up(self, image_name, *args, **kwargs):
        if len(written) == 4:  # the disk is full after four images
            _disk_full()
        written.append(image_name)
        return real_write(self, image_name, *args, **kwargs)

    monkeypatch.setattr(MaskStore, "write_image", write_then_fill_up)
    _rerun_fills_the_disk(cfg, "masks", stage_dir, before)
    assert len(written) == 4


@pytest.mark.fault
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_output(tmp_path, monkeypatch):
    cfg, stage_dir, before = _finished_stage(tmp_path, "train")
    real_save = torch.save

    def save_half_then_fill_up(obj, handle, *args, **kwargs):
        real_save({"half": torch.zeros(10)}, handle)  # some bytes reach the disk first
        _disk_full()

    monkeypatch.setattr(torch, "save", save_half_then_fill_up)
    _rerun_fills_the_disk(cfg, "train", stage_dir, before)


_CONCURRENT_RUN = """
import json, sys
from cgc_core.config import load_config
from cgc_core.pipeline import run_scene_stage
cfg = load_config(None, json.loads(sys.argv[1]))
out = {}
for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
    _, result = run_scene_stage(cfg, "synthetic", stage)
    out[stage] = {"cached": result.cached, "key": result.manifest.key, "outputs": result.manifest.outputs}
print("STAGES " + json.dumps(out))
"""


@pytest.mark.fault
def test_two_concurrent_runs_compute_each_stage_once_with_identical_outputs(tmp_path):
    data_dir = tmp_path / "data"
    overrides = json.dumps([f"data_dir={data_dir}", *TINY])
    runs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_RUN, overrides], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.split("STAGES ", 1)[1]))
    for stage in results[0]:
        computed = [not r[stage]["cached"] for r in results]
        assert sum(computed) == 1, f"{stage}: computed by {sum(computed)} runs"
        assert results[0][stage]["key"] == results[1][stage]["key"]
        assert results[0][stage]["outputs"] == results[1][stage]["outputs"]  # the same files, byte for byte
    assert not list((data_dir / "synthetic").glob(".*.partial-*"))
    assert_nothing_half_written(data_dir)


_HOLD_LOCK_AND_DIE = """
import os, signal, sys
from cgc_core.stage import stage_lock
with stage_lock(sys.argv[1]):
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.fault
def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    from cgc_core.stage import lock_path, run_stage

    target = tmp_path / "scene" / "masks"
    killed = subprocess.run([sys.executable, "-c", _HOLD_LOCK_AND_DIE, str(target)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9 and "holding" in killed.stdout
    assert lock_path(target).exists()  # the file stays; the kernel dropped the lock with its holder
    result = run_stage(target, "masks", {}, None, lambda tmp: (tmp / "a.txt").write_text("x") and None,
                       lock_timeout=5)
    assert not result.cached and (target / "a.txt").read_text() == "x"


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
    from cgc_core.selection import Selector

    return lambda: evaluate_scene(scene, features, out, EvaluateConfig(), Selector(threshold=0.7)), \
        "the ground truth of 'red sphere' is empty in every test view"


def _config_file_case(tmp_path: Path, text: str, expected: str):
    """A config YAML with `text`, and the error `load_config` must raise for it."""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return lambda: load_config(path), expected


def _case_config_unknown_key(tiny_scene_dir, tmp_path):
    return _config_file_case(tmp_path, "train:\n  iteratons: 10\n", "cfg.yaml: train.iteratons: unknown key")


def _case_config_negative_learning_rate(tiny_scene_dir, tmp_path):
    return _config_file_case(tmp_path, "train:\n  lr:\n    opacities: -0.05\n", "cfg.yaml: train.lr.opacities must be > 0, got -0.05")


def _case_sam_checkpoint_not_a_checkpoint(tiny_scene_dir, tmp_path):
    from cgc_core.config import SamConfig
    from cgc_core.models import load_sam

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


def _case_ply_header_claims_more_vertices_than_the_file_holds(tiny_scene_dir, tmp_path):
    from cgc_core.gaussians import init_params, load_ply, save_ply

    path = tmp_path / "scene.ply"
    save_ply(init_params(np.random.default_rng(0).normal(size=(50, 3)), None), path)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"element vertex 50\n", b"element vertex 900000000000\n", 1))
    return lambda: load_ply(path), "scene.ply: the header claims 900000000000 vertex rows"


def _case_ply_without_the_gaussian_attributes(tiny_scene_dir, tmp_path):
    from plyfile import PlyData, PlyElement

    from cgc_core.gaussians import load_ply

    path = tmp_path / "points.ply"
    data = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return lambda: load_ply(path), "points.ply: missing vertex attributes ['f_dc_0'"


def _mask_file(tmp_path: Path, table_of):
    """A one-image mask store whose table `table_of(good_table)` returns, written past the store's checks."""
    import pyarrow.parquet as pq

    from cgc_core.masks.store import MaskStore, records_from_masks

    store = MaskStore(tmp_path / "store")
    mask = np.zeros((24, 32), dtype=bool)
    mask[4:10, 5:20] = True
    path = store.write_image("view_000.png", 24, 32, records_from_masks("view_000.png", [mask], "test", "1", "h"))
    table = pq.read_table(path)
    pq.write_table(table_of(table).replace_schema_metadata(table.schema.metadata), path)
    return store


def _case_mask_rle_of_a_huge_size(tiny_scene_dir, tmp_path):
    import pyarrow as pa

    def huge(table):  # every RLE claims 100000 x 100000 pixels: 10 GB per decoded mask
        big = pa.array([100_000] * table.num_rows, pa.int32())
        return table.set_column(2, "height", big).set_column(3, "width", big)

    store = _mask_file(tmp_path, huge)
    return lambda: store.read_label_map("view_000.png"), "view_000.png.parquet: mask 0 has size 100000x100000"


def _case_mask_file_with_a_huge_declared_image_size(tiny_scene_dir, tmp_path):
    import pyarrow.parquet as pq

    store = _mask_file(tmp_path, lambda table: table)
    path = store.path("view_000.png")
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**{k.decode(): v.decode() for k, v in table.schema.metadata.items()},
                                                  "height": "100000", "width": "100000"}), path)
    return lambda: store.read_masks("view_000.png"), "mask size 100000x100000 is not a plausible image size"


def _case_mask_rle_counts_that_do_not_fit_its_size(tiny_scene_dir, tmp_path):
    import pyarrow as pa

    from cgc_core.masks.store import encode_mask

    def wrong(table):  # the counts of a 100x100 mask under a 24x32 size
        counts = encode_mask(np.ones((100, 100), dtype=bool))["counts"]
        return table.set_column(4, "rle", pa.array([counts] * table.num_rows, pa.binary()))

    store = _mask_file(tmp_path, wrong)
    return lambda: store.read_masks("view_000.png"), "view_000.png.parquet: invalid COCO RLE"


def _case_mask_parquet_with_a_wrong_schema(tiny_scene_dir, tmp_path):
    store = _mask_file(tmp_path, lambda table: table.drop_columns(["rle", "bbox"]))
    return lambda: store.read_label_map("view_000.png"), "view_000.png.parquet: columns do not match the mask schema"


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height over one tiny IDAT: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _case_image_of_30000_by_30000_pixels(tiny_scene_dir, tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    for src in sorted((tiny_scene_dir / "images").glob("*.png"))[:4]:
        shutil.copy(src, root / "images" / src.name)
    _png_header_only(root / "images" / "view_bomb.png", 30_000, 30_000)
    return lambda: _calibrate(tmp_path, root, "calibrate.mode=sfm"), "view_bomb.png: image too large to decode safely"


def _case_truncated_image(tiny_scene_dir, tmp_path):
    root = _copy_scene(tiny_scene_dir, tmp_path)
    victim = root / "images" / "view_001.png"
    victim.write_bytes(victim.read_bytes()[:300])  # the header survives, the pixels do not
    scene = scene_stage(_cfg(tmp_path / "data"), str(root))[0]
    return lambda: scene.load_image("view_001.png"), "view_001.png: cannot read image"


def _case_config_yaml_not_a_mapping(tiny_scene_dir, tmp_path):
    return _config_file_case(tmp_path, "- train.iterations=10\n- masks.generator=sam\n", "cfg.yaml: the top level must be a mapping of config sections")


def _case_config_section_not_a_mapping(tiny_scene_dir, tmp_path):
    return _config_file_case(tmp_path, "train: 1500\n", "cfg.yaml: train: expected a mapping of TrainConfig fields")


BAD_INPUTS = {name.removeprefix("_case_"): fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_nothing_half_written(case, tiny_scene_dir, tmp_path):
    from cgc_core.calibrate import CalibrationError
    from cgc_core.gaussians import GaussianFileError
    from cgc_core.masks.generators import MaskGeneratorError
    from cgc_core.masks.store import MaskStoreError
    from cgc_core.metrics import MissingPredictionError
    from cgc_core.models import ModelLoadError
    from cgc_core.scene import SceneError

    action, expected = BAD_INPUTS[case](tiny_scene_dir, tmp_path)
    with pytest.raises((SceneError, ConfigError, CalibrationError, MaskGeneratorError, ModelLoadError, MissingPredictionError,
                        MaskStoreError, GaussianFileError)) as info:
        action()
    assert expected in str(info.value)
    assert_nothing_half_written(tmp_path / "data")
