"""The Scene model every stage shares: cameras, images, split, prompts, ground truth, points.

Conventions (the same as COLMAP and gsplat, so poses pass between them untouched):
- `world_to_camera` is a 4×4 matrix in the OpenCV camera frame: x right, y down, z forward.
- `K` is the 3×3 pinhole matrix with the centre of the top-left pixel at (0.5, 0.5): a pixel
  (row i, column j) is seen along the ray through (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
"""What PIL raises for a damaged file while it decodes (a broken PNG chunk is a SyntaxError, a cut
file an EOFError or OSError, a lying TIFF header a struct.error)."""


class SceneError(ValueError):
    """A dataset file is missing or malformed; the message names the file and what is wrong."""


@contextlib.contextmanager
def naming(source: Path | str):
    """Within this block a `SceneError` (a `Camera`'s own checks, say) is raised again with `source`,
    the file that held the bad data, in front of its message."""
    try:
        yield
    except SceneError as exc:
        raise SceneError(f"{source}: {exc}") from exc


@contextlib.contextmanager
def open_image(path: Path):
    """`PIL.Image.open` for files a user hands over: an image whose header claims more pixels than
    PIL's `Image.MAX_IMAGE_PIXELS` (about 89 MP; a decompression bomb, or far beyond any capture we
    can train on) is refused before any pixel is decoded, as are missing and non-image files.

    Raises:
        SceneError: naming the file and what is wrong.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns below 2x the limit
        try:
            img = Image.open(path)
        except FileNotFoundError as exc:
            raise SceneError(f"{path}: image file not found") from exc
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise SceneError(f"{path}: image too large to decode safely, more than {Image.MAX_IMAGE_PIXELS} "
                             f"pixels ({exc}); downscale it first") from exc
        except DECODE_ERRORS as exc:
            raise SceneError(f"{path}: not an image ({exc})") from exc
    with img:
        yield img


@dataclass(frozen=True)
class Camera:
    """One calibrated view.

    Attributes:
        K: [3, 3] pinhole intrinsics (pixel-centre-at-0.5 convention).
        world_to_camera: [4, 4] rigid transform, OpenCV camera axes.
        width: Image width in pixels.
        height: Image height in pixels.
        image_name: File name of the image, relative to the scene's image folder.
        distortion_model: COLMAP model name when the intrinsics carry lens distortion (the
            calibrate stage undistorts such views); None for a pinhole camera.
        distortion_params: The full COLMAP parameter vector of `distortion_model`.
    """

    K: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int
    image_name: str
    distortion_model: str | None = None
    distortion_params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        w2c = np.asarray(self.world_to_camera, dtype=np.float64)
        if K.shape != (3, 3) or w2c.shape != (4, 4):
            raise SceneError(
                f"camera of {self.image_name}: K must be 3x3 and world_to_camera 4x4, "
                f"got {K.shape} and {w2c.shape}"
            )
        if not (np.isfinite(K).all() and np.isfinite(w2c).all()):
            raise SceneError(f"camera of {self.image_name}: non-finite intrinsics or pose")
        if not (K[0, 0] > 0 and K[1, 1] > 0 and int(self.width) > 0 and int(self.height) > 0):
            raise SceneError(f"camera of {self.image_name}: focal lengths and image size must be positive, got "
                             f"fx={K[0, 0]}, fy={K[1, 1]}, {self.width}x{self.height}")
        rotation = w2c[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-5) or np.linalg.det(rotation) < 0:
            raise SceneError(f"camera of {self.image_name}: world_to_camera rotation is not a proper rotation")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "world_to_camera", w2c)

    @property
    def camera_to_world(self) -> np.ndarray:
        """[4, 4] inverse of `world_to_camera`."""
        rotation, translation = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        c2w = np.eye(4)
        c2w[:3, :3] = rotation.T
        c2w[:3, 3] = -rotation.T @ translation
        return c2w

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return self.camera_to_world[:3, 3]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [N, 3] to pixel coordinates [N, 2] and camera depths [N]."""
        cam = points @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        depth = cam[:, 2]
        uvw = cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / uvw[:, 2:3]
        return uv, depth

    def scaled(self, width: int, height: int) -> "Camera":
        """The same view at another image resolution (intrinsics rescaled)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return Camera(K, self.world_to_camera, width, height, self.image_name,
                      self.distortion_model, self.distortion_params)


