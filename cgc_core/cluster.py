"""3D scene segmentation: cluster the trained Gaussians by feature, export the clusters and the
prompts' objects as .ply, render a cluster palette and multi-view consistent masks (one object's
Gaussians are selected by `selection.Selector`; clusters are scored by `metrics.scores_3d`).

Clustering is HDBSCAN (scikit-learn) on L2-normalised features (optionally joined with positions).
HDBSCAN is fitted on a seeded sample of at most `max_fit_points` opaque Gaussians; every Gaussian
then takes the cluster whose centre is most similar by cosine. With `max_fit_points=None` every
opaque Gaussian is fitted: the slow, direct path the tests compare the sampled one against.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch import Tensor

from .config import ClusterConfig, DepthSplitConfig
from .gaussians import neighbour_spacing, save_ply, subset_params
from .hierarchy import ClusterTree, build_cluster_tree, scene_up, view_group_links
from .masks.depth_split import dominant_plane
from .masks.store import coco_segment
from .metrics import scores_3d
from .scene.model import Camera
from .stage import SUMMARY, StageOutputs, safe_name

CLUSTERS_PLY = "scene_clusters.ply"
"""The whole trained model with a `cluster` attribute per Gaussian."""


@dataclass(frozen=True)
class ClusterOutputs(StageOutputs):
    """The cluster stage's files: `clusters_ply` (every Gaussian with its `cluster` attribute;
    `cluster_XXX.ply` beside it), `tree` (the clusters' hierarchy, `hierarchy.ClusterTree`), `palette` (a view painted by cluster), `objects/<prompt>.ply` (the
    Gaussians a prompt's query selects), `instance_masks/` (consistent masks: labels/*.png and
    COCO-RLE instances.json) and `summary` (counts, sizes, 3D scores where the scene has truth)."""

    clusters_ply = property(lambda self: self.folder / CLUSTERS_PLY)
    tree = property(lambda self: self.folder / "tree.json")
    palette = property(lambda self: self.folder / "palette.png")
    objects = property(lambda self: self.folder / "objects")
    instance_masks = property(lambda self: self.folder / "instance_masks")

NOISE = -1


@dataclass
class Clustering:
    """Cluster labels of N Gaussians.

    Attributes:
        labels: [N] int64, 0..K-1, or -1 (noise kept unlabelled with `noise="keep"`).
        centers: [K, D] unit mean feature of each cluster.
        sizes: [K] Gaussians per cluster (all Gaussians, not only the fitted ones).
        n_fitted: How many Gaussians HDBSCAN was fitted on.
        background: The cluster the spread-out clusters, those beyond the cameras and those flat
            on the support were merged into (`merge_background`), or -1 when none was.
        support: The plane the objects stand on (point, unit normal; `support_plane`) and the height
            over it within which every Gaussian went to the background, where `merge_background` found one.
    """

    labels: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    n_fitted: int
    background: int = NOISE
    support: tuple[np.ndarray, np.ndarray, float] | None = None

    @property
    def n_clusters(self) -> int:
        return len(self.centers)


def cluster_gaussians(features: Tensor, means: Tensor | None = None, opacities: Tensor | None = None,
                      cfg: ClusterConfig | None = None, look_at: tuple[np.ndarray, float] | None = None,
                      up: np.ndarray | None = None) -> Clustering:
    """Cluster Gaussians into objects by their features.

    Args:
        features: [N, D] raw Gaussian features (normalised here).
        means: [N, 3] positions, for splitting clusters into pieces that lie apart and for the
            background merge (`merge_background`).
        opacities: [N] opacities in [0, 1] (not logits); Gaussians below `cfg.min_opacity` are
            not fitted. None: all are fitted.
        cfg: Cluster config (HDBSCAN sizes, sample size, noise rule, background merge, seed).
        look_at: The cameras' look-at point and their median distance from it
            (`camera_look_at`), for `cfg.background_beyond_cameras` and `cfg.background_flat`;
            None: those rules are not applied.
        up: [3] the cameras' up direction (`hierarchy.scene_up`), for `cfg.background_flat`; None:
            that rule is not applied.

    Returns:
        `Clustering`: labels for every Gaussian, unit cluster centres and sizes. When HDBSCAN
        finds no cluster at all (e.g. features that never trained), every label is -1 and there
        are no centres.

    Raises:
        ValueError: fewer than two Gaussians are opaque enough to fit.
    """
    from sklearn.cluster import HDBSCAN

    cfg = cfg or ClusterConfig()
    n = features.shape[0]
    candidates = np.arange(n) if opacities is None else np.nonzero(opacities.detach().cpu().numpy() >= cfg.min_opacity)[0]
    if len(candidates) < 2:
        raise ValueError(f"{len(candidates)} of {n} Gaussians have opacity >= {cfg.min_opacity}: nothing to cluster")
    if cfg.max_fit_points is not None and len(candidates) > cfg.max_fit_points:
        rng = np.random.default_rng(cfg.seed)
        candidates = np.sort(rng.choice(candidates, cfg.max_fit_points, replace=False))
    unit = F.normalize(features.detach().float(), dim=-1)
    fitted = HDBSCAN(min_cluster_size=min(cfg.min_cluster_size, len(candidates)), min_samples=cfg.min_samples,
                     copy=True).fit_predict(unit.cpu().numpy()[candidates])
    found = np.unique(fitted[fitted >= 0])
    if len(found) == 0:
        return Clustering(np.full(n, NOISE, dtype=np.int64), np.zeros((0, features.shape[1]), np.float32),
                          np.zeros(0, np.int64), len(candidates))
    centers = F.normalize(torch.stack([unit[candidates[fitted == k]].mean(0) for k in found]), dim=-1)
    # Every Gaussian takes the most similar centre; the fitted ones keep HDBSCAN's own label.
    labels = (unit @ centers.T).argmax(1).cpu().numpy().astype(np.int64)
    remap = np.full(fitted.max() + 2, NOISE, dtype=np.int64)
    remap[found] = np.arange(len(found))
    fitted_labels = remap[fitted]
    if cfg.noise == "keep":
        labels[candidates] = fitted_labels
    else:
        labels[candidates] = np.where(fitted_labels >= 0, fitted_labels, labels[candidates])
    sizes = np.bincount(labels[labels >= 0], minlength=len(found))
    clustering = Clustering(labels, centers.cpu().numpy(), sizes, len(candidates))
    if means is not None and cfg.split_gap > 0:  # each piece of a cluster meets the background rules alone
        gap = cfg.split_gap * neighbour_spacing(_finite_considered(labels, means, candidates)[0])
        clustering = split_apart(clustering, unit, means, candidates, gap, max(cfg.min_cluster_size // 2, 2))
    if means is not None:  # merge_background applies each rule only where it is on (and has cameras)
        clustering = merge_background(clustering, unit, means, candidates, cfg.background_spread, look_at,
                                      cfg.background_beyond_cameras, up, cfg.background_flat)
    return clustering


def camera_look_at(cameras: Iterable[Camera], min_spread: float = 1e-3) -> tuple[np.ndarray, float] | None:
    """The point the cameras look at and their median distance from it, or None.

    The point is the least-squares meeting point of the cameras' optical axes (for an orbit, its
    centre). None when the axes are close to parallel (the smallest eigenvalue of the normal
    matrix under `min_spread` times the largest: a forward-facing capture has no such point) or
    the point lies behind most cameras.
    """
    normal, rhs, centres, axes = np.zeros((3, 3)), np.zeros(3), [], []
    for camera in cameras:
        c2w = camera.camera_to_world
        axis = c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])  # OpenCV: +z looks forward
        projector = np.eye(3) - np.outer(axis, axis)
        normal += projector
        rhs += projector @ c2w[:3, 3]
        centres.append(c2w[:3, 3])
        axes.append(axis)
    if len(centres) < 2:
        return None
    eigenvalues = np.linalg.eigvalsh(normal)
    if eigenvalues[0] < min_spread * eigenvalues[-1]:
        return None
    point = np.linalg.solve(normal, rhs)
    ahead = np.einsum("ij,ij->i", point - np.asarray(centres), np.asarray(axes)) > 0
    if ahead.mean() < 0.5:
        return None
    return point, float(np.median(np.linalg.norm(np.asarray(centres) - point, axis=1)))


def _positions(means: Tensor | np.ndarray) -> np.ndarray:
    """[N, 3] positions as a NumPy array."""
    return means.detach().cpu().numpy() if isinstance(means, Tensor) else np.asarray(means)


def _finite_considered(labels: np.ndarray, means: Tensor | np.ndarray,
                       considered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and labels of the `considered` Gaussians whose position is finite (a diverged
    Gaussian's is not, and would make every median NaN)."""
    points, labels = _positions(means)[considered], labels[considered]
    finite = np.isfinite(points).all(axis=1)
    return points[finite], labels[finite]


