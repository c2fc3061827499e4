"""NeRF-synthetic / Blender layout: `transforms_{train,val,test}.json` with RGBA images.

Each frame's `transform_matrix` is camera-to-world in OpenGL axes (x right, y up, z backwards);
`camera_angle_x` gives the horizontal field of view. Images are composited on a configurable
background; their alpha stays available as a foreground mask (`Scene.load_alpha`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .model import Camera, Scene, SceneError, _read_image

SPLITS = ("train", "val", "test")


def is_blender(root: Path) -> bool:
    return (root / "transforms_train.json").is_file()


def opengl_c2w_to_world_to_camera(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world 4×4 to OpenCV world-to-camera (flip the y and z camera axes)."""
    c2w = np.asarray(c2w_gl, dtype=np.float64).copy()
    c2w[:3, 1:3] *= -1
    return np.linalg.inv(c2w)


def read_blender_scene(root: Path, name: str | None = None,
                       background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Scene:
    """Read a Blender scene; train and val frames train, test frames are held out."""
    root = Path(root)
    cameras: dict[str, Camera] = {}
    split_names: dict[str, list[str]] = {}
    for split in SPLITS:
        path = root / f"transforms_{split}.json"
        if not path.is_file():
            if split == "train":
                raise SceneError(f"{path}: not found")
            continue
        try:
            meta = json.loads(path.read_text())
            fov_x = float(meta["camera_angle_x"])
            frames = meta["frames"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SceneError(f"{path}: malformed transforms file ({exc!r})") from exc
        split_names[split] = []
        for i, frame in enumerate(frames):
            try:
                rel = frame["file_path"]
                matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise SceneError(f"{path}: frame {i} malformed ({exc!r})") from exc
            if matrix.shape != (4, 4):
                raise SceneError(f"{path}: frame {i} transform_matrix must be 4x4, got {matrix.shape}")
            rel_path = Path(rel)
            if rel_path.suffix == "":
                rel_path = rel_path.with_suffix(".png")
            image_name = rel_path.as_posix().removeprefix("./")
            image_path = root / image_name
            height, width = _read_image(image_path).shape[:2]
            focal = 0.5 * width / math.tan(0.5 * fov_x)
            K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
            cameras[image_name] = Camera(K, opengl_c2w_to_world_to_camera(matrix), width, height, image_name)
            split_names[split].append(image_name)
    train = split_names.get("train", []) + split_names.get("val", [])
    return Scene(
        name=name or root.name, root=root, image_dir=root, image_names=sorted(cameras), cameras=cameras,
        train_names=train, test_names=split_names.get("test", []), background=tuple(background),
        layout="blender", pinhole_images=True,
    )
