"""render(): the C++ tile backend against the dense reference, gradients, gsplat parity, densification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cgc_core.render import Gaussians, available_backends, render, resolve_backend
from cgc_core.render.projection import project_gaussians, sh_to_rgb
from cgc_core.scene.model import Camera
from cgc_core.scene.synthetic import look_at

PARAMS = ("means", "quats", "scales", "opacities", "sh", "features")


def _camera(width=48, height=40, focal=45.0, eye=(0.0, -3.0, 0.6)):
    K = np.array([[focal, 0, width / 2 + 0.3], [0, focal * 1.05, height / 2 - 0.2], [0, 0, 1.0]])
    return Camera(K, look_at(np.array(eye), np.zeros(3)), width, height, "test")


def _random_scene(n, seed, dtype=torch.float64, sh_coeffs=16, n_features=16):
    """Random Gaussians, including some behind the camera, off screen, huge and tiny."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.7
    log_scales = torch.randn(n, 3, generator=g, dtype=dtype) * 0.4 - 2.2
    k = max(n // 10, 1)
    means[:k, 1] = -4.5  # behind the camera (the camera sits at y = -3 looking at +y)
    means[k:2 * k, 0] = 6.0  # far off screen to the side
    log_scales[2 * k:3 * k] = 0.5  # huge: covers much of the image
    log_scales[3 * k:4 * k] = -7.0  # tiny: far below a pixel
    params = {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.exp(log_scales),
        "opacities": torch.sigmoid(torch.randn(n, generator=g, dtype=dtype) * 2),
        "sh": torch.randn(n, sh_coeffs, 3, generator=g, dtype=dtype) * 0.3,
        "features": torch.rand(n, n_features, generator=g, dtype=dtype),
    }
    return {name: t.requires_grad_() for name, t in params.items()}


def _render_with_grads(params, camera, backend, background=(0.1, 0.2, 0.3)):
    for t in params.values():
        t.grad = None
    gaussians = Gaussians(*(params[k] for k in PARAMS[:5]))
    out = render(gaussians, camera, features=params["features"], backend=backend, background=background)
    # A loss that touches every output with distinct weights, so that no gradient term cancels.
    h, w = out.alpha.shape
    ramp = torch.linspace(0.5, 1.5, h * w, dtype=out.rgb.dtype).reshape(h, w, 1)
    loss = ((out.rgb * ramp) ** 2).sum() + (out.features * ramp).sum() + 0.7 * out.alpha.sum() + 0.05 * out.depth.sum()
    loss.backward()
    return out, {k: t.grad.clone() for k, t in params.items()}


def _rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_backend_equals_reference_values_and_gradients(seed):
    params = _random_scene(200, seed)
    camera = _camera()
    ref, ref_grads = _render_with_grads(params, camera, "reference")
    fast, fast_grads = _render_with_grads(params, camera, "torch")
    for name in ("rgb", "features", "alpha", "depth"):
        assert _rel_err(getattr(fast, name), getattr(ref, name)) < 1e-4, name
    for name in PARAMS:
        assert ref_grads[name].abs().max() > 0, f"the loss does not reach {name}"
        assert _rel_err(fast_grads[name], ref_grads[name]) < 1e-4, name
    # the special Gaussians were really exercised: some culled, some covering many pixels
    radii = ref.meta["radii"][0]
    assert (radii == 0).all(-1)[:20].sum() >= 20  # behind the camera and off screen: culled
    assert (radii[40:60] > 10).all()  # huge ones
    assert ref_grads["means"][:20].abs().max() == 0  # culled Gaussians get no gradient


def _assert_torch_backend_equals_reference(params, camera):
    """Values and gradients of the torch backend within 1e-4 (relative) of the dense reference."""
    ref, ref_grads = _render_with_grads(params, camera, "reference")
    fast, fast_grads = _render_with_grads(params, camera, "torch")
    for name in ("rgb", "features", "alpha", "depth"):
        assert _rel_err(getattr(fast, name), getattr(ref, name)) < 1e-4, name
    for name in PARAMS:
        assert _rel_err(fast_grads[name], ref_grads[name]) < 1e-4, name
    return ref


def test_torch_backend_equals_reference_where_tiles_and_blocks_end_at_the_image_edge():
    # 45 x 37: the last tile of each row and column is partial, and so are its pixel blocks (4 x 2
    # with AVX2, 4 x 1 without); the kernel pads a block's missing pixels outside every splat.
    ref = _assert_torch_backend_equals_reference(_random_scene(200, 4), _camera(45, 37))
    assert ref.alpha[-1].max() > 0.1 and ref.alpha[:, -1].max() > 0.1  # splats do reach the last row and column


def test_colour_and_its_gradients_do_not_depend_on_the_features_blended_beside_it():
    # Training blends the features only on steps whose losses read them: the colour, alpha, depth
    # and every geometry gradient of a colour-only loss must be the same with or without them.
    camera = _camera()
    outs, grads = [], []
    for with_features in (True, False):
        params = _random_scene(300, seed=5, dtype=torch.float32)
        gaussians = Gaussians(*(params[k] for k in PARAMS[:5]))
        out = render(gaussians, camera, features=params["features"] if with_features else None, backend="torch",
                     background=(0.1, 0.2, 0.3))
        ((out.rgb * torch.linspace(0.5, 1.5, 3)) ** 2).sum().add(0.7 * out.alpha.sum()).add(0.05 * out.depth.sum()).backward()
        outs.append(out)
        grads.append({k: params[k].grad for k in PARAMS[:5]})
    assert outs[0].features is not None and outs[1].features is None
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(outs[0], name), getattr(outs[1], name), rtol=0, atol=0)
    for name in PARAMS[:5]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-9)
    assert grads[0]["means"].abs().max() > 0


