"""Every reader of a user's file under property-based fuzzing (tests/fuzz_readers.py), a few seconds
each, and the crashes fuzzing found, each kept as a regression case. The large budget (thousands
of cases) is `benchmarks/fuzz_bench.py`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz_readers import fuzz_reader, readers

SECONDS_PER_READER = 3.0


@pytest.mark.parametrize("name", sorted(readers()))
def test_mutated_inputs_are_read_or_refused_with_an_error_naming_the_file(name, tmp_path):
    stats = fuzz_reader(readers()[name], cases=400, seconds=SECONDS_PER_READER, seed=20261203, work=tmp_path)
    assert stats["cases"] >= 10, stats
    assert stats["unnamed_errors"] == [] and stats["unsound_reads"] == [] and stats["slow_cases"] == [], stats
    assert stats["read_ok"] + stats["named_errors"] == stats["cases"]


def _input(name: str, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh valid input of one reader: (its folder, what the reader is handed)."""
    return tmp_path / "input", readers()[name].make(tmp_path / "input")


def _lie(path: Path, at: int, value: int, width: int) -> None:
    data = bytearray(path.read_bytes())
    data[at:at + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(data))


def _refused(name: str, given: Path, needle: str, where: Path) -> None:
    from cgc_core.config import ConfigError
    from cgc_core.gaussians import GaussianFileError
    from cgc_core.masks.store import MaskStoreError
    from cgc_core.scene import SceneError

    with pytest.raises((SceneError, ConfigError, MaskStoreError, GaussianFileError), match=needle) as caught:
        readers()[name].read(given)
    assert str(where) in str(caught.value)


# Each found by fuzzing: before its fix, an exception that named nothing, or (the first) pycolmap
# reading a cut points3D.bin for minutes while its memory grew past 9 GB.
def test_cut_or_lying_colmap_binary_counts_are_refused_before_pycolmap_reads(tmp_path):
    _, model = _input("colmap-bin", tmp_path)
    points = model / "points3D.bin"
    points.write_bytes(points.read_bytes()[:4])
    _refused("colmap-bin", model, "cut short", points)
    _, model = _input("colmap-bin", tmp_path / "lie")
    _lie(model / "images.bin", 0, 2**63 - 1, 8)
    _refused("colmap-bin", model, "images at byte 0 would need", model / "images.bin")
    _, model = _input("colmap-bin", tmp_path / "gone")
    (model / "images.bin").unlink()
    _refused("colmap-bin", model, "cannot read the COLMAP model file", model / "images.bin")


def test_colmap_image_names_that_are_not_utf8_and_non_finite_cameras_name_the_model(tmp_path):
    _, model = _input("colmap-bin", tmp_path)
    images = model / "images.bin"
    data = images.read_bytes()
    at = data.index(b"00.png")
    images.write_bytes(data[:at] + b"\xff\xfe.png" + data[at + 6:])
    _refused("colmap-bin", model, "not UTF-8", model)
    _, model = _input("colmap-bin", tmp_path / "nan")
    _lie(model / "cameras.bin", 8 + 24, int.from_bytes(np.float64("nan").tobytes(), "little"), 8)  # fx
    _refused("colmap-bin", model, "non-finite intrinsics", model)


def test_ovs3d_damaged_poses_class_list_and_masks_name_the_file(tmp_path):
    root, given = _input("ovs3d", tmp_path)
    (root / "poses_bounds.npy").write_bytes(b"")
    _refused("ovs3d", given, "cannot read", root / "poses_bounds.npy")
    root, given = _input("ovs3d", tmp_path / "nan")
    poses = np.load(root / "poses_bounds.npy")
    poses[0, 0] = np.nan
    np.save(root / "poses_bounds.npy", poses)
    _refused("ovs3d", given, "finite numbers", root / "poses_bounds.npy")
    root, given = _input("ovs3d", tmp_path / "classes")
    (root / "segmentations" / "classes.txt").write_bytes(b"\xbbbanana\n")
    _refused("ovs3d", given, "not UTF-8", root / "segmentations" / "classes.txt")
    root, given = _input("ovs3d", tmp_path / "png")
    mask = root / "segmentations" / "01" / "banana.png"
    data = mask.read_bytes()
    mask.write_bytes(data[:40] + b"\x00\x00\x00I" + data[40:])  # a broken chunk: PIL raises SyntaxError
    _refused("ovs3d", given, "banana.png", mask)


def test_config_and_mask_store_and_video_that_are_not_utf8_name_the_file(tmp_path):
    _, config = _input("config", tmp_path)
    config.write_bytes(config.read_bytes().replace(b"data_dir", b"data\xffdir"))
    _refused("config", config, "not UTF-8", config)
    # Replays of the fuzz runs that met a mask-store metadata string and a video metadata string that
    # were not UTF-8 (same seeds and case counts as when they were found).
    for reader, seed, cases in (("mask-store", 0, 150), ("mask-store", 3, 300), ("video", 1, 1000)):
        stats = fuzz_reader(readers()[reader], cases=cases, seconds=None, seed=seed, work=tmp_path / f"{reader}-{seed}")
        assert stats["unnamed_errors"] == [], stats


def test_a_nerfstudio_frame_with_a_non_finite_pose_names_the_transforms_file(tmp_path):
    root, given = _input("nerfstudio", tmp_path)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][1]["transform_matrix"][0][0] = float("nan")
    (root / "transforms.json").write_text(json.dumps(meta))
    _refused("nerfstudio", given, "frame 1: camera of images/01.png: non-finite", root / "transforms.json")


def test_fuzz_bench_counts_a_crashing_reader_as_a_crash(tmp_path):
    # The isolation the benchmark relies on: a reader that kills its process (here made to abort)
    # is a crash whose input is kept, and the run goes on with the cases left.
    from tests import fuzz_readers

    stats = fuzz_readers.run_isolated("config", cases=3, seconds=None, seed=0, work=tmp_path,
                                      extra_env={"CGC_FUZZ_ABORT": "1"})
    assert len(stats["crashes"]) == 3 and stats["cases"] == 3
    kept = sorted((tmp_path / "crashes").glob("config-*.json"))
    assert len(kept) == 3 and "what" in json.loads(kept[0].read_text())
