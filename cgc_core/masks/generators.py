"""Automatic mask generators: SAM (segment-anything), two weights-free ones (classical: colour
only; texture: colour and texture, nested), and
`truth-objects` (classical plus true object masks: an upper-bound diagnostic for synthetic scenes).

Each returns masks at a working resolution (the image downscaled to a configured long side) as a
table in the store's schema. `generate_scene_masks` runs one over a scene's training images,
image by image into a `MaskStore`, skipping images already stored (a killed run resumes).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
from PIL import Image

from ..config import ClassicalConfig, MasksConfig, SamConfig, TextureConfig, TruthObjectsConfig, section_hash
from ..models import ModelLoadError, load_sam
from ..scene.model import Scene
from .store import MaskStore, records_from_masks, records_from_sam


def image_rng(seed: int, image_name: str) -> np.random.Generator:
    """The random draws of one image (a generator's jitter, training's per-view choices): fixed by
    the seed and the image's name, different between images, so that the masks are view-inconsistent
    as SAM's are and the same on every run."""
    return np.random.default_rng([seed, zlib.crc32(image_name.encode())])


class MaskGeneratorError(ModelLoadError):
    """A generator cannot be built or run (missing or corrupt weights, ...); the message says which file."""


class MaskGenerator(Protocol):
    """What the mask stage needs from a generator."""

    name: str
    version: str
    config_hash: str

    def generate(self, image: np.ndarray, image_name: str) -> tuple[pa.Table, tuple[int, int]]:
        """Masks of one RGB uint8 image: the store table and the (height, width) they are at."""
        ...


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Resize so that the long side is at most `max_side` (area filter); unchanged if already small."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def shading_invariant(image: np.ndarray, luminance_weight: float) -> np.ndarray:
    """[H, W, 3] float image: chromaticity (r, g)/(r+g+b) (b follows from them), scaled to RGB's
    spread, and luminance times `luminance_weight`. Shading scales r, g and b together, so it
    changes only the last channel: a box's lit and shaded faces differ little here, a red and a
    blue object a lot."""
    x = image.astype(np.float64) / 255.0
    chroma = x[..., :2] / (x.sum(-1, keepdims=True) + 1e-3)
    return np.concatenate([1.5 * chroma, luminance_weight * x.mean(-1, keepdims=True)], axis=-1)


class LevelGenerator:
    """A generator whose masks are the regions of label maps at several levels (`levels`): every
    region covering `config.min_area_fraction` of the image; `unique`: a region repeated at several
    levels (nested levels) is stored once."""

    config: ClassicalConfig | TextureConfig
    name: str
    version: str
    unique: bool = False

    @property
    def config_hash(self) -> str:
        return section_hash(self.config)

    def generate(self, image: np.ndarray, image_name: str) -> tuple[pa.Table, tuple[int, int]]:
        masks, size = self.segments(image, image_name)
        return records_from_masks(image_name, masks, self.name, self.version, self.config_hash), size

    def segments(self, image: np.ndarray, image_name: str) -> tuple[list[np.ndarray], tuple[int, int]]:
        """The boolean masks of one image at the working resolution, and that (height, width)."""
        levels = self.levels(image, image_name)
        return level_masks(levels, self.config.min_area_fraction, self.unique), levels.shape[1:]

    def levels(self, image: np.ndarray, image_name: str) -> np.ndarray:
        """[levels, H, W] int label maps at the working resolution."""
        raise NotImplementedError


@dataclass
class ClassicalGenerator(LevelGenerator):
    """Felzenszwalb segments at several scales (scikit-image): overlapping, view-inconsistent masks."""

    config: ClassicalConfig
    name: str = "classical"
    version: str = "felzenszwalb-2"

    def levels(self, image: np.ndarray, image_name: str) -> np.ndarray:
        """[scales, H, W] label maps at the working resolution, one per scale."""
        from skimage.segmentation import felzenszwalb

        cfg = self.config
        work = downscale(image, cfg.max_side)
        height, width = work.shape[:2]
        # A per-image draw of the scales: the same object splits differently in different views,
        # as SAM's automatic masks do.
        rng = image_rng(cfg.seed, image_name)
        min_area = max(1, int(cfg.min_area_fraction * height * width))
        segmented = shading_invariant(work, cfg.luminance_weight) if cfg.colour == "chroma" else work
        return np.stack([felzenszwalb(segmented, scale=scale * (1 + rng.uniform(-cfg.jitter, cfg.jitter)),
                                      sigma=cfg.sigma, min_size=min_area, channel_axis=-1) for scale in cfg.scales])


