"""Scenes: the shared `Scene`/`Camera` model, readers for every supported layout, the synthetic scene."""

from __future__ import annotations

from pathlib import Path

from .blender import is_blender, read_blender_scene
from .colmap import read_colmap_scene
from .lerf_mask import is_lerf_mask, read_lerf_mask_scene
from .model import Camera, Scene, SceneError, list_images
from .nerfstudio import is_nerfstudio, read_nerfstudio_scene
from .ovs3d import is_ovs3d, read_ovs3d_scene
from .synthetic import is_synthetic, read_synthetic_scene

LAYOUTS = ("auto", "synthetic", "lerf_mask", "ovs3d", "blender", "nerfstudio", "colmap", "photos")


def read_photos(root: Path, name: str | None = None) -> Scene:
    """A plain folder of photos with no poses (`<root>/images/` or `<root>` itself); calibration supplies poses."""
    root = Path(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    names = list_images(image_dir)
    return Scene(name=name or root.name, root=root, image_dir=image_dir, image_names=names,
                 train_names=list(names), layout="photos")


def detect_layout(root: Path) -> str:
    """Which reader a dataset folder needs, judged by the files it holds."""
    root = Path(root)
    if not root.is_dir():
        raise SceneError(f"{root}: dataset folder not found")
    if is_synthetic(root):
        return "synthetic"
    if is_lerf_mask(root):
        return "lerf_mask"
    if is_ovs3d(root):
        return "ovs3d"
    if is_blender(root):
        return "blender"
    if is_nerfstudio(root):
        return "nerfstudio"
    if (root / "sparse").is_dir():
        return "colmap"
    return "photos"


def load_scene(root: str | Path, layout: str = "auto", name: str | None = None) -> Scene:
    """Read a dataset folder into a `Scene`.

    Args:
        root: The dataset folder.
        layout: One of `LAYOUTS`; `auto` detects it from the files present.
        name: Scene name; defaults to the folder name.

    Raises:
        SceneError: naming the file that is missing or malformed.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise SceneError(f"{root}: unknown layout {layout!r} (known: {LAYOUTS})")
    if layout == "auto":
        layout = detect_layout(root)
    readers = {
        "synthetic": read_synthetic_scene, "lerf_mask": read_lerf_mask_scene, "ovs3d": read_ovs3d_scene, "blender": read_blender_scene,
        "nerfstudio": read_nerfstudio_scene, "colmap": read_colmap_scene, "photos": read_photos,
    }
    return readers[layout](root, name=name)


__all__ = ["Camera", "Scene", "SceneError", "LAYOUTS", "detect_layout", "load_scene", "list_images", "read_photos"]
