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

The edge between two regions weighs in too (`edge_scale`): where the colour changes only gently
across their shared border (the shading of a white capsule from its lit side to its dark side),
their distance shrinks towards `edge_floor` times itself, so a shaded object stays one region;
where the border is a sharp step (an object's outline), it counts in full.
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


def border_contrast(labels: np.ndarray, colour: np.ndarray) -> dict[tuple[int, int], tuple[float, float]]:
    """For each pair of 4-adjacent labels (a, b), a < b: how many neighbouring pixel pairs make up
    their border and the sum of the colour's gradient magnitude (Sobel, per pixel step) averaged
    over each pair. A sharp outline has a large mean, a gentle shading ramp a small one."""
    from scipy.ndimage import sobel

    gradient = np.sqrt(sum(sobel(colour[..., c], axis) ** 2 for c in range(colour.shape[-1]) for axis in (0, 1))) / 8
    first = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()])
    second = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()])
    contrast = np.concatenate([(gradient[:, :-1] + gradient[:, 1:]).ravel(), (gradient[:-1] + gradient[1:]).ravel()]) / 2
    across = first != second
    low, high = np.minimum(first[across], second[across]), np.maximum(first[across], second[across])
    span = int(labels.max()) + 1
    pairs, index = np.unique(low * span + high, return_inverse=True)
    pixels, sums = np.bincount(index), np.bincount(index, contrast[across])
    return {(int(p // span), int(p % span)): (float(n), float(t)) for p, n, t in zip(pairs, pixels, sums)}


def texture_regions(image: np.ndarray, thresholds: list[float], n_superpixels: int = 1200, compactness: float = 10.0,
                    luminance_weight: float = 0.7, window: float = 3.0, textured: float = 0.15,
                    spread_weight: float = 0.25, edge_scale: float = 0.08, edge_floor: float = 0.3) -> np.ndarray:
    """Nested region label maps of one image. The defaults are `masks.texture`'s (`TextureConfig`).

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
        edge_scale: Mean colour contrast along a border (`border_contrast`) at and above which the
            border counts in full; weaker borders scale the distance down, to `edge_floor` times
            it where there is no contrast at all. 0 leaves borders out.
        edge_floor: What is left of the distance across a border without contrast.

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

    border = border_contrast(superpixels, colour) if edge_scale > 0 else {}

    def weighted(u, v, data: dict) -> dict:  # data["border"]: (border pixels, their summed contrast)
        pixels, contrast = data["border"]
        weight = distance(u, v)
        if edge_scale > 0:
            weight *= edge_floor + (1 - edge_floor) * min(1.0, contrast / pixels / edge_scale)
        data["weight"] = weight
        return data

    for u, v, data in graph.edges(data=True):
        data["border"] = border.get((min(u, v), max(u, v)), (1.0, 0.0))
        weighted(u, v, data)

    def merge(graph, src, dst) -> None:  # the merged region's sums, kept in dst
        into, other = graph.nodes[dst], graph.nodes[src]
        for key in ("count", "spread", "colour", "context"):
            into[key] = into[key] + other[key]

    def new_weight(graph, src, dst, neighbour) -> dict:
        # The merged region's border with the neighbour is the union of both parts' borders with it.
        borders = [graph[node][neighbour]["border"] for node in (src, dst) if graph.has_edge(node, neighbour)]
        return weighted(dst, neighbour, {"border": tuple(map(sum, zip(*borders)))})

    levels = []
    for threshold in thresholds:  # one merge history, cut at each threshold: nested levels
        levels.append(merge_hierarchical(superpixels, graph, threshold, rag_copy=False, in_place_merge=True,
                                         merge_func=merge, weight_func=new_weight).astype(np.int32))
    return np.stack(levels)