def level_masks(levels: np.ndarray, min_area_fraction: float, unique: bool = False) -> list[np.ndarray]:
    """The boolean masks of [L, H, W] label maps: every label of every level covering at least
    `min_area_fraction` of the image; with `unique`, a region found at several levels once."""
    min_area = max(1, int(min_area_fraction * levels[0].size))
    masks, seen = [], set()
    for labels in levels:
        counts = np.bincount(labels.ravel())
        for label in np.nonzero(counts >= min_area)[0]:
            mask = labels == label
            key = np.packbits(mask).tobytes() if unique else len(masks)
            if key not in seen:
                seen.add(key)
                masks.append(mask)
    return masks


@dataclass
class TextureGenerator(LevelGenerator):
    """Colour-and-texture regions at nested levels (`regions.texture_regions`): objects on
    patterned cloths come out as their own regions; view-inconsistent through a per-image jitter
    of the merge thresholds."""

    config: TextureConfig
    name: str = "texture"
    version: str = "slic-rag-texture-2"
    unique: bool = True

    def levels(self, image: np.ndarray, image_name: str) -> np.ndarray:
        """[levels, H, W] nested label maps at the working resolution, finest first."""
        from .regions import texture_regions

        cfg = self.config
        work = downscale(image, cfg.max_side)
        rng = image_rng(cfg.seed, image_name)
        # One jitter for every level keeps them increasing, hence nested.
        scale = 1 + rng.uniform(-cfg.jitter, cfg.jitter)
        return texture_regions(work, [t * scale for t in cfg.thresholds], n_superpixels=cfg.n_superpixels,
                               compactness=cfg.compactness, luminance_weight=cfg.luminance_weight, window=cfg.window,
                               textured=cfg.textured, spread_weight=cfg.spread_weight,
                               edge_scale=cfg.edge_scale, edge_floor=cfg.edge_floor)


@dataclass
class TruthObjectsGenerator:
    """The classical generator's segments plus each object's true mask (from the scene's
    `instance_truth`), kept in a drawn share of the views: masks that nest colour parts into
    whole objects, as SAM's part and object levels do, without SAM. A diagnostic that bounds what
    the masks cost (train on it, compare with classical); never a method's figure."""

    classical: ClassicalConfig
    config: TruthObjectsConfig
    instance_truth: Callable[[str], np.ndarray]
    name: str = "truth-objects"
    version: str = "felzenszwalb-2+truth-1"

    @property
    def config_hash(self) -> str:
        return section_hash((self.classical, self.config))

    def generate(self, image: np.ndarray, image_name: str) -> tuple[pa.Table, tuple[int, int]]:
        masks, (height, width) = ClassicalGenerator(self.classical).segments(image, image_name)
        ids = self.instance_truth(image_name)
        if ids.shape != image.shape[:2]:
            raise MaskGeneratorError(f"{image_name}: true instance map is {ids.shape[1]}x{ids.shape[0]} but the "
                                     f"image is {image.shape[1]}x{image.shape[0]}")
        if ids.shape != (height, width):  # to the classical masks' working resolution
            ids = np.asarray(Image.fromarray(ids).resize((width, height), Image.Resampling.NEAREST))
        cfg = self.config
        rng = image_rng(cfg.seed, image_name)
        min_area = max(1, int(cfg.min_area_fraction * height * width))
        if cfg.parts_within_objects:
            pieces = (segment & (ids == k) for segment in masks for k in np.unique(ids[segment]))
            masks = [piece for piece in pieces if piece.sum() >= min_area]
        counts = np.bincount(ids.ravel())
        objects = [k for k in np.nonzero(counts >= min_area)[0] if k > 0]
        masks += [ids == k for k, draw in zip(objects, rng.random(len(objects))) if draw < cfg.keep]
        return records_from_masks(image_name, masks, self.name, self.version, self.config_hash), (height, width)


