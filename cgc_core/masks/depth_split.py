"""Splitting mask segments where the scene's depth jumps.

A colour segmentation (the classical generator) gives two same-coloured neighbours one segment
when one stands in front of the other. The Gaussians being trained know better: along the border
between the two objects their rendered depth jumps. Cutting each segment along such jumps and
keeping its connected pieces separates them, while a segment on one continuous surface (a table
top seen at a grazing angle, a curved mug) stays whole. A mug's handle stays with its body: the
pieces are cut only where a jump closes all the way around.

Two refinements keep the cut from shattering large surfaces whose rendered depth is noisy (a
textured ground far from the cameras, where a partly trained model's depth wobbles):
- `sharpness`: a change counts as a jump only where it is much larger than the changes just
  before and after it along the same line. On any plane the inverse depth is an affine function
  of the pixel position, so its differences are the same all along a line and a plane seen at a
  grazing angle never passes, however steep its depth; a step between two surfaces does.
- `fill_distance`: the edge pixels and the crumbs (pieces under `min_pixels`) go back to the
  nearest kept piece of their own segment, so the cut takes no pixels away from the training
  signal (without it, a third to two thirds of a textured scene's pixels ended up unlabelled).

Where one object stands on another (a mug on a table) the depth does not jump along the contact,
but the surface folds inwards there: the side of the mug is perpendicular to the table. With the
camera's intrinsics the depth gives each pixel a 3D point and a normal, and `concave_creases`
marks where the normals of two nearby pixels differ by more than an angle and turn towards each
other (a valley). An object's own convex edges (the top edge of a box) turn away and stay uncut;
a curved surface turns too gradually. This is the convexity criterion of Stein et al., "Object
partitioning using local convexity" (CVPR 2014), on the rendered depth instead of a point cloud.

The colour segments of one object of several colours (a desk lamp's base, stem and shade) stay
parts however well they are cut. `object_groups` joins them the other way round: the scene's
dominant plane (the table, fitted by RANSAC to the rendered depth) carries the objects, so the
segments whose pixels stand above it, where those pixels connect without a depth jump, become one
object-like group, as SAM's object level holds an object's parts in one mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, uniform_filter
from skimage.measure import label as connected_regions

if TYPE_CHECKING:
    from ..config import DepthSplitConfig


def depth_edges(depth: np.ndarray, max_jump: float, spacing: int = 2, sharpness: float = 0.0) -> np.ndarray:
    """[H, W] bool: pixels where the depth jumps between pixels `spacing` apart, horizontally or
    vertically; the pixels between the two are marked (both of them for spacing 1). A spacing of
    2 sees a jump that the blending of the Gaussians spreads over two pixels, which a comparison
    of direct neighbours would miss half of, and a sharp jump still makes a line only two pixels
    wide.

    Args:
        depth: [H, W] depth (any positive scale); 0 where nothing is rendered (never an edge).
        max_jump: Relative change |Δz| / (nearer z) above which the pair may be a jump.
        spacing: Distance in pixels between the two pixels compared.
        sharpness: 0: every pair over `max_jump` is a jump. s > 0: also, the pair's change of inverse
            depth must exceed s times the larger of the changes over the `spacing` pixels just
            before and just after it on the same line (a change next to a pixel with no depth, or
            beyond the image, counts as 0), so smooth surfaces of any slope are never cut.
    """
    depth = np.asarray(depth, dtype=np.float64)
    edges = np.zeros(depth.shape, dtype=bool)
    # Inverse depth only when the sharpness test reads it (0 where nothing is rendered).
    inverse = np.where(depth > 0, 1.0 / np.where(depth > 0, depth, 1.0), 0.0) if sharpness > 0 else None
    for axis in (0, 1):
        n = depth.shape[axis]
        if n <= spacing:
            continue
        first = np.take(depth, np.arange(n - spacing), axis=axis)
        second = np.take(depth, np.arange(spacing, n), axis=axis)
        nearer = np.minimum(first, second)
        # A pixel with no depth (nothing rendered there) never makes an edge.
        jump = (np.abs(first - second) > max_jump * nearer) & (nearer > 0)
        if sharpness > 0:
            change = np.where(nearer > 0, np.take(inverse, np.arange(spacing, n), axis=axis)
                              - np.take(inverse, np.arange(n - spacing), axis=axis), 0.0)
            padding = [(0, 0), (0, 0)]
            padding[axis] = (spacing, spacing)
            padded = np.pad(change, padding)  # the changes beyond the image are 0
            before = np.take(padded, np.arange(n - spacing), axis=axis)
            after = np.take(padded, np.arange(2 * spacing, n + spacing), axis=axis)
            jump &= np.abs(change) > sharpness * np.maximum(np.abs(before), np.abs(after))
        for offset in _marked_offsets(spacing):
            index = [slice(None)] * 2
            index[axis] = slice(offset, offset + n - spacing)
            edges[tuple(index)] |= jump
    return edges


def _marked_offsets(spacing: int) -> range:
    return range(1, spacing) if spacing > 1 else range(0, 2)


def split_at_depth_edges(labels: np.ndarray, depth: np.ndarray, max_jump: float, min_pixels: int = 0,
                         spacing: int = 2, sharpness: float = 0.0, fill_distance: float = 0.0,
                         extra_edges: np.ndarray | None = None) -> np.ndarray:
    """A label map whose segments are cut where the depth jumps.

    Args:
        labels: [H, W] int label map (0: no mask).
        depth: [H, W] depth of the same view (any positive scale; 0 where unknown).
        max_jump: Relative depth change (|Δz| / nearer z) above which two pixels `spacing` apart lie
            on different surfaces, e.g. 0.03 for a 3 % jump.
        min_pixels: Pieces smaller than this are crumbs: they go back to 0 (unlabelled), as do the
            edge pixels, unless `fill_distance` gives them to a piece.
        spacing, sharpness: See `depth_edges`.
        fill_distance: 0: edge pixels and crumbs stay 0. d > 0: each of them takes the label of the
            nearest (Euclidean) kept piece of its own segment when one is at most d pixels away
            (a segment with no kept piece stays 0).
        extra_edges: [H, W] bool: more pixels to cut along, as the depth edges are (`concave_creases`).

    Returns:
        [H, W] int64 label map: one label per connected (4-neighbour) piece of a segment off the
        edges, numbered from 1 (in raster order of first pixels, with the numbers of crumbs left
        unused); 0 for what is left unlabelled.
    """
    labels = np.asarray(labels)
    if labels.shape != np.shape(depth):
        raise ValueError(f"split_at_depth_edges: labels {labels.shape} and depth {np.shape(depth)} differ in shape")
    edges = depth_edges(depth, max_jump, spacing, sharpness)
    if extra_edges is not None:
        edges |= extra_edges
    cut = np.where(edges, 0, labels)
    pieces = connected_regions(cut, background=0, connectivity=1).astype(np.int64)
    if min_pixels > 1:
        counts = np.bincount(pieces.ravel())
        pieces[counts[pieces] < min_pixels] = 0
    if fill_distance > 0:
        pieces = _fill_from_own_segment(labels, pieces, fill_distance)
    return pieces


def _fill_from_own_segment(labels: np.ndarray, pieces: np.ndarray, fill_distance: float) -> np.ndarray:
    filled = pieces.copy()
    missing = (pieces == 0) & (labels != 0)
    for segment in np.unique(labels[missing]):
        region = labels == segment
        kept = region & (pieces > 0)
        if not kept.any():
            continue
        rows, cols = np.nonzero(region)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        # Distance to the nearest kept pixel of this segment, within the segment's bounding box
        # (where all of its kept pixels are).
        distance, (near_rows, near_cols) = distance_transform_edt(~kept[box], return_indices=True)
        todo = missing[box] & region[box] & (distance <= fill_distance)
        filled[box][todo] = pieces[box][near_rows[todo], near_cols[todo]]
    return filled


def cut_at_depth_edges(labels: np.ndarray, depth: np.ndarray, cfg: DepthSplitConfig,
                       intrinsics: np.ndarray | None = None) -> np.ndarray:
    """Training's depth cut of one label map [H, W], or of each of a view's levels [L, H, W], with
    `train.depth_split`'s settings (`split_at_depth_edges`; crumbs are dropped only where `fill`
    gives their pixels back), and with `cfg.crease_angle > 0` also along the concave creases
    (`concave_creases`, found once for all levels), which need the view's 3×3 `intrinsics` at the
    label maps' resolution."""
    creases = None
    if cfg.crease_angle > 0:
        if intrinsics is None:
            raise ValueError("cut_at_depth_edges: train.depth_split.crease_angle > 0 needs the camera's intrinsics")
        creases = concave_creases(depth, intrinsics, cfg.crease_angle)
    labels = np.asarray(labels)
    cut = [split_at_depth_edges(level, depth, cfg.jump, min_pixels=cfg.min_pixels if cfg.fill else 0,
                                sharpness=cfg.sharpness, fill_distance=cfg.fill, extra_edges=creases)
           for level in labels.reshape(-1, *labels.shape[-2:])]
    return np.stack(cut) if labels.ndim == 3 else cut[0]


