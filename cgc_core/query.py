"""Object selection on a rendered feature map: click, several clicks, box, and text queries.

Every query ends as one or more query features q (unit vectors); a pixel belongs to the object
when the cosine similarity of its L2-normalised rendered feature to q is ≥ t (CGC: t = 0.7).
Queries are batched: Q query features against one view give Q similarity maps at once.

- click: the feature at a pixel;
- several clicks: their mean feature (`mode="mean"`), or the union of each click's mask;
- box: SAM's predictor turns the box into a mask; the query is the mean feature inside it, or the
  feature at its deepest pixel;
- text: Grounding DINO turns (image, text) into a box, then as box.

The detector and SAM load weights from configured paths; without them, box and text queries
raise an error naming the missing file, and clicks still work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .config import QueryConfig, SamConfig
from .masks.generators import MaskGeneratorError, load_sam, resolve_device

DEFAULT_THRESHOLD = 0.7


class QueryModelError(RuntimeError):
    """A detector or segmenter needed by a box/text query cannot be loaded; names the file."""


def normalize_features(feature_map: Tensor) -> Tensor:
    """L2-normalise a [H, W, D] feature map (or [N, D] features) along the last axis."""
    return F.normalize(feature_map, dim=-1)


def similarity_maps(feature_map: Tensor, queries: Tensor) -> Tensor:
    """Cosine similarity of every pixel to every query: [H, W, D] × [Q, D] -> [Q, H, W]."""
    fmap = normalize_features(feature_map)
    q = F.normalize(queries.to(fmap.dtype), dim=-1)
    return torch.einsum("hwd,qd->qhw", fmap, q)


def select(feature_map: Tensor, queries: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Boolean masks [Q, H, W]: similarity ≥ threshold (a threshold above 1 selects nothing)."""
    return similarity_maps(feature_map, queries) >= threshold


def feature_at(feature_map: Tensor, pixels: Sequence[tuple[int, int]]) -> Tensor:
    """Normalised features [P, D] at (row, col) pixels."""
    rows = torch.as_tensor([p[0] for p in pixels])
    cols = torch.as_tensor([p[1] for p in pixels])
    return normalize_features(feature_map[rows, cols])