def cluster_spreads(labels: np.ndarray, n_clusters: int, means: Tensor | np.ndarray,
                    considered: np.ndarray) -> np.ndarray:
    """[n_clusters] spatial spread of each cluster relative to the scene's: the median distance of a
    cluster's Gaussians from their (per-axis) median, divided by the same of all `considered`
    Gaussians (indices). Medians, so that a few stray Gaussians of a cluster do not count; a
    Gaussian whose position is not finite (a diverged one) is left out."""
    points, labels = _finite_considered(labels, means, considered)

    def spread(p: np.ndarray) -> float:
        return float(np.median(np.linalg.norm(p - np.median(p, axis=0), axis=1))) if len(p) else 0.0

    scene = max(spread(points), 1e-12)
    return np.array([spread(points[labels == k]) / scene for k in range(n_clusters)])


def cluster_distances(labels: np.ndarray, n_clusters: int, means: Tensor | np.ndarray, considered: np.ndarray,
                      point: np.ndarray) -> np.ndarray:
    """[n_clusters] distance of each cluster's median position (per axis, over its `considered`
    Gaussians with finite positions) from `point`; 0 for a cluster with none of them."""
    points, labels = _finite_considered(labels, means, considered)
    return np.array([float(np.linalg.norm(np.median(points[labels == k], axis=0) - point)) if (labels == k).any()
                     else 0.0 for k in range(n_clusters)])


