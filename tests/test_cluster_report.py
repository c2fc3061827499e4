"""3D clustering, selection and export; the generated report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cgc_core.cluster import camera_look_at, cluster_gaussians, export_clusters, export_selection, render_clusters
from cgc_core.metrics import scores_against_truth
from cgc_core.selection import remove_spatial_outliers, select_gaussians
from cgc_core.config import ClusterConfig, ReportConfig
from cgc_core.gaussians import load_ply, read_ply_attribute
from cgc_core.report import build_report


def _feature_cloud(n_groups=5, per_group=800, dim=16, noise=0.15, seed=0):
    """Unit-ish features around well-separated random directions, with known group ids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_groups, dim, generator=g), dim=-1)
    truth = torch.arange(n_groups).repeat_interleave(per_group)
    features = centres[truth] + noise * torch.randn(len(truth), dim, generator=g)
    means = torch.randn(len(truth), 3, generator=g) * 0.1 + torch.randn(n_groups, 3, generator=g)[truth] * 3
    return features * 3.0, means, truth.numpy()  # raw features need not be unit length


def _params(features, means):
    n = len(means)
    g = torch.Generator().manual_seed(1)
    return {"means": means.float(), "quats": torch.randn(n, 4, generator=g), "scales": torch.full((n, 3), -3.0),
            "opacities": torch.full((n,), 2.0), "sh0": torch.rand(n, 1, 3, generator=g), "shN": torch.zeros(n, 15, 3),
            "features": features.float()}


def _ring_cameras(n: int = 8, radius: float = 2.0, height: float = 1.0, forward: bool = False):
    """Cameras on a ring around the origin looking at it (or, `forward`, in a row all looking along +y)."""
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    cameras = []
    for k in range(n):
        angle = 2 * np.pi * k / n
        eye = (np.array([0.2 * k, -3.0, height]) if forward
               else np.array([radius * np.cos(angle), radius * np.sin(angle), height]))
        target = eye + np.array([0.0, 1.0, 0.0]) if forward else np.zeros(3)
        cameras.append(Camera(np.eye(3), look_at(eye, target), 4, 4, f"view_{k:03d}.png"))
    return cameras


def test_camera_look_at_finds_an_orbits_centre_and_refuses_a_forward_facing_capture():
    point, radius = camera_look_at(_ring_cameras(radius=2.0, height=1.0))
    np.testing.assert_allclose(point, [0.0, 0.0, 0.0], atol=1e-9)
    assert radius == pytest.approx(np.sqrt(5.0))
    assert camera_look_at(_ring_cameras(forward=True)) is None
    assert camera_look_at(_ring_cameras(n=1)) is None


def test_compact_clusters_beyond_the_cameras_merge_into_the_background():
    # Two objects at the centre of a ring of cameras (radius 2), a floor, and two compact pictures
    # on walls 4 away: five feature groups, three things a user asks for.
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    floor = torch.rand(1600, 3, generator=g) * torch.tensor([10.0, 10.0, 0.0]) - torch.tensor([5.0, 5.0, 0.0])
    centres = ([0.5, 0.3, 0.3], [-0.4, -0.2, 0.3], [4.0, 0.0, 1.0], [0.0, -4.0, 1.0])
    blobs = [torch.randn(300, 3, generator=g) * 0.1 + torch.tensor(c) for c in centres]
    means = torch.cat([floor, *blobs])
    group = torch.cat([torch.zeros(1600, dtype=torch.long)] + [torch.full((300,), k + 1) for k in range(4)])
    features = directions[group] + 0.05 * torch.randn(len(group), 16, generator=g)
    truth = np.where(group.numpy() <= 2, group.numpy(), 0)  # the pictures are background
    look_at = camera_look_at(_ring_cameras(radius=2.0, height=1.0))
    cfg = ClusterConfig(min_cluster_size=50)
    kept = cluster_gaussians(features, means, cfg=cfg)  # no cameras: only the spread rule
    merged = cluster_gaussians(features, means, cfg=cfg, look_at=look_at)
    off = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50, background_beyond_cameras=0.0),
                            look_at=look_at)
    assert kept.n_clusters == off.n_clusters == 5 and adjusted_rand_score(truth, kept.labels) < 0.9
    assert merged.n_clusters == 3 and adjusted_rand_score(truth, merged.labels) == pytest.approx(1.0)
    # Beyond the ring alone merges the two pictures even with the spread rule off.
    alone = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50, background_spread=0.0),
                              look_at=look_at)
    assert alone.n_clusters == 4 and (alone.labels[1600 + 600:] == alone.background).all()


