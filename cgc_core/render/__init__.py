"""Differentiable rendering of Gaussians with features: one `render()`, three backends.

- `torch`: tiles binned in torch and blended by a C++ extension, on CPU (any machine).
- `gsplat`: `gsplat.rasterization` on CUDA.
- `reference`: dense and slow, the oracle the tests hold the others to.

Colour (from spherical harmonics), the feature vector and the depth are blended with the same
weights in one pass, so the feature map is exactly "alpha-blended like colour" (CGC, Eq. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor

from ..scene.model import Camera
from .projection import project_gaussians, project_gaussians_torch, sh_to_rgb, sh_to_rgb_torch

Backend = Literal["auto", "torch", "gsplat", "reference"]
BACKENDS = ("torch", "gsplat", "reference")


@dataclass
class Gaussians:
    """Activated Gaussian parameters (what a rasterizer consumes).

    Attributes:
        means: [N, 3] world positions.
        quats: [N, 4] rotations (w, x, y, z); normalised when projected.
        scales: [N, 3] positive standard deviations.
        opacities: [N] in (0, 1).
        sh: [N, K, 3] spherical-harmonics colour coefficients, K = (degree + 1)² for some degree ≤ 3.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"Gaussians.sh: expected shape ({n}, K, 3), got {tuple(self.sh.shape)}")

    @classmethod
    def from_params(cls, params: dict[str, Tensor]) -> "Gaussians":
        """From a 3DGS parameter dict (`means`, `quats`, log `scales`, logit `opacities`, `sh0`, `shN`)."""
        sh = params["sh0"] if "shN" not in params else torch.cat([params["sh0"], params["shN"]], dim=1)
        return cls(params["means"], params["quats"], torch.exp(params["scales"]),
                   torch.sigmoid(params["opacities"]), sh)

    @property
    def max_sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1


@dataclass
class RenderOutput:
    """What `render` returns.

    Attributes:
        rgb: [H, W, 3] colour, background composited.
        features: [H, W, D] alpha-blended features (background 0), or None.
        alpha: [H, W] accumulated opacity.
        depth: [H, W] expected depth (alpha-normalised; 0 where alpha is 0).
        meta: gsplat-style info for densification: `means2d` [1, N, 2] (its gradient retained
            when the strategy asks), `radii` [1, N, 2], `width`, `height`, `n_cameras`,
            `gaussian_ids` (None: unpacked), `depths` [1, N], `backend`.
    """

    rgb: Tensor
    features: Tensor | None
    alpha: Tensor
    depth: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def available_backends() -> list[str]:
    """Backends usable on this machine."""
    out = ["torch", "reference"]
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401

            out.insert(0, "gsplat")
        except ImportError:
            pass
    return out


def resolve_backend(backend: str) -> str:
    """`auto` -> gsplat on CUDA when importable, else torch; an unavailable choice raises."""
    if backend == "auto":
        return "gsplat" if "gsplat" in available_backends() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r} (choose from {('auto',) + BACKENDS})")
    if backend not in available_backends():
        raise RuntimeError(
            f"render backend {backend!r} is not available here: it needs CUDA and the gsplat package "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()}); use backend='torch' on CPU"
        )
    return backend