def support_plane(means: Tensor | np.ndarray, considered: np.ndarray, look_at: tuple[np.ndarray, float],
                  up: np.ndarray, tolerance: float, max_tilt: float = 30.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The plane the captured objects stand on: the dominant plane (`masks.depth_split.dominant_plane`)
    of the `considered` Gaussians (indices) within half the cameras' distance of the point they look
    at, its normal within `max_tilt` degrees of `up` and pointing to its side; then, while the points
    under it hold a plane of at least half as many inliers, that lower one (a large textured top, a
    box's or a tray's, can hold more Gaussians than the plain table beneath it); (point, unit
    normal), or None. `tolerance`: the inlier distance, in units of the cameras' distance."""
    points = _positions(means)[considered]
    points = points[np.isfinite(points).all(axis=1)]
    point, radius = look_at
    near = points[np.linalg.norm(points - point, axis=1) < 0.5 * radius]
    tolerance = tolerance * radius

    def inliers(on: np.ndarray, plane: tuple[np.ndarray, np.ndarray]) -> int:
        return int((np.abs((on - plane[0]) @ plane[1]) < tolerance).sum())

    plane = dominant_plane(near, tolerance, seed, up=up, max_tilt=max_tilt)
    while plane is not None:
        under = near[(near - plane[0]) @ plane[1] < -tolerance]
        lower = dominant_plane(under, tolerance, seed, up=up, max_tilt=max_tilt)
        if lower is None or inliers(under, lower) < 0.5 * inliers(near, plane):
            break
        plane, near = lower, under
    return plane


def cluster_heights(labels: np.ndarray, n_clusters: int, means: Tensor | np.ndarray, considered: np.ndarray,
                    plane: tuple[np.ndarray, np.ndarray], scale: float, share: float = 0.9) -> np.ndarray:
    """[n_clusters] how far each cluster's `considered` Gaussians lie from `plane` (point, unit
    normal): the `share` quantile of their distances from it, divided by `scale`; inf for a cluster
    with none of them."""
    points, labels = _finite_considered(labels, means, considered)
    distance = np.abs((points - plane[0]) @ plane[1]) / scale
    return np.array([float(np.quantile(distance[labels == k], share)) if (labels == k).any() else np.inf
                     for k in range(n_clusters)])


def split_apart(clustering: Clustering, unit_features: Tensor, means: Tensor | np.ndarray, considered: np.ndarray,
                gap: float, min_part: int) -> Clustering:
    """Every cluster split into the pieces of it that lie apart in space.

    The features hold together what the masks never parted, and two things of one feature far
    apart (a lamp's yellow shade and a yellow picture across the room) can share a cluster; then
    the background rules (`merge_background`) judge both as one, and the shade goes with the
    picture into the background. Split first, each piece is judged on its own.

    Args:
        clustering: HDBSCAN's clusters (`cluster_gaussians` before the background merge).
        unit_features: [N, D] the Gaussians' unit features (the new pieces' centres).
        means: [N, 3] positions.
        considered: Indices of the Gaussians the pieces are made of (the fitted ones).
        gap: Two considered Gaussians of a cluster closer than this are in one piece (the
            connected components of that graph).
        min_part: Pieces with fewer considered Gaussians are crumbs, not clusters.

    Returns:
        The clusters with every piece of at least `min_part` as its own: the largest keeps the
        cluster's id, the others are new clusters after the last; every other Gaussian of the
        cluster (crumbs, unfitted) joins the piece of its nearest considered Gaussian where that is
        closer than `gap`. Strays, those of a cluster no closer than `gap` to any of its pieces
        (a shade of too few Gaussians to be a piece, in one cluster with the room), take the
        cluster of their nearest considered Gaussian that is not a stray: they belong with what
        they lie against (the lamp's stem), not with a feature's far-away majority. Centres: the
        mean unit feature of each piece's considered Gaussians where a cluster split, HDBSCAN's
        where it did not. The input itself where nothing changes.
    """
    labels, points = clustering.labels.copy(), _positions(means)
    fitted = np.zeros(len(labels), dtype=bool)
    fitted[considered] = True
    fitted &= np.isfinite(points).all(axis=1)
    stray = np.zeros(len(labels), dtype=bool)
    centers = list(clustering.centers)
    for cluster in range(clustering.n_clusters):
        members = np.nonzero(fitted & (labels == cluster))[0]
        if len(members) < min_part:
            continue
        piece = _pieces(points[members], gap)
        sizes = np.bincount(piece)
        kept = [int(p) for p in np.argsort(-sizes, kind="stable") if sizes[p] >= min_part]
        if not kept:
            continue
        whole = np.isin(piece, kept)
        everyone = np.nonzero(labels == cluster)[0]
        distance, nearest = cKDTree(points[members[whole]]).query(np.nan_to_num(points[everyone]))
        stray[everyone[distance >= gap]] = True  # relabelled below, whatever piece they are given here
        belongs = piece[whole][nearest]
        for new in kept[1:]:
            labels[everyone[belongs == new]] = len(centers)
            centers.append(F.normalize(unit_features[members[piece == new]].mean(0), dim=-1).cpu().numpy())
        if len(kept) > 1:
            centers[cluster] = F.normalize(unit_features[members[piece == kept[0]]].mean(0), dim=-1).cpu().numpy()
    strays = np.nonzero(stray)[0]
    if len(strays):  # a cluster with strays has a piece, whose Gaussians are never strays
        core = np.nonzero(fitted & ~stray & (labels >= 0))[0]
        labels[strays] = labels[core][cKDTree(points[core]).query(np.nan_to_num(points[strays]))[1]]
    if len(centers) == clustering.n_clusters and np.array_equal(labels, clustering.labels):
        return clustering
    return Clustering(labels, np.stack(centers).astype(clustering.centers.dtype),
                      np.bincount(labels[labels >= 0], minlength=len(centers)), clustering.n_fitted,
                      clustering.background)


def _pieces(points: np.ndarray, gap: float) -> np.ndarray:
    """[M] the connected component of each point, two points joined when closer than `gap`."""
    pairs = cKDTree(points).query_pairs(gap, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points), len(points)))
    return connected_components(graph, directed=False)[1]


