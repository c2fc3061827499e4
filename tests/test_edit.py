"""Scene editing (issue 40): remove / keep a selection, grow it, drop floaters; the synthetic truth
renders without an object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgc_core.config import SyntheticConfig
from cgc_core.edit import EditError, edit_gaussians, edit_selection, grow_selection
from cgc_core.scene.model import Camera
from cgc_core.scene.synthetic import build_scene, look_at, render_view, without_objects
from cgc_core.selection import Selector


def _blobs():
    """Blob A (features e0) and blob B (features e1) 1 m apart, 100 Gaussians each on a 0.05 grid;
    a fringe of 10 A-like Gaussians just outside A; 5 faint Gaussians at A's centre, 5 far away."""
    g = np.stack(np.meshgrid(*[np.arange(5) * 0.05] * 2, np.arange(4) * 0.05, indexing="ij"), -1).reshape(-1, 3)
    fringe = np.stack([np.full(10, 0.27), np.linspace(0, 0.2, 10), np.zeros(10)], -1)
    faint_near = g[:5] + 0.01
    faint_far = np.full((5, 3), 5.0) + np.arange(5)[:, None] * 0.05
    means = np.concatenate([g, g + [1.0, 0, 0], fringe, faint_near, faint_far]).astype(np.float32)
    features = torch.zeros(len(means), 4)
    features[:100, 0] = 1
    features[100:200, 1] = 1
    features[200:210, 0], features[200:210, 2] = 1, 0.6  # cosine 0.86 to A: looser than the selection's 0.7
    features[210:, 3] = 1
    opacities = torch.full((len(means),), 3.0)
    opacities[210:] = -4.0  # sigmoid: 0.018
    n = len(means)
    return {"means": torch.as_tensor(means), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
            "scales": torch.full((n, 3), -3.0), "opacities": opacities, "sh0": torch.rand(n, 1, 3),
            "shN": torch.zeros(n, 15, 3), "features": features}


def test_remove_leaves_exactly_the_others_and_keep_is_its_complement():
    params = _blobs()
    selected = np.zeros(220, bool)
    selected[:100] = True
    removed = edit_gaussians(params, selected, "remove")
    kept = edit_gaussians(params, selected, "keep")
    assert removed.params["means"].shape[0] == 120 and kept.params["means"].shape[0] == 100
    torch.testing.assert_close(removed.params["means"], params["means"][100:])  # identity and order
    torch.testing.assert_close(kept.params["features"], params["features"][:100])
    assert (removed.kept ^ kept.kept).all()  # complements
    assert set(removed.params) == set(params) and params["means"].shape[0] == 220  # the model is untouched


def test_grow_takes_the_similar_fringe_and_floaters_go_where_the_object_stood():
    params = _blobs()
    selected = np.zeros(220, bool)
    selected[:100] = True
    grown = grow_selection(params, selected, radius=2.0, min_similarity=0.5)
    assert np.flatnonzero(grown).tolist() == list(range(200, 210))  # not blob B, not the far ones
    edit = edit_gaussians(params, selected, "remove", grow_radius=2.0, floater_opacity=0.05)
    assert edit.grown.sum() == 10 and np.flatnonzero(edit.floaters).tolist() == list(range(210, 215))
    assert np.flatnonzero(edit.kept).tolist() == [*range(100, 200), *range(215, 220)]