def dominant_plane(points: np.ndarray, tolerance: float, seed: int = 0, trials: int = 200, max_points: int = 4000,
                   up: np.ndarray | None = None, max_tilt: float = 90.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The plane that holds the most of `points`: a point on it and its unit normal, or None.

    RANSAC: of `trials` planes through three points drawn at random, the one with the most points
    within `tolerance` (perpendicular distance), refitted to those points by least squares (SVD).
    By hand, because scikit-learn's `RANSACRegressor` and scikit-image's `ransac` have no plane
    model that measures the perpendicular distance: a regression of one coordinate on the others
    measures along an axis, which favours planes facing it (a wall facing the camera) over a table
    seen at a grazing angle.

    Args:
        points: [N, 3].
        tolerance: A point within this distance of a candidate plane is one of its inliers.
        seed: The random draws' seed (the fit is repeatable).
        trials: Candidate planes.
        max_points: The fit reads at most this many points, drawn at random.
        up: [3] unit vector, or None. With it, only candidate planes whose normal lies within
            `max_tilt` degrees of it (either sign) count (a table under a capture, not a wall),
            and the normal returned points to its side.
        max_tilt: Degrees; see `up`.

    Returns:
        (centre, normal): the inliers' mean and the plane's unit normal; None when fewer than three
        points are given or no candidate qualifies.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return None
    rng = np.random.default_rng(seed)
    sample = points[rng.choice(len(points), min(len(points), max_points), replace=False)]
    a, b, c = (sample[rng.integers(0, len(sample), trials)] for _ in range(3))
    normals = np.cross(b - a, c - a)
    scale = float(np.abs(sample - sample.mean(0)).max()) or 1.0
    usable = np.linalg.norm(normals, axis=1) > 1e-12 * scale ** 2
    normals, a = normals[usable] / np.linalg.norm(normals[usable], axis=1, keepdims=True), a[usable]
    if up is not None:
        upright = np.abs(normals @ up) >= np.cos(np.radians(max_tilt)) - 1e-12
        normals, a = normals[upright], a[upright]
    if len(normals) == 0:
        return None
    offsets = -(normals * a).sum(1)
    inliers = np.abs(sample @ normals.T + offsets) < tolerance  # [points, planes]
    best = inliers[:, inliers.sum(0).argmax()]
    if best.sum() < 3:
        return None
    centre = sample[best].mean(0)
    normal = np.linalg.svd(sample[best] - centre, full_matrices=False)[2][-1]
    if up is not None and normal @ up < 0:
        normal = -normal
    return centre, normal


def plane_heights(depth: np.ndarray, intrinsics: np.ndarray, tolerance: float, seed: int = 0,
                  trials: int = 200, max_points: int = 4000) -> np.ndarray:
    """[H, W] height of each pixel's point over the depth map's dominant plane (`dominant_plane`),
    positive on the camera's side, in units of the median depth (0 where there is no depth).

    Args:
        depth: [H, W] camera z (0 where nothing is rendered).
        intrinsics: [3, 3] pinhole matrix at the depth's resolution (`Camera.K`).
        tolerance: A point within this distance of a candidate plane (in units of the median depth)
            is one of its inliers.
        seed: The random draws' seed (the fit is repeatable).
        trials: Candidate planes.
        max_points: The fit reads at most this many pixels, drawn at random.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = depth > 0
    heights = np.zeros(depth.shape)
    if valid.sum() < 3:
        return heights
    points = camera_points(depth, intrinsics)
    scale = float(np.median(depth[valid]))
    plane = dominant_plane(points[valid], tolerance * scale, seed, trials, max_points)
    if plane is None:
        return heights
    centre, normal = plane
    if normal @ centre > 0:  # the camera (the origin) on the positive side
        normal = -normal
    heights[valid] = (points[valid] - centre) @ normal / scale
    return heights


def object_groups(labels: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, cfg: DepthSplitConfig,
                  seed: int = 0) -> np.ndarray:
    """A coarser label map: the segments that stand on the dominant plane joined into one group
    per object.

    The pixels higher than `cfg.group_height` over the plane (`plane_heights` with tolerance
    `cfg.plane_tolerance`), less the depth edges (`depth_edges` with the cut's `jump` and
    `sharpness`), fall into connected pieces, one per object or per group of touching objects.
    A segment with at least half of its pixels in one piece takes that piece's label; the others
    (the table, the room) keep their own. So the groups nest the segments, and an object of several
    colours becomes one segment.

    Args:
        labels: [H, W] int label map (0: no mask, kept 0).
        depth, intrinsics: The view's rendered depth and its pinhole matrix, at the labels' size.
        cfg: `train.depth_split` (`group_height`, `plane_tolerance`, `jump`, `sharpness`).
        seed: The plane fit's random state.

    Returns:
        [H, W] int64 label map: a kept segment keeps its label, a grouped one takes
        labels.max() + its piece's number.
    """
    return group_segments(labels, object_regions(depth, intrinsics, cfg, seed))


def object_regions(depth: np.ndarray, intrinsics: np.ndarray, cfg: DepthSplitConfig, seed: int = 0) -> np.ndarray:
    """[H, W] int: the connected pieces of a view's pixels that stand on its dominant plane (higher
    than `cfg.group_height` over it, `plane_heights`) less its depth edges: one per object or group
    of touching objects (`object_groups`' pieces; the cluster tree's view links); 0 elsewhere."""
    above = plane_heights(depth, intrinsics, cfg.plane_tolerance, seed) > cfg.group_height
    return connected_regions(above & ~depth_edges(depth, cfg.jump, sharpness=cfg.sharpness), connectivity=1)


def group_segments(labels: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """`object_groups`' joining: each segment of `labels` ([H, W] int, 0 none) with at least half
    of its pixels in one piece of `pieces` ([H, W] int, 0 for no piece; the one with most of its
    pixels, the lower number on a tie) takes the label labels.max() + that piece's number; the
    other segments keep theirs."""
    labels = np.asarray(labels).astype(np.int64)
    n_labels, n_pieces = int(labels.max()) + 1, int(pieces.max()) + 1
    if n_pieces == 1:
        return labels
    # overlap[segment, piece]: pixels of each segment in each piece (piece 0: none)
    overlap = np.bincount(labels.ravel() * n_pieces + np.asarray(pieces).ravel(),
                          minlength=n_labels * n_pieces).reshape(n_labels, n_pieces)
    piece = overlap[:, 1:].argmax(1) + 1
    grouped = 2 * overlap[np.arange(n_labels), piece] >= np.maximum(overlap.sum(1), 1)
    grouped[0] = False
    return np.where(grouped, n_labels - 1 + piece, np.arange(n_labels))[labels]


def group_segments_reference(labels: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """`group_segments` segment by segment and pixel by pixel (slow; the tests' oracle)."""
    out = np.array(labels, dtype=np.int64)
    top = int(labels.max())
    for segment in np.unique(labels):
        if segment == 0:
            continue
        counts = {}
        for value in pieces[labels == segment]:
            counts[int(value)] = counts.get(int(value), 0) + 1
        above = {k: v for k, v in counts.items() if k != 0}
        if not above:
            continue
        best = min(above, key=lambda k: (-above[k], k))  # most pixels; ties to the lower number
        if 2 * above[best] >= sum(counts.values()):
            out[labels == segment] = top + best
    return out


def camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """[H, W, 3] camera-space points (OpenCV axes) of a depth map [H, W] through the pinhole
    matrix `intrinsics` (pixel centres at (i + 0.5, j + 0.5), `Camera.K`)."""
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    rows, cols = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    return np.stack([(cols + 0.5 - cx) / fx * depth, (rows + 0.5 - cy) / fy * depth, depth], axis=-1)


def surface_points_and_normals(depth: np.ndarray, intrinsics: np.ndarray, smooth: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space points and unit normals of a depth map.

    Args:
        depth: [H, W] camera z (0 where nothing is rendered).
        intrinsics: [3, 3] pinhole matrix with pixel centres at (i + 0.5, j + 0.5) (`Camera.K`).
        smooth: Side of the box over which the depth is averaged first (rendered depth is noisy
            at the pixel scale); pixels with no depth are left out of the averages. 1: none.

    Returns:
        points [H, W, 3] (OpenCV axes) and normals [H, W, 3], each normal facing the camera
        (central differences of the points along rows and columns; 0 where the pixel or one of
        its four neighbours has no depth, as the differences there would span the gap).
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = depth > 0
    if smooth > 1:
        weight = uniform_filter(valid.astype(np.float64), smooth, mode="nearest")
        depth = np.where(valid, uniform_filter(np.where(valid, depth, 0.0), smooth, mode="nearest")
                         / np.maximum(weight, 1e-12), 0.0)
    points = camera_points(depth, intrinsics)
    normals = np.cross(np.gradient(points, axis=1), np.gradient(points, axis=0))
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    normals *= np.where((normals * points).sum(-1, keepdims=True) > 0, -1.0, 1.0)  # towards the camera
    normals[~binary_erosion(valid, border_value=1)] = 0.0
    return points, normals


def concave_creases(depth: np.ndarray, intrinsics: np.ndarray, min_angle: float, spacing: int = 4,
                    smooth: int = 3) -> np.ndarray:
    """[H, W] bool: pixels between two pixels `spacing` apart (horizontally or vertically) whose
    surface normals differ by more than `min_angle` degrees and fold inwards, i.e.
    (n_a - n_b) · (p_a - p_b) < 0 for their points p and normals n (`surface_points_and_normals`);
    a convex fold (a box's own edge) has the opposite sign. Pixels without a normal (no depth there
    or beside them) are never compared.

    Args:
        depth, intrinsics, smooth: See `surface_points_and_normals`.
        min_angle: Degrees between the two normals above which the fold is a crease.
        spacing: Pixels between the two compared; the `spacing - 1` pixels between them are marked.
    """
    points, normals = surface_points_and_normals(depth, intrinsics, smooth)
    valid = normals.any(-1)
    creases = np.zeros(valid.shape, dtype=bool)
    cos_limit = np.cos(np.radians(min_angle))
    for axis in (0, 1):
        n = valid.shape[axis]
        if n <= spacing:
            continue
        first, second = np.arange(n - spacing), np.arange(spacing, n)
        p_a, p_b = np.take(points, first, axis=axis), np.take(points, second, axis=axis)
        n_a, n_b = np.take(normals, first, axis=axis), np.take(normals, second, axis=axis)
        fold = ((n_a * n_b).sum(-1) < cos_limit) & (((n_a - n_b) * (p_a - p_b)).sum(-1) < 0)
        fold &= np.take(valid, first, axis=axis) & np.take(valid, second, axis=axis)
        for offset in _marked_offsets(spacing):
            index = [slice(None)] * 2
            index[axis] = slice(offset, offset + n - spacing)
            creases[tuple(index)] |= fold
    return creases


def concave_creases_reference(depth: np.ndarray, intrinsics: np.ndarray, min_angle: float, spacing: int = 4) -> np.ndarray:
    """`concave_creases` without smoothing, pixel by pixel (slow; the tests' oracle)."""
    depth = np.asarray(depth, dtype=np.float64)
    height, width = depth.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]

    def point(y, x):
        return np.array([(x + 0.5 - cx) / fx * depth[y, x], (y + 0.5 - cy) / fy * depth[y, x], depth[y, x]])

    def difference(y, x, dy, dx):  # central inside the image, one-sided at its border (as np.gradient)
        ahead = (y + dy, x + dx) if (y + dy < height and x + dx < width) else (y, x)
        behind = (y - dy, x - dx) if (y - dy >= 0 and x - dx >= 0) else (y, x)
        steps = (ahead != (y, x)) + (behind != (y, x))
        return (point(*ahead) - point(*behind)) / steps

    def normal(y, x):
        around = [(y + dy, x + dx) for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))]
        if any(0 <= a < height and 0 <= b < width and depth[a, b] <= 0 for a, b in around):
            return None
        n = np.cross(difference(y, x, 0, 1), difference(y, x, 1, 0))
        n = n / max(np.linalg.norm(n), 1e-12)
        return -n if n @ point(y, x) > 0 else n

    creases = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, spacing), (spacing, 0)):
                y2, x2 = y + dy, x + dx
                if y2 >= height or x2 >= width:
                    continue
                n_a, n_b = normal(y, x), normal(y2, x2)
                if n_a is None or n_b is None:
                    continue
                if n_a @ n_b < np.cos(np.radians(min_angle)) and (n_a - n_b) @ (point(y, x) - point(y2, x2)) < 0:
                    for k in _marked_offsets(spacing):
                        creases[y + (k if dy else 0), x + (k if dx else 0)] = True
    return creases