def test_float32_torch_backend_is_close_to_float64_reference():
    params64 = _random_scene(300, 5)
    params32 = {k: v.detach().float().requires_grad_() for k, v in params64.items()}
    camera = _camera(64, 48)
    ref, _ = _render_with_grads(params64, camera, "reference")
    fast, _ = _render_with_grads(params32, camera, "torch")
    assert (fast.rgb.double() - ref.rgb).abs().max() < 1e-3
    assert (fast.features.double() - ref.features).abs().max() < 1e-3


def test_gradcheck_float64_tiny_scene():
    params = _random_scene(6, 11, sh_coeffs=4, n_features=2)
    with torch.no_grad():
        params["means"][:, 1] = torch.linspace(-0.3, 0.3, 6, dtype=torch.float64)  # all in front, spread in depth
        params["scales"].fill_(0.15)
    camera = _camera(12, 10, focal=12.0)
    names = list(params)

    def fn(*tensors):
        p = dict(zip(names, tensors))
        out = render(Gaussians(*(p[k] for k in PARAMS[:5])), camera, features=p["features"], backend="torch",
                     background=(0.3, 0.1, 0.2))
        return out.rgb, out.features, out.alpha

    assert torch.autograd.gradcheck(fn, tuple(params[k] for k in names), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_single_gaussian_matches_closed_form():
    # One round Gaussian straight ahead at depth 3: the centre pixel's colour is
    # alpha·c + (1 - alpha)·background with alpha = opacity·exp(-sigma) at the pixel-centre offset.
    width = height = 16
    camera = Camera(np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]), np.eye(4), width, height, "c")
    dtype = torch.float64
    gaussians = Gaussians(
        means=torch.tensor([[0.0, 0.0, 3.0]], dtype=dtype), quats=torch.tensor([[1.0, 0, 0, 0]], dtype=dtype),
        scales=torch.full((1, 3), 0.3, dtype=dtype), opacities=torch.tensor([0.6], dtype=dtype),
        sh=torch.zeros(1, 1, 3, dtype=dtype),
    )
    out = render(gaussians, camera, background=(1.0, 1.0, 1.0), backend="torch")
    variance = (20.0 * 0.3 / 3.0) ** 2 + 0.3  # (f·s/z)² plus the low-pass term
    alpha = 0.6 * math.exp(-0.5 * (0.5**2 + 0.5**2) / variance)  # pixel (7,7) centre is 0.5 px off in x and y
    np.testing.assert_allclose(out.alpha[7, 7].item(), alpha, rtol=1e-9)
    np.testing.assert_allclose(out.rgb[7, 7].numpy(), 0.5 * alpha + (1 - alpha), rtol=1e-9)  # SH 0 -> colour 0.5
    np.testing.assert_allclose(out.depth[7, 7].item(), 3.0, rtol=1e-9)