def test_a_patch_flat_on_the_table_merges_into_the_background_and_what_stands_on_it_stays():
    # A floor, two objects standing on it, and a patch of the floor the masks cut apart (a shadow:
    # its own features, compact, within the ring of cameras, 2 mm thick): four feature groups,
    # three things a user asks for.
    from cgc_core.hierarchy import scene_up

    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    floor = torch.rand(1600, 3, generator=g) * torch.tensor([10.0, 10.0, 0.0]) - torch.tensor([5.0, 5.0, 0.0])
    objects = [torch.rand(300, 3, generator=g) * torch.tensor([0.3, 0.3, 0.4]) + torch.tensor(c)
               for c in ([0.3, 0.2, 0.05], [-0.6, -0.3, 0.05])]
    patch = torch.rand(300, 3, generator=g) * torch.tensor([0.3, 0.3, 0.002]) + torch.tensor([0.0, -0.6, -0.001])
    # The floor around the first object's foot, trained to its feature (the masks gave it its contact shadow).
    shadow = torch.rand(60, 3, generator=g) * torch.tensor([0.5, 0.5, 0.002]) + torch.tensor([0.2, 0.1, -0.001])
    means = torch.cat([floor, *objects, patch, shadow])
    group = torch.cat([torch.full((n,), k) for k, n in enumerate((1600, 300, 300, 300))] + [torch.full((60,), 1)])
    features = directions[group] + 0.05 * torch.randn(len(group), 16, generator=g)
    truth = np.where(group.numpy() == 3, 0, group.numpy())  # the patch is the floor's
    truth[-60:] = 0  # and so is the shadow
    cameras = _ring_cameras(radius=2.0, height=1.0)
    look_at, up = camera_look_at(cameras), scene_up(cameras)
    np.testing.assert_allclose(up, [0.0, 0.0, 1.0], atol=1e-9)
    cfg = ClusterConfig(min_cluster_size=50)
    merged = cluster_gaussians(features, means, cfg=cfg, look_at=look_at, up=up)
    assert merged.n_clusters == 3 and adjusted_rand_score(truth, merged.labels) == pytest.approx(1.0)
    assert (merged.labels[-360:] == merged.background).all() and sorted(merged.sizes.tolist()) == [300, 300, 1960]
    point, normal, band = merged.support  # the floor's plane, kept for the cluster tree
    assert abs(point[2]) < 0.01 and abs(normal[2]) == pytest.approx(1.0, abs=1e-3) and band == pytest.approx(0.01 * look_at[1])
    kept = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50, background_flat=0.0),
                             look_at=look_at, up=up)
    assert kept.n_clusters == 4 and adjusted_rand_score(truth, kept.labels) < 0.95
    assert (kept.labels[-60:] == kept.labels[1600]).all()  # without the rule the shadow is the object's
    # Without the cameras' up direction there is no table to lie on: the patch stays.
    assert cluster_gaussians(features, means, cfg=cfg, look_at=look_at).n_clusters == 4


def test_a_cluster_split_apart_keeps_its_compact_piece_when_the_far_one_merges_into_the_background():
    # A lamp's shade at the centre of a ring of cameras (radius 2) shares its feature with a wide
    # picture on a wall 4 away; a second object has its own feature, and a floor.
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    floor = torch.rand(1600, 3, generator=g) * torch.tensor([10.0, 10.0, 0.0]) - torch.tensor([5.0, 5.0, 0.0])
    shade = torch.randn(200, 3, generator=g) * 0.05 + torch.tensor([0.3, 0.0, 0.5])
    picture = torch.rand(600, 3, generator=g) * torch.tensor([0.0, 3.0, 2.0]) + torch.tensor([4.0, -1.5, 0.5])
    other = torch.randn(300, 3, generator=g) * 0.05 + torch.tensor([-0.4, -0.2, 0.3])
    means = torch.cat([floor, shade, picture, other])
    group = torch.cat([torch.full((n,), k) for k, n in ((0, 1600), (1, 200), (1, 600), (2, 300))])
    features = directions[group] + 0.05 * torch.randn(len(group), 16, generator=g)
    truth = np.r_[np.zeros(1600), np.ones(200), np.zeros(600), np.full(300, 2)]
    look_at = camera_look_at(_ring_cameras(radius=2.0, height=1.0))
    split = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50), look_at=look_at)
    whole = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50, split_gap=0.0), look_at=look_at)
    assert split.n_clusters == 3 and adjusted_rand_score(truth, split.labels) == pytest.approx(1.0)
    assert len(set(split.labels[1600:1800])) == 1 and split.labels[1600] != split.background
    assert whole.n_clusters == 2 and (whole.labels[1600:1800] == whole.background).all()  # the shade went with it