def test_an_edit_lifts_the_selection_from_views_and_takes_surface_gaussians_with_a_wrong_feature():
    # Two dense blobs seen from three views; six Gaussians of the left blob carry a feature unlike it
    # (cosine 0.29 to it), and one invisible Gaussian (opacity ~0) beside it carries the right blob's.
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[-0.6, 0.0, 0.0], [0.6, 0.0, 0.0]]).repeat_interleave(60, 0)
    means = torch.cat([means + 0.05 * torch.randn(120, 3, generator=g), torch.tensor([[-0.6, 0.0, 0.02]])])
    features = torch.zeros(121, 8)
    features[:60, 0], features[60:, 1] = 1.0, 1.0
    features[:6] = torch.nn.functional.normalize(torch.tensor([0.3, 0, 1.0, 0, 0, 0, 0, 0]), dim=0)
    opacities = torch.full((121,), 4.0)
    opacities[120] = -30.0
    params = {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(121, 1),
              "scales": torch.full((121, 3), -2.5), "opacities": opacities, "sh0": torch.rand(121, 1, 3, generator=g),
              "features": features}
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    cameras = [Camera(K, look_at(np.array(eye), np.zeros(3)), 64, 48, f"v{k}")
               for k, eye in enumerate([(0.3, -3.0, 0.8), (-1.5, -2.6, 1.0), (1.5, -2.6, 0.6)])]
    query = torch.nn.functional.one_hot(torch.tensor(0), 8).float()
    selector = Selector(outlier_std_ratio=None)  # no spatial cleaning: the feature rule alone
    by_feature = edit_selection(selector, params, [query], cameras, view_share=0)
    assert np.flatnonzero(by_feature).tolist() == list(range(6, 60))  # the six with a wrong feature stay behind
    lifted = edit_selection(selector, params, [query], cameras)
    assert np.flatnonzero(lifted).tolist() == [*range(60), 120]  # they paint the blob's pixels; the unseen one
    # goes with its nearest shown neighbour, and none of the right blob's
    half = edit_selection(selector, params, [query], cameras[:1], view_share=0.5)
    assert half[:60].all() and not half[60:120].any()


def test_a_selection_of_nothing_or_of_everything_is_an_error_naming_it():
    params = _blobs()
    with pytest.raises(EditError, match="'unicorn' selects no Gaussian"):
        edit_gaussians(params, np.zeros(220, bool), "remove", what="'unicorn'")
    with pytest.raises(EditError, match="selects every Gaussian .220.: removing it would leave nothing"):
        edit_gaussians(params, np.ones(220, bool), "remove")
    with pytest.raises(EditError, match="keeping it changes nothing"):
        edit_gaussians(params, np.ones(220, bool), "keep")


def test_the_truth_without_an_object_differs_only_where_it_was():
    scene = build_scene(SyntheticConfig(preset="demo", width=64, height=48, n_views=8))
    camera = scene.cameras[1]
    rgb, ids, _ = render_view(scene, camera)
    visible = [k for k in range(1, len(scene.objects) + 1) if (ids == k).sum() > 20]
    k = visible[0]
    rgb_without, ids_without, _ = render_view(without_objects(scene, [scene.objects[k - 1].name]), camera)
    changed = np.abs(rgb_without - rgb).max(-1) > 1e-6
    assert changed.any() and not (changed & (ids != k)).any()  # the demo's light casts no shadows
    assert not (ids_without == k).any()
    assert ((ids_without == ids) | (ids == k)).all()  # every other object keeps its id
    with pytest.raises(ValueError, match="no object named \\['unicorn'\\]"):
        without_objects(scene, ["unicorn"])


def test_the_truth_without_an_object_in_a_room_changes_its_pixels_and_its_shadow_only_nearby():
    scene = build_scene(SyntheticConfig(preset="realistic", width=64, height=48, n_views=8))
    camera = scene.cameras[0]
    rgb, ids, _ = render_view(scene, camera)
    k = int(np.bincount(ids[ids > 0]).argmax())
    rgb_without, ids_without, _ = render_view(without_objects(scene, [scene.objects[k - 1].name]), camera)
    changed = np.abs(rgb_without - rgb).max(-1) > 1e-6
    assert changed[ids == k].all()
    others = (ids > 0) & (ids != k)
    # Other objects change only through shadows and reflections, on a minority of their pixels.
    assert changed[others].mean() < 0.5
    assert ((ids_without == ids) | (ids == k)).all()