def pieces_reference(points: np.ndarray, gap: float) -> np.ndarray:
    """`_pieces` by a flood over every pair's distance (the tests' oracle): the same partition,
    components numbered in the order of their first point."""
    piece = np.full(len(points), -1, np.int64)
    for start in range(len(points)):
        if piece[start] >= 0:
            continue
        piece[start], todo = piece.max() + 1, [start]
        while todo:
            i = todo.pop()
            for j in range(len(points)):
                if piece[j] < 0 and np.linalg.norm(points[i] - points[j]) < gap:
                    piece[j] = piece[start]
                    todo.append(j)
    return piece


def merge_background(clustering: Clustering, unit_features: Tensor, means: Tensor, considered: np.ndarray,
                     spread: float, look_at: tuple[np.ndarray, float] | None = None, beyond: float = 0.0,
                     up: np.ndarray | None = None, flat: float = 0.0) -> Clustering:
    """Merge every cluster spread wider than `spread` times the scene's (`cluster_spreads`), every
    cluster beyond the ring of cameras, and every cluster lying flat on the support plane, into one
    background cluster.

    Features separate surfaces that the masks separate, so walls, floor, table and sky come out as
    several clusters, each spread over much of the scene, while objects are compact. A user asking
    for objects wants those as one background (the ground truth of LERF-Mask-style scenes and of the
    synthetic scenes has one id for them). What lies outside the cameras' ring (a picture on the
    wall behind them) is compact too, but it is the surroundings of an object-centric capture. A
    patch of the table that the masks cut apart (a shadow, a reflection) is compact and near, but
    it lies in the table's plane, where nothing that stands on the table does; so does the floor
    beneath and around an object that the masks gave to the object's segment (its contact shadow),
    whose Gaussians join the background one by one.
    Labels stay 0..K-1 (clusters keep their order, the background takes the place of the first
    merged one, clusters left empty go); its centre is the mean of its Gaussians' unit features.
    Noise labels (-1) are left as they are.

    Args:
        clustering: The clusters to merge (`cluster_gaussians` without the merge).
        unit_features: [N, D] the Gaussians' unit features (for the background's centre).
        means: [N, 3] positions.
        considered: Indices of the Gaussians the spreads are measured on (the fitted ones).
        spread: The threshold, relative to the scene's spread (`ClusterConfig.background_spread`);
            0: no cluster is wide.
        look_at: The cameras' look-at point and median distance from it (`camera_look_at`), or None.
        beyond: With `look_at`: a cluster whose median position is farther from the point than
            `beyond` times the cameras' distance merges too (`ClusterConfig.background_beyond_cameras`);
            0: none does.
        up: [3] the cameras' up direction (`hierarchy.scene_up`), or None.
        flat: With `look_at` and `up`: a cluster 90 % of whose Gaussians lie within `flat` times the
            cameras' distance of the support plane (`support_plane`, `cluster_heights`) merges too,
            and where a background cluster exists every Gaussian that close to the plane joins it
            (`ClusterConfig.background_flat`); 0: none does.

    Returns:
        The merged `Clustering` with `background` set; the input (with `background` -1) when no
        cluster merges.
    """
    labels = clustering.labels
    if clustering.n_clusters == 0:
        return clustering
    merging = np.zeros(clustering.n_clusters, dtype=bool)
    if spread > 0:
        merging |= cluster_spreads(labels, clustering.n_clusters, means, considered) > spread
    if look_at is not None and beyond > 0:
        point, radius = look_at
        merging |= cluster_distances(labels, clustering.n_clusters, means, considered, point) > beyond * radius
    low, support = None, None  # [N] the Gaussians that lie in the support plane; the plane
    if look_at is not None and up is not None and flat > 0:
        plane = support_plane(means, considered, look_at, up, tolerance=flat / 2)
        if plane is not None:
            merging |= cluster_heights(labels, clustering.n_clusters, means, considered, plane, look_at[1]) < flat
            low = np.abs((_positions(means) - plane[0]) @ plane[1]) < flat * look_at[1]  # NaN (diverged): False
            support = (*plane, flat * look_at[1])
    wide = np.flatnonzero(merging)
    if len(wide) == 0:
        return replace(clustering, background=NOISE, support=support)
    background = int(wide[0])
    merged = np.where(np.isin(labels, wide), background, labels)
    if low is not None:  # and every Gaussian lying in the table's plane
        merged = np.where(low & (merged >= 0), background, merged)
    present = np.bincount(merged[merged >= 0], minlength=clustering.n_clusters) > 0
    present[background] = True
    new_id = np.cumsum(present) - 1  # emptied clusters go, the rest keep their order
    merged = np.where(merged >= 0, new_id[np.maximum(merged, 0)], merged)
    centers = clustering.centers[present].copy()
    if len(wide) > 1 or low is not None:
        members = torch.from_numpy(merged == new_id[background])
        centers[new_id[background]] = F.normalize(unit_features[members].mean(0), dim=-1).cpu().numpy()
    sizes = np.bincount(merged[merged >= 0], minlength=int(present.sum()))
    return Clustering(merged, centers, sizes, clustering.n_fitted, int(new_id[background]), support)