def test_split_apart_gives_crumbs_to_the_nearest_piece_and_strays_to_what_they_lie_against():
    from cgc_core.cluster import Clustering, split_apart

    rng = np.random.default_rng(0)
    near, far = rng.normal(0, 0.05, (100, 3)), rng.normal(0, 0.05, (60, 3)) + [5.0, 0, 0]
    # A crumb beside the far piece; a stray of cluster 0 (a lamp's shade of one feature with a far
    # majority) lying against cluster 1, nearer it than any piece of its own.
    crumb, stray = rng.normal(0, 0.01, (5, 3)) + [5.4, 0, 0], np.array([[0.0, 2.2, 0.0]])
    points = np.r_[near, far, crumb, stray, rng.normal(0, 0.05, (40, 3)) + [0, 3.0, 0]]
    labels = np.r_[np.zeros(166, np.int64), np.ones(40, np.int64)]
    unit = torch.nn.functional.normalize(torch.randn(len(points), 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    clustering = Clustering(labels, np.eye(2, 4, dtype=np.float32), np.bincount(labels), len(points))
    fitted = np.r_[0:160, 166:206]  # the crumb and the stray were not fitted
    out = split_apart(clustering, unit, torch.as_tensor(points), fitted, gap=0.5, min_part=30)
    assert out.n_clusters == 3 and out.sizes.tolist() == [100, 41, 65]
    assert (out.labels[:100] == 0).all() and (out.labels[100:165] == 2).all()  # the crumb joins the far piece
    assert out.labels[165] == 1  # nothing of its own within the gap: it goes with cluster 1, which it lies against
    np.testing.assert_allclose(out.centers[2], torch.nn.functional.normalize(unit[100:160].mean(0), dim=0).numpy(),
                               rtol=1e-5)
    # The far piece too small to be a cluster: it and its crumb are strays whose nearest Gaussian
    # not a stray is still cluster 0's (5 away; cluster 1's 5.8), and the one against cluster 1 moves.
    small = split_apart(clustering, unit, torch.as_tensor(points), fitted, gap=0.5, min_part=61)
    assert small.n_clusters == 2 and (small.labels[:165] == 0).all() and small.labels[165] == 1
    np.testing.assert_array_equal(small.centers, clustering.centers)  # no cluster split: HDBSCAN's centres
    assert split_apart(clustering, unit, torch.as_tensor(points), fitted, gap=6.0, min_part=30) is clustering


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pieces_equal_their_pairwise_reference(seed):
    from cgc_core.cluster import _pieces, pieces_reference

    rng = np.random.default_rng(seed)
    points = np.r_[rng.uniform(0, 4, (60, 3)), rng.normal(0, 0.1, (20, 3)) + 8]
    for gap in (0.3, 0.8, 2.0):
        fast, slow = _pieces(points, gap), pieces_reference(points, gap)
        first = {p: np.flatnonzero(fast == p)[0] for p in np.unique(fast)}  # renumber in first-point order
        order = {p: k for k, p in enumerate(sorted(first, key=first.get))}
        assert [order[p] for p in fast] == slow.tolist()
        assert len(np.unique(fast)) > 1


def test_the_dominant_plane_is_the_most_populated_one_or_the_most_populated_upright_one():
    from cgc_core.masks.depth_split import dominant_plane

    rng = np.random.default_rng(0)
    table = np.c_[rng.uniform(-1, 1, (1000, 2)), rng.normal(0, 1e-3, 1000)] @ _rotation_x(10).T
    wall = np.c_[np.full(2000, 2.0) + rng.normal(0, 1e-3, 2000), rng.uniform(-1, 1, (2000, 2))]
    clutter = rng.uniform(-1, 1, (300, 3))
    points = np.concatenate([table, wall, clutter])
    centre, normal = dominant_plane(points, tolerance=0.01)
    assert abs(normal @ [1.0, 0.0, 0.0]) > 0.999 and centre[0] == pytest.approx(2.0, abs=0.01)
    centre, normal = dominant_plane(points, tolerance=0.01, up=np.array([0.0, 0.0, 1.0]), max_tilt=30)
    np.testing.assert_allclose(normal, _rotation_x(10) @ [0.0, 0.0, 1.0], atol=1e-3)  # towards up
    assert dominant_plane(points[:2], tolerance=0.01) is None


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


@pytest.mark.parametrize("max_fit_points", [None, 1500])
def test_clustering_recovers_known_groups(max_fit_points):
    features, means, truth = _feature_cloud()
    result = cluster_gaussians(features, means, cfg=ClusterConfig(max_fit_points=max_fit_points, min_cluster_size=50))
    assert result.n_clusters == 5
    assert adjusted_rand_score(truth, result.labels) >= 0.95
    assert result.sizes.sum() == len(truth) and result.n_fitted == (len(truth) if max_fit_points is None else 1500)


def test_spread_out_clusters_merge_into_one_background_and_objects_stay():
    # Two compact objects and a floor whose two halves have different features (as masks that cut
    # a floor in two would train them): four feature groups, three things a user asks for.
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    floor = torch.rand(1600, 3, generator=g) * torch.tensor([10.0, 10.0, 0.0]) - torch.tensor([5.0, 5.0, 0.0])
    objects = [torch.randn(300, 3, generator=g) * 0.1 + torch.tensor(c) for c in ([1.0, 1.0, 0.5], [-2.0, 1.0, 0.5])]
    means = torch.cat([floor, *objects])
    group = torch.cat([(floor[:, 0] > 0).long(), torch.full((300,), 2), torch.full((300,), 3)])
    features = directions[group] + 0.05 * torch.randn(len(group), 16, generator=g)
    truth = np.where(group.numpy() >= 2, group.numpy() - 1, 0)  # 0: background, 1 and 2: the objects
    split = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50, background_spread=0.0))
    merged = cluster_gaussians(features, means, cfg=ClusterConfig(min_cluster_size=50))  # the default 0.2
    assert split.n_clusters == 4 and split.background == -1
    assert merged.n_clusters == 3 and adjusted_rand_score(truth, merged.labels) == pytest.approx(1.0)
    assert adjusted_rand_score(truth, split.labels) < 0.8
    diverged = means.clone()
    diverged[5] = float("nan")  # one Gaussian whose training diverged does not hide the spreads
    assert cluster_gaussians(features, diverged, cfg=ClusterConfig(min_cluster_size=50)).n_clusters == 3
    assert (merged.labels[:1600] == merged.background).all() and (merged.labels[1600:] != merged.background).all()
    assert sorted(merged.sizes.tolist()) == [300, 300, 1600]
    background_centre = torch.from_numpy(merged.centers[merged.background])
    assert torch.allclose(background_centre.norm(), torch.tensor(1.0), atol=1e-5)
    # Without positions there is nothing to measure a spread by: every cluster stays.
    assert cluster_gaussians(features, cfg=ClusterConfig(min_cluster_size=50)).n_clusters == 4


