"""COLMAP models (`sparse/0`, binary or text) read and written through pycolmap."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pycolmap

from .model import Camera, Scene, SceneError, list_images, naming

# Camera models whose parameters are pure pinhole intrinsics.
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
_MODEL_FILES = ("cameras", "images")


def find_model_dir(root: Path) -> Path:
    """The COLMAP model folder under a dataset root: `sparse/0`, `sparse`, or the root itself."""
    for candidate in (root / "sparse" / "0", root / "sparse", root):
        if all((candidate / f"{n}.bin").is_file() or (candidate / f"{n}.txt").is_file() for n in _MODEL_FILES):
            return candidate
    raise SceneError(
        f"{root / 'sparse' / '0'}: no COLMAP model (expected cameras.bin/images.bin or cameras.txt/images.txt)"
    )


def read_model(model_dir: Path) -> pycolmap.Reconstruction:
    """Read a COLMAP model folder; a malformed model raises SceneError naming the folder or file.

    The binary files are walked first (`check_binary_model`): pycolmap trusts their counts, so a
    cut file or a lying count would make it read on past the end for minutes, gigabytes at a time.
    """
    model_dir = Path(model_dir)
    if (model_dir / "cameras.bin").is_file():
        check_binary_model(model_dir)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError with C++ messages
        raise SceneError(f"{model_dir}: cannot read COLMAP model: {exc}") from exc
    for image in rec.images.values():
        if image.camera_id not in rec.cameras:
            raise SceneError(f"{model_dir}: image {image.name!r} names camera {image.camera_id}, which is not in the model")
    return rec


# Parameters per camera model id (COLMAP's models/cameras.h), for the binary cameras file.
_PARAMS_OF_MODEL = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12, 11: 16, 12: 4, 13: 5,
                    14: 3, 15: 4, 16: 6, 17: 2}
MAX_IMAGE_SIDE = 1 << 17
"""A camera wider or taller than this many pixels is refused as implausible."""


class _Cursor:
    """Reads little-endian fields of one binary model file, naming the file when it runs short."""

    def __init__(self, path: Path):
        try:
            self.path, self.data, self.at = path, path.read_bytes(), 0
        except OSError as exc:
            raise SceneError(f"{path}: cannot read the COLMAP model file ({exc.strerror or exc})") from exc

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise SceneError(f"{self.path}: cut short at byte {self.at} (the counts say more follows)")
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def _room(self, count: int, record: int, what: str, at: int) -> None:
        """Raise unless `count` records of at least `record` bytes fit in what is left."""
        if count < 0 or self.at + count * record > len(self.data):
            raise SceneError(f"{self.path}: {count} {what} at byte {at} would need {count * record} bytes, "
                             f"the file has {len(self.data) - self.at} left")

    def skip(self, count: int, record: int, what: str) -> None:
        self._room(count, record, what, self.at)
        self.at += count * record

    def count(self, fmt: str, record: int, what: str) -> int:
        """A count field, checked against what the file can hold (`record`: the least bytes of one)."""
        at, n = self.at, self.take(fmt)
        self._room(n, record, what, at)
        return n

    def end(self) -> None:
        if self.at != len(self.data):
            raise SceneError(f"{self.path}: {len(self.data) - self.at} bytes after the last record")


def check_binary_model(model_dir: Path) -> None:
    """Walk a binary COLMAP model (cameras, images, points3D, and rigs and frames where present)
    and check that every count fits its file, every camera model is known and every size is
    plausible, without allocating from the counts. Raises SceneError naming the file."""
    cameras = _Cursor(model_dir / "cameras.bin")
    for _ in range(cameras.count("Q", 32, "cameras")):
        camera_id, model_id, width, height = cameras.take("iiQQ")
        if model_id not in _PARAMS_OF_MODEL:
            raise SceneError(f"{cameras.path}: camera {camera_id} has unknown model id {model_id}")
        if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
            raise SceneError(f"{cameras.path}: camera {camera_id} is {width}x{height} pixels")
        cameras.skip(_PARAMS_OF_MODEL[model_id], 8, "parameters")
    cameras.end()
    images = _Cursor(model_dir / "images.bin")
    for _ in range(images.count("Q", 74, "images")):
        images.skip(1, 4 + 56 + 4, "image header")
        name_end = images.data.find(b"\0", images.at)
        if name_end < 0:
            raise SceneError(f"{images.path}: an image name at byte {images.at} has no end")
        images.at = name_end + 1
        images.skip(images.count("Q", 24, "2D points"), 24, "2D points")
    images.end()
    if (model_dir / "points3D.bin").is_file():
        points = _Cursor(model_dir / "points3D.bin")
        for _ in range(points.count("Q", 51, "3D points")):
            points.skip(1, 8 + 24 + 3 + 8, "3D point")
            points.skip(points.count("Q", 8, "track elements"), 8, "track elements")
        points.end()
    if (model_dir / "rigs.bin").is_file():
        rigs = _Cursor(model_dir / "rigs.bin")
        for _ in range(rigs.count("Q", 8, "rigs")):
            rigs.skip(1, 4, "rig id")
            sensors = rigs.count("I", 8, "sensors")
            if sensors:
                rigs.skip(1, 8, "reference sensor")
            for _ in range(max(sensors - 1, 0)):
                rigs.skip(1, 8, "sensor")
                if rigs.take("B"):
                    rigs.skip(1, 56, "sensor pose")
        rigs.end()
    if (model_dir / "frames.bin").is_file():
        frames = _Cursor(model_dir / "frames.bin")
        for _ in range(frames.count("Q", 68, "frames")):
            frames.skip(1, 8 + 56, "frame header")
            frames.skip(frames.count("I", 16, "frame data"), 16, "frame data")
        frames.end()


def cameras_from_model(rec: pycolmap.Reconstruction, source: Path | str = "COLMAP model") -> dict[str, Camera]:
    """One `Camera` per registered image of a reconstruction, keyed by image name; a camera that
    is not one (non-finite, no proper rotation, no positive focal length) raises SceneError naming
    `source` (the model's folder)."""
    cameras: dict[str, Camera] = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = image.camera
        w2c = np.eye(4)
        w2c[:3, :] = image.cam_from_world().matrix()
        distorted = cam.model_name not in PINHOLE_MODELS
        try:
            name = image.name
        except UnicodeDecodeError as exc:
            raise SceneError(f"{source}: image {image.image_id}'s name is not UTF-8 text ({exc})") from exc
        with naming(source):
            cameras[name] = Camera(
                K=cam.calibration_matrix(),
                world_to_camera=w2c,
                width=int(cam.width),
                height=int(cam.height),
                image_name=name,
                distortion_model=cam.model_name if distorted else None,
                distortion_params=tuple(float(p) for p in cam.params) if distorted else (),
            )
    return cameras


def points_from_model(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3] float64 positions and [N, 3] uint8 colours of a reconstruction's 3D points, by id
    (a point with a non-finite position is left out: nothing can be initialised from it)."""
    points = [point for _, point in sorted(rec.points3D.items()) if np.isfinite(point.xyz).all()]
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz = np.stack([p.xyz for p in points])
    rgb = np.stack([p.color for p in points]).astype(np.uint8)
    return xyz, rgb


def colmap_intrinsics(cam: Camera) -> tuple[str, list[float]]:
    """COLMAP model name and parameter vector of a camera: PINHOLE, or its own distortion model."""
    if cam.distortion_model is not None:
        return cam.distortion_model, list(cam.distortion_params)
    return "PINHOLE", [cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]]


def build_reconstruction(cameras: list[Camera], image_ids: dict[str, int] | None = None,
                         camera_ids: dict[str, int] | None = None) -> pycolmap.Reconstruction:
    """A pycolmap reconstruction holding the given posed cameras (no points).

    One COLMAP camera per distinct intrinsics (`colmap_intrinsics`). `image_ids` and
    `camera_ids` fix the image (and frame) and camera id per image name, e.g. to match a feature
    database.
    """
    rec = pycolmap.Reconstruction()
    shared_ids: dict[tuple, int] = {}
    for order, cam in enumerate(cameras, start=1):
        model, params = colmap_intrinsics(cam)
        key = (model, cam.width, cam.height, *np.round(params, 9))
        if camera_ids is not None:
            camera_id = camera_ids[cam.image_name]
        else:
            camera_id = shared_ids.setdefault(key, len(shared_ids) + 1)
        if not rec.exists_camera(camera_id):
            colmap_cam = pycolmap.Camera.create_from_model_name(camera_id, model, 1.0, cam.width, cam.height)
            colmap_cam.params = params
            rec.add_camera_with_trivial_rig(colmap_cam)
        image_id = image_ids[cam.image_name] if image_ids is not None else order
        image = pycolmap.Image(name=cam.image_name, camera_id=camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam.world_to_camera[:3, :]))
    return rec


def write_model(cameras: list[Camera], model_dir: Path, text: bool = False) -> pycolmap.Reconstruction:
    """Write posed cameras as a COLMAP model folder (binary by default)."""
    rec = build_reconstruction(cameras)
    model_dir.mkdir(parents=True, exist_ok=True)
    (rec.write_text if text else rec.write_binary)(str(model_dir))
    return rec


def read_colmap_scene(root: Path, name: str | None = None, image_dir: Path | None = None) -> Scene:
    """A COLMAP dataset: `<root>/images/` and `<root>/sparse/0/` (.bin or .txt).

    Every image is a training image (there is no split in a bare COLMAP folder).
    """
    root = Path(root)
    image_dir = image_dir or root / "images"
    names = list_images(image_dir)
    model_dir = find_model_dir(root)
    rec = read_model(model_dir)
    cameras = cameras_from_model(rec, model_dir)
    missing = sorted(set(cameras) - set(names))
    if missing:
        raise SceneError(f"{image_dir}: the COLMAP model names images that are not there: {missing[:5]}")
    points, colors = points_from_model(rec)
    return Scene(
        name=name or root.name, root=root, image_dir=image_dir, image_names=names, cameras=cameras,
        train_names=[n for n in names if n in cameras], points=points if len(points) else None,
        point_colors=colors if len(points) else None, layout="colmap",
    )
