"""nerfstudio datasets: `transforms.json` (ns-process-data, Polycam, Record3D, the LERF captures).

Intrinsics are shared at the top level (`fl_x`, `fl_y`, `cx`, `cy`, `w`, `h`, distortion `k1`-`k4`,
`p1`, `p2`, `camera_model`) or given per frame (a frame's keys win). Each frame's
`transform_matrix` is camera-to-world in OpenGL camera axes (x right, y up, z backwards),
converted here to our OpenCV world-to-camera. Sparse points come from `ply_file_path`
(nerfstudio's `sparse_pc.ply`, already in the transforms' frame) when present. Distorted cameras
keep their COLMAP model (OPENCV, OPENCV_FISHEYE), so calibration undistorts them as it does
COLMAP's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .blender import opengl_c2w_to_world_to_camera
from .model import Camera, Scene, SceneError, naming

TRANSFORMS = "transforms.json"
_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
# nerfstudio camera_model -> (COLMAP model, distortion keys in COLMAP's parameter order)
_MODELS = {"OPENCV": ("OPENCV", ("k1", "k2", "p1", "p2")),
           "OPENCV_FISHEYE": ("OPENCV_FISHEYE", ("k1", "k2", "k3", "k4"))}


def is_nerfstudio(root: Path) -> bool:
    return (Path(root) / TRANSFORMS).is_file()


def _camera(meta: dict, frame: dict, image_name: str, where: str) -> Camera:
    values = {**{k: meta[k] for k in (*_INTRINSICS, "camera_model", "k1", "k2", "k3", "k4", "p1", "p2") if k in meta},
              **{k: v for k, v in frame.items() if k != "transform_matrix"}}
    missing = [k for k in _INTRINSICS if k not in values]
    if missing:
        raise SceneError(f"{where}: no {', '.join(missing)} at the top level or in the frame")
    try:
        fx, fy, cx, cy = (float(values[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
        width, height = int(values["w"]), int(values["h"])
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise SceneError(f"{where}: malformed intrinsics or transform_matrix ({exc!r})") from exc
    if matrix.shape not in ((4, 4), (3, 4)):
        raise SceneError(f"{where}: transform_matrix must be 4x4 (or 3x4), got {matrix.shape}")
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    model = str(values.get("camera_model", "OPENCV"))
    if model not in _MODELS:
        raise SceneError(f"{where}: camera_model {model!r} is not supported (OPENCV, OPENCV_FISHEYE)")
    colmap_model, keys = _MODELS[model]
    distortion = [float(values.get(k, 0.0)) for k in keys]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    distorted = any(distortion)
    with naming(where):  # the camera's own checks: finite, positive focal lengths, a proper rotation
        return Camera(K, opengl_c2w_to_world_to_camera(matrix), width, height, image_name,
                      distortion_model=colmap_model if distorted else None,
                      distortion_params=(fx, fy, cx, cy, *distortion) if distorted else ())


def _points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from plyfile import PlyData, PlyParseError

    try:
        vertex = PlyData.read(str(path))["vertex"]
        xyz = np.stack([vertex[a] for a in ("x", "y", "z")], axis=1).astype(np.float64)
    except (OSError, ValueError, KeyError, PlyParseError) as exc:
        raise SceneError(f"{path}: not a point cloud .ply with x, y, z ({exc})") from exc
    names = vertex.data.dtype.names
    colors = (np.stack([vertex[a] for a in ("red", "green", "blue")], axis=1).astype(np.uint8)
              if all(a in names for a in ("red", "green", "blue")) else None)
    return xyz, colors


def read_nerfstudio_scene(root: Path, name: str | None = None) -> Scene:
    """Read a nerfstudio dataset folder; every frame trains (it has no ground-truth masks to test on)."""
    root = Path(root)
    path = root / TRANSFORMS
    try:
        meta = json.loads(path.read_text())
        frames = meta["frames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SceneError(f"{path}: not a readable nerfstudio transforms file ({exc!r})") from exc
    if not isinstance(frames, list) or not frames:
        raise SceneError(f"{path}: no frames")
    cameras: dict[str, Camera] = {}
    for i, frame in enumerate(frames):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise SceneError(f"{where}: no file_path")
        rel = Path(str(frame["file_path"]))
        if rel.is_absolute() or ".." in rel.parts:
            raise SceneError(f"{where}: file_path {str(rel)!r} must stay inside the dataset folder")
        image_name = rel.as_posix().removeprefix("./")
        if not (root / image_name).is_file():
            raise SceneError(f"{root / image_name}: image file not found (frame {i} of {path})")
        cameras[image_name] = _camera(meta, frame, image_name, where)
    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = _points(root / str(meta["ply_file_path"]))
    names = sorted(cameras)
    return Scene(name=name or root.name, root=root, image_dir=root, image_names=names, cameras=cameras,
                 train_names=list(names), points=points, point_colors=colors, layout="nerfstudio")