def export_selection(params: dict[str, Tensor], keep: np.ndarray, path: str | Path) -> Path:
    """Write the selected Gaussians (boolean mask or indices) to their own 3DGS .ply (same layout as training)."""
    keep = np.asarray(keep)
    if keep.size == 0 or (keep.dtype == bool and not keep.any()):
        raise ValueError(f"{path}: nothing selected to export")
    return save_ply(subset_params(params, torch.as_tensor(keep)), path)


def export_clusters(params: dict[str, Tensor], clustering: Clustering, out_dir: str | Path,
                    per_cluster: bool = True) -> list[Path]:
    """`scene_clusters.ply` (every Gaussian, with a `cluster` attribute) and, if `per_cluster`,
    `cluster_XXX.ply` per cluster, under `out_dir`."""
    out_dir = Path(out_dir)
    written = [save_ply(params, out_dir / CLUSTERS_PLY, extra={"cluster": clustering.labels.astype(np.int32)})]
    if per_cluster:
        for k in range(clustering.n_clusters):
            if (clustering.labels == k).any():
                written.append(export_selection(params, clustering.labels == k, out_dir / f"cluster_{k:03d}.ply"))
    return written


def cluster_palette(n: int) -> np.ndarray:
    """[n, 3] distinct colours in [0, 1] (matplotlib's tab20, then golden-angle hues)."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    base = np.asarray(colormaps["tab20"].colors)
    extra = [hsv_to_rgb(((i * 0.618034) % 1.0, 0.75, 0.9)) for i in range(max(0, n - len(base)))]
    return np.concatenate([base, np.asarray(extra).reshape(-1, 3)])[:n]


def render_clusters(params: dict[str, Tensor], labels: np.ndarray, camera, backend: str = "auto") -> np.ndarray:
    """[H, W, 3] image of one view with every Gaussian painted its cluster's palette colour
    (noise grey), alpha-blended like the features."""
    from .render import Gaussians, render

    labels = np.asarray(labels)
    colours = np.full((len(labels), 3), 0.5)  # noise: grey
    if (labels >= 0).any():
        palette = cluster_palette(int(labels.max()) + 1)
        colours[labels >= 0] = palette[labels[labels >= 0]]
    with torch.no_grad():
        out = render(Gaussians.from_params(params), camera,
                     features=torch.as_tensor(colours, dtype=params["means"].dtype), backend=backend)
    return out.features.clamp(0, 1).cpu().numpy()


def _cluster_onehot(labels, dtype) -> Tensor:
    """[N, K] one-hot cluster membership (noise rows all zero); accepts a ready one-hot as is."""
    if isinstance(labels, Tensor) and labels.ndim == 2:
        return labels
    labels = np.asarray(labels)
    clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
    onehot = torch.zeros(len(labels), clusters, dtype=dtype)
    onehot[torch.as_tensor(labels >= 0), torch.as_tensor(labels[labels >= 0])] = 1.0
    return onehot


def render_instance_ids(params: dict[str, Tensor], labels: np.ndarray, camera, backend: str = "auto",
                        min_weight: float = 0.5) -> np.ndarray:
    return render_instances(params, labels, camera, backend, min_weight)[0]


def render_instances(params: dict[str, Tensor], labels: np.ndarray, camera, backend: str = "auto",
                     min_weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] int32 cluster id per pixel of one view, the same id in every view: each cluster's
    Gaussians are rendered as a one-hot channel, alpha-blended, and a pixel takes the cluster of
    the largest blended weight; 0 where no cluster reaches `min_weight` (background, noise),
    otherwise cluster k is k + 1. `render_instance_ids` returns these; `render_instances` also the
    view's [H, W] depth from the same render (the cluster tree's view links read both).

    Args:
        params: Trained parameters; labels: [N] cluster per Gaussian (-1 noise), or their [N, K] one-hot.
        camera: The view; backend: render backend.
        min_weight: The least blended weight (of 1) a pixel's cluster must have.
    """
    from .render import Gaussians, render

    onehot = _cluster_onehot(labels, params["means"].dtype)
    with torch.no_grad():
        out = render(Gaussians.from_params(params), camera, features=onehot if onehot.shape[1] else None,
                     backend=backend)
    depth = out.depth.cpu().numpy().reshape(camera.height, camera.width)
    if onehot.shape[1] == 0:
        return np.zeros((camera.height, camera.width), dtype=np.int32), depth
    best, ids = out.features.max(dim=-1)
    return torch.where(best >= min_weight, ids + 1, 0).to(torch.int32).cpu().numpy(), depth