def test_faint_gaussians_are_labelled_but_not_fitted_and_noise_can_be_kept():
    features, means, truth = _feature_cloud(n_groups=3, per_group=300)
    opacities = torch.ones(len(truth))
    opacities[::10] = 0.01
    features = features.clone()
    features[::37] = torch.randn(len(features[::37]), 16) * 3  # scattered outliers: HDBSCAN noise
    kept = cluster_gaussians(features, opacities=opacities, cfg=ClusterConfig(min_cluster_size=30, noise="keep"))
    assert kept.n_fitted == int((opacities >= 0.1).sum())
    assert (kept.labels == -1).any()
    nearest = cluster_gaussians(features, opacities=opacities, cfg=ClusterConfig(min_cluster_size=30))
    assert (nearest.labels >= 0).all() and nearest.n_clusters == 3
    with pytest.raises(ValueError, match="nothing to cluster"):
        cluster_gaussians(features, opacities=torch.zeros(len(truth)))


def test_selection_by_query_and_spatial_outlier_removal():
    features, means, truth = _feature_cloud(n_groups=3, per_group=300, noise=0.08)
    query = features[truth == 1].mean(0)
    keep = select_gaussians(features, query, 0.7, outlier_std_ratio=None)
    assert (keep == (truth == 1)).all()
    # One Gaussian of the object's feature far away from it: dropped by the spatial cleaning.
    means = means.clone()
    stray = int(np.nonzero(truth == 1)[0][0])
    means[stray] += 50.0
    cleaned = select_gaussians(features, query, 0.7, means=means)
    assert not cleaned[stray] and cleaned.sum() == (truth == 1).sum() - 1
    points = np.random.default_rng(0).normal(size=(200, 3))
    assert remove_spatial_outliers(np.vstack([points, [[40.0, 0, 0]]]))[-1] == np.False_


