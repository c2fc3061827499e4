"""COLMAP models (`sparse/0`, binary or text) read and written through pycolmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from .model import Camera, Scene, SceneError, list_images

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
    """Read a COLMAP model folder; a malformed model raises SceneError naming the folder."""
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError with C++ messages
        raise SceneError(f"{model_dir}: cannot read COLMAP model: {exc}") from exc


def cameras_from_model(rec: pycolmap.Reconstruction) -> dict[str, Camera]:
    """One `Camera` per registered image of a reconstruction, keyed by image name."""
    cameras: dict[str, Camera] = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        cam = image.camera
        w2c = np.eye(4)
        w2c[:3, :] = image.cam_from_world().matrix()
        distorted = cam.model_name not in PINHOLE_MODELS
        cameras[image.name] = Camera(
            K=cam.calibration_matrix(),
            world_to_camera=w2c,
            width=int(cam.width),
            height=int(cam.height),
            image_name=image.name,
            distortion_model=cam.model_name if distorted else None,
            distortion_params=tuple(float(p) for p in cam.params) if distorted else (),
        )
    return cameras


def points_from_model(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3] float64 positions and [N, 3] uint8 colours of a reconstruction's 3D points, by id."""
    points = [point for _, point in sorted(rec.points3D.items())]
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
    rec = read_model(find_model_dir(root))
    cameras = cameras_from_model(rec)
    missing = sorted(set(cameras) - set(names))
    if missing:
        raise SceneError(f"{image_dir}: the COLMAP model names images that are not there: {missing[:5]}")
    points, colors = points_from_model(rec)
    return Scene(
        name=name or root.name, root=root, image_dir=image_dir, image_names=names, cameras=cameras,
        train_names=[n for n in names if n in cameras], points=points if len(points) else None,
        point_colors=colors if len(points) else None, layout="colmap",
    )