def test_sh_degree_zero_is_view_independent_and_degree_one_is_not():
    sh = torch.randn(5, 4, 3, dtype=torch.float64)
    dirs = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(sh_to_rgb(sh, dirs, 0), sh_to_rgb(sh, -dirs, 0))
    assert not torch.allclose(sh_to_rgb(sh, dirs, 1), sh_to_rgb(sh, -dirs, 1))
    with pytest.raises(ValueError, match="sh_degree 2"):
        sh_to_rgb(sh, dirs, 2)


def test_projection_matches_gsplat_pure_torch_helpers():
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not importable")
    params = _random_scene(300, 3)
    camera = _camera(64, 48)
    viewmat = torch.as_tensor(camera.world_to_camera)
    K = torch.as_tensor(camera.K)
    ours = project_gaussians(params["means"], params["quats"], params["scales"], viewmat, K, 64, 48,
                             radius_sigma=3.33)
    covars, _ = torch_impl._quat_scale_to_covar_preci(params["quats"], params["scales"], compute_preci=False)
    radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(
        params["means"], covars, viewmat[None], K[None], 64, 48)
    valid = (radii[0] > 0).all(-1)
    assert torch.equal(valid, (ours.radii > 0).all(-1))
    torch.testing.assert_close(ours.means2d[valid], means2d[0][valid])
    torch.testing.assert_close(ours.conics[valid], conics[0][valid])
    torch.testing.assert_close(ours.depths, depths[0])
    assert torch.equal(ours.radii[valid], radii[0][valid])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_projection_kernel_equals_the_torch_projection_values_and_gradients(dtype):
    from cgc_core.render.projection import project_gaussians_torch

    params = _random_scene(400, 6, dtype=dtype)
    with torch.no_grad():
        params["quats"][5] *= 40.0  # far from unit norm: the normalisation's gradient matters
        params["means"][60:80, 0] *= 8.0  # beyond the Jacobian's clamped view angle, both sides
        params["means"][80:90, 2] *= 8.0
    camera = _camera(64, 48)
    viewmat = torch.as_tensor(camera.world_to_camera, dtype=dtype)
    K = torch.as_tensor(camera.K, dtype=dtype)
    names = ("means", "quats", "scales")
    outs, grads = [], []
    for project in (project_gaussians_torch, project_gaussians):
        for t in params.values():
            t.grad = None
        out = project(*(params[k] for k in names), viewmat, K, 64, 48, opacities=params["opacities"])
        # distinct weights per output entry, so that no term of the chain rule can cancel
        g = torch.Generator().manual_seed(1)
        loss = sum((getattr(out, k) * torch.randn(getattr(out, k).shape, generator=g, dtype=dtype)).sum()
                   for k in ("means2d", "conics", "depths"))
        loss.backward()
        outs.append(out)
        grads.append({k: params[k].grad.clone() for k in names})
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-4}
    visible = (outs[0].radii > 0).all(-1)
    assert torch.equal(outs[0].radii, outs[1].radii) and 100 < visible.sum() < 400
    for name in ("means2d", "conics", "depths"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), **tol)
    for name in names:
        scale = grads[0][name].abs().max()
        assert scale > 0
        torch.testing.assert_close(grads[1][name] / scale, grads[0][name] / scale, **tol)


@pytest.mark.parametrize("size", [(64, 48), (45, 37)])
def test_tile_binning_kernel_equals_the_torch_binning(size):
    from cgc_core.render.torch_backend import bin_tiles, bin_tiles_torch

    params = _random_scene(500, 7, dtype=torch.float32)
    with torch.no_grad():
        params["means"][100:110] = params["means"][90]  # equal depths: ties keep index order
        camera = _camera(*size)
        viewmat = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
        K = torch.as_tensor(camera.K, dtype=torch.float32)
        p = project_gaussians(params["means"], params["quats"], params["scales"], viewmat, K, *size)
        for tile_size in (16, 8):
            fast = bin_tiles(p.means2d, p.radii, p.depths, *size, tile_size)
            slow = bin_tiles_torch(p.means2d, p.radii, p.depths, *size, tile_size)
            assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
            assert len(fast[1]) > 2 * (p.radii > 0).all(-1).sum()  # many splats span several tiles