def test_export_round_trips_exactly_the_selected_gaussians(tmp_path):
    features, means, truth = _feature_cloud(n_groups=3, per_group=100)
    params = _params(features, means)
    keep = truth == 2
    path = export_selection(params, keep, tmp_path / "object.ply")
    back = load_ply(path)
    for key, value in params.items():
        assert torch.allclose(back[key], value[torch.as_tensor(keep)]), key
    clustering = cluster_gaussians(features, cfg=ClusterConfig(min_cluster_size=30))
    written = export_clusters(params, clustering, tmp_path / "clusters")
    labels = read_ply_attribute(tmp_path / "clusters" / "scene_clusters.ply", "cluster")
    assert (labels == clustering.labels).all() and len(written) == 1 + clustering.n_clusters
    sizes = [len(load_ply(p)["means"]) for p in written[1:]]
    assert sizes == clustering.sizes.tolist()
    with pytest.raises(ValueError, match="nothing selected"):
        export_selection(params, np.zeros(len(truth), bool), tmp_path / "empty.ply")
    assert not (tmp_path / "empty.ply").exists()


def test_scores_against_truth_known_values():
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert scores_against_truth(truth + 7, truth)["ari"] == pytest.approx(1.0)  # label names do not matter
    scores = scores_against_truth(np.array([0, 0, 0, 1, 1, 1, 2, 2]), truth)
    assert scores["object_iou"] == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    considered = np.array([True] * 5 + [False] * 3)
    assert scores_against_truth(np.array([0, 0, 0, 1, 1, 1, 2, 2]), truth, considered)["object_iou"] == {1: 1.0}


def test_cluster_palette_render_colours_each_cluster():
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    # Two opaque blobs left and right of the view centre, labelled 0 and 1.
    means = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]).repeat_interleave(50, 0)
    means += torch.randn(100, 3, generator=torch.Generator().manual_seed(0)) * 0.02
    params = _params(torch.rand(100, 16), means)
    params["scales"][:] = -3.0
    params["opacities"][:] = 5.0
    camera = Camera(np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]), look_at(np.array([0, -3.0, 0]), np.zeros(3)),
                    64, 48, "v")
    image = render_clusters(params, np.repeat([0, 1], 50), camera, backend="torch")
    from cgc_core.cluster import cluster_palette

    palette = cluster_palette(2)
    left, right = image[24, 22], image[24, 42]
    assert np.allclose(left / left.max(), palette[0] / palette[0].max(), atol=0.05)
    assert np.allclose(right / right.max(), palette[1] / palette[1].max(), atol=0.05)


def test_instance_masks_give_every_view_the_same_cluster_ids(tmp_path):
    import json

    from PIL import Image
    from pycocotools import mask as coco_mask

    from cgc_core.cluster import export_instance_masks
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    # Two blobs (clusters 0 and 1) seen from the front and from behind: the blob on the left
    # in one view is on the right in the other, and keeps its id.
    means = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]).repeat_interleave(50, 0)
    means += torch.randn(100, 3, generator=torch.Generator().manual_seed(0)) * 0.02
    params = _params(torch.rand(100, 16), means)
    params["scales"][:] = -3.0
    params["opacities"][:] = 5.0
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    cameras = {"front.png": Camera(K, look_at(np.array([0, -3.0, 0]), np.zeros(3)), 64, 48, "front.png"),
               "back.png": Camera(K, look_at(np.array([0, 3.0, 0]), np.zeros(3)), 64, 48, "back.png")}
    labels = np.repeat([0, 1], 50)
    counts = export_instance_masks(params, labels, cameras, tmp_path, backend="torch")
    assert counts == {"views": 2, "annotations": 4, "clusters": 2}
    front = np.asarray(Image.open(tmp_path / "labels" / "front.png"))
    back = np.asarray(Image.open(tmp_path / "labels" / "back.png"))
    assert (front[24, 22], front[24, 42], front[0, 0]) == (1, 2, 0)  # cluster 0 left, cluster 1 right
    assert (back[24, 22], back[24, 42]) == (2, 1)  # seen from behind: swapped places, same ids
    coco = json.loads((tmp_path / "instances.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    for ann in coco["annotations"]:
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        label_map = np.asarray(Image.open(tmp_path / image["label_map"]))
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), label_map == ann["category_id"])


