"""The 3D-OVS layout (LLFF poses).

    <scene>/images/                          every image, sorted order = rows of poses_bounds.npy
    <scene>/poses_bounds.npy                 [N, 17]: a 3×5 matrix per image (rotation columns
                                             down, right, backwards; camera centre; [H, W, focal])
                                             followed by the near and far bounds
    <scene>/segmentations/classes.txt        one class name per line
    <scene>/segmentations/<frame_idx>/<class>.png
                                             ground truth for an annotated frame; <frame_idx> is the
                                             image's index in sorted file-name order, as the
                                             dataset's loader reads it (`int(folder)`, so "03" is
                                             the fourth image); a folder whose name is not a number
                                             may name an image's file stem instead

Masks are binarised as that loader does (grayscale // 255): only pixels of exactly 255 are in.

The annotated frames are among the training images, so every image trains and the annotated
frames are also the evaluation views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .model import Camera, Scene, SceneError, check_prompt_name, list_images, naming, open_image


def is_ovs3d(root: Path) -> bool:
    return (root / "poses_bounds.npy").is_file() and (root / "segmentations").is_dir()


def llff_to_world_to_camera(pose_3x5: np.ndarray) -> np.ndarray:
    """LLFF's camera-to-world (columns down, right, backwards) to an OpenCV world-to-camera 4×4."""
    down, right, back, center = (pose_3x5[:, i] for i in range(4))
    c2w = np.eye(4)
    c2w[:3, 0] = right      # OpenCV x: right
    c2w[:3, 1] = down       # OpenCV y: down
    c2w[:3, 2] = -back      # OpenCV z: forward
    c2w[:3, 3] = center
    w2c = np.eye(4)
    w2c[:3, :3] = c2w[:3, :3].T
    w2c[:3, 3] = -c2w[:3, :3].T @ center
    return w2c


def read_ovs3d_scene(root: Path, name: str | None = None, image_dir: Path | None = None) -> Scene:
    """Read a 3D-OVS scene into a `Scene`; intrinsics are rescaled to the images' actual size."""
    root = Path(root)
    image_dir = image_dir or root / "images"
    names = list_images(image_dir)
    poses_path = root / "poses_bounds.npy"
    try:
        poses_bounds = np.load(poses_path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds on a damaged file
        raise SceneError(f"{poses_path}: cannot read: {exc!r}") from exc
    if not isinstance(poses_bounds, np.ndarray) or poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17:
        raise SceneError(f"{poses_path}: expected an array of shape [N, 17], got {getattr(poses_bounds, 'shape', None)}")
    if not np.issubdtype(poses_bounds.dtype, np.number) or not np.isfinite(poses_bounds).all():
        raise SceneError(f"{poses_path}: poses must be finite numbers (dtype {poses_bounds.dtype})")
    if len(poses_bounds) != len(names):
        raise SceneError(f"{poses_path}: {len(poses_bounds)} poses but {len(names)} images in {image_dir}")
    cameras = {}
    for row, image_name in zip(poses_bounds, names):
        pose = row[:15].reshape(3, 5)
        h, w, focal = pose[:, 4]
        if min(h, w, focal) <= 0:
            raise SceneError(f"{poses_path}: pose of {image_name}: height, width and focal must be positive, "
                             f"got {h}, {w}, {focal}")
        with open_image(image_dir / image_name) as img:  # size only; pixels are read lazily
            width, height = img.size
        sx, sy = width / w, height / h
        K = np.array([[focal * sx, 0, width / 2], [0, focal * sy, height / 2], [0, 0, 1]])
        with naming(poses_path):  # the camera's own checks (a proper rotation, finite values)
            cameras[image_name] = Camera(K, llff_to_world_to_camera(pose), width, height, image_name)

    seg_root = root / "segmentations"
    classes_path = seg_root / "classes.txt"
    if not classes_path.is_file():
        raise SceneError(f"{classes_path}: class list not found")
    try:
        lines = classes_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SceneError(f"{classes_path}: not UTF-8 text ({exc})") from exc
    classes = [check_prompt_name(line.strip(), classes_path) for line in lines if line.strip()]
    if not classes:
        raise SceneError(f"{classes_path}: no class names")
    stems = {Path(n).stem: n for n in names}
    gt_masks: dict[str, dict[str, Path]] = {}
    for entry in sorted(p for p in seg_root.iterdir() if p.is_dir()):
        if entry.name.isdigit():
            if int(entry.name) >= len(names):
                raise SceneError(f"{entry}: image index {int(entry.name)} but {image_dir} has {len(names)} images "
                                 f"(indices 0..{len(names) - 1}, sorted by file name)")
            image_name = names[int(entry.name)]
        elif entry.name in stems:
            image_name = stems[entry.name]
        else:
            raise SceneError(f"{entry}: not an image index (0..{len(names) - 1}) nor an image name")
        if image_name in gt_masks:
            raise SceneError(f"{entry}: a second ground-truth folder for {image_name}")
        masks = {p.stem: p for p in sorted(entry.glob("*.png"))}
        unknown = sorted(set(masks) - set(classes))
        if unknown:
            raise SceneError(f"{entry}: masks for classes not in {classes_path.name}: {unknown}")
        gt_masks[image_name] = masks
    return Scene(
        name=name or root.name, root=root, image_dir=image_dir, image_names=names, cameras=cameras,
        train_names=list(names), test_names=sorted(gt_masks), prompts=classes, gt_masks=gt_masks,
        layout="ovs3d", gt_mask_rule="eq255",
    )
