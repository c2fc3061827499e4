"""The LERF-Mask layout (see ../shared/PROTOCOL.md).

    <scene>/images/            every image, training and test
    <scene>/images_train/      the training subset (file names give the split)
    <scene>/sparse/0/          COLMAP model covering all images, test poses included
    <scene>/test_mask/<i>/<prompt>.png
                               ground truth; <i> is the 0-based index of a test view among the
                               images not in images_train, in sorted file-name order
"""

from __future__ import annotations

from pathlib import Path

from .colmap import read_colmap_scene
from .model import Scene, SceneError, list_images


def is_lerf_mask(root: Path) -> bool:
    return (root / "images_train").is_dir() and (root / "test_mask").is_dir()


def read_lerf_mask_scene(root: Path, name: str | None = None) -> Scene:
    """Read a LERF-Mask scene folder into a `Scene` with split, prompts and ground-truth masks."""
    root = Path(root)
    scene = read_colmap_scene(root, name=name)
    train_dir = root / "images_train"
    train = set(list_images(train_dir))
    unknown = sorted(train - set(scene.image_names))
    if unknown:
        raise SceneError(f"{train_dir}: training images not in images/: {unknown[:5]}")
    test_names = [n for n in scene.image_names if n not in train]
    mask_root = root / "test_mask"
    if not mask_root.is_dir():
        raise SceneError(f"{mask_root}: ground-truth folder not found")
    gt_masks: dict[str, dict] = {}
    prompts: set[str] = set()
    for entry in sorted(mask_root.iterdir()):
        if not entry.is_dir():
            continue
        if not entry.name.isdigit():
            raise SceneError(f"{entry}: test_mask subfolders must be test-view indices (0, 1, ...)")
        index = int(entry.name)
        if index >= len(test_names):
            raise SceneError(
                f"{entry}: test view index {index} but only {len(test_names)} images are outside images_train"
            )
        masks = {p.stem: p for p in sorted(entry.glob("*.png"))}
        if masks:
            gt_masks[test_names[index]] = masks
            prompts.update(masks)
    scene.train_names = sorted(train)
    scene.test_names = test_names
    scene.gt_masks = gt_masks
    scene.prompts = sorted(prompts)
    scene.layout = "lerf_mask"
    missing = [n for n in scene.image_names if n not in scene.cameras]
    if missing:
        raise SceneError(f"{root / 'sparse' / '0'}: images without a pose in the COLMAP model: {missing[:5]}")
    return scene
