"""The clusters' hierarchy and the coarser/finer selection steps (issue 38, point 3)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cgc_core.cluster import Clustering
from cgc_core.config import EvaluateConfig
from cgc_core.hierarchy import (ClusterTree, build_cluster_tree, cluster_contacts, cluster_contacts_reference,
                                cluster_links, region_votes)
from cgc_core.selection import Selector


def _grid(x0, x1, y0, y1, z0, z1):
    return np.stack(np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), np.arange(z0, z1), indexing="ij"), -1).reshape(-1, 3)


def _toy():
    """An object of two parts joined along a 10 × 10 seam (0, 1), an object that touches it at one
    corner (2), and a background slab under all of them (3)."""
    parts = [_grid(0, 5, 0, 10, 1, 11), _grid(5, 10, 0, 10, 1, 11), _grid(10, 15, 10, 15, 11, 16), _grid(-5, 20, -5, 20, 0, 1)]
    return _clustered(parts, background=3, noise=0.05)


def _clustered(parts, background, noise=0.0):
    """A `Clustering` with one cluster per point set of `parts` (random unit centres, features
    around them with `noise`), its features and the points."""
    means = np.concatenate(parts).astype(np.float32)
    labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)]).astype(np.int64)
    centers = F.normalize(torch.randn(len(parts), 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    features = centers[torch.as_tensor(labels)] + noise * torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(1))
    clustering = Clustering(labels, centers.numpy(), np.bincount(labels), len(labels), background=background)
    return clustering, features, torch.as_tensor(means)


def test_contacts_equal_the_pairwise_reference():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 4, (150, 3))
    labels = rng.integers(-1, 4, 150)
    fast = cluster_contacts(points, labels, 4, 0.7)
    np.testing.assert_array_equal(fast, cluster_contacts_reference(points, labels, 4, 0.7))
    assert fast.sum() > 0 and (np.diag(fast) == 0).all()


def test_links_are_pairs_per_member_of_the_smaller_group_times_feature_agreement():
    contacts = np.array([[0, 30], [30, 0]], float)
    same = cluster_links(contacts, np.array([100.0, 10.0]), np.array([[1.0, 0.0], [2.0, 0.0]]))
    np.testing.assert_allclose(same, [[0, 3.0], [3.0, 0]])  # 30 pairs / 10 members, agreement 1
    opposite = cluster_links(contacts, np.array([100.0, 10.0]), np.array([[1.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(opposite, 0.0)


def test_parts_joined_along_a_seam_merge_first_and_the_background_never_merges():
    clustering, features, means = _toy()
    tree = build_cluster_tree(clustering, features, means, min_link=0.0)
    # The seam's parts first; the corner-touching object later, with a far weaker link.
    assert sorted(tree.merges[0].tolist()) == [0, 1]
    assert len(tree.merges) == 2 and sorted(tree.leaves(5)) == [0, 1, 2]
    assert tree.links[1] < 0.1 * tree.links[0]
    assert all(3 not in tree.leaves(4 + m) for m in range(len(tree.merges)))  # background stays out
    # With a floor between the two links, the touching object stays its own root.
    floored = build_cluster_tree(clustering, features, means, min_link=0.5 * tree.links[0])
    assert floored.merges.tolist() == [tree.merges[0].tolist()]
    assert floored.steps(2) == [[2]] and floored.steps(0) == [[0], [0, 1]] and floored.steps(1) == [[1], [0, 1]]


def test_step_features_grow_from_the_clicked_part_and_clamp_at_the_root(tmp_path):
    clustering, features, means = _toy()
    tree = build_cluster_tree(clustering, features, means, min_link=0.0)
    query = torch.as_tensor(clustering.centers[1])
    assert tree.start_leaf(query) == 1 and tree.depth(query) == 2
    assert len(tree.step_features(query, 0)) == 1 and torch.equal(tree.step_features(query, 0)[0], query)
    one = tree.step_features(query, 1)
    assert len(one) == 3 and all(any(torch.allclose(f, torch.as_tensor(clustering.centers[k])) for f in one) for k in (0, 1))
    assert len(tree.step_features(query, 9)) == 1 + 3  # clamped at the root: parts 0, 1 and object 2
    with pytest.raises(ValueError, match="steps must be >= 0"):
        tree.step_features(query, -1)
    # The background is never a click's start, even when the query is its centre.
    assert tree.start_leaf(torch.as_tensor(clustering.centers[3])) != 3
    # The 3D selection of a step is the union of its queries: the whole object, not the background.
    params = {"features": features, "means": means, "opacities": torch.full((len(means),), 5.0)}
    selector = Selector(threshold=0.9, outlier_std_ratio=None)
    picked = selector.gaussians(params, tree.step_features(query, 1))
    np.testing.assert_array_equal(picked, np.isin(clustering.labels, [0, 1]))
    # Saved and read back unchanged; a damaged file is named.
    again = ClusterTree.from_json(tree.to_json(tmp_path / "tree.json"))
    assert again.merges.tolist() == tree.merges.tolist() and again.background == 3
    np.testing.assert_allclose(again.centers, tree.centers, atol=1e-6)
    empty = ClusterTree(np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64), np.zeros(0))  # nothing clustered
    assert ClusterTree.from_json(empty.to_json(tmp_path / "empty.json")).centers.shape == (0, 8)
    assert empty.depth(query) == 0 and len(empty.step_features(query, 2)) == 1
    (tmp_path / "bad.json").write_text(json.dumps({"centers": []}))
    with pytest.raises(ValueError, match="bad.json: not a readable cluster tree"):
        ClusterTree.from_json(tmp_path / "bad.json")


def test_click_oracle_steps_protocol_takes_steps_while_the_grounding_iou_rises(tiny_scene_dir, tmp_path):
    from cgc_core.evaluate import evaluate_scene
    from cgc_core.scene import load_scene

    scene = load_scene(tiny_scene_dir, name="tiny")
    n_ids = len(json.loads((tiny_scene_dir / "ground_truth" / "scene.json").read_text())["objects"]) + 1

    def part_features(view):  # object 1's right half has a feature of its own (a second part)
        ids = torch.as_tensor(np.array(Image.open(tiny_scene_dir / "ground_truth" / f"instance_{view}")), dtype=torch.long)
        features = F.one_hot(ids, n_ids + 1).float()
        cols = torch.nonzero(ids == 1)[:, 1]
        if len(cols):
            right = (ids == 1) & (torch.arange(ids.shape[1]) >= cols.float().median())[None]
            features[right] = F.one_hot(torch.tensor(n_ids), n_ids + 1).float()
        return features

    tree = ClusterTree(np.eye(n_ids + 1, dtype=np.float32), np.array([[1, n_ids]]), np.array([1.0]), background=0)
    cfg = EvaluateConfig(protocol=["click-oracle", "click-oracle-steps"])
    table, results = evaluate_scene(scene, part_features, tmp_path, cfg, Selector(threshold=0.7), tree=tree)
    one, steps = (results[p]["scenes"][scene.name]["prompts"] for p in ("click-oracle", "click-oracle-steps"))
    name_1 = json.loads((tiny_scene_dir / "ground_truth" / "scene.json").read_text())["objects"][0]["name"]
    assert results["click-oracle-steps"]["steps"][name_1] == 1  # the other part joins
    assert one[name_1]["iou"] < 0.8 and steps[name_1]["iou"] == pytest.approx(1.0)
    others = [p for p in steps if p != name_1]
    assert all(results["click-oracle-steps"]["steps"][p] == 0 for p in others)  # nothing to gain: no step
    assert set(table.loc[table["protocol"] == "click-oracle-steps", "steps"]) <= {0, 1}
    with pytest.raises(ValueError, match="needs the cluster tree"):
        evaluate_scene(scene, part_features, tmp_path / "x", cfg, Selector(threshold=0.7))


def test_region_votes_join_the_clusters_one_region_holds_and_no_others():
    dominant = np.full((20, 30), -1)
    dominant[:, :10] = 0           # the table: in no region
    dominant[2:10, 10:20] = 1      # an object's base ...
    dominant[10:18, 10:20] = 2     # ... and its top, one region
    dominant[2:8, 22:28] = 3       # another object, its own region
    dominant[18:20, 10:12] = 3     # and 4 of its pixels in the first region: too few to count
    regions = np.zeros((20, 30), int)
    regions[2:20, 10:20] = 1
    regions[2:8, 22:28] = 2
    together, seen = region_votes(dominant, regions, 4)
    expected = np.zeros((4, 4))
    expected[1, 2] = expected[2, 1] = 1.0
    np.testing.assert_array_equal(together, expected)
    np.testing.assert_array_equal(seen, [True, True, True, True])
    regions[2:8, 22:28] = 1  # one region over both objects: the three clusters in it are joined
    assert region_votes(dominant, regions, 4)[0][1, 3] == 1.0


def test_view_links_join_a_part_the_3d_contacts_leave_apart_only_above_their_floor():
    clustering, features, means = _toy()
    seam = build_cluster_tree(clustering, features, means, min_link=0.0).links[0]
    floor = 0.5 * seam  # between the seam's 3D link and the corner-touching object's (under a tenth of it)
    assert build_cluster_tree(clustering, features, means, min_link=floor).steps(2) == [[2]]
    view_links = np.zeros((4, 4))
    view_links[0, 2] = view_links[2, 0] = 0.8 * seam  # object 2 shown in one region with part 0
    joined = build_cluster_tree(clustering, features, means, min_link=floor, view_links=view_links,
                                min_view_link=0.5 * seam)
    # The seam first, then object 2 joins the group of 0 and 1 by part 0's view link (single linkage).
    assert joined.steps(2) == [[2], [0, 1, 2]] and joined.links.tolist() == pytest.approx([seam, 0.8 * seam])
    ignored = build_cluster_tree(clustering, features, means, min_link=floor, view_links=view_links,
                                 min_view_link=0.9 * seam)  # the view link under its own floor
    assert ignored.steps(2) == [[2]]


def _box(lo, hi, spacing=0.02):
    axes = [np.arange(a + spacing / 2, b, spacing) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def test_view_group_links_render_a_stacked_object_as_one_region_and_a_separate_one_apart():
    from cgc_core.config import DepthSplitConfig
    from cgc_core.hierarchy import view_group_links
    from cgc_core.scene.model import Camera

    # A table (cluster 0), an object of two stacked parts (1 below, 2 on top) and another object (3).
    parts = [_box((-0.6, -0.6, -0.02), (0.6, 0.6, 0.0)), _box((-0.3, -0.1, 0.0), (-0.1, 0.1, 0.12)),
             _box((-0.3, -0.1, 0.12), (-0.1, 0.1, 0.24)), _box((0.15, -0.1, 0.0), (0.35, 0.1, 0.16))]
    means = torch.as_tensor(np.concatenate(parts), dtype=torch.float32)
    labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    n = len(means)
    params = {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
              "scales": torch.full((n, 3), float(np.log(0.015))), "opacities": torch.full((n,), 5.0),
              "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3), "features": torch.zeros(n, 4)}
    cameras = []
    for angle in (0.0, 0.6, -0.6):  # orbiting, looking down at the table
        eye = np.array([1.2 * np.sin(angle), -1.2 * np.cos(angle), 0.9])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        world_to_camera = np.eye(4)
        world_to_camera[:3, :3], world_to_camera[:3, 3] = rotation, -rotation @ eye
        cameras.append(Camera(np.array([[220.0, 0, 80], [0, 220.0, 60], [0, 0, 1]]), world_to_camera, 160, 120, f"v{angle}"))
    links = view_group_links(params, cameras, labels, 4, DepthSplitConfig(), backend="torch")
    np.testing.assert_allclose(links, links.T)
    assert links[1, 2] == 1.0  # one region in every view
    assert links[1, 3] == 0.0 and links[2, 3] == 0.0 and links[0].max() == 0.0  # apart; the table in no region


def test_support_votes_equal_the_pairwise_reference():
    from cgc_core.hierarchy import support_votes, support_votes_reference

    rng = np.random.default_rng(3)
    points = rng.uniform(0, 3, (120, 3))
    labels = rng.integers(-1, 4, 120)
    up = np.array([0.3, -0.2, 0.9]) / np.linalg.norm([0.3, -0.2, 0.9])
    fast = support_votes(points, labels, 4, up, 0.5)
    np.testing.assert_array_equal(fast, support_votes_reference(points, labels, 4, up, 0.5))
    assert fast[:, :4].sum() > 0 and fast[:, 4].sum() > 0 and (np.diag(fast) == 0).all()
    assert fast.sum() == (labels >= 0).sum()  # one vote per labelled point
    only = support_votes(points, labels, 4, up, 0.5, clusters=[2])
    np.testing.assert_array_equal(only[2], fast[2])
    assert only[[0, 1, 3]].sum() == 0


def _lamp():
    """A lamp's base (0) standing on a table (3, the background) and its shade (1) floating over
    the base (the stem too thin to be there); another object standing on the table beside them
    (2); a floating cluster over the bare table (4)."""
    parts = [_grid(0, 6, 0, 6, 1, 3), _grid(-1, 7, -1, 7, 8, 10), _grid(12, 17, 0, 5, 1, 6),
             _grid(-10, 30, -10, 30, 0, 1), _grid(15, 20, 15, 20, 10, 12)]
    return _clustered(parts, background=3)


def test_a_floating_part_joins_what_lies_beneath_it_and_nothing_else_does():
    clustering, features, means = _lamp()
    up = np.array([0.0, 0.0, 1.0])
    assert build_cluster_tree(clustering, features, means).steps(1) == [[1]]  # 3D contact alone: no link
    tree = build_cluster_tree(clustering, features, means, up=up)
    assert tree.steps(1) == [[1], [0, 1]] and tree.steps(0) == [[0], [0, 1]]
    assert tree.links.tolist() == pytest.approx([1.0])  # every point of the shade has the base beneath it
    assert tree.steps(2) == [[2]] and tree.steps(4) == [[4]]  # stands on the table; floats over the table
    # Upside down the base hangs from the table and the shade lies beneath it: the base floats (the
    # background it touches holds nothing up) and joins the shade; the shade has nothing beneath.
    assert build_cluster_tree(clustering, features, means, up=-up).steps(1) == [[1], [0, 1]]
    assert build_cluster_tree(clustering, features, means, up=-up).steps(2) == [[2]]
    assert build_cluster_tree(clustering, features, means, up=up, min_support=0.0).steps(1) == [[1]]  # off


def test_scene_up_is_the_cameras_mean_up_direction():
    from cgc_core.hierarchy import scene_up
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    K = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    cameras = [Camera(K, look_at(np.array([np.cos(a), np.sin(a), 0.6]), np.zeros(3)), 100, 100, f"v{a}")
               for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    np.testing.assert_allclose(scene_up(cameras), [0.0, 0.0, 1.0], atol=1e-9)
    assert scene_up([]) is None  # no direction: the tree goes without support links


def test_standing_clusters_read_the_foot_above_the_plane_and_what_lies_beneath():
    from cgc_core.hierarchy import standing_clusters

    base = _grid(0, 10, 0, 10, 1, 3)
    parts = [np.concatenate([base, base * [1, 1, -1]]),  # a lamp's base and its reflection beneath the table
             np.concatenate([_grid(4, 6, 4, 6, 3, 12), _grid(0, 2, 0, 2, 1, 2)]),  # its stem, with a bit of the base
             _grid(20, 25, 0, 5, 1, 6),  # a box beside it
             np.concatenate([_grid(0, 10, 0, 10, 12, 14), [[30, 30, 1]]]),  # a shade over the stem; one stray low
             _grid(-5, 30, -5, 30, 0, 1) + [0, 0, 0.5]]  # the table, just over the plane
    points = np.concatenate(parts).astype(float)
    labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    plane = (np.zeros(3), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(standing_clusters(points, labels, 5, plane, 2.5, 2.0, background=4),
                                  [True, False, True, False, False])
    # The table is what lies beneath the base and the box: without it as the background they rest on
    # a cluster, and only the table stands.
    np.testing.assert_array_equal(standing_clusters(points, labels, 5, plane, 2.5, 2.0), [False] * 4 + [True])


def test_two_groups_standing_side_by_side_on_the_support_never_join():
    clustering, features, means = _toy()  # 0 and 1 side by side on the slab along a seam; 2 above them
    support = (np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.5)
    assert sorted(build_cluster_tree(clustering, features, means, min_link=0.0).leaves(5)) == [0, 1, 2]
    tree = build_cluster_tree(replace(clustering, support=support), features, means, min_link=0.0)
    assert tree.merges.tolist() == [[1, 2]]  # the part resting on 1 joins it; 0 stays apart however long the seam
    assert tree.steps(2) == [[2], [1, 2]] and tree.steps(0) == [[0]]
    clustering, features, means = _lamp()  # a floating shade still joins the base it rests on
    on_table = replace(clustering, support=support)
    assert build_cluster_tree(on_table, features, means, up=np.array([0.0, 0.0, 1.0])).steps(1) == \
        [[1], [0, 1]]


def test_a_ball_whose_underside_is_missing_still_stands_while_an_arm_above_the_table_does_not():
    # A box on the table (0); a ball beside it whose cluster starts 1.5 contact distances (touch = 2
    # spacings) over the flat band, its underside missing as a mirror ball's is (1); a lamp's arm on
    # the box's other side starting 2.2 over it (2); the table (3). `FOOT_ALLOWANCE` lies between.
    parts = [_grid(0, 6, 0, 6, 1, 6), _grid(6, 10, 0, 6, 0, 3) + [0, 0, 3.5], _grid(-3, 0, 0, 6, 0, 4) + [0, 0, 4.9],
             _grid(-10, 20, -10, 20, 0, 1)]
    clustering, features, means = _clustered(parts, background=3)
    support = (np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.5)
    assert sorted(build_cluster_tree(clustering, features, means, min_link=0.0).leaves(5)) == [0, 1, 2]
    tree = build_cluster_tree(replace(clustering, support=support), features, means, min_link=0.0)
    assert tree.merges.tolist() == [[0, 2]] and tree.steps(1) == [[1]]


def test_a_reflection_under_the_table_joins_nothing():
    # An object on a glossy table (0), its mirror image under the table (1), a part resting on the
    # object (2), and the table (3, the background).
    parts = [_grid(0, 6, 0, 6, 1, 6), _grid(0, 6, 0, 6, -5, 0), _grid(0, 6, 0, 6, 6, 9), _grid(-10, 16, -10, 16, 0, 1)]
    clustering, features, means = _clustered(parts, background=3)
    support = (np.array([0.0, 0.0, 0.5]), np.array([0.0, 0.0, 1.0]), 0.5)
    assert sorted(build_cluster_tree(clustering, features, means, min_link=0.0).leaves(5)) == [0, 1, 2]
    tree = build_cluster_tree(replace(clustering, support=support), features, means, min_link=0.0)
    assert tree.merges.tolist() == [[0, 2]] and tree.steps(1) == [[1]]


def test_support_votes_over_only_skip_a_cluster_whose_side_rises_beside_the_point():
    from cgc_core.hierarchy import support_votes, support_votes_reference

    rng = np.random.default_rng(5)
    points = rng.uniform(0, 3, (120, 3))
    labels = rng.integers(-1, 4, 120)
    up = np.array([0.2, 0.1, 0.95]) / np.linalg.norm([0.2, 0.1, 0.95])
    over = support_votes(points, labels, 4, up, 0.6, over_only=True)
    np.testing.assert_array_equal(over, support_votes_reference(points, labels, 4, up, 0.6, over_only=True))
    assert over[:, 4].sum() > support_votes(points, labels, 4, up, 0.6)[:, 4].sum()  # fewer points over something
    # A point beside a wall (the wall rises higher within the radius) is not over it; one over its top is.
    wall = np.array([[0.0, 0, z] for z in range(5)])
    beside, above = np.array([[0.5, 0, 2.0]]), np.array([[0.5, 0, 6.0]])
    points = np.concatenate([wall, beside, above])
    labels = np.array([0] * 5 + [1, 2])
    votes = support_votes(points, labels, 3, np.array([0.0, 0, 1]), 1.0, over_only=True)
    assert votes[1].tolist() == [0, 0, 0, 1] and votes[2].tolist() == [1, 0, 0, 0]


def test_a_ball_beside_a_lower_box_that_it_overhangs_stands_on_the_table():
    # A box on the table (0); a ball (1) standing on the table beside it, its upper half reaching over
    # the box's top (as the realistic preset's chrome ball over its checker box); a lamp's arm (2) over
    # the box's other side, resting on its top; the table (3). Counted over every point beneath, the
    # box lies beneath most of the ball, and the ball would join it.
    box = _grid(0, 8, 0, 6, 1, 5)
    ball = np.concatenate([_grid(8, 13, 0, 6, 1, 5), _grid(4, 12, 0, 6, 5, 8)])
    arm = _grid(-1, 2, 0, 6, 5, 9)
    parts = [box, ball, arm, _grid(-10, 20, -10, 20, 0, 1)]
    points = np.concatenate(parts).astype(float)
    labels = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)])
    plane, up = (np.zeros(3), np.array([0.0, 0.0, 1.0])), np.array([0.0, 0.0, 1.0])
    from cgc_core.hierarchy import standing_clusters, support_votes

    everything_beneath = support_votes(points, labels, 4, up, 2.0)
    assert everything_beneath[1, 0] > 0.5 * len(ball)  # the box "beneath" most of the ball's points
    np.testing.assert_array_equal(standing_clusters(points, labels, 4, plane, 4.0, 2.0, background=3),
                                  [True, True, False, False])
    clustering, features, means = _clustered(parts, background=3)
    tree = build_cluster_tree(replace(clustering, support=(np.zeros(3), up, 0.5)), features, means, min_link=0.0)
    assert tree.steps(1) == [[1]] and tree.steps(2) == [[2], [0, 2]]