@dataclass
class Scene:
    """A dataset as every stage sees it.

    Attributes:
        name: Scene name (used for the data folder).
        root: Dataset folder.
        image_dir: Folder the image names are relative to.
        image_names: All images, sorted by file name.
        cameras: Camera per image name; empty until calibrated for a plain photo folder.
        train_names: Images used for training.
        test_names: Held-out images (evaluation views).
        prompts: Object prompts of the dataset (text names of the objects).
        gt_masks: test image name -> prompt -> path of the ground-truth mask PNG.
        points: [N, 3] sparse points, or None.
        point_colors: [N, 3] uint8 colours of `points`, or None.
        background: For RGBA datasets, the RGB colour in [0, 1] that images are composited on;
            the alpha channel stays available through `load_alpha`.
        layout: Which reader produced the scene (`colmap`, `lerf_mask`, `ovs3d`, `blender`,
            `nerfstudio`, `photos`, `synthetic`).
        pinhole_images: The images come from an ideal pinhole camera (rendered datasets), so
            calibration need not model lens distortion.
        gt_mask_rule: How a ground-truth mask PNG (as grayscale) becomes boolean: `gt128` (> 128,
            the LERF-Mask evaluation) or `eq255` (exactly 255: the 3D-OVS loader's integer
            division by 255).
        poses_are_truth: The shipped poses are exact (a rendered scene): calibration then runs SfM
            by default and is checked against them instead of adopting them.
        mask_generator: The mask generator `masks.generator=auto` picks for this scene (`sam`;
            `texture`, weights-free, for the synthetic scenes).
        object_truth: 3D ground truth, when the reader has it: (calibrated scene, [N, 3] points in
            its frame) -> ([N] id of the nearest true object, 0 for background; {id: prompt}).
            The cluster stage scores its clusters and selections with it.
        instance_truth: True instance ids of a view, when the reader has them: image name -> [H, W]
            uint8 id map at the image's size (0 background; ids as `object_truth` numbers them).
            Only the `truth-objects` mask generator reads it (an upper-bound diagnostic).
    """

    name: str
    root: Path
    image_dir: Path
    image_names: list[str]
    cameras: dict[str, Camera] = field(default_factory=dict)
    train_names: list[str] = field(default_factory=list)
    test_names: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    gt_masks: dict[str, dict[str, Path]] = field(default_factory=dict)
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    background: tuple[float, float, float] | None = None
    layout: str = "colmap"
    pinhole_images: bool = False
    gt_mask_rule: str = "gt128"
    poses_are_truth: bool = False
    mask_generator: str = "sam"
    object_truth: Callable[["Scene", np.ndarray], tuple[np.ndarray, dict[int, str]]] | None = field(default=None,
                                                                                                 repr=False)
    instance_truth: Callable[[str], np.ndarray] | None = field(default=None, repr=False)

    @property
    def has_poses(self) -> bool:
        """True when every image has a camera."""
        return bool(self.cameras) and all(n in self.cameras for n in self.image_names)

    def image_path(self, name: str) -> Path:
        return self.image_dir / name

    def load_image(self, name: str) -> np.ndarray:
        """[H, W, 3] float32 RGB in [0, 1]; RGBA images are composited on `background`."""
        path = self.image_path(name)
        rgba = _read_image(path)
        rgb = rgba[..., :3]
        if rgba.shape[-1] == 4 and self.background is not None:
            alpha = rgba[..., 3:4]
            rgb = rgb * alpha + np.asarray(self.background, dtype=np.float32) * (1.0 - alpha)
        return rgb.astype(np.float32)

    def load_alpha(self, name: str) -> np.ndarray | None:
        """[H, W] float32 foreground alpha of an RGBA image, or None for RGB images."""
        rgba = _read_image(self.image_path(name))
        return rgba[..., 3] if rgba.shape[-1] == 4 else None

    def check_images(self, single_size: bool = False) -> dict[str, tuple[int, int]]:
        """Open every image's header and check it against the scene; returns name -> (width, height).

        Raises SceneError naming the file when an image is missing or not an image, when its size
        differs from its camera's, when `single_size` and the images do not all share one size,
        or when a ground-truth mask's size differs from its test image's.
        """
        sizes = {}
        for name in self.image_names:
            path = self.image_path(name)
            with open_image(path) as img:
                sizes[name] = img.size
            camera = self.cameras.get(name)
            if camera is not None and (camera.width, camera.height) != sizes[name]:
                raise SceneError(f"{path}: image is {sizes[name][0]}x{sizes[name][1]} but its camera says "
                                 f"{camera.width}x{camera.height}")
        if single_size and len(set(sizes.values())) > 1:
            first = self.image_names[0]
            odd = next(n for n in self.image_names if sizes[n] != sizes[first])
            raise SceneError(f"{self.image_path(odd)}: images of mixed sizes: it is {sizes[odd][0]}x{sizes[odd][1]}, "
                             f"{first} is {sizes[first][0]}x{sizes[first][1]} (resize them to one size, or set "
                             "calibrate.single_camera=false)")
        for view, masks in self.gt_masks.items():
            for prompt, path in masks.items():
                check_prompt_name(prompt, path)
                with open_image(path) as img:
                    mask_size = img.size
                if view in sizes and mask_size != sizes[view]:
                    raise SceneError(f"{path}: ground-truth mask is {mask_size[0]}x{mask_size[1]} but its test "
                                     f"image {view} is {sizes[view][0]}x{sizes[view][1]}")
        return sizes

    def load_gt_mask(self, test_name: str, prompt: str) -> np.ndarray:
        """Boolean ground-truth mask, binarised by the dataset's own rule (`gt_mask_rule`)."""
        path = self.gt_masks[test_name][prompt]
        with open_image(path) as img:
            try:
                gray = np.asarray(img.convert("L"))
            except DECODE_ERRORS as exc:
                raise SceneError(f"{path}: cannot read ground-truth mask: {exc}") from exc
        if self.gt_mask_rule == "eq255":
            return gray == 255
        return gray > 128