def _fake_run(tmp_path: Path, scene_dir: Path, scene_name: str, layout: str,
              protocols: tuple[str, ...] = ("click-oracle",), masks_generator: str | None = None,
              query_sources: dict[str, str] | None = None) -> tuple[Path, object]:
    """The files a run leaves for the report: evaluate (results.parquet + summary.json from real
    scoring of ground-truth-derived predictions, per protocol: shifted by 2 pixels more for each
    further protocol), cluster summary, run.json; with `masks_generator`, the masks stage's
    manifest naming it."""
    from cgc_core.config import EvaluateConfig
    from cgc_core.evaluate import prediction_path, score_predictions
    from cgc_core.metrics import average_scores
    from cgc_core.scene import load_scene
    from PIL import Image

    scene = load_scene(scene_dir, name=scene_name)
    evaluate_dir = tmp_path / "data" / scene_name / "evaluate"
    frames, per_protocol = [], {}
    for k, protocol in enumerate(protocols):
        for view in scene.test_names:
            for prompt in scene.gt_masks.get(view, {}):
                gt = scene.load_gt_mask(view, prompt)
                pred = np.roll(gt, 2 * (k + 1), axis=1)  # a shifted prediction: IoU < 1
                path = prediction_path(evaluate_dir / "predictions" / protocol, scene, view, prompt)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pred.astype(np.uint8) * 255).save(path)
        scores = score_predictions(scene, evaluate_dir / "predictions" / protocol, EvaluateConfig())
        averages = average_scores(scores)
        frames.append(pd.DataFrame([{**s.__dict__, "false_positives": json.dumps(s.false_positives),
                                     "protocol": protocol} for s in scores]))
        per_protocol[protocol] = {"miou": averages["miou"], "mbiou": averages["mbiou"], "not_detected": [],
                                  "empty_union_views": averages["empty_union_views"],
                                  "prompts": averages["scenes"][scene_name]["prompts"],
                                  "query_source": (query_sources or {}).get(protocol, protocol)}
        if k == 0:
            first_averages, first_scores = averages, scores
    pd.concat(frames, ignore_index=True).to_parquet(evaluate_dir / "results.parquet")
    (evaluate_dir / "summary.json").write_text(json.dumps({
        "protocol": protocols[0], "threshold": 0.7, "miou": first_averages["miou"], "mbiou": first_averages["mbiou"],
        "psnr": 30.0, "prompts": first_averages["scenes"][scene_name]["prompts"], "protocols": per_protocol}))
    averages, scores = first_averages, first_scores
    cluster_dir = tmp_path / "data" / scene_name / "cluster"
    cluster_dir.mkdir(parents=True)
    (cluster_dir / "summary.json").write_text(json.dumps({"n_clusters": 7, "ari": 0.61, "mean_object_iou": 0.8,
                                                          "mean_selection_iou": 0.75}))
    run_dir = tmp_path / "reports" / "run-test"
    run_dir.mkdir(parents=True)
    stages = {"scene": {"dir": str(scene_dir), "cached": True, "seconds": None},
              "train": {"dir": "x", "cached": False, "seconds": 123.4},
              "cluster": {"dir": str(cluster_dir), "cached": False, "seconds": 5.0},
              "evaluate": {"dir": str(evaluate_dir), "cached": False, "seconds": 9.0}}
    if masks_generator is not None:
        masks_dir = tmp_path / "data" / scene_name / "masks"
        masks_dir.mkdir(parents=True)
        (masks_dir / "manifest.json").write_text(json.dumps({"stage": "masks", "info": {"generator": masks_generator}}))
        stages["masks"] = {"dir": str(masks_dir), "cached": True, "seconds": None}
    (run_dir / "run.json").write_text(json.dumps({"run_id": "run-test", "created": "2026-11-24T00:00:00+00:00",
                                                  "scenes": [{"scene": scene_name, "layout": layout, "stages": stages}]}))
    return run_dir, scene, averages, scores