def test_opacity_aware_radii_cull_pairs_but_leave_the_image_unchanged():
    from cgc_core.render.reference import rasterize_reference

    params = _random_scene(300, seed=5)
    with torch.no_grad():
        params["opacities"][:30] = 0.003  # below 1/255: can never count
        camera = _camera()
        viewmat = torch.as_tensor(camera.world_to_camera, dtype=torch.float64)
        K = torch.as_tensor(camera.K, dtype=torch.float64)
        args = (params["means"], params["quats"], params["scales"], viewmat, K, camera.width, camera.height)
        plain = project_gaussians(*args)
        aware = project_gaussians(*args, opacities=params["opacities"])
        assert (aware.radii <= plain.radii).all()
        assert (aware.radii[:30] == 0).all() and (plain.radii[30:].sum() > aware.radii[30:].sum())
        colors = params["features"]
        bg = torch.zeros(colors.shape[1], dtype=torch.float64)
        images = [rasterize_reference(p.means2d, p.conics, params["opacities"], colors, p.radii, p.depths,
                                      camera.width, camera.height, bg)[0] for p in (plain, aware)]
    assert torch.equal(images[0], images[1])


def test_backend_selection_and_errors():
    assert resolve_backend("auto") == ("gsplat" if "gsplat" in available_backends() else "torch")
    with pytest.raises(ValueError, match="unknown render backend 'vulkan'"):
        resolve_backend("vulkan")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA and the gsplat package"):
            resolve_backend("gsplat")


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"Gaussians.scales: expected shape \(2, 3\)"):
        Gaussians(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(3, 3), torch.zeros(2), torch.zeros(2, 1, 3))
    gaussians = Gaussians(torch.zeros(2, 3), torch.ones(2, 4), torch.ones(2, 3), torch.ones(2) * 0.5,
                          torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="features: expected 2 rows"):
        render(gaussians, _camera(), features=torch.zeros(3, 16), backend="torch")


