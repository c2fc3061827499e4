"""Nested image regions from colour and texture (issue 39): the weights-free `texture` generator's
segmentation.

SLIC superpixels (scikit-image) follow every colour and brightness edge; scikit-image's
hierarchical merging on their adjacency graph then joins neighbours, most similar first, and the
merge thresholds cut the one merge history into nested levels (fine regions, merged regions,
object-like groups). What makes it texture-aware is the distance between two regions:

- each pixel's *context* is its colour's mean and spread in a Gaussian window of `window`
  pixels: inside a checked or striped cloth both are the same everywhere (the window spans
  light and dark cells), on a plain object the mean is its colour and the spread is small;
- two regions whose contexts are both textured compare by context (the cloth's blue and white
  stripes are one region), two plain ones by their own colours (a red cube beside a blue ball),
  and a difference in spread always counts (a plain white plate on white stripes stays apart).

Every region records its pixel count, colour sum, context sums and spread sum, so merged
regions are compared by their means: as the cloth's stripes merge, the cloth's context becomes
clear and a plain object next to it differs from the whole cloth rather than from one stripe.
"""

from __future__ import annotations

import numpy as np


def pixel_features(image: np.ndarray, luminance_weight: float, window: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel colour, context mean and context spread of an RGB uint8 image [H, W, 3].

    Returns:
        colour [H, W, 3]: chromaticity (r, g) scaled to RGB's spread and luminance times
            `luminance_weight` (`generators.shading_invariant`); context mean [H, W, 3]: colour
            averaged in a Gaussian window of standard deviation `window` pixels; spread [H, W]:
            the colour's standard deviation in that window (summed over channels).
    """
    from scipy.ndimage import gaussian_filter

    from .generators import shading_invariant

    colour = shading_invariant(image, luminance_weight)
    mean = np.stack([gaussian_filter(colour[..., c], window) for c in range(3)], -1)
    square = np.stack([gaussian_filter(colour[..., c] ** 2, window) for c in range(3)], -1)
    spread = np.sqrt(np.maximum(square - mean**2, 0.0)).sum(-1)
    return colour, mean, spread


def region_distance(a: dict, b: dict, textured: float, spread_weight: float) -> float:
    """Distance of two regions' summaries (`count`, `colour`, `context`, `spread` sums).

    Plain regions compare by mean colour, textured ones by mean context; `t`, the smaller of their
    mean spreads over `textured` (clipped to 1), blends the two. `spread_weight` times the
    difference of mean spreads is added, so plain never looks like textured."""
    na, nb = a["count"], b["count"]
    spread_a, spread_b = a["spread"] / na, b["spread"] / nb
    t = min(1.0, min(spread_a, spread_b) / textured)
    colour = float(np.linalg.norm(a["colour"] / na - b["colour"] / nb))
    context = float(np.linalg.norm(a["context"] / na - b["context"] / nb))
    return (1 - t) * colour + t * context + spread_weight * abs(spread_a - spread_b)


def texture_regions(image: np.ndarray, thresholds: list[float], n_superpixels: int = 600, compactness: float = 10.0,
                    luminance_weight: float = 0.7, window: float = 3.0, textured: float = 0.15,
                    spread_weight: float = 1.0) -> np.ndarray:
    """Nested region label maps of one image.

    Args:
        image: RGB uint8 [H, W, 3].
        thresholds: Merge distance per level, increasing: level l holds the regions left when no
            two neighbours are closer than thresholds[l] (`region_distance`). Each level's regions
            are unions of the previous level's.
        n_superpixels: About how many SLIC superpixels start the merging (level -1).
        compactness: SLIC's balance of colour against position (higher: squarer superpixels).
        luminance_weight: Luminance beside chromaticity in the colour (`pixel_features`).
        window: The texture window's standard deviation, pixels.
        textured: Mean spread at which a region counts as fully textured.
        spread_weight: Weight of the difference in spread.

    Returns:
        [len(thresholds), H, W] int32 labels, 0-based per level.
    """
    from skimage.graph import RAG, merge_hierarchical
    from skimage.segmentation import slic

    if list(thresholds) != sorted(thresholds):
        raise ValueError(f"texture_regions: thresholds must increase (got {thresholds})")
    superpixels = slic(image, n_segments=n_superpixels, compactness=compactness, start_label=0,
                       convert2lab=True).astype(np.int64)
    colour, context, spread = pixel_features(image, luminance_weight, window)
    count = np.bincount(superpixels.ravel())
    sums = {"colour": [np.bincount(superpixels.ravel(), colour[..., c].ravel()) for c in range(3)],
            "context": [np.bincount(superpixels.ravel(), context[..., c].ravel()) for c in range(3)]}
    spread_sum = np.bincount(superpixels.ravel(), spread.ravel())
    graph = RAG(superpixels, connectivity=1)
    for node in graph.nodes:
        graph.nodes[node].update(labels=[node], count=float(count[node]), spread=float(spread_sum[node]),
                                 colour=np.array([s[node] for s in sums["colour"]]),
                                 context=np.array([s[node] for s in sums["context"]]))

    def distance(u, v) -> float:
        return region_distance(graph.nodes[u], graph.nodes[v], textured, spread_weight)

    for u, v, data in graph.edges(data=True):
        data["weight"] = distance(u, v)

    def merge(graph, src, dst) -> None:  # the merged region's sums, kept in dst
        into, other = graph.nodes[dst], graph.nodes[src]
        for key in ("count", "spread", "colour", "context"):
            into[key] = into[key] + other[key]

    def new_weight(graph, src, dst, neighbour) -> dict:
        return {"weight": distance(dst, neighbour)}

    levels = []
    for threshold in thresholds:  # one merge history, cut at each threshold: nested levels
        levels.append(merge_hierarchical(superpixels, graph, threshold, rag_copy=False, in_place_merge=True,
                                         merge_func=merge, weight_func=new_weight).astype(np.int32))
    return np.stack(levels)
