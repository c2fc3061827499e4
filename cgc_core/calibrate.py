"""Camera calibration with COLMAP (through pycolmap): SfM from images, or triangulation from known poses.

Output of `calibrate` in `out_dir`:
    sparse/0/          the PINHOLE COLMAP model (binary) that every later stage reads
    images/            undistorted images, only when SfM estimated lens distortion
    points3D.ply       the coloured sparse points (for viewers; loaders read sparse/0)
    calibration.json   what happened: mode, camera model, registration counts, image folder, timings
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pycolmap

from .config import CalibrateConfig
from .scene.colmap import PINHOLE_MODELS, build_reconstruction, colmap_intrinsics, cameras_from_model, points_from_model, read_model
from .scene.model import Scene

SUMMARY_FILE = "calibration.json"


class CalibrationError(RuntimeError):
    """Calibration failed in a way the user can act on; the message says what to try."""


@dataclass
class CalibrationSummary:
    """What the calibrate stage produced (stored as calibration.json)."""

    mode: str
    camera_model: str
    n_images: int
    registered: list[str]
    image_dir: str
    """Folder of the images the model refers to, relative to the calibration folder: the scene's
    own images, or the undistorted copies ("images")."""
    n_points: int
    timings: dict[str, float]

    @property
    def registered_share(self) -> float:
        return len(self.registered) / max(self.n_images, 1)


def _feature_options(cfg: CalibrateConfig) -> pycolmap.FeatureExtractionOptions:
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = cfg.num_threads
    options.use_gpu = False  # the CPU SIFT is deterministic and available everywhere
    options.sift.max_num_features = cfg.max_num_features
    return options


Progress = Callable[[int, int, str], None]
"""progress(done, total, what): images whose features are extracted, or image pairs matched."""


def _unlocked_reader(database: Path) -> sqlite3.Connection:
    """A connection to COLMAP's database that takes no lock at all (`immutable`). A plain read-only
    connection holds a shared lock while it reads, and COLMAP, which sets no busy timeout, aborts
    the whole process with "database is locked" when it commits at that moment. Without locks a read
    may be stale or fail on a page being written: good enough for progress, never for results."""
    return sqlite3.connect(f"file:{database}?mode=ro&immutable=1", uri=True)


def _database_count(database: Path, table: str) -> int:
    """Rows COLMAP has written to a table of its SQLite database so far (0 before it exists or when
    a read fails; the caller never moves progress back)."""
    try:
        with closing(_unlocked_reader(database)) as connection:
            return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


def _with_progress(work: Callable[[], None], database: Path, table: str, total: int, what: str,
                   progress: Progress | None) -> None:
    """Run a pycolmap call (it releases the GIL) in a thread and report, while it runs, how many rows
    of `table` it has written: pycolmap has no progress callback, its database is the one witness."""
    if progress is None:
        work()
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the calling thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"colmap-{table}", daemon=True)
    thread.start()
    reported = -1
    while thread.is_alive():
        thread.join(0.5)
        done = min(_database_count(database, table), total)
        if done > reported:  # a stale or failed read never moves the bar back
            progress(done, total, what)
            reported = done
    if failure:
        raise failure[0]
    progress(total, total, what)


def _extract_and_match(scene: Scene, database: Path, cfg: CalibrateConfig, reader: pycolmap.ImageReaderOptions,
                       camera_mode: pycolmap.CameraMode, timings: dict[str, float],
                       progress: Progress | None = None) -> None:
    n = len(scene.image_names)
    start = time.perf_counter()
    _with_progress(lambda: pycolmap.extract_features(
        database, scene.image_dir, image_names=scene.image_names, camera_mode=camera_mode,
        reader_options=reader, extraction_options=_feature_options(cfg), device=pycolmap.Device.cpu,
    ), database, "keypoints", n, "SIFT features (images)", progress)
    timings["features_s"] = time.perf_counter() - start
    start = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    matching.use_gpu = False
    if n <= cfg.sequential_matching_above:
        pairs = n * (n - 1) // 2
        match = lambda: pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    else:  # each image with its next `overlap` ones (COLMAP's default pairing; the bar may end early)
        overlap = pycolmap.SequentialPairingOptions().overlap
        pairs = sum(min(overlap, n - 1 - i) for i in range(n))
        match = lambda: pycolmap.match_sequential(database, matching_options=matching, device=pycolmap.Device.cpu)
    _with_progress(match, database, "two_view_geometries", pairs, "matching (image pairs)", progress)
    timings["matching_s"] = time.perf_counter() - start


def resolve_camera_model(scene: Scene, cfg: CalibrateConfig) -> str:
    """The COLMAP camera model for SfM: `auto` means no distortion for rendered (pinhole) images."""
    if cfg.camera_model != "auto":
        return cfg.camera_model
    return "SIMPLE_PINHOLE" if scene.pinhole_images else "SIMPLE_RADIAL"


def resolve_mode(scene: Scene, cfg: CalibrateConfig) -> str:
    """`sfm` or `known_poses`; `auto` keeps shipped poses, except exact ones (`Scene.poses_are_truth`),
    which SfM is checked against."""
    if cfg.mode != "auto":
        return cfg.mode
    return "known_poses" if scene.has_poses and not scene.poses_are_truth else "sfm"


def run_sfm(scene: Scene, work_dir: Path, cfg: CalibrateConfig, timings: dict[str, float],
            progress: Progress | None = None) -> pycolmap.Reconstruction:
    """Feature extraction, matching and incremental mapping; returns the largest reconstruction."""
    database = work_dir / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = resolve_camera_model(scene, cfg)
    mode = pycolmap.CameraMode.SINGLE if cfg.single_camera else pycolmap.CameraMode.AUTO
    _extract_and_match(scene, database, cfg, reader, mode, timings, progress)
    start = time.perf_counter()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    maps = pycolmap.incremental_mapping(database, scene.image_dir, work_dir / "sfm", options=options)
    timings["mapping_s"] = time.perf_counter() - start
    if not maps:
        raise CalibrationError(
            f"{scene.image_dir}: COLMAP registered none of the {len(scene.image_names)} images (no initial pair). "
            "Try photos with more overlap and texture, or more features (calibrate.max_num_features)."
        )
    return max(maps.values(), key=lambda r: r.num_reg_images())


def triangulate_known_poses(scene: Scene, work_dir: Path, cfg: CalibrateConfig, timings: dict[str, float],
                            progress: Progress | None = None) -> pycolmap.Reconstruction:
    """Keep the dataset's poses and intrinsics; match features and triangulate points only."""
    if not scene.has_poses:
        raise CalibrationError(f"{scene.root}: calibrate.mode=known_poses but the dataset has no poses for every image")
    database = work_dir / "database.db"
    _extract_and_match(scene, database, cfg, pycolmap.ImageReaderOptions(), pycolmap.CameraMode.PER_IMAGE, timings,
                       progress)
    # The database got one guessed camera per image: overwrite each with the dataset's intrinsics
    # so the database and the posed reconstruction agree camera by camera.
    db = pycolmap.Database.open(str(database))
    try:
        images = {image.name: image for image in db.read_all_images()}
        for name, image in images.items():
            model, params = colmap_intrinsics(scene.cameras[name])
            camera = pycolmap.Camera.create_from_model_name(image.camera_id, model, 1.0,
                                                            scene.cameras[name].width, scene.cameras[name].height)
            camera.params = params
            db.update_camera(camera)
    finally:
        db.close()
    rec = build_reconstruction(
        [scene.cameras[n] for n in scene.image_names],
        image_ids={n: im.image_id for n, im in images.items()},
        camera_ids={n: im.camera_id for n, im in images.items()},
    )
    start = time.perf_counter()
    (work_dir / "triangulated").mkdir()
    rec = pycolmap.triangulate_points(rec, database, scene.image_dir, work_dir / "triangulated",
                                      clear_points=True, refine_intrinsics=False)
    rec.extract_colors_for_all_images(str(scene.image_dir))
    timings["triangulation_s"] = time.perf_counter() - start
    return rec