def test_gsplat_default_strategy_densifies_features_on_cpu():
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    n = 400
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3) * 0.5, "quats": torch.randn(n, 4), "scales": torch.full((n, 3), -2.5),
        "opacities": torch.full((n,), 1.0), "sh0": torch.rand(n, 1, 3), "shN": torch.zeros(n, 15, 3),
        "features": torch.rand(n, 16),
    })
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-9, reset_every=10_000,
                               prune_opa=0.0)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    camera = _camera(64, 48)
    out = render(Gaussians.from_params(params), camera, features=params["features"], backend="torch")
    strategy.step_pre_backward(params, optimizers, state, 1, out.meta)
    (out.rgb.mean() + out.features.mean()).backward()
    assert out.meta["means2d"].grad is not None  # the strategy's gradient statistic is there
    strategy.step_post_backward(params, optimizers, state, 1, out.meta, packed=False)
    grown = params["means"].shape[0]
    assert grown > n
    assert {p.shape[0] for p in params.values()} == {grown}  # features cloned/split with the rest
    assert params["features"].shape == (grown, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the gsplat backend needs one")
def test_gsplat_backend_matches_torch_backend_on_cuda():
    pytest.importorskip("gsplat")
    params = _random_scene(500, 7, dtype=torch.float32)
    camera = _camera(96, 80)
    cpu, cpu_grads = _render_with_grads(params, camera, "torch")
    cuda_params = {k: v.detach().cuda().requires_grad_() for k, v in params.items()}
    gpu, gpu_grads = _render_with_grads(cuda_params, camera, "gsplat")
    for name in ("rgb", "features", "alpha"):
        assert (getattr(gpu, name).cpu() - getattr(cpu, name)).abs().max() < 1e-3, name
    # Gradients of every parameter, relative to the largest: both sides are float32, but gsplat's
    # backward sums each Gaussian's per-pixel terms with atomics in an order that differs from our
    # tile loop, and its 2D covariance goes through another (equivalent) formula, so agreement to
    # 1e-2 of the largest entry is what float32 allows while still catching a wrong or missing term
    # (those differ by the term's whole size, tens of percent).
    assert set(cpu_grads) == {"means", "quats", "scales", "opacities", "sh", "features"}
    for name, grad in cpu_grads.items():
        assert torch.isfinite(gpu_grads[name]).all(), name
        assert _rel_err(gpu_grads[name].cpu(), grad) < 1e-2, (name, _rel_err(gpu_grads[name].cpu(), grad))
    # What gsplat's densification strategies read from `meta` (DefaultStrategy: means2d and its
    # gradient, radii, width, height, n_cameras, gaussian_ids; MCMC: none of them): the same keys
    # and shapes from both, the same visible Gaussians, and their projected centres within 1e-3 px.
    for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"):
        assert key in gpu.meta and key in cpu.meta, key
    assert (gpu.meta["width"], gpu.meta["height"], gpu.meta["n_cameras"]) == (camera.width, camera.height, 1)
    assert gpu.meta["gaussian_ids"] is None and cpu.meta["gaussian_ids"] is None  # unpacked
    assert gpu.meta["means2d"].shape == cpu.meta["means2d"].shape == (1, 500, 2)
    assert gpu.meta["radii"].shape[:2] == cpu.meta["radii"].shape[:2] == (1, 500)
    visible_gpu = (gpu.meta["radii"].cpu() > 0).reshape(1, 500, -1).all(-1)
    visible_cpu = (cpu.meta["radii"] > 0).reshape(1, 500, -1).all(-1)
    assert (visible_gpu == visible_cpu).float().mean() > 0.99
    both = visible_gpu & visible_cpu
    assert (gpu.meta["means2d"].detach().cpu()[both] - cpu.meta["means2d"].detach()[both]).abs().max() < 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_blend_weights_render_features_exactly_as_the_reference(seed):
    """Frozen geometry's fast path: the view's blending weights times any features equal the dense
    reference's feature map, and their gradient equals the reference's gradient on the features."""
    from cgc_core.render import blend_weights

    params = _random_scene(60, seed)
    camera = _camera()
    gaussians = Gaussians(*(params[k].detach() for k in PARAMS[:5]))
    weights = blend_weights(gaussians, camera)
    assert weights.matrix.shape == (camera.height * camera.width, 60)
    assert weights.matrix._nnz() > 0 and float(weights.matrix.values().min()) > 0
    features = params["features"].detach().clone().requires_grad_()
    fast = weights.render(features)
    ramp = torch.linspace(0.5, 1.5, fast.numel(), dtype=fast.dtype).reshape(fast.shape)
    (fast * ramp).sum().backward()
    oracle_features = params["features"].detach().clone().requires_grad_()
    oracle = render(gaussians, camera, features=oracle_features, backend="reference").features
    (oracle * ramp).sum().backward()
    assert _rel_err(fast, oracle) < 1e-10
    assert _rel_err(features.grad, oracle_features.grad) < 1e-10
    # Other features, same weights: the weights do not depend on what they blend.
    other = torch.randn_like(features)
    assert _rel_err(weights.render(other), render(gaussians, camera, features=other, backend="reference").features) < 1e-10
    with pytest.raises(ValueError, match="one per Gaussian"):
        weights.render(features[:10])


def test_back_projection_is_the_weighted_mean_of_rendered_unit_features():
    # Oracle: rendering the identity matrix as features gives the dense weight matrix W [pixels, N];
    # a Gaussian's back-projected feature is normalize(Σ_views Wᵀ normalize(W f)).
    import torch.nn.functional as F

    from cgc_core.render import FrozenViews

    params = _random_scene(40, 3)
    gaussians = Gaussians(*(params[k].detach() for k in PARAMS[:5]))
    cameras = {"a": _camera(), "b": _camera(eye=(1.5, -2.5, 0.9))}
    features = params["features"].detach()
    out = FrozenViews(gaussians, cameras).back_project(features, min_weight=1e-3)
    total, weight = torch.zeros_like(features), torch.zeros(40, dtype=features.dtype)
    for camera in cameras.values():
        dense = render(gaussians, camera, features=torch.eye(40, dtype=features.dtype), backend="reference").features
        dense = dense.reshape(-1, 40)
        total += dense.T @ F.normalize(dense @ features, dim=-1)
        weight += dense.sum(0)
    shown = weight >= 1e-3
    assert 0 < int(shown.sum()) < 40  # some Gaussians are off screen or behind the cameras
    torch.testing.assert_close(out[shown], F.normalize(total[shown], dim=-1))
    # An unseen Gaussian takes its nearest seen neighbour's feature.
    means = gaussians.means
    for i in torch.nonzero(~shown)[:, 0].tolist():
        distances = (means[shown] - means[i]).norm(dim=1)
        torch.testing.assert_close(out[i], out[shown][distances.argmin()])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(40, dtype=out.dtype))