def camera_tensors(camera: Camera, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """World-to-camera [4, 4] and K [3, 3] as tensors."""
    return (torch.as_tensor(camera.world_to_camera, dtype=dtype, device=device),
            torch.as_tensor(camera.K, dtype=dtype, device=device))


def _project(gaussians: Gaussians, camera: Camera, viewmat: Tensor, K: Tensor, project=project_gaussians):
    return project(gaussians.means, gaussians.quats, gaussians.scales, viewmat, K, camera.width, camera.height,
                   opacities=gaussians.opacities)


def render(gaussians: Gaussians, camera: Camera, *, features: Tensor | None = None, sh_degree: int | None = None,
           background: Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0), backend: Backend = "auto") -> RenderOutput:
    """Render colour, features, alpha and depth of Gaussians seen by one camera.

    Args:
        gaussians: Activated parameters (`Gaussians.from_params` builds them from a parameter dict).
        camera: The view (intrinsics, world-to-camera, size).
        features: [N, D] per-Gaussian features blended with the colour weights, or None.
        sh_degree: Spherical-harmonics degree to use (≤ the coefficients' degree); None uses all.
        background: RGB behind the Gaussians.
        backend: `auto`, `torch` (CPU C++ tiles), `gsplat` (CUDA) or `reference` (dense oracle).

    Returns:
        `RenderOutput`; everything is differentiable with respect to the Gaussians and features.
    """
    backend = resolve_backend(backend)
    means = gaussians.means
    device, dtype = means.device, means.dtype
    degree = gaussians.max_sh_degree if sh_degree is None else sh_degree
    viewmat, K = camera_tensors(camera, device, dtype)
    width, height = camera.width, camera.height
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if features is not None and features.shape[0] != means.shape[0]:
        raise ValueError(f"features: expected {means.shape[0]} rows (one per Gaussian), got {features.shape[0]}")
    n_feat = 0 if features is None else features.shape[1]

    if backend == "gsplat":
        from .gsplat_backend import render_gsplat

        return render_gsplat(gaussians, features, viewmat, K, width, height, degree, bg)

    # the dense reference is pure torch throughout, projection and colour included: it is the oracle
    project, colour = ((project_gaussians_torch, sh_to_rgb_torch) if backend == "reference"
                       else (project_gaussians, sh_to_rgb))
    projected = _project(gaussians, camera, viewmat, K, project)
    cam_center = torch.linalg.inv(viewmat)[:3, 3]
    rgb = colour(gaussians.sh, means - cam_center, degree)
    channels = [rgb] + ([features.to(dtype)] if features is not None else []) + [projected.depths[:, None]]
    colors = torch.cat(channels, dim=1)
    full_bg = torch.cat([bg, torch.zeros(n_feat + 1, dtype=dtype, device=device)])
    means2d = projected.means2d[None]  # [1, N, 2]: the tensor the densification strategy reads
    if backend == "torch":
        from .torch_backend import rasterize_tiles as rasterize
    else:
        from .reference import rasterize_reference as rasterize
    image, alpha = rasterize(means2d[0], projected.conics, gaussians.opacities, colors, projected.radii,
                             projected.depths, width, height, full_bg)
    depth = torch.where(alpha > 0, image[..., -1] / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    meta = {
        "means2d": means2d, "radii": projected.radii[None], "depths": projected.depths[None],
        "width": width, "height": height, "n_cameras": 1, "gaussian_ids": None, "backend": backend,
    }
    return RenderOutput(
        rgb=image[..., :3], features=image[..., 3:3 + n_feat] if features is not None else None,
        alpha=alpha, depth=depth, meta=meta,
    )


class _WeightedSum(torch.autograd.Function):
    """matrix @ values with the gradient through a stored transpose (CSR @ dense is fast; torch's
    own backward of a sparse product is about 20× slower on CPU)."""

    @staticmethod
    def forward(ctx, values, matrix, transposed):
        ctx.transposed = transposed
        return matrix @ values

    @staticmethod
    def backward(ctx, grad):
        return ctx.transposed @ grad.contiguous(), None, None


@dataclass
class BlendWeights:
    """One view's blending weights of fixed Gaussians: what `render` would blend any per-Gaussian
    values with, so that features on frozen geometry render as one sparse product.

    Attributes:
        matrix: sparse CSR [H*W, N] of alpha·T (row p = y * width + x).
        transposed: the same weights as CSR [N, H*W] (the gradient's product).
        height, width: the view's size in pixels.
    """

    matrix: Tensor
    transposed: Tensor
    height: int
    width: int

    def render(self, values: Tensor) -> Tensor:
        """[H, W, C]: `values` [N, C] blended with these weights (background 0), differentiable in `values`."""
        if values.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"values: expected {self.matrix.shape[1]} rows (one per Gaussian), got {values.shape[0]}")
        return _WeightedSum.apply(values.contiguous(), self.matrix, self.transposed).reshape(self.height, self.width, -1)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for m in (self.matrix, self.transposed)
                   for t in (m.crow_indices(), m.col_indices(), m.values()))


