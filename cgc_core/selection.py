"""One selection service: queries from clicks, boxes and text, similarity maps, 2D masks and the 3D
Gaussians of a selection, built once from the config.

`evaluate` (every protocol), the cluster stage's `objects/*.ply`, `cgc export` and the viewer all
select through a `Selector`, so one threshold, one query rule and one 3D cleaning apply
everywhere. The models behind box and text queries (SAM, Grounding DINO) load on first use; a
detector or segmenter can be passed in instead (a test double, a model already loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from .config import SELECTION_THRESHOLD, CgcConfig
from .metrics import resize_nearest
from .query import feature_at, mask_query, similarity_maps
from .render import Gaussians, blend_weights, nearest_shown
from .scene.model import Camera

Detector = Callable[[np.ndarray, str], "tuple[list[float], float] | None"]
Segmenter = Callable[[np.ndarray, Sequence[float]], np.ndarray]


@dataclass
class Query:
    """A query feature and where it came from.

    Attributes:
        feature: [D] unit query feature, or None when a text prompt was not detected (its
            selection is empty everywhere).
        kind: `click`, `box` or `text`.
        view: The image it was taken in (None when given as a bare feature).
        pixel: (row, col) of a click query, in the feature map's grid.
        box: (x0, y0, x1, y1) in the grounding image's pixels (box and text queries).
        score: The detector's score of that box (text queries).
        mask_area: Pixels of SAM's mask of the box (box and text queries).
    """

    feature: Tensor | None
    kind: str
    view: str | None = None
    pixel: tuple[int, int] | None = None
    box: list[float] | None = None
    score: float | None = None
    mask_area: int | None = None

    @property
    def detected(self) -> bool:
        return self.feature is not None


@dataclass
class Selector:
    """Object selection with one set of settings.

    Attributes:
        threshold: Cosine similarity at or above which a pixel or Gaussian is selected (CGC: 0.7).
        mask_query_mode: From a box's SAM mask, the query is the `mean` unit feature inside it or
            the feature at its `deepest` pixel.
        click_radius: A click reads the mean unit feature of the square window of this radius
            around it (clipped at the edges); 0: the clicked pixel alone.
        min_opacity: 3D selections leave out Gaussians fainter than this.
        outlier_neighbours, outlier_std_ratio: Spatial cleaning of a 3D selection
            (`remove_spatial_outliers`; a ratio of None skips it).
        detector: (image, text) -> (box, score) or None; default: Grounding DINO from the config.
        segmenter: (image, box) -> boolean mask; default: SAM's predictor from the config.
        level_dims: Feature channels of each trained mask level, finest first (`train.contrastive.level_dims`
            cut to `train.contrastive.mask_levels`); None: one level on every channel.
        level: The granularity selections use: an index into `level_dims` (0 finest). Queries,
            similarities and 3D selections compare the first `level_dims[level]` channels (queries
            keep every channel), so `at_level` steps between parts and whole objects.
    """

    threshold: float = SELECTION_THRESHOLD
    mask_query_mode: Literal["mean", "deepest"] = "mean"
    click_radius: int = 0
    min_opacity: float = 0.1
    outlier_neighbours: int = 10
    outlier_std_ratio: float | None = 2.0
    detector: Detector | None = field(default=None, repr=False)
    segmenter: Segmenter | None = field(default=None, repr=False)
    level_dims: tuple[int, ...] | None = None
    level: int = 0

    def __post_init__(self):
        levels = len(self.level_dims) if self.level_dims else 1
        if not 0 <= self.level < levels:
            raise ValueError(f"Selector: level {self.level} is not a trained level (0..{levels - 1})")
        if self.click_radius < 0:
            raise ValueError(f"Selector: click_radius must be >= 0, got {self.click_radius}")

    @property
    def levels(self) -> int:
        """How many granularity levels the features were trained with."""
        return len(self.level_dims) if self.level_dims else 1

    @property
    def channels(self) -> int | None:
        """Feature channels read at the current level (None: all)."""
        return self.level_dims[self.level] if self.level_dims else None

    def at_level(self, level: int) -> "Selector":
        """The same selector at another granularity (clamped to the trained levels: 0 finest)."""
        return replace(self, level=max(0, min(int(level), self.levels - 1)))

    def restrict(self, features: Tensor) -> Tensor:
        """The channels of this level of [..., D] features (a feature map, Gaussians' features, a query)."""
        return features if self.channels is None else features[..., : self.channels]

    @classmethod
    def from_config(cls, cfg: CgcConfig, detector: Detector | None = None,
                    segmenter: Segmenter | None = None) -> "Selector":
        """The selector of a config: `query` (threshold, box query mode, SAM, Grounding DINO) and
        `cluster` (opacity floor and outlier cleaning of 3D selections). The models are built
        lazily, so clicks never need weights."""
        if detector is None or segmenter is None:
            from .models import BoxSegmenter, TextDetector

            detector = detector or TextDetector(cfg.query)
            segmenter = segmenter or BoxSegmenter(cfg.query.sam, "query.sam")
        levels = cfg.train.contrastive.mask_levels if cfg.train.contrastive.enabled else 1
        level_dims = tuple(cfg.train.contrastive.level_dims[:levels]) if levels > 1 else None
        level = cfg.query.level if cfg.query.level is not None else levels - 1
        return cls(threshold=cfg.query.threshold, mask_query_mode=cfg.query.box_query_mode,
                   click_radius=cfg.query.click_radius,
                   min_opacity=cfg.cluster.min_opacity, outlier_neighbours=cfg.cluster.outlier_neighbours,
                   outlier_std_ratio=cfg.cluster.outlier_std_ratio, detector=detector, segmenter=segmenter,
                   level_dims=level_dims, level=min(level, levels - 1))

    # --- queries ---------------------------------------------------------------------------------

    def click(self, feature_map: Tensor, pixels: Sequence[tuple[int, int]], view: str | None = None,
              require_rendered: bool = True) -> Query:
        """One or several clicks ((row, col) in the feature map): the normalised mean of their unit
        features (each click's window of `click_radius`, all pixels weighing the same). Raises
        ValueError for a click outside the map, or (with `require_rendered`) on a pixel where
        nothing is rendered."""
        height, width = feature_map.shape[:2]
        for row, col in pixels:
            if not (0 <= row < height and 0 <= col < width):
                raise ValueError(f"click ({row}, {col}) is outside the {width}x{height} view")
            if require_rendered and float(feature_map[row, col].norm()) < 1e-6:
                raise ValueError(f"nothing is rendered at pixel ({row}, {col}): click on an object")
        r = self.click_radius
        read = [(row + dr, col + dc) for row, col in pixels for dr in range(-r, r + 1) for dc in range(-r, r + 1)
                if 0 <= row + dr < height and 0 <= col + dc < width]
        feature = F.normalize(feature_at(feature_map, read).mean(0), dim=0)
        return Query(feature, "click", view, pixel=tuple(pixels[0]) if len(pixels) == 1 else None)

    def mask(self, feature_map: Tensor, mask: np.ndarray, view: str | None = None) -> Query:
        """A query from a 2D mask of any size (resized, nearest, to the feature map)."""
        mask = resize_nearest(np.asarray(mask, dtype=bool), tuple(feature_map.shape[:2]))
        return Query(mask_query(feature_map, mask, self.mask_query_mode), "mask", view, mask_area=int(mask.sum()))

    def box(self, feature_map: Tensor, image: np.ndarray, box: Sequence[float], view: str | None = None) -> Query:
        """SAM's mask of `box` (x0, y0, x1, y1 in `image` pixels) -> the query. An empty SAM mask
        gives an undetected query (nothing selected), never an error mid-benchmark."""
        if self.segmenter is None:
            raise ValueError("box queries need a segmenter (SAM): build the Selector with from_config")
        sam_mask = np.asarray(self.segmenter(image, list(box)), dtype=bool)
        area = int(sam_mask.sum())
        if area == 0:
            return Query(None, "box", view, box=[float(v) for v in box], mask_area=0)
        feature = self.mask(feature_map, sam_mask).feature
        return Query(feature, "box", view, box=[float(v) for v in box], mask_area=area)

    def text(self, feature_map: Tensor, image: np.ndarray, text: str, view: str | None = None) -> Query:
        """Grounding DINO's top box for `text` in `image`, then `box`. Not detected: a Query whose
        feature is None (selects nothing)."""
        if self.detector is None:
            raise ValueError("text queries need a detector (Grounding DINO): build the Selector with from_config")
        found = self.detector(image, text)
        if found is None:
            return Query(None, "text", view)
        box, score = found
        query = self.box(feature_map, image, box, view)
        return Query(query.feature, "text", view, box=query.box, score=float(score), mask_area=query.mask_area)

    # --- selections ------------------------------------------------------------------------------

    def similarity(self, feature_map: Tensor, queries: Sequence[Query | Tensor]) -> Tensor:
        """[Q, H, W] cosine similarity of every pixel to each query (-inf for an undetected query)."""
        height, width = feature_map.shape[:2]
        features = [_feature(q) for q in queries]
        out = torch.full((len(features), height, width), float("-inf"), dtype=feature_map.dtype)
        present = [k for k, f in enumerate(features) if f is not None]
        if present:
            stacked = self.restrict(torch.stack([features[k] for k in present]))
            out[present] = similarity_maps(self.restrict(feature_map), stacked)
        return out

    def masks(self, feature_map: Tensor, queries: Sequence[Query | Tensor]) -> Tensor:
        """[Q, H, W] boolean: similarity ≥ threshold, one mask per query."""
        return self.similarity(feature_map, queries) >= self.threshold

    def union_mask(self, feature_map: Tensor, queries: Sequence[Query | Tensor]) -> Tensor:
        """[H, W] boolean: pixels selected by any query."""
        height, width = feature_map.shape[:2]
        if not queries:
            return torch.zeros(height, width, dtype=torch.bool)
        return self.masks(feature_map, queries).any(0)

    def gaussians(self, params: dict[str, Tensor], queries: Sequence[Query | Tensor]) -> np.ndarray:
        """[N] boolean: Gaussians selected by any query (union), each query's selection cleaned
        spatially (`select_gaussians`)."""
        opacities = torch.sigmoid(params["opacities"])
        keep = np.zeros(len(opacities), dtype=bool)
        for query in queries:
            feature = _feature(query)
            if feature is not None:
                keep |= select_gaussians(self.restrict(params["features"]), self.restrict(feature), self.threshold,
                                         params["means"], opacities,
                                         self.min_opacity, self.outlier_neighbours, self.outlier_std_ratio)
        return keep

    @torch.no_grad()
    def gaussians_from_views(self, params: dict[str, Tensor], cameras: Sequence[Camera],
                             queries: Sequence[Query | Tensor], min_share: float = 0.5,
                             min_weight: float = 1e-3) -> np.ndarray:
        """[N] boolean: the Gaussians that the selection's 2D masks cover, lifted from views.

        In each camera the query's 2D mask (`union_mask` of the rendered feature map) is laid on
        the Gaussians by their blending weights (`render.blend_weights`); a Gaussian is selected when
        at least `min_share` of its weight over all views falls inside the masks. A surface Gaussian
        whose own feature training left unlike the object's is still selected, since the pixels it
        paints are the object's (per-Gaussian thresholds leave those behind: RESULTS.md, "Scene
        editing"). Gaussians no view shows (total weight below `min_weight`, e.g. inside an object)
        take their nearest shown neighbour's decision.

        Args:
            params: The trained parameter dict (means, quats, scales, opacities, features).
            cameras: The views to lift from (the training views: a capture's coverage).
            queries: As `gaussians`; their union is lifted.
            min_share: The share of a Gaussian's blending weight that must lie inside the masks.
            min_weight: Total weight below which a Gaussian counts as unseen.
        """
        gaussians = Gaussians.from_params({k: v.detach().float().cpu() for k, v in params.items()})
        features = params["features"].detach().float().cpu()
        inside = torch.zeros(len(features))
        total = torch.zeros(len(features))
        for camera in cameras:
            weights = blend_weights(gaussians, camera)
            mask = self.union_mask(weights.render(features), queries).reshape(-1).float()
            inside += weights.transposed @ mask
            total += weights.transposed @ torch.ones_like(mask)
        shown = (total >= min_weight).numpy()
        keep = (inside >= min_share * total).numpy() & shown
        if shown.any() and not shown.all():
            keep[~shown] = keep[shown][nearest_shown(gaussians.means.numpy(), shown)]
        return keep


def _feature(query: Query | Tensor) -> Tensor | None:
    return query.feature if isinstance(query, Query) else query


def remove_spatial_outliers(points: np.ndarray, neighbours: int = 10, std_ratio: float = 2.0) -> np.ndarray:
    """Statistical outlier removal (as Open3D's): keep points whose mean distance to their
    `neighbours` nearest is at most mean + std_ratio·std over the set. Returns a boolean keep mask."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) <= neighbours:
        return np.ones(len(points), dtype=bool)
    distances, _ = cKDTree(points).query(points, k=neighbours + 1)
    mean_d = distances[:, 1:].mean(1)  # column 0 is the point itself
    return mean_d <= mean_d.mean() + std_ratio * mean_d.std()


def select_gaussians(features: Tensor, query: Tensor, threshold: float = SELECTION_THRESHOLD, means: Tensor | None = None,
                     opacities: Tensor | None = None, min_opacity: float = 0.0, outlier_neighbours: int = 10,
                     outlier_std_ratio: float | None = 2.0) -> np.ndarray:
    """The Gaussians of one object: cosine(feature, query) >= threshold, then spatial cleaning.

    Args:
        features: [N, D] raw Gaussian features.
        query: [D] query feature (e.g. a rendered pixel's feature from a click).
        threshold: Cosine similarity threshold (CGC: 0.7).
        means: [N, 3] positions, needed for the outlier removal.
        opacities: [N] in [0, 1]; with `min_opacity`, fainter Gaussians are left out.
        outlier_neighbours, outlier_std_ratio: `remove_spatial_outliers` settings; a ratio of None
            (or no `means`) skips the cleaning.

    Returns:
        [N] boolean mask of the selected Gaussians.
    """
    sim = F.normalize(features.detach().float(), dim=-1) @ F.normalize(query.detach().float().reshape(-1), dim=0)
    keep = (sim >= threshold).cpu().numpy()
    if opacities is not None and min_opacity > 0:
        keep &= opacities.detach().cpu().numpy() >= min_opacity
    if means is not None and outlier_std_ratio is not None and keep.sum() > outlier_neighbours:
        chosen = np.nonzero(keep)[0]
        inlier = remove_spatial_outliers(means.detach().cpu().numpy()[chosen], outlier_neighbours, outlier_std_ratio)
        keep[chosen[~inlier]] = False
    return keep
