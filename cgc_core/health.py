"""Is the feature field separating objects? A measure computed from a rendered feature map and the
view's 2D mask segments, logged during training and checked at its end.

For segments p (label map, 0 unlabelled, only those with more than `min_pixels` pixels) with
unit pixel features f_q and mean direction m̂_p = normalise(mean_{q∈p} f_q):

    within   = mean_p  mean_{q∈p} f_q · m̂_p          (1: every pixel points where its segment does)
    between  = mean_{p≠s} m̂_p · m̂_s                  (≤ 0 ideal; 1: all segments share one feature)
    confusable = share of pairs p≠s with m̂_p · m̂_s ≥ threshold (a click on one selects the other)

A feature field has *collapsed* when different segments' features are alike: `between` at or
above `collapse_between`. The selection threshold of CGC is 0.7, so pairs above it cannot be
told apart by a click; `confusable` says how many.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import SELECTION_THRESHOLD
from .losses import segment_pixels

COLLAPSE_BETWEEN = 0.5
"""Default warning level of the mean between-segment cosine (trained demo model: about 0.0-0.2;
the collapsed realistic scene of issue 16: most object pairs above 0.6)."""


@dataclass(frozen=True)
class FeatureSeparation:
    """How well a rendered feature map separates a view's mask segments (see module docstring)."""

    within: float
    between: float
    confusable: float
    segments: int

    @property
    def separation(self) -> float:
        """within − between: about 1 for a well separated field, about 0 for a collapsed one."""
        return self.within - self.between

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"separation": self.separation}


def feature_separation(features: Tensor, labels: Tensor, min_pixels: int = 100,
                       threshold: float = SELECTION_THRESHOLD) -> FeatureSeparation | None:
    """The separation of a feature map's segments (vectorised; `feature_separation_reference` is the oracle).

    Args:
        features: [H, W, D] rendered features (any norm).
        labels: [H, W] int segment ids; 0 is unlabelled.
        min_pixels: Segments with at most this many pixels are ignored (as in the contrastive loss).
        threshold: Cosine at or above which two segments count as confusable (CGC selects at 0.7).

    Returns:
        A `FeatureSeparation`, or None when fewer than two segments are large enough.
    """
    with torch.no_grad():
        found = segment_pixels(features.double(), labels, min_pixels)
        if found is None:
            return None
        f, seg, k = found
        n_p = torch.bincount(seg, minlength=k).double()
        means = F.normalize(torch.zeros(k, f.shape[1], dtype=f.dtype).index_add_(0, seg, f), dim=-1)
        per_pixel = (f * means[seg]).sum(-1)
        within = (torch.zeros(k, dtype=f.dtype).index_add_(0, seg, per_pixel) / n_p).mean()
        cos = means @ means.T
        off = ~torch.eye(k, dtype=torch.bool)
        pairs = cos[off]
        return FeatureSeparation(float(within), float(pairs.mean()), float((pairs >= threshold).double().mean()), k)


def feature_separation_reference(features: Tensor, labels: Tensor, min_pixels: int = 100,
                                 threshold: float = SELECTION_THRESHOLD) -> FeatureSeparation | None:
    """The same with explicit loops over segments and pairs (slow; the tests' oracle)."""
    directions, withins = [], []
    for sid in sorted(int(v) for v in torch.unique(labels) if v > 0):
        mask = labels == sid
        if int(mask.sum()) <= min_pixels:
            continue
        unit = [F.normalize(features[mask][q].double(), dim=0) for q in range(int(mask.sum()))]
        direction = F.normalize(torch.stack(unit).sum(0), dim=0)
        withins.append(sum(float(u @ direction) for u in unit) / len(unit))
        directions.append(direction)
    if len(directions) < 2:
        return None
    pairs = [float(a @ b) for i, a in enumerate(directions) for j, b in enumerate(directions) if i != j]
    return FeatureSeparation(sum(withins) / len(withins), sum(pairs) / len(pairs),
                             sum(p >= threshold for p in pairs) / len(pairs), len(directions))


def mean_separation(measures: list[FeatureSeparation | None]) -> FeatureSeparation | None:
    """The mean of several views' measures (views without two segments are left out)."""
    found = [m for m in measures if m is not None]
    if not found:
        return None
    n = len(found)
    return FeatureSeparation(sum(m.within for m in found) / n, sum(m.between for m in found) / n,
                             sum(m.confusable for m in found) / n, round(sum(m.segments for m in found) / n))


def collapse_warning(measure: FeatureSeparation | None, where: str, views: int,
                     collapse_between: float = COLLAPSE_BETWEEN, threshold: float = SELECTION_THRESHOLD) -> str | None:
    """The warning to give when the features of different segments are alike, else None.

    Args:
        measure: The (mean) separation measured; None (no view with two segments) gives no warning.
        where: What was measured, for the message (the scene name).
        views: Over how many training views.
        collapse_between: Warn when the mean between-segment cosine is at or above this.
        threshold: The selection threshold, named in the message.
    """
    if measure is None or math.isnan(measure.between) or measure.between < collapse_between:
        return None
    return (f"{where}: the feature field has collapsed: over {views} training views the mean cosine between the "
            f"mean features of different mask segments is {measure.between:.2f} (at or above {collapse_between:g}; "
            f"within a segment {measure.within:.2f}), and {100 * measure.confusable:.0f}% of segment pairs are at or "
            f"above the selection threshold {threshold:g}, so a click on one object also selects others. "
            "Check the masks (cgc masks show), and the contrastive and regulariser settings of the train section")