@torch.no_grad()
def blend_weights(gaussians: Gaussians, camera: Camera) -> BlendWeights:
    """The blending weights of every Gaussian in every pixel of one view (CPU, the `torch` backend's
    kernel and rules): `blend_weights(g, cam).render(f)` equals `render(g, cam, features=f,
    backend="torch").features` for any features f, at a small fraction of its cost.

    Args:
        gaussians: Activated parameters, on the CPU; they are treated as constants.
        camera: The view.

    Returns:
        `BlendWeights` (about 16 bytes per blended Gaussian-pixel pair, both layouts together).
    """
    from .torch_backend import blend_weight_matrix

    projected = _project(gaussians, camera, *camera_tensors(camera, gaussians.means.device, gaussians.means.dtype))
    matrix = blend_weight_matrix(projected.means2d, projected.conics, gaussians.opacities, projected.radii,
                                 projected.depths, camera.width, camera.height)
    return BlendWeights(matrix, matrix.t().to_sparse_csr(), camera.height, camera.width)


class FrozenViews:
    """The blending weights of fixed Gaussians in each training view, computed on first use and kept
    while they fit in `max_bytes` (about 16 bytes per blended Gaussian-pixel pair: 57 MB per 320×240
    view of the demo's 33k Gaussians); views beyond the budget are rendered by the rasterizer."""

    def __init__(self, gaussians: Gaussians, cameras: dict[str, Camera], max_bytes: float = float("inf")):
        self.gaussians = gaussians
        self.cameras = cameras
        self.max_bytes = max_bytes
        self.weights: dict[str, BlendWeights] = {}
        self.over_budget: set[str] = set()

    def view(self, name: str) -> BlendWeights:
        """The view's weights (kept if the budget allows)."""
        if name in self.weights:
            return self.weights[name]
        weights = blend_weights(self.gaussians, self.cameras[name])
        if sum(w.nbytes for w in self.weights.values()) + weights.nbytes <= self.max_bytes:
            self.weights[name] = weights
        else:
            self.over_budget.add(name)
        return weights

    def render(self, name: str, features: Tensor) -> Tensor:
        """[H, W, D]: the features blended into view `name` (differentiable in `features`)."""
        if name in self.over_budget:  # computing its weights again would cost more than a render
            return render(self.gaussians, self.cameras[name], features=features, backend="torch").features
        return self.view(name).render(features)

    @torch.no_grad()
    def back_project(self, features: Tensor, min_weight: float = 1e-3) -> Tensor:
        """[N, D] unit features: each Gaussian's is the mean of the normalised rendered features of
        the pixels it is blended into (over every view, weighted by its blending weight); one that no
        view shows (total weight below `min_weight`) takes its nearest shown neighbour's. Gaussians
        that a frozen run barely reaches keep their random start otherwise, which the rendered maps
        hide but 3D clustering does not."""
        total = torch.zeros_like(features)
        weight = torch.zeros(features.shape[0], dtype=features.dtype)
        for name in self.cameras:
            view = self.view(name)
            rendered = torch.nn.functional.normalize(view.matrix @ features, dim=-1)
            total += view.transposed @ rendered
            weight += view.transposed @ torch.ones(rendered.shape[0], 1, dtype=features.dtype)[:, 0]
        shown = weight >= min_weight
        out = torch.nn.functional.normalize(features, dim=-1).clone()
        out[shown] = torch.nn.functional.normalize(total[shown], dim=-1)
        if shown.any() and not shown.all():
            out[~shown] = out[shown][torch.as_tensor(nearest_shown(self.gaussians.means.numpy(), shown.numpy()))]
        return out


def nearest_shown(means: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """For each Gaussian that no view shows (`~shown`, [N] boolean), the index among the shown ones
    of its nearest shown Gaussian: how values lifted from views reach Gaussians the views never see."""
    from scipy.spatial import cKDTree

    return cKDTree(means[shown]).query(means[~shown])[1]


def feature_renderer(params: dict[str, Tensor], scene, backend: str = "auto",
                     sh_degree: int | None = None) -> Callable[[str], Tensor]:
    """A function from a view name of `scene` (a `Scene`) to its rendered [H, W, D] feature map
    (for `evaluate_scene`, clustering and the command line)."""
    gaussians = Gaussians.from_params(params)

    @torch.no_grad()
    def render_features(name: str) -> Tensor:
        return render(gaussians, scene.cameras[name], features=params["features"], sh_degree=sh_degree,
                      backend=backend).features

    return render_features


__all__ = ["Gaussians", "RenderOutput", "render", "BlendWeights", "blend_weights", "FrozenViews", "nearest_shown",
           "feature_renderer", "available_backends", "resolve_backend", "BACKENDS"]
