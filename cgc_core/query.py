"""Feature-map primitives of object selection: similarity maps, the feature at a pixel, and the
query of a 2D mask.

Every query ends as one or more query features q (unit vectors); a pixel belongs to the object
when the cosine similarity of its L2-normalised rendered feature to q is ≥ t (CGC: t = 0.7).
Queries are batched: Q query features against one view give Q similarity maps at once.

Box and text queries (SAM, Grounding DINO) and 3D selections are composed from these by the one
selection service, `cgc_core.selection.Selector`; the models load in `cgc_core.models`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor



def normalize_features(feature_map: Tensor) -> Tensor:
    """L2-normalise a [H, W, D] feature map (or [N, D] features) along the last axis."""
    return F.normalize(feature_map, dim=-1)


def similarity_maps(feature_map: Tensor, queries: Tensor) -> Tensor:
    """Cosine similarity of every pixel to every query: [H, W, D] × [Q, D] -> [Q, H, W]."""
    fmap = normalize_features(feature_map)
    q = F.normalize(queries.to(fmap.dtype), dim=-1)
    return torch.einsum("hwd,qd->qhw", fmap, q)


def feature_at(feature_map: Tensor, pixels: Sequence[tuple[int, int]]) -> Tensor:
    """Normalised features [P, D] at (row, col) pixels."""
    rows = torch.as_tensor([p[0] for p in pixels])
    cols = torch.as_tensor([p[1] for p in pixels])
    return normalize_features(feature_map[rows, cols])


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