def export_instance_masks(params: dict[str, Tensor], labels: np.ndarray, cameras: dict, out_dir: str | Path,
                          backend: str = "auto", min_weight: float = 0.5,
                          progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Multi-view consistent 2D masks from the 3D clusters, for every given view:
    `labels/<view>.png` (16-bit PNG, 0 background, k + 1 = cluster k in every view) and
    `instances.json` (COCO: images, one RLE annotation per cluster seen in a view, categories =
    clusters). Written to temp names and renamed. `progress(done, total, what)` after each view.

    Returns:
        Counts: views, annotations, clusters.
    """
    out = Path(out_dir)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    onehot = _cluster_onehot(labels, params["means"].dtype)  # once for every view
    clusters = onehot.shape[1]
    images, annotations = [], []
    for image_id, (name, camera) in enumerate(sorted(cameras.items()), start=1):
        ids = render_instance_ids(params, onehot, camera, backend, min_weight)
        target = out / "labels" / (Path(name).with_suffix(".png").as_posix().replace("/", "_"))
        tmp = target.with_suffix(".tmp.png")
        Image.fromarray(ids.astype(np.uint16)).save(tmp)
        tmp.replace(target)
        images.append({"id": image_id, "file_name": name, "height": camera.height, "width": camera.width,
                       "label_map": f"labels/{target.name}"})
        for k in np.unique(ids[ids > 0]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(k),
                                **coco_segment(ids == k), "iscrowd": 0})
        if progress is not None:
            progress(image_id, len(cameras), "consistent masks (views)")
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": f"cluster_{k:03d}"} for k in range(clusters)]}
    tmp = out / "instances.json.tmp"
    tmp.write_text(json.dumps(coco))
    tmp.replace(out / "instances.json")
    return {"views": len(images), "annotations": len(annotations), "clusters": clusters}


def model_tree(params: dict[str, Tensor], scene, selector, cfg: ClusterConfig, geometry: DepthSplitConfig | None = None,
               backend: str = "auto") -> tuple[Clustering, ClusterTree]:
    """The clusters of a trained model at the selection's granularity (the cluster stage's), and
    their hierarchy (`hierarchy.build_cluster_tree`), which coarser selection steps walk; with
    `geometry` (`train.depth_split`) and `cfg.tree_view_groups` > 0 the tree also reads the
    training views' object regions (`hierarchy.view_group_links`, rendered with `backend`); a
    floating cluster links to what lies beneath it along the cameras' up (`cfg.tree_support`)."""
    features, opacities = selector.restrict(params["features"]), torch.sigmoid(params["opacities"])
    look_at, up = camera_look_at(scene.cameras.values()), scene_up(scene.cameras.values())
    clustering = cluster_gaussians(features, params["means"], opacities, cfg, look_at=look_at, up=up)
    view_links = None
    if geometry is not None and cfg.tree_view_groups > 0 and clustering.n_clusters >= 2:
        view_links = view_group_links(params, [scene.cameras[n] for n in scene.train_names], clustering.labels,
                                      clustering.n_clusters, geometry, backend, cfg.seed)
    return clustering, build_cluster_tree(clustering, features, params["means"], opacities, cfg.min_opacity,
                                          cfg.tree_radius, cfg.tree_min_link, cfg.max_fit_points, cfg.seed,
                                          view_links, cfg.tree_view_groups, up, cfg.tree_support)