class SamGenerator:
    """segment-anything's `SamAutomaticMaskGenerator` with COCO-RLE output.

    The model is built from `config.checkpoint` (never downloaded). With no checkpoint, it
    refuses unless `config.allow_random_weights` (tests: the real architecture, random weights).
    """

    name = "sam"

    def __init__(self, config: SamConfig):
        self.config = config
        self.version = f"segment-anything-1.0/{config.model_type}"
        self._generator = None

    @property
    def config_hash(self) -> str:
        return section_hash(self.config)

    def build(self):
        """Build the model and the automatic mask generator (once)."""
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            cfg = self.config
            try:
                sam = load_sam(cfg, "masks.sam")
            except ModelLoadError as exc:
                raise MaskGeneratorError(str(exc)) from exc
            self._generator = SamAutomaticMaskGenerator(
                sam, points_per_side=cfg.points_per_side, points_per_batch=cfg.points_per_batch,
                pred_iou_thresh=cfg.pred_iou_thresh, stability_score_thresh=cfg.stability_score_thresh,
                box_nms_thresh=cfg.box_nms_thresh, crop_n_layers=cfg.crop_n_layers,
                min_mask_region_area=cfg.min_mask_region_area, output_mode="coco_rle",
            )
        return self._generator

    def generate(self, image: np.ndarray, image_name: str) -> tuple[pa.Table, tuple[int, int]]:
        import torch

        work = downscale(image, self.config.max_side)
        with torch.inference_mode():
            sam_masks = self.build().generate(work)
        table = records_from_sam(image_name, sam_masks, self.name, self.version, self.config_hash)
        return table, work.shape[:2]


def make_generator(cfg: MasksConfig, scene: Scene) -> MaskGenerator:
    """The configured generator; `auto` is the scene's own (`Scene.mask_generator`: texture for
    the synthetic scenes, SAM otherwise). `truth-objects` needs a scene with true instance maps."""
    kind = cfg.generator
    if kind == "auto":
        kind = scene.mask_generator
    if kind == "truth-objects":
        if scene.instance_truth is None:
            raise MaskGeneratorError(f"{scene.root}: masks.generator=truth-objects needs true instance maps, which "
                                     "only the synthetic scenes have (use classical or sam)")
        return TruthObjectsGenerator(cfg.classical, cfg.truth_objects, scene.instance_truth)
    if kind == "texture":
        return TextureGenerator(cfg.texture)
    return ClassicalGenerator(cfg.classical) if kind == "classical" else SamGenerator(cfg.sam)


def generate_scene_masks(scene: Scene, store: MaskStore, generator: MaskGenerator,
                         progress: Callable[[int, int, str], None] | None = None) -> dict[str, int]:
    """Generate masks for every training image not yet in `store`, one atomic file per image.

    Args:
        scene: The (calibrated) scene; its training images are segmented.
        store: Where masks go; images already there are skipped (resume after a kill).
        generator: A `MaskGenerator`.
        progress: Called as progress(done, total, image_name) after each image.

    Returns:
        Counts: images total, generated now, reused, and masks generated now.
    """
    names = scene.train_names
    generated = reused = n_masks = 0
    for done, name in enumerate(names, start=1):
        if store.has_image(name):
            reused += 1
        else:
            image = (scene.load_image(name) * 255 + 0.5).astype(np.uint8)
            table, (height, width) = generator.generate(image, name)
            store.write_image(name, height, width, table)
            generated += 1
            n_masks += table.num_rows
        if progress is not None:
            progress(done, len(names), name)
    return {"images": len(names), "generated": generated, "reused": reused, "masks_generated": n_masks}