def check_prompt_name(prompt: str, source: Path | str) -> str:
    """A prompt becomes a file name in result layouts (`<i>/<prompt>.png`): refuse one that is empty,
    holds a path separator or is `.`/`..`, naming where it came from."""
    if not prompt.strip() or "/" in prompt or "\\" in prompt or prompt.strip() in (".", "..") or "\0" in prompt:
        raise SceneError(f"{source}: prompt {prompt!r} cannot be a file name (no '/', '\\', '..' or empty names)")
    return prompt


def _read_image(path: Path) -> np.ndarray:
    """[H, W, 3|4] float32 in [0, 1]; a missing or unreadable file raises SceneError naming it."""
    with open_image(path) as img:  # names a missing file, a non-image and a decompression bomb
        try:
            mode = "RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else "RGB"
            return np.asarray(img.convert(mode), dtype=np.float32) / 255.0
        except DECODE_ERRORS as exc:  # e.g. a truncated file: its header read, its pixels not
            raise SceneError(f"{path}: cannot read image: {exc}") from exc


def list_images(folder: Path) -> list[str]:
    """Sorted image file names in a folder; raises SceneError when the folder is missing or empty."""
    if not folder.is_dir():
        raise SceneError(f"{folder}: image folder not found")
    names = sorted(p.name for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise SceneError(f"{folder}: no images (.png/.jpg) in folder")
    return names