def cluster_scene(params: dict[str, Tensor], scene, selector, queries: dict, query_protocol: str | None,
                  out: ClusterOutputs, cfg: ClusterConfig, backend: str = "auto",
                  progress: Callable[[int, int, str], None] | None = None,
                  geometry: DepthSplitConfig | None = None) -> dict:
    """The cluster stage's work: HDBSCAN on the Gaussians and the clusters' tree, then every file of `out`.

    Args:
        params: Trained parameters.
        scene: The calibrated scene (cameras for the palette and the consistent masks; 3D truth if it has any).
        selector: `selection.Selector`: the clusters are of its (restricted) features, the objects its selections.
        queries: prompt -> `selection.Query` (e.g. `evaluate.protocol_queries`); each prompt's Gaussians
            are written to `out.objects`; query_protocol: the protocol they come from (for the summary).
        out: The stage's folder; cfg: the cluster section; backend: render backend.
        progress: (done, total, what) after the clustering and after each consistent-mask view.
        geometry: `train.depth_split`, for the tree's view links (`model_tree`); None: 3D links only.

    Returns:
        The summary, also written to `out.folder / summary.json`: counts, sizes, seconds, Gaussians
        selected per prompt, and the 3D scores (`metrics.scores_3d`) where the scene has 3D truth.
    """
    opacities = torch.sigmoid(params["opacities"])
    started = time.perf_counter()
    # Objects at the selection's granularity (the coarsest trained mask level by default).
    clustering, tree = model_tree(params, scene, selector, cfg, geometry, backend)
    seconds = time.perf_counter() - started
    tree.to_json(out.tree)
    if progress is not None:
        progress(1, 1, f"HDBSCAN: {clustering.n_clusters} clusters")
    export_clusters(params, clustering, out.folder, per_cluster=cfg.export_clusters)
    selections = {prompt: selector.gaussians(params, [query]) for prompt, query in sorted(queries.items())}
    for prompt, keep in selections.items():
        if keep.any():
            export_selection(params, keep, out.objects / f"{safe_name(prompt)}.ply")
    view = (scene.test_names or scene.train_names)[0]
    palette = render_clusters(params, clustering.labels, scene.cameras[view], backend)
    Image.fromarray((palette * 255 + 0.5).astype("uint8")).save(out.palette)
    masks_written = (export_instance_masks(params, clustering.labels, {n: scene.cameras[n] for n in scene.train_names},
                                           out.instance_masks, backend, progress=progress)
                     if cfg.export_masks else None)
    summary = {"n_gaussians": int(len(clustering.labels)), "n_clusters": clustering.n_clusters,
               "background_cluster": clustering.background,
               "n_fitted": clustering.n_fitted, "cluster_sizes": clustering.sizes.tolist(),
               "cluster_seconds": round(seconds, 3), "palette_view": view,
               "selected": {p: int(k.sum()) for p, k in selections.items()},
               "query_protocol": query_protocol,
               "instance_masks": masks_written}
    if scene.object_truth is not None:
        summary.update(scores_3d(scene.object_truth, scene, params, clustering.labels, selections,
                                 (opacities >= cfg.min_opacity).numpy()))
    (out.folder / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