def test_report_has_tables_protocol_published_numbers_and_embedded_figures(tmp_path, tiny_scene_dir):
    # The tiny synthetic scene, presented as the LERF-Mask scene "figurines" so the paper's row applies.
    scene_copy = tmp_path / "figurines"
    shutil.copytree(tiny_scene_dir, scene_copy)
    shutil.rmtree(scene_copy / "ground_truth")  # read as a plain LERF-Mask folder
    run_dir, scene, averages, scores = _fake_run(tmp_path, scene_copy, "figurines", "lerf_mask",
                                                 protocols=("text", "click-oracle"))
    oracle = json.loads((tmp_path / "data" / "figurines" / "evaluate" / "summary.json").read_text())["protocols"][
        "click-oracle"]
    files = build_report(run_dir, ReportConfig(views_per_prompt=2), {"figurines": scene})
    md = files.markdown.read_text()
    published = md[md.index("## LERF-Mask: ours beside the published numbers"):].split("\n## ")[0]
    # the text row (the paper's protocol) beside the paper's figurines; the oracle row never there
    ours = f"{100 * averages['miou']:.1f} / {100 * averages['mbiou']:.1f}"
    assert "91.6 / 88.8" in published and f"| cgc (this run, `text`) | {ours} |" in published
    assert f"{100 * oracle['miou']:.1f} / {100 * oracle['mbiou']:.1f}" not in published
    assert "not run with `text`" in published  # ramen/teatime were not run
    results = md[md.index("## Results per scene and protocol"):].split("\n## ")[0]
    assert "| figurines | LERF-Mask | `text` | 0.7 |" in results
    assert "| figurines | LERF-Mask | `click-oracle` (upper bound) | 0.7 |" in results
    assert "not comparable to published numbers" in results and "PROTOCOL.md" in md
    assert "## Per prompt: figurines, protocol `text`" in md and "## Per prompt: figurines, protocol `click-oracle`" in md
    # per prompt: precision and recall beside IoU, and where the false positives lie
    per_prompt = md[md.index("## Per prompt: figurines, protocol `text`"):].split("\n## ")[0]
    for prompt, row in averages["scenes"]["figurines"]["prompts"].items():
        where = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(row["false_positives"].items())[:3])
        assert (f"| {prompt} | {row['views']} | {100 * row['iou']:.1f} | {100 * row['biou']:.1f} | "
                f"{100 * row['precision']:.1f} | {100 * row['recall']:.1f} | {where} |") in per_prompt
        assert row["precision"] < 1 and row["recall"] < 1 and "background" in row["false_positives"]
    assert "| figurines | train | computed | 123.4 |" in md
    page = files.html.read_text()
    assert page.count("<table>") == md.count("\n## ") - 1  # one table per section but the figures
    assert page.count("data:image/png;base64,") == len(files.figures) == 1 + len(scene.prompts)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # self-contained: nothing fetched
    table = pd.read_parquet(files.results)
    assert len(table) == 2 * len(scores) and set(table["benchmark"]) == {"LERF-Mask"}
    assert set(table["protocol"]) == {"text", "click-oracle"} and table["iou"].mean() < 1.0


@pytest.mark.parametrize("generator", ["sam", "truth-objects"])
def test_report_names_the_masks_and_never_sets_true_object_masks_beside_the_paper(tmp_path, tiny_scene_dir, generator):
    scene_copy = tmp_path / "figurines"
    shutil.copytree(tiny_scene_dir, scene_copy)
    shutil.rmtree(scene_copy / "ground_truth")
    run_dir, scene, averages, _ = _fake_run(tmp_path, scene_copy, "figurines", "lerf_mask", protocols=("text",),
                                            masks_generator=generator)
    md = build_report(run_dir, ReportConfig(figures=False), {"figurines": scene}).markdown.read_text()
    results = md[md.index("## Results per scene and protocol"):].split("\n## ")[0]
    published = md[md.index("## LERF-Mask: ours beside the published numbers"):].split("\n## ")[0]
    ours = f"{100 * averages['miou']:.1f} / {100 * averages['mbiou']:.1f}"
    if generator == "sam":
        assert "| figurines | LERF-Mask | `text` | 0.7 |" in results and "| `sam` |" in results
        assert f"| cgc (this run, `text`) | {ours} |" in published
    else:  # trained on the truth: an upper bound, in the results only
        assert "| figurines | LERF-Mask | `text` (upper bound) | 0.7 |" in results
        assert "| `truth-objects` (true objects) |" in results
        assert ours not in published