def calibrate(scene: Scene, out_dir: str | Path, cfg: CalibrateConfig,
              progress: Progress | None = None) -> CalibrationSummary:
    """Calibrate a scene's cameras into `out_dir` (see the module docstring for its layout).

    Args:
        scene: The dataset. Its image folder is read, never written.
        out_dir: An empty or missing folder for the outputs.
        cfg: The calibrate config section (`resolve_mode` and `resolve_camera_model` say what
            its `auto` values become for this scene).
        progress: Called as progress(done, total, what) while features are extracted (images)
            and matched (image pairs), from the counts in COLMAP's database.

    Returns:
        The `CalibrationSummary` also written to `calibration.json`.

    Raises:
        CalibrationError: fewer than `cfg.min_registered_share` of the images registered; the
            message says how many did and what to try.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / "colmap"
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir()
    mode = resolve_mode(scene, cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pycolmap.set_random_seed(cfg.seed)
    pycolmap.logging.minloglevel = cfg.colmap_log_level
    if mode == "sfm":
        rec = run_sfm(scene, work_dir, cfg, timings, progress)
    else:
        rec = triangulate_known_poses(scene, work_dir, cfg, timings, progress)

    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    share = len(registered) / len(scene.image_names)
    if share < cfg.min_registered_share:
        raise CalibrationError(
            f"{scene.image_dir}: COLMAP registered {len(registered)} of {len(scene.image_names)} images "
            f"({share:.0%}, need {cfg.min_registered_share:.0%}). Try: more overlap between neighbouring photos, "
            f"more features (calibrate.max_num_features={cfg.max_num_features}), exhaustive matching "
            f"(raise calibrate.sequential_matching_above), or lowering calibrate.min_registered_share."
        )

    model_dir = out_dir / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    # Relative to the output folder, which the stage renames within the same parent.
    image_dir = os.path.relpath(scene.image_dir.resolve(), out_dir.resolve())
    camera_models = {rec.cameras[i].model_name for i in rec.cameras}
    if camera_models - set(PINHOLE_MODELS):
        # Lens distortion was modelled: resample the images to PINHOLE as 3DGS expects.
        start_u = time.perf_counter()
        raw_dir = work_dir / "raw_model"
        raw_dir.mkdir()
        rec.write_binary(str(raw_dir))
        undistorted = work_dir / "undistorted"
        pycolmap.undistort_images(undistorted, raw_dir, scene.image_dir, image_names=registered)
        rec = read_model(undistorted / "sparse")
        shutil.move(str(undistorted / "images"), out_dir / "images")
        image_dir = "images"
        timings["undistortion_s"] = time.perf_counter() - start_u
    rec.write_binary(str(model_dir))
    rec.export_PLY(str(out_dir / "points3D.ply"))
    shutil.rmtree(work_dir)
    timings["total_s"] = time.perf_counter() - start

    summary = CalibrationSummary(
        mode=mode, camera_model=",".join(sorted(camera_models)), n_images=len(scene.image_names),
        registered=registered, image_dir=image_dir, n_points=rec.num_points3D(), timings=timings,
    )
    (out_dir / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2))
    return summary


def read_summary(calib_dir: str | Path) -> CalibrationSummary:
    """Read calibration.json of a finished calibrate stage."""
    path = Path(calib_dir) / SUMMARY_FILE
    try:
        return CalibrationSummary(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(f"{path}: missing or malformed calibration summary ({exc})") from exc


def apply_calibration(scene: Scene, calib_dir: str | Path) -> Scene:
    """The scene with the calibrated cameras, sparse points and (if undistorted) image folder.

    Images that did not register keep no camera and leave the training set.
    """
    calib_dir = Path(calib_dir)
    summary = read_summary(calib_dir)
    rec = read_model(calib_dir / "sparse" / "0")
    cameras = cameras_from_model(rec, calib_dir / "sparse" / "0")
    points, colors = points_from_model(rec)
    image_dir = Path(summary.image_dir)
    if not image_dir.is_absolute():
        image_dir = calib_dir / image_dir
    return replace(scene, image_dir=image_dir, cameras=cameras, train_names=[n for n in scene.train_names if n in cameras],
                   test_names=list(scene.test_names), prompts=list(scene.prompts), gt_masks=dict(scene.gt_masks),
                   points=points, point_colors=colors)


def _common_centres(estimated: dict, truth: dict) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres of the images both hold, in sorted name order: (estimated, true)."""
    names = sorted(set(estimated) & set(truth))
    if len(names) < 3:
        raise CalibrationError(f"need at least 3 common images to align, got {len(names)}")
    return np.stack([estimated[n].center for n in names]), np.stack([truth[n].center for n in names])


