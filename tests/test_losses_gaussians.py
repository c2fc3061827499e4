"""CGC losses against loop oracles, their effect on toy problems, and the Gaussian .ply round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgc_core.config import ConfigError, load_config
from cgc_core.gaussians import GaussianFileError, init_params, load_ply, save_ply
from cgc_core.losses import (
    contrastive_clustering_loss, contrastive_clustering_loss_reference, photometric_loss, sample_neighbours,
    spatial_regularization, spatial_regularization_reference, ssim, ssim_reference,
)


def _labels(h=14, w=16):
    labels = torch.zeros(h, w, dtype=torch.long)
    labels[:7, :8] = 1
    labels[:7, 8:] = 2
    labels[7:, :5] = 3
    labels[7:, 5:] = 5  # ids need not be consecutive
    labels[0, 0] = 0  # unlabelled pixels are ignored
    return labels


@pytest.mark.parametrize("clip, detach, scale, reference", [
    ((0.1, 1.0), True, 10.0, None), (None, False, 1.0, None), (None, True, 10.0, 20)])
def test_contrastive_loss_equals_loop_reference(clip, detach, scale, reference):
    torch.manual_seed(0)
    labels = _labels()
    labels[12:, 14:] = 9  # a 4-pixel segment: below min_pixels, left out
    a = torch.randn(14, 16, 5, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    kwargs = dict(min_pixels=10, temperature_clip=clip, detach_temperature=detach, temperature_scale=scale,
                  reference_segments=reference)
    fast = contrastive_clustering_loss(a, labels, **kwargs)
    slow = contrastive_clustering_loss_reference(b, labels, **kwargs)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[12:, 14:].abs().max() == 0 and a.grad[0, 0].abs().max() == 0


def test_reference_segments_sharpens_the_temperature_by_the_log_of_the_segment_count():
    torch.manual_seed(1)
    labels = _labels()  # four segments over min_pixels
    features = torch.randn(14, 16, 5, dtype=torch.float64)
    plain = dict(min_pixels=10, temperature_clip=None)
    # With as many segments as the reference, nothing changes.
    torch.testing.assert_close(contrastive_clustering_loss(features, labels, reference_segments=4, **plain),
                               contrastive_clustering_loss(features, labels, **plain))
    # A view with four segments against a reference of two: φ times log 2 / log 4 = 1/2, the same as half the scale.
    torch.testing.assert_close(contrastive_clustering_loss(features, labels, reference_segments=2, **plain),
                               contrastive_clustering_loss(features, labels, temperature_scale=5.0, **plain))
    assert load_config(None, ["train.contrastive.reference_segments=20"]).train.contrastive.reference_segments == 20
    with pytest.raises(ConfigError, match="train.contrastive.reference_segments must be null or >= 2, got 1"):
        load_config(None, ["train.contrastive.reference_segments=1"])


def test_contrastive_loss_with_fewer_than_two_segments_is_zero():
    features = torch.randn(4, 4, 3, requires_grad=True)
    loss = contrastive_clustering_loss(features, torch.ones(4, 4, dtype=torch.long), min_pixels=1)
    assert loss.item() == 0.0
    loss.backward()


def test_minimising_contrastive_loss_separates_segments():
    torch.manual_seed(0)
    labels = _labels(20, 24)
    features = torch.nn.Parameter(torch.rand(20, 24, 16))  # free per-pixel features, U[0, 1) like CGC's init
    opt = torch.optim.Adam([features], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        contrastive_clustering_loss(features, labels, min_pixels=20).backward()
        opt.step()
    f = F.normalize(features.detach(), dim=-1)
    ids = [1, 2, 3, 5]
    means = {i: F.normalize(f[labels == i].mean(0), dim=0) for i in ids}
    for i in ids:
        assert (f[labels == i] @ means[i]).min() > 0.9  # within a segment
    for i in ids:
        for j in ids:
            if i < j:
                assert (f[labels == i] @ f[labels == j].T).max() < 0.5  # across segments


def test_spatial_regularization_equals_loop_reference():
    torch.manual_seed(1)
    means = torch.randn(60, 3)
    feats_a = torch.randn(60, 8, dtype=torch.float64, requires_grad=True)
    feats_b = feats_a.detach().clone().requires_grad_()
    samples, near, far = sample_neighbours(means, 10, 2, 5, generator=torch.Generator().manual_seed(0))
    for sigmoid_of_mean, far_similarity in [(True, "signed"), (False, "signed"), (True, "positive"), (False, "positive")]:
        feats_a.grad = feats_b.grad = None
        fast = spatial_regularization(feats_a, samples, near, far, sigmoid_of_mean=sigmoid_of_mean,
                                      far_similarity=far_similarity)
        slow = spatial_regularization_reference(feats_b, samples, near, far, sigmoid_of_mean=sigmoid_of_mean,
                                                far_similarity=far_similarity)
        fast.backward()
        slow.backward()
        torch.testing.assert_close(fast, slow)
        torch.testing.assert_close(feats_a.grad, feats_b.grad)


def _regulariser_gradients(features, near, far, option: str, modes, **weights) -> dict:
    """Feature gradients of the paper-form regulariser for sample 0, one per value of `option`."""
    grads = {}
    for mode in modes:
        leaf = features.clone().requires_grad_()
        spatial_regularization(leaf, torch.tensor([0]), near, far, sigmoid_of_mean=False, **weights,
                               **{option: mode}).backward()
        grads[mode] = leaf.grad
    return grads


def test_positive_far_similarity_leaves_orthogonal_and_opposite_features_alone():
    # sample 0 with far Gaussians 1 (orthogonal), 2 (opposite) and 3 (similar): with `positive` only
    # the similar one is pushed; `signed` also pushes the orthogonal and opposite ones further.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    samples, near, far = torch.tensor([0]), torch.tensor([[3]]), torch.tensor([[1, 2, 3]])
    grads = _regulariser_gradients(features, near, far, "far_similarity", ("signed", "positive"),
                                   lambda_near=0.0, lambda_far=1.0)
    assert grads["positive"][1].abs().max() == 0 and grads["positive"][2].abs().max() == 0
    assert grads["positive"][3].abs().max() > 0
    assert grads["signed"][1].abs().max() > 0 and grads["signed"][2].abs().max() == 0  # opposite: tangent 0
    with pytest.raises(ValueError, match="far_similarity"):
        spatial_regularization(features, samples, near, far, far_similarity="absolute")


def test_neighbour_sampling_is_by_distance():
    means = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [5, 0, 0], [9, 0, 0], [10, 0, 0]])
    samples, near, far = sample_neighbours(means, 6, 2, 1, generator=torch.Generator().manual_seed(0))
    by_sample = {int(s): (set(n.tolist()), int(f[0])) for s, n, f in zip(samples, near, far)}
    assert by_sample[0] == ({1, 2}, 5)
    assert by_sample[5][0] == {4, 3} and by_sample[5][1] == 0
    assert all(int(s) not in set(n.tolist()) for s, n in zip(samples, near))
    # the released code's top-k includes the sample itself (distance 0): it and its nearest
    samples, near, far = sample_neighbours(means, 6, 2, 1, generator=torch.Generator().manual_seed(0),
                                           near_includes_self=True)
    by_sample = {int(s): (set(n.tolist()), int(f[0])) for s, n, f in zip(samples, near, far)}
    assert by_sample[0] == ({0, 1}, 5) and by_sample[5] == ({5, 4}, 0)


def test_regularizer_pulls_near_together_and_pushes_far_apart():
    torch.manual_seed(0)
    # two tight clusters far apart, features random
    means = torch.cat([torch.randn(50, 3) * 0.05, torch.randn(50, 3) * 0.05 + 10])
    features = torch.nn.Parameter(torch.randn(100, 16))
    opt = torch.optim.Adam([features], lr=0.05)
    samples, near, far = sample_neighbours(means, 100, 2, 5, generator=torch.Generator().manual_seed(0))

    def stats():
        f = F.normalize(features.detach(), dim=-1)
        return (f[near] * f[samples][:, None]).sum(-1).mean(), (f[far] * f[samples][:, None]).sum(-1).mean()

    near_before, far_before = stats()
    for _ in range(200):
        opt.zero_grad()
        spatial_regularization(features, samples, near, far, lambda_near=1.0, lambda_far=1.0,
                               sigmoid_of_mean=False).backward()
        opt.step()
    near_after, far_after = stats()
    assert near_after > near_before + 0.5 and near_after > 0.9
    assert far_after < far_before - 0.3 and far_after < 0.0


def test_photometric_loss_and_ssim():
    img = torch.rand(24, 32, 3)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-5)
    assert photometric_loss(img, img).item() == pytest.approx(0.0, abs=1e-5)
    assert photometric_loss(img, img.flip(0)).item() > 0.1


def test_separable_ssim_equals_the_2d_window_in_value_and_gradient():
    torch.manual_seed(0)
    a = torch.rand(37, 53, 3, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.1 * torch.randn(37, 53, 3, dtype=torch.float64)).clamp(0, 1)
    fast, slow = ssim(a, b), ssim_reference(a, b)
    assert abs(fast.item() - slow.item()) < 1e-12 and 0.3 < fast.item() < 0.99
    (g_fast,) = torch.autograd.grad(fast, a)
    (g_slow,) = torch.autograd.grad(slow, a)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-12)


def test_init_and_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3))
    colors = rng.integers(0, 255, size=(50, 3)).astype(np.uint8)
    params = init_params(points, colors, sh_degree=3)
    assert params["features"].shape == (50, 16) and 0 <= params["features"].min() and params["features"].max() < 1
    assert params["shN"].shape == (50, 15, 3)
    # scales: log of the mean distance to the 3 nearest neighbours
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    expected = np.sort(d, axis=1)[:, 1:4].mean(1)
    np.testing.assert_allclose(params["scales"][:, 0].exp().numpy(), expected, rtol=1e-5)
    params["shN"] = torch.randn(50, 15, 3)
    path = save_ply(params, tmp_path / "point_cloud.ply")
    back = load_ply(path)
    assert set(back) == set(params)
    for name in params:
        torch.testing.assert_close(back[name], params[name].float())
    from plyfile import PlyData

    names = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert "f_rest_44" in names and "feat_15" in names and "rot_3" in names


def test_bad_ply_is_a_named_error(tmp_path):
    from plyfile import PlyData, PlyElement

    data = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(GaussianFileError, match=r"points.ply: missing vertex attributes \['f_dc_0'"):
        load_ply(tmp_path / "points.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(GaussianFileError, match="junk.ply: not a readable Gaussian .ply"):
        load_ply(tmp_path / "junk.ply")


@pytest.mark.parametrize("near_includes_self", [False, True])
def test_neighbour_search_in_one_pass_equals_the_distance_matrix(near_includes_self):
    from cgc_core.losses import near_and_far, near_and_far_reference

    g = torch.Generator().manual_seed(3)
    points = torch.randn(3000, 3, generator=g) * torch.tensor([1.0, 0.3, 2.0])
    self_index = torch.randperm(3000, generator=g)[:200]
    fast = near_and_far(points[self_index], points, self_index, 2, 5, near_includes_self)
    slow = near_and_far_reference(points[self_index], points, self_index, 2, 5, near_includes_self)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert (fast[0][:, 0] == self_index).all() == near_includes_self
    assert not (fast[1] == self_index[:, None]).any()


@pytest.mark.parametrize("near_includes_self", [False, True])
def test_neighbour_search_breaks_ties_by_the_lower_index(near_includes_self):
    # Points on an integer grid, some repeated: many equal distances, where the pruned walks of
    # the C++ search visit points out of index order. Oracle: sort by (distance, index).
    from cgc_core.losses import near_and_far

    g = torch.Generator().manual_seed(5)
    points = torch.randint(-4, 5, (1500, 3), generator=g).float()
    self_index = torch.randperm(1500, generator=g)[:120]
    near, far = near_and_far(points[self_index], points, self_index, 3, 6, near_includes_self)
    rows = torch.arange(1500)
    for row, own in enumerate(self_index.tolist()):
        squared = ((points - points[own]) ** 2).sum(1)
        keys = [(float(d), int(i)) for d, i in zip(squared, rows) if i != own]
        expected_far = [i for _, i in sorted(keys, key=lambda t: (-t[0], t[1]))[:6]]
        if near_includes_self:
            keys.append((0.0, own))
        expected_near = [i for _, i in sorted(keys)[:3]]
        assert near[row].tolist() == expected_near and far[row].tolist() == expected_far