def split_at_depth_edges_reference(labels: np.ndarray, depth: np.ndarray, max_jump: float, min_pixels: int = 0,
                                   spacing: int = 2, sharpness: float = 0.0, fill_distance: float = 0.0,
                                   return_ties: bool = False):
    """The same with explicit loops, a flood fill and a search over all kept pixels (slow; the
    tests' oracle). Pieces are numbered in the order their first pixel appears in raster order, as
    scikit-image numbers them. A filled pixel whose nearest kept pixels (at one distance) belong
    to different pieces takes the smallest of their labels here, and any of them in the fast
    version; with `return_ties`, also the [H, W] bool map of such pixels."""
    labels = np.asarray(labels)
    depth = np.asarray(depth, dtype=np.float64)
    height, width = labels.shape

    def inside(y, x):
        return 0 <= y < height and 0 <= x < width

    def inverse_change(y, x, y2, x2):  # 0 beyond the image or next to a pixel with no depth
        if not (inside(y, x) and inside(y2, x2)) or depth[y, x] <= 0 or depth[y2, x2] <= 0:
            return 0.0
        return 1.0 / depth[y2, x2] - 1.0 / depth[y, x]

    edge = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, spacing), (spacing, 0)):
                y2, x2 = y + dy, x + dx
                if not inside(y2, x2):
                    continue
                nearer = min(depth[y, x], depth[y2, x2])
                if not (nearer > 0 and abs(depth[y, x] - depth[y2, x2]) > max_jump * nearer):
                    continue
                if sharpness > 0:
                    around = max(abs(inverse_change(y - dy, x - dx, y, x)), abs(inverse_change(y2, x2, y2 + dy, x2 + dx)))
                    if not abs(inverse_change(y, x, y2, x2)) > sharpness * around:
                        continue
                for k in _marked_offsets(spacing):
                    edge[y + (k if dy else 0), x + (k if dx else 0)] = True
    out = np.zeros((height, width), dtype=np.int64)
    seen = np.zeros((height, width), dtype=bool)
    next_label = 0
    for y in range(height):
        for x in range(width):
            if seen[y, x] or edge[y, x] or labels[y, x] == 0:
                continue
            next_label += 1
            stack, members = [(y, x)], []
            out[y, x], seen[y, x] = next_label, True
            while stack:
                cy, cx = stack.pop()
                members.append((cy, cx))
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if (inside(ny, nx) and not seen[ny, nx] and not edge[ny, nx]
                            and labels[ny, nx] == labels[y, x]):
                        out[ny, nx], seen[ny, nx] = next_label, True
                        stack.append((ny, nx))
            if len(members) < min_pixels:
                for cy, cx in members:
                    out[cy, cx] = 0
    ties = np.zeros((height, width), dtype=bool)
    if fill_distance > 0:
        kept = [(y, x) for y in range(height) for x in range(width) if out[y, x] > 0]
        filled = out.copy()
        for y in range(height):
            for x in range(width):
                if out[y, x] != 0 or labels[y, x] == 0:
                    continue
                own = [(float(np.hypot(y - ky, x - kx)), out[ky, kx]) for ky, kx in kept if labels[ky, kx] == labels[y, x]]
                if not own:
                    continue
                nearest = min(d for d, _ in own)
                if nearest <= fill_distance:
                    candidates = {piece for d, piece in own if d <= nearest + 1e-9}
                    filled[y, x] = min(candidates)
                    ties[y, x] = len(candidates) > 1
        out = filled
    return (out, ties) if return_ties else out