def similarity_to_truth(estimated: dict, truth: dict) -> np.ndarray:
    """The similarity (4×4, scale in the rotation block) taking estimated camera centres onto the
    true ones (pycolmap.estimate_sim3d); maps a calibrated reconstruction into the truth's frame.

    Args:
        estimated: image name -> estimated `Camera`.
        truth: image name -> true `Camera`.
    """
    src, tgt = _common_centres(estimated, truth)
    sim = pycolmap.estimate_sim3d(src, tgt)
    if sim is None:
        raise CalibrationError("could not estimate a similarity between estimated and true camera centres")
    matrix = np.eye(4)
    matrix[:3] = sim.matrix()[:3]
    return matrix


def camera_center_error(estimated: dict, truth: dict) -> tuple[float, np.ndarray]:
    """Align estimated camera centres to the true ones with a similarity (`similarity_to_truth`).

    Returns:
        The mean centre error after alignment (in the truth's units) and the per-image errors
        (images present in both, in sorted name order).
    """
    matrix = similarity_to_truth(estimated, truth)
    src, tgt = _common_centres(estimated, truth)
    aligned = src @ matrix[:3, :3].T + matrix[:3, 3]
    errors = np.linalg.norm(aligned - tgt, axis=1)
    return float(errors.mean()), errors