def test_frozen_views_beyond_their_memory_budget_render_through_the_rasterizer():
    from cgc_core.render import FrozenViews

    params = _random_scene(40, 5, dtype=torch.float32)
    gaussians = Gaussians(*(params[k].detach() for k in PARAMS[:5]))
    cameras = {"a": _camera(), "b": _camera(eye=(1.5, -2.5, 0.9))}
    features = params["features"].detach()
    kept, none_kept = FrozenViews(gaussians, cameras), FrozenViews(gaussians, cameras, max_bytes=0)
    for name in cameras:
        torch.testing.assert_close(none_kept.render(name, features), kept.render(name, features), rtol=1e-5, atol=1e-6)
    assert set(kept.weights) == {"a", "b"} and not none_kept.weights and none_kept.over_budget == {"a", "b"}
    # The back-projection still reads every view, one at a time.
    torch.testing.assert_close(none_kept.back_project(features), kept.back_project(features))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colour_matches_gsplat_pure_torch_helper(degree):
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not importable")
    g = torch.Generator().manual_seed(degree)
    sh = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64)
    expected = torch.clamp_min(torch_impl._spherical_harmonics(degree, dirs, sh) + 0.5, 0.0)
    torch.testing.assert_close(sh_to_rgb(sh, dirs, degree), expected)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colour_kernel_equals_the_batched_product_values_and_gradients(degree):
    from cgc_core.render.projection import sh_to_rgb_torch

    g = torch.Generator().manual_seed(10 + degree)
    sh = torch.randn(200, 16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dirs = torch.randn(200, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(200, 3, generator=g, dtype=torch.float64)
    used = (degree + 1) ** 2
    results = []
    for fast in (True, False):
        sh.grad = dirs.grad = None
        rgb = (sh_to_rgb if fast else sh_to_rgb_torch)(sh, dirs, degree)  # the C++ kernel on CPU tensors, or not
        (rgb * weights).sum().backward()
        dirs_grad = dirs.grad if dirs.grad is not None else torch.zeros_like(dirs)  # degree 0: no path to dirs
        results.append((rgb.detach(), sh.grad.clone(), dirs_grad.clone()))
    for fast_value, slow_value in zip(*results):
        torch.testing.assert_close(fast_value, slow_value, rtol=1e-12, atol=1e-12)
    assert (results[0][1][:, used:] == 0).all()
    assert (results[0][2].abs().max() > 0) == (degree > 0)  # the direction's gradient, through the normalisation


def test_portable_build_of_the_kernels_equals_the_reference(monkeypatch):
    # The kernels' other variant: without AVX2 a block is 4 x 1 pixels (4 SIMD lanes), not 4 x 2.
    from cgc_core.render import torch_backend

    monkeypatch.setattr(torch_backend, "_module", torch_backend.build_extension(avx2=False))
    params = _random_scene(200, 8)
    camera = _camera(45, 37)
    ref = _assert_torch_backend_equals_reference(params, camera)
    params32 = {k: v.detach().float().requires_grad_() for k, v in params.items()}
    fast32, _ = _render_with_grads(params32, camera, "torch")  # float: the vectorised exp
    assert (fast32.rgb.double() - ref.rgb).abs().max() < 1e-3
    assert (fast32.features.double() - ref.features).abs().max() < 1e-3

