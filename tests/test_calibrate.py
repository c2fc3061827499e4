"""Calibration on the synthetic scene (checked against its true poses) and on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cgc_core.calibrate import CalibrationError, apply_calibration, calibrate, camera_center_error, read_summary
from cgc_core.config import CalibrateConfig
from cgc_core.scene import load_scene


def test_sfm_on_synthetic_registers_and_matches_true_centres(demo_scene_dir, tmp_path):
    scene = load_scene(demo_scene_dir)
    radius = json.loads((demo_scene_dir / "ground_truth" / "scene.json").read_text())["radius"]
    summary = calibrate(scene, tmp_path / "calib", CalibrateConfig())
    assert summary.mode == "sfm"  # the synthetic scene's true poses are never an input
    assert summary.camera_model == "SIMPLE_PINHOLE"
    assert summary.registered_share >= 0.9
    calibrated = apply_calibration(scene, tmp_path / "calib")
    mean_err, errors = camera_center_error(calibrated.cameras, scene.cameras)
    assert errors.max() < 0.01 * radius, f"worst centre error {errors.max() / radius:.2%} of the scene radius"
    assert calibrated.points is not None and len(calibrated.points) > 500
    assert calibrated.point_colors.shape == calibrated.points.shape
    # images are used in place (no distortion was modelled) and every test view got a camera
    assert calibrated.image_dir.resolve() == scene.image_dir.resolve()
    assert set(scene.test_names) <= set(calibrated.cameras)


def test_triangulation_keeps_known_poses_exactly(tiny_scene_dir, tmp_path):
    scene = load_scene(tiny_scene_dir)
    summary = calibrate(scene, tmp_path / "calib", CalibrateConfig(mode="known_poses"))
    assert summary.mode == "known_poses" and summary.registered_share == 1.0
    calibrated = apply_calibration(scene, tmp_path / "calib")
    for name in scene.image_names:
        np.testing.assert_allclose(calibrated.cameras[name].world_to_camera, scene.cameras[name].world_to_camera,
                                   atol=1e-12)
        np.testing.assert_allclose(calibrated.cameras[name].K, scene.cameras[name].K, atol=1e-12)
    assert summary.n_points > 100
    # triangulated points lie on the true surfaces (the scene's own geometry is the oracle)
    from cgc_core.config import SyntheticConfig
    from cgc_core.scene.synthetic import build_scene

    _, distance = build_scene(SyntheticConfig(preset="tiny")).nearest_object(calibrated.points)
    assert np.median(distance) < 0.01


def test_sfm_on_real_photos_registers_most(shared_dir, tmp_path):
    photos = shared_dir / "data" / "bonsai"
    if not photos.is_dir():
        pytest.skip(f"{photos} is absent")
    scene = load_scene(photos, layout="photos")
    reports = []
    summary = calibrate(scene, tmp_path / "calib", CalibrateConfig(), progress=lambda *r: reports.append(r))
    # Progress follows COLMAP's database: images with features, then matched pairs, each rising to its total.
    n = len(scene.image_names)
    for what, total in (("SIFT features (images)", n), ("matching (image pairs)", n * (n - 1) // 2)):
        counts = [done for done, tot, w in reports if w == what and tot == total]
        assert counts and counts == sorted(counts) and counts[-1] == total, (what, counts)
    assert summary.camera_model == "SIMPLE_RADIAL"
    assert summary.registered_share >= 0.9
    # distortion was modelled, so undistorted PINHOLE images were written and are used
    assert read_summary(tmp_path / "calib").image_dir == "images"
    calibrated = apply_calibration(scene, tmp_path / "calib")
    assert all(c.distortion_model is None for c in calibrated.cameras.values())
    first = calibrated.cameras[summary.registered[0]]
    with Image.open(calibrated.image_dir / first.image_name) as img:
        assert img.size == (first.width, first.height)


def test_unregistrable_images_fail_with_counts_and_advice(tmp_path):
    folder = tmp_path / "noise" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    scene = load_scene(tmp_path / "noise")
    with pytest.raises(CalibrationError) as err:
        calibrate(scene, tmp_path / "calib", CalibrateConfig())
    message = str(err.value)
    assert "of the 5 images" in message or "of 5 images" in message
    assert "Try" in message


def test_the_progress_reader_never_locks_colmaps_database(tmp_path):
    # COLMAP sets no busy timeout: a lock held by our progress reader while it commits aborts the
    # process ("database is locked", seen in a deployment run). Ours must leave every lock free.
    import sqlite3
    from contextlib import closing

    from cgc_core.calibrate import _database_count, _unlocked_reader

    db = tmp_path / "database.db"
    writer = sqlite3.connect(db, timeout=0, isolation_level=None)
    writer.execute("CREATE TABLE keypoints (image_id INTEGER)")
    writer.executemany("INSERT INTO keypoints VALUES (?)", [(i,) for i in range(50)])
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as plain:
        reading = plain.execute("SELECT * FROM keypoints")
        reading.fetchone()  # a read in progress: a plain reader holds a shared lock now
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.execute("BEGIN EXCLUSIVE")
    with closing(_unlocked_reader(db)) as ours:
        reading = ours.execute("SELECT * FROM keypoints")
        reading.fetchone()  # the same read through our reader
        writer.execute("BEGIN EXCLUSIVE")  # not blocked
        writer.execute("INSERT INTO keypoints VALUES (50)")
        writer.execute("COMMIT")
    assert _database_count(db, "keypoints") == 51
    assert _database_count(tmp_path / "missing.db", "keypoints") == 0
