"""A hierarchy of the Gaussians' clusters, walked by the coarser and finer selection steps.

One click selects what the features hold together; on an object of several differently coloured
parts that is the part clicked, and no global loss weight fixes that without merging touching
objects too. The cluster stage's clusters (`cluster.cluster_gaussians`) are the leaves of a tree;
two groups merge, the most strongly linked pair first, where their Gaussians lie close in 3D over
much of the smaller group and their features are alike. Parts of one object are joined along a
seam; different objects mostly touch at a point, or rest on a surface that is the background. A
part joined to the rest by too thin a piece to touch in 3D (a lamp's shade on its stem) is linked
by the views instead: in many of them the model's depth shows one region standing on the table
that holds both (`view_group_links`), or by what holds it up: a part that touches nothing but the
background floats, and joins what lies straight beneath it (`support_votes`). Two things that each
stand on the table (`standing_clusters`) never join, however long their seam or however often one
region of the views holds both: side by side, they are two objects. A coarser step from a click
adds the clusters of the next enclosing group; a finer step goes back. Measured in
`benchmarks/RESULTS.md`, "Coarser steps", "Coarser steps from the views' object regions", "What
holds a floating part up" and "Side by side on the table".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from .gaussians import neighbour_spacing
from .masks.depth_split import object_regions

if TYPE_CHECKING:  # cluster.py builds trees
    from .cluster import Clustering
    from .config import DepthSplitConfig
    from .scene.model import Camera

REGION_MIN_PIXELS = 50
"""Object regions of a view smaller than this are passed over (`view_group_links`)."""
CLUSTER_MIN_PIXELS = 20
"""A cluster is seen in a view, or in a region, where it is the dominant cluster of this many pixels."""
FOOTING_QUANTILE = 0.02
"""A cluster's foot: this quantile of its Gaussians' heights above the support plane (`standing_clusters`);
a quantile, so that a few stray Gaussians do not set it."""
FOOT_ALLOWANCE = 1.75
"""A cluster whose foot lies within this many contact distances (`build_cluster_tree`'s `radius`
spacings) over the flat band may stand on the table: a ball's underside is seen only at grazing
angles, and a mirror ball's shows the table and goes to the background, so its cluster starts a
little over the band (1.25-1.39 on the realistic preset, 0.88 the demo's sphere), while a lamp's
arm starts on the base at 2.2-2.4. RESULTS.md, "The chrome ball beside the checker box"."""


@dataclass
class ClusterTree:
    """Agglomerative merges of clusters (like scipy's linkage matrix, most strongly linked first).

    Attributes:
        centers: [K, D] unit feature centre of each leaf cluster (`Clustering.centers`), in the
            channels the clusters were made of.
        merges: [M, 2] the two nodes each merge joins; nodes 0..K-1 are the leaves, K + m is the
            group made by merge m.
        links: [M] the link strength of each merge (`cluster_links`), decreasing.
        background: The background leaf (`Clustering.background`), which never merges; -1: none.
    """

    centers: np.ndarray
    merges: np.ndarray
    links: np.ndarray
    background: int = -1

    @property
    def n_leaves(self) -> int:
        return len(self.centers)

    def parent(self, node: int) -> int:
        """The group that `node` merged into; -1 for a root."""
        rows = np.nonzero((self.merges == node).any(1))[0]
        return int(self.n_leaves + rows[0]) if len(rows) else -1

    def leaves(self, node: int) -> list[int]:
        """The leaf clusters under `node`, ascending."""
        if node < self.n_leaves:
            return [int(node)]
        a, b = self.merges[node - self.n_leaves]
        return sorted(self.leaves(int(a)) + self.leaves(int(b)))

    def steps(self, leaf: int) -> list[list[int]]:
        """The leaves of each coarser step from `leaf`: [[leaf], leaves of its parent, ...] up to its root."""
        out, node = [[int(leaf)]], int(leaf)
        while (node := self.parent(node)) >= 0:
            out.append(self.leaves(node))
        return out

    def start_leaf(self, query: Tensor) -> int:
        """The leaf whose centre is most similar to a query feature (the background only when it is the only leaf)."""
        query = F.normalize(query.detach().float().reshape(-1)[: self.centers.shape[1]], dim=0).cpu().numpy()
        similarity = self.centers @ query
        if 0 <= self.background < self.n_leaves and self.n_leaves > 1:
            similarity[self.background] = -np.inf
        return int(np.argmax(similarity))

    def step_features(self, query: Tensor, steps: int) -> list[Tensor]:
        """The query features of a selection `steps` coarser than `query` (0: `[query]`, the
        paper's selection): the query and the centres of the leaves of that step, clamped at the
        root. Their union is the selection (`Selector.union_mask`, `Selector.gaussians`)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if not steps or self.n_leaves == 0:
            return [query]
        chain = self.steps(self.start_leaf(query))
        leaves = chain[min(steps, len(chain) - 1)]
        return [query, *(torch.as_tensor(self.centers[k], dtype=query.dtype) for k in leaves)]

    def depth(self, query: Tensor) -> int:
        """How many coarser steps there are above the query's leaf (0 where nothing was clustered)."""
        return 0 if self.n_leaves == 0 else len(self.steps(self.start_leaf(query))) - 1

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"centers": self.centers.tolist(), "dims": int(self.centers.shape[1]),
                                   "merges": self.merges.tolist(),
                                   "links": self.links.tolist(), "background": self.background}))
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "ClusterTree":
        try:
            data = json.loads(Path(path).read_text())
            centers = np.asarray(data["centers"], np.float32)
            return cls(centers.reshape(len(centers), int(data["dims"])),
                       np.asarray(data["merges"], np.int64).reshape(-1, 2), np.asarray(data["links"], np.float64),
                       int(data["background"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable cluster tree ({exc})") from exc


def cluster_contacts(points: np.ndarray, labels: np.ndarray, n_clusters: int, radius: float) -> np.ndarray:
    """[K, K] symmetric: pairs of points of two different clusters closer than `radius`
    (labels < 0 take no part). Fast path of `cluster_contacts_reference`."""
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    a, b = labels[pairs[:, 0]], labels[pairs[:, 1]]
    keep = (a != b) & (a >= 0) & (b >= 0)
    contacts = np.zeros((n_clusters, n_clusters), np.int64)
    np.add.at(contacts, (a[keep], b[keep]), 1)
    return contacts + contacts.T


def cluster_contacts_reference(points: np.ndarray, labels: np.ndarray, n_clusters: int, radius: float) -> np.ndarray:
    """`cluster_contacts` by every pair's distance (the tests' oracle)."""
    contacts = np.zeros((n_clusters, n_clusters), np.int64)
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            if labels[i] >= 0 and labels[j] >= 0 and labels[i] != labels[j] and \
                    np.linalg.norm(points[i] - points[j]) < radius:
                contacts[labels[i], labels[j]] += 1
                contacts[labels[j], labels[i]] += 1
    return contacts


def cluster_links(contacts: np.ndarray, sizes: np.ndarray, feature_sums: np.ndarray) -> np.ndarray:
    """[G, G] link strength of every pair of groups: their close pairs per member of the smaller
    group, times the agreement of their mean unit features, (1 + cosine) / 2. Close pairs grow with
    a seam's length, the smaller group's size makes it a share; the feature factor keeps a part that
    the masks always separated from its neighbours (another object) below a part they sometimes
    joined. Diagonal: 0."""
    centres = feature_sums / np.maximum(np.linalg.norm(feature_sums, axis=1, keepdims=True), 1e-12)
    agreement = (1.0 + centres @ centres.T) / 2.0
    links = contacts / np.maximum(np.minimum.outer(sizes, sizes), 1) * agreement
    np.fill_diagonal(links, 0.0)
    return links


def region_votes(dominant: np.ndarray, regions: np.ndarray, n_clusters: int,
                 min_pixels: int = CLUSTER_MIN_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """One view's evidence for `view_group_links`.

    Args:
        dominant: [H, W] the cluster each pixel shows most (-1: none).
        regions: [H, W] object regions (0: none), e.g. `masks.depth_split.object_regions`.
        n_clusters: K.
        min_pixels: A cluster is seen with this many dominant pixels.

    Returns:
        together [K, K] (1 where one region of at least `REGION_MIN_PIXELS` holds both clusters:
        each with `min_pixels` there, 5 % of the region and 30 % of what the view shows of it; 0 on the
        diagonal) and seen [K] (bool: the cluster is seen in the view).
    """
    everywhere = np.bincount(dominant[dominant >= 0], minlength=n_clusters)
    together = np.zeros((n_clusters, n_clusters))
    for region in range(1, int(regions.max()) + 1):
        inside = regions == region
        size = int(inside.sum())
        if size < REGION_MIN_PIXELS:
            continue
        counts = np.bincount(dominant[inside & (dominant >= 0)], minlength=n_clusters)
        present = (counts >= min_pixels) & (counts >= 0.05 * size) & (counts >= 0.3 * everywhere)
        together = np.maximum(together, np.outer(present, present))
    np.fill_diagonal(together, 0.0)
    return together, everywhere >= min_pixels


def view_group_links(params: dict[str, Tensor], cameras: list[Camera], labels: np.ndarray, n_clusters: int,
                     geometry: DepthSplitConfig, backend: str = "auto", seed: int = 0) -> np.ndarray:
    """[K, K] for every pair of clusters, the share of the views showing both in which one object
    region holds both (`region_votes`); symmetric, 0 on the diagonal.

    Each view renders the clusters' ids (`cluster.render_instances`: a pixel shows the cluster of
    largest blended weight, where that weight is at least 0.3) and the model's depth, whose object regions
    (`masks.depth_split.object_regions`) join an object's parts wherever its depth rises from the table without a
    jump between them, even where the parts touch in 3D along too thin a piece to count in
    `cluster_contacts`.

    Args:
        params: Trained parameters; labels: [N] each Gaussian's cluster (-1: none); n_clusters: K.
        cameras: The views (the training views).
        geometry: `train.depth_split` (`group_height`, `plane_tolerance`, `jump`, `sharpness`).
        backend: Render backend; seed: the plane fits' random state.
    """
    from .cluster import _cluster_onehot, render_instances  # cluster.py imports this module

    one_hot = _cluster_onehot(labels, params["means"].dtype)  # once for every view
    together, seen = np.zeros((n_clusters, n_clusters)), np.zeros((n_clusters, n_clusters))
    for camera in cameras:
        ids, depth = render_instances(params, one_hot, camera, backend, min_weight=0.3)
        view_together, view_seen = region_votes(ids - 1, object_regions(depth, camera.K, geometry, seed), n_clusters)
        together += view_together
        seen += np.outer(view_seen, view_seen)
    return together / np.maximum(seen, 1)


def scene_up(cameras: Iterable[Camera]) -> np.ndarray | None:
    """[3] unit vector: the mean of the cameras' up directions (OpenCV: each camera's -y), the
    orientation nerfstudio's `auto_orient_and_center_poses(method="up")` gives a capture; for views
    taken around a tabletop, the table's normal. None without cameras, or where their ups cancel."""
    ups = [-camera.camera_to_world[:3, 1] for camera in cameras]
    up = np.sum(ups, axis=0) if ups else np.zeros(3)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-9 * max(len(ups), 1) else None


def support_votes(points: np.ndarray, labels: np.ndarray, n_clusters: int, up: np.ndarray, radius: float,
                  clusters: list[int] | None = None, over_only: bool = False) -> np.ndarray:
    """What lies straight beneath each cluster's points.

    Args:
        points: [N, 3]; labels: [N] cluster of each point (-1: none, takes no part); n_clusters: K.
        up: [3] unit vector (`scene_up`).
        radius: A point is beneath another within this horizontal distance (perpendicular to `up`).
        clusters: The clusters whose rows are wanted (None: all); the other rows stay 0.
        over_only: A cluster that also rises higher than the point within `radius` is not beneath
            it: the point lies beside that cluster's side, not over it (a ball beside a lower box).

    Returns:
        [K, K + 1] votes: row A, column B counts the points of A whose highest point beneath, of any
        other cluster, is B's; column K the points of A with nothing of another cluster beneath.
        Fast path (a KD-tree over the points projected on the horizontal plane) of
        `support_votes_reference`.
    """
    votes = np.zeros((n_clusters, n_clusters + 1), np.int64)
    heights = points @ up
    flat = points - np.outer(heights, up)
    wanted = np.nonzero(labels >= 0 if clusters is None else np.isin(labels, clusters))[0]
    if not len(wanted):
        return votes
    for i, near in zip(wanted, cKDTree(flat).query_ball_point(flat[wanted], radius)):
        near = np.asarray(near, np.int64)
        near = near[(labels[near] >= 0) & (labels[near] != labels[i])]
        below = heights[near] < heights[i]
        if over_only:
            below &= ~np.isin(labels[near], labels[near[heights[near] > heights[i]]])
        near = near[below]
        votes[labels[i], labels[near[np.argmax(heights[near])]] if len(near) else n_clusters] += 1
    return votes


def support_votes_reference(points: np.ndarray, labels: np.ndarray, n_clusters: int, up: np.ndarray,
                            radius: float, over_only: bool = False) -> np.ndarray:
    """`support_votes` (every cluster's row) by every pair of points (the tests' oracle)."""
    votes = np.zeros((n_clusters, n_clusters + 1), np.int64)
    for i in range(len(points)):
        if labels[i] < 0:
            continue
        beside = set()  # clusters with a point within the radius higher than point i
        for j in range(len(points)):
            rise = float((points[i] - points[j]) @ up)
            if over_only and labels[j] >= 0 and rise < 0 and np.linalg.norm(points[i] - points[j] - rise * up) <= radius:
                beside.add(int(labels[j]))
        best, best_height = n_clusters, -np.inf
        for j in range(len(points)):
            rise = float((points[i] - points[j]) @ up)
            horizontal = np.linalg.norm(points[i] - points[j] - rise * up)
            if labels[j] >= 0 and labels[j] != labels[i] and int(labels[j]) not in beside and rise > 0 and \
                    horizontal <= radius and points[j] @ up > best_height:
                best, best_height = labels[j], float(points[j] @ up)
        votes[labels[i], best] += 1
    return votes


def support_links(votes: np.ndarray, floating: list[int], background: int, min_share: float) -> np.ndarray:
    """[K, K] symmetric: each floating cluster's link to the cluster beneath the largest share of its
    points (`support_votes`), where that share is at least `min_share`; the background holds nothing up."""
    n_clusters = len(votes)
    links = np.zeros((n_clusters, n_clusters))
    for cluster in floating:
        shares = votes[cluster, :n_clusters] / max(int(votes[cluster].sum()), 1)
        if 0 <= background < n_clusters:
            shares[background] = 0.0
        below = int(np.argmax(shares))
        if shares[below] >= min_share and below != cluster:
            links[cluster, below] = links[below, cluster] = max(links[cluster, below], shares[below])
    return links


def standing_clusters(points: np.ndarray, labels: np.ndarray, n_clusters: int, plane: tuple[np.ndarray, np.ndarray],
                      height: float, radius: float, background: int = -1) -> np.ndarray:
    """[K] bool: the clusters that stand on `plane` (point, unit normal pointing to the objects).

    A cluster stands there when its foot (the `FOOTING_QUANTILE` quantile of the heights of its
    points above the plane) is under `height`, and at least half of its points have nothing but the
    `background` beneath them (`support_votes` along the normal, within `radius`, `over_only`): a
    lamp's stem whose cluster took a little of the base stands on the base, not on the table, while
    a ball beside a lower box stands on the table, its points along the box's side not over the box
    (RESULTS.md, "Beside, not over"). Points at or under
    the plane (a glossy object's reflections, which the model places beneath the table) take no part.

    Args:
        points: [N, 3]; labels: [N] cluster of each point (-1: none); n_clusters: K.
    """
    heights = (points - plane[0]) @ plane[1]
    standing = np.zeros(n_clusters, bool)
    for cluster in range(n_clusters):
        above = heights[(labels == cluster) & (heights > 0)]
        standing[cluster] = len(above) > 0 and float(np.quantile(above, FOOTING_QUANTILE)) < height
    over_plane = np.where(heights > 0, labels, -1)
    votes = support_votes(points, over_plane, n_clusters, plane[1], radius, [int(c) for c in np.flatnonzero(standing)],
                          over_only=True)
    on_table = votes[:, n_clusters] + (votes[:, background] if 0 <= background < n_clusters else 0)
    standing &= on_table >= 0.5 * votes.sum(1)
    if 0 <= background < n_clusters:
        standing[background] = False  # it is what the others stand on
    return standing


def build_cluster_tree(clustering: Clustering, features: Tensor, means: Tensor, opacities: Tensor | None = None,
                       min_opacity: float = 0.1, radius: float = 2.0, min_link: float = 0.05,
                       max_points: int | None = 20_000, seed: int = 0, view_links: np.ndarray | None = None,
                       min_view_link: float = 0.1, up: np.ndarray | None = None, min_support: float = 0.5
                       ) -> ClusterTree:
    """The hierarchy of a clustering: greedy agglomeration of the clusters by `cluster_links`.

    Args:
        clustering: The cluster stage's clusters (leaves); its background cluster never merges. With
            its `support` (the plane the objects stand on, `cluster.support_plane`, and the band over
            it that went to the background), a cluster whose foot lies within `FOOT_ALLOWANCE`
            contact distances (`radius` Gaussian spacings) above that band stands on the plane
            (`standing_clusters`), and two groups that each hold a standing cluster never join:
            side by side on the table they are two objects, however much they touch or share one
            region in the views; a cluster with most of its points under the plane (a reflection in
            a glossy table) joins nothing.
        features: [N, D] Gaussian features, in the channels the clusters were made of.
        means: [N, 3] positions.
        opacities: [N] in [0, 1]; Gaussians below `min_opacity` take no part (None: all do).
        radius: Two Gaussians are close within this many times the median distance from a
            Gaussian to its nearest neighbour (the splat's own scale, whatever the scene's units).
        min_link: Groups whose strongest link is weaker stay apart (the tree is then a forest).
        max_points: Link statistics on at most this many Gaussians (a seeded sample).
        seed: The sample's seed.
        view_links: [K, K] `view_group_links`, or None. A pair's link is the larger of the 3D link
            and its view link where that is at least `min_view_link`; a merged group keeps the
            strongest view link of its members (single linkage).
        up: [3] the scene's up direction (`scene_up`), or None. A cluster that floats (the sum of
            its 3D links to clusters other than the background under `min_link`) links to the
            cluster straight beneath the largest share of its points, where that share is at least
            `min_support` (`support_links`; 0: never); kept through merges like a view link.

    Returns:
        The `ClusterTree`; merges in the order they happened, strongest first.
    """
    labels = clustering.labels
    considered = labels >= 0
    if opacities is not None:
        considered &= opacities.detach().cpu().numpy() >= min_opacity
    index = np.nonzero(considered)[0]
    if max_points is not None and len(index) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(index, max_points, replace=False))
    k = clustering.n_clusters
    merges: list[tuple[int, int]] = []
    links_made: list[float] = []
    if len(index) >= 2 and k >= 2:
        points = means.detach().cpu().numpy()[index].astype(np.float64)
        touch = radius * max(neighbour_spacing(points), 1e-12)
        contacts = cluster_contacts(points, labels[index], k, touch).astype(np.float64)
        unit = F.normalize(features.detach().float()[torch.as_tensor(index)], dim=-1).cpu().numpy()
        sizes = np.bincount(labels[index], minlength=k).astype(np.float64)
        sums = np.zeros((k, unit.shape[1]))
        np.add.at(sums, labels[index], unit)
        node = list(range(k))  # the tree node each current group is
        alive = sizes > 0
        if 0 <= clustering.background < k:
            alive[clustering.background] = False
        # Links from other evidence than 3D contact, each above its own floor; a merged group keeps
        # its members' strongest (single linkage). Flooring first keeps that rule: max commutes with it.
        other = np.zeros((k, k))
        if view_links is not None:
            other = np.where(view_links >= min_view_link, view_links, 0.0)
        if up is not None and min_support > 0:
            touching = cluster_links(contacts, sizes, sums)
            if 0 <= clustering.background < k:  # a part's own stray Gaussians in the background do not hold it up
                touching[:, clustering.background] = 0.0
            touching = touching.sum(1)
            floating = [int(c) for c in np.nonzero(alive & (touching < min_link))[0]]
            votes = support_votes(points, labels[index], k, np.asarray(up, np.float64), touch, floating)
            other = np.maximum(other, support_links(votes, floating, clustering.background, min_support))
        standing = np.zeros(k, bool)
        support = clustering.support
        if support is not None:
            standing = standing_clusters(points, labels[index], k, support[:2],
                                         support[2] + FOOT_ALLOWANCE * touch, touch, clustering.background)
            # Mostly under the table: the mirror image of what stands on a glossy table. Neither an
            # object nor a part, it joins nothing (in the views it shows as one region with anything).
            under = (points - support[0]) @ support[1] <= 0
            alive &= np.bincount(labels[index], weights=under.astype(float), minlength=k) < 0.5 * sizes
        while True:
            links = np.maximum(cluster_links(contacts, sizes, sums), other)
            links[np.outer(standing, standing)] = 0.0  # two objects side by side on the table
            links[~alive] = 0.0
            links[:, ~alive] = 0.0
            a, b = np.unravel_index(int(np.argmax(links)), links.shape)
            if links[a, b] < min_link or a == b:
                break
            a, b = min(a, b), max(a, b)  # group b joins a
            merges.append((node[a], node[b]))
            links_made.append(float(links[a, b]))
            contacts[a] += contacts[b]
            contacts[:, a] += contacts[:, b]
            contacts[a, a] = 0.0
            contacts[b], contacts[:, b] = 0.0, 0.0
            sizes[a] += sizes[b]
            sums[a] += sums[b]
            other[a] = other[:, a] = np.maximum(other[a], other[b])
            other[a, a] = 0.0
            other[b], other[:, b] = 0.0, 0.0
            alive[b] = False
            node[a] = k + len(merges) - 1
            standing[a] |= standing[b]
    return ClusterTree(np.asarray(clustering.centers, np.float32), np.asarray(merges, np.int64).reshape(-1, 2),
                       np.asarray(links_made, np.float64), int(clustering.background))