@pytest.mark.parametrize("source, upper", [("text", False), ("click-oracle", True), ("box-oracle", True)])
def test_rows_whose_queries_read_the_truth_are_upper_bounds_whatever_the_protocol(tmp_path, tiny_scene_dir,
                                                                                  source, upper):
    from cgc_core.report import is_upper_bound

    scene_copy = tmp_path / "figurines"
    shutil.copytree(tiny_scene_dir, scene_copy)
    shutil.rmtree(scene_copy / "ground_truth")
    run_dir, scene, averages, _ = _fake_run(tmp_path, scene_copy, "figurines", "lerf_mask", protocols=("ovs-argmax",),
                                            query_sources={"ovs-argmax": source})
    md = build_report(run_dir, ReportConfig(figures=False), {"figurines": scene}).markdown.read_text()
    results = md[md.index("## Results per scene and protocol"):].split("\n## ")[0]
    title = f"`ovs-argmax` with `{source}` queries" + (" (upper bound)" if upper else "")
    assert f"| figurines | LERF-Mask | {title} | 0.7 |" in results
    assert f"## Per prompt: figurines, protocol {title}" in md
    assert is_upper_bound({"protocol": "ovs-argmax", "query_source": source}) is upper


def test_report_of_missing_run_record_names_the_file(tmp_path):
    from cgc_core.report import ReportError

    with pytest.raises(ReportError, match="run.json"):
        build_report(tmp_path)


def test_report_html_renders_in_headless_chromium(tmp_path, tiny_scene_dir, chromium):
    run_dir, scene, _, _ = _fake_run(tmp_path, tiny_scene_dir, "synthetic", "synthetic")
    files = build_report(run_dir, ReportConfig(views_per_prompt=2), {"synthetic": scene})
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2400", files.html.as_uri()], check=True, timeout=120, capture_output=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.std() > 10  # not a blank page: tables and figures drew something


def test_report_shows_training_health_and_the_collapse_warning(tmp_path, tiny_scene_dir):
    run_dir, scene, _, _ = _fake_run(tmp_path, tiny_scene_dir, "synthetic", "synthetic")
    train_dir = tmp_path / "data" / "synthetic" / "train"
    train_dir.mkdir(parents=True)
    warning = "synthetic: the feature field has collapsed: over 8 training views ..."
    history = [{"step": s, "photometric": 0.2 - s / 1e4, "cc": 1e-2, "reg": 0.1, "n": 500, "within": 0.95,
                "between": 0.9 - s / 1e3} for s in (100, 200, 300)]
    (train_dir / "train.json").write_text(json.dumps({"health": {
        "history": history, "views": 8, "collapse_between": 0.5, "warning": warning,
        "final": {"within": 0.95, "between": 0.6, "confusable": 0.4, "segments": 9, "separation": 0.35}}}))
    record = json.loads((run_dir / "run.json").read_text())
    record["scenes"][0]["stages"]["train"]["dir"] = str(train_dir)
    (run_dir / "run.json").write_text(json.dumps(record))
    files = build_report(run_dir, ReportConfig(views_per_prompt=1), {"synthetic": scene})
    md = files.markdown.read_text()
    assert "## Training health" in md or "Training health" in md
    assert "| synthetic | 8 | 0.95 | 0.60 | 40.0 | " + warning in md
    assert "synthetic: training health (loss terms; feature separation)" in md
    assert "training health" in files.html.read_text()


def test_the_support_plane_is_the_table_under_a_box_top_that_holds_more_gaussians():
    from cgc_core.cluster import support_plane
    from cgc_core.hierarchy import scene_up

    rng = np.random.default_rng(0)
    table = np.c_[rng.uniform(-0.5, 0.5, (600, 2)), np.zeros(600)]
    top = np.c_[rng.uniform(-0.2, 0.2, (900, 2)), np.full(900, 0.1)]  # a finely textured box top: more Gaussians
    sides = np.c_[rng.uniform(-0.2, 0.2, (200, 1)), np.full((200, 1), 0.2), rng.uniform(0, 0.1, (200, 1))]
    means = np.concatenate([table, top, sides])
    cameras = _ring_cameras(radius=2.0, height=1.0)
    look_at, up = camera_look_at(cameras), scene_up(cameras)
    point, normal = support_plane(means, np.arange(len(means)), look_at, up, tolerance=0.005)
    assert abs(point[2]) < 0.01 and normal[2] == pytest.approx(1.0, abs=1e-3)
    # Without the table the box top is the plane.
    point, _ = support_plane(means[600:], np.arange(1100), look_at, up, tolerance=0.005)
    assert point[2] == pytest.approx(0.1, abs=0.01)