def click_query(feature_map: Tensor, pixels: Sequence[tuple[int, int]],
                mode: Literal["mean", "union"] = "mean", threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Mask [H, W] from one or several clicks ((row, col) pixels).

    `mean` selects with the normalised mean of the clicked features; `union` is the union of
    each click's own selection.
    """
    feats = feature_at(feature_map, pixels)
    if mode == "mean":
        return select(feature_map, F.normalize(feats.mean(0, keepdim=True), dim=-1), threshold)[0]
    if mode == "union":
        return select(feature_map, feats, threshold).any(0)
    raise ValueError(f"click_query: mode must be 'mean' or 'union', got {mode!r}")


def deepest_pixel(mask: np.ndarray) -> tuple[int, int]:
    """The (row, col) of a mask farthest from its boundary (image edges count as boundary).

    Deterministic: ties go to the first pixel in row-major order.
    """
    if not mask.any():
        raise ValueError("deepest_pixel: the mask is empty")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(row), int(col)


def mask_query(feature_map: Tensor, mask: np.ndarray, mode: Literal["mean", "deepest"] = "mean") -> Tensor:
    """A query feature [D] from a 2D mask: its mean normalised feature, or the one at its deepest pixel."""
    if mode == "deepest":
        return feature_at(feature_map, [deepest_pixel(mask)])[0]
    inside = normalize_features(feature_map)[torch.as_tensor(mask, dtype=torch.bool)]
    if inside.shape[0] == 0:
        raise ValueError("mask_query: the mask is empty")
    return F.normalize(inside.mean(0), dim=-1)


@dataclass
class BoxSegmenter:
    """SAM's predictor: an image and a box (x0, y0, x1, y1) in pixels -> a boolean mask."""

    config: SamConfig

    def __post_init__(self) -> None:
        self._predictor = None

    def predictor(self):
        if self._predictor is None:
            from segment_anything import SamPredictor

            try:
                self._predictor = SamPredictor(load_sam(self.config))
            except MaskGeneratorError as exc:
                raise QueryModelError(f"box/text queries need SAM: {exc}") from exc
        return self._predictor

    def __call__(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        predictor = self.predictor()
        predictor.set_image(image)
        with torch.inference_mode():
            masks, scores, _ = predictor.predict(box=np.asarray(box, dtype=np.float32), multimask_output=False)
        return masks[0].astype(bool)


@dataclass
class TextDetector:
    """Grounding DINO: (image, text) -> the highest-scoring box (x0, y0, x1, y1) in pixels, or None."""

    config: QueryConfig

    def __post_init__(self) -> None:
        self._model = None

    def model(self):
        if self._model is not None:
            return self._model
        cfg = self.config
        try:
            from groundingdino.models import build_model
            from groundingdino.util.slconfig import SLConfig
            from groundingdino.util.utils import clean_state_dict
        except ImportError as exc:
            raise QueryModelError(
                "text queries need Grounding DINO: install the optional extra (pip install -e '.[gdino]')"
            ) from exc
        config_path = Path(cfg.gdino_config) if cfg.gdino_config else _packaged_gdino_config()
        if not config_path.is_file():
            raise QueryModelError(f"{config_path}: Grounding DINO config file not found (query.gdino_config)")
        if cfg.gdino_checkpoint is None and not cfg.allow_random_weights:
            raise QueryModelError(
                "query.gdino_checkpoint is not set: text queries need the Grounding DINO weights file "
                "(for example groundingdino_swint_ogc.pth), which cgc never downloads"
            )
        if cfg.gdino_checkpoint is not None and not Path(cfg.gdino_checkpoint).is_file():
            raise QueryModelError(f"{cfg.gdino_checkpoint}: Grounding DINO checkpoint file not found")
        args = SLConfig.fromfile(str(config_path))
        args.device = resolve_device(cfg.device)
        if cfg.text_encoder is not None:
            if not Path(cfg.text_encoder).is_dir():
                raise QueryModelError(f"{cfg.text_encoder}: BERT text-encoder folder not found (query.text_encoder)")
            args.text_encoder_type = str(cfg.text_encoder)
        model = build_model(args)
        if cfg.gdino_checkpoint is not None:
            try:
                state = torch.load(cfg.gdino_checkpoint, map_location="cpu", weights_only=True)
                model.load_state_dict(clean_state_dict(state["model"]), strict=False)
            except Exception as exc:
                raise QueryModelError(f"{cfg.gdino_checkpoint}: not a valid Grounding DINO checkpoint ({exc})") from exc
        self._model = model.to(args.device).eval()
        return self._model

    def __call__(self, image: np.ndarray, text: str) -> tuple[list[float], float] | None:
        import groundingdino.datasets.transforms as T
        from groundingdino.util.inference import predict
        from PIL import Image

        model = self.model()
        transform = T.Compose([
            T.RandomResize([self.config.gdino_image_size], max_size=1333), T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        tensor, _ = transform(Image.fromarray(image), None)
        boxes, logits, _ = predict(model, tensor, text, box_threshold=self.config.box_threshold,
                                   text_threshold=self.config.text_threshold, device=resolve_device(self.config.device))
        if len(boxes) == 0:
            return None
        best = int(torch.argmax(logits))
        cx, cy, w, h = boxes[best].tolist()
        height, width = image.shape[:2]
        box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        return box, float(logits[best])


def _packaged_gdino_config() -> Path:
    import groundingdino

    return Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"


def box_query(feature_map: Tensor, image: np.ndarray, box: Sequence[float], segmenter: BoxSegmenter,
              mode: Literal["mean", "deepest"] = "mean") -> Tensor:
    """Query feature [D] from a box: SAM's mask of the box, then `mask_query`.

    The image and the feature map must be of one size.
    """
    return mask_query(feature_map, segmenter(image, box), mode)


def text_query(feature_map: Tensor, image: np.ndarray, text: str, detector: TextDetector, segmenter: BoxSegmenter,
               mode: Literal["mean", "deepest"] = "mean") -> Tensor | None:
    """Query feature [D] from text (Grounding DINO box -> SAM mask -> feature), or None when nothing is detected."""
    found = detector(image, text)
    if found is None:
        return None
    return box_query(feature_map, image, found[0], segmenter, mode)
