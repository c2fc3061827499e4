"""Projection of 3D Gaussians to screen-space splats, and spherical-harmonics colour (pure torch).

Differentiable with ordinary autograd; shared by every backend, so that they differ only in how
they blend. The maths follows 3DGS/gsplat (EWA splatting): camera-space covariance J W Σ Wᵀ Jᵀ
with the Jacobian's x/z and y/z clamped to 1.3× the field of view, plus a 0.3-pixel low-pass term
on the 2D covariance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gaussians import SH_C0

EPS_2D = 0.3
"""Low-pass filter added to every 2D covariance (pixels²): no splat is smaller than a pixel."""
NEAR_PLANE = 0.01
RADIUS_SIGMA = 3.0
"""A splat's radius per axis is ceil(RADIUS_SIGMA · σ_axis) pixels; beyond it, it does not count."""


@dataclass
class Projected:
    """Screen-space splats of N Gaussians seen by one camera.

    Attributes:
        means2d: [N, 2] pixel coordinates (pixel centres at +0.5).
        conics: [N, 3] upper triangle (a, b, c) of the inverse 2D covariance.
        depths: [N] camera-space z.
        radii: [N, 2] int32 radius per axis in pixels; 0 for culled Gaussians (behind the near
            plane or entirely off screen).
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] quaternions (w, x, y, z; normalised here) to [N, 3, 3] rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 3, 3] world covariance R S Sᵀ Rᵀ from quaternions and (positive) scales."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor,
                      width: int, height: int, radius_sigma: float = RADIUS_SIGMA,
                      opacities: Tensor | None = None) -> Projected:
    """Project Gaussians into one pinhole camera.

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations (w, x, y, z), any norm.
        scales: [N, 3] standard deviations along the rotated axes (positive).
        viewmat: [4, 4] world-to-camera (OpenCV axes).
        K: [3, 3] intrinsics.
        width, height: image size in pixels.
        radius_sigma: radius in standard deviations (3 here; gsplat uses 3.33).
        opacities: [N] in [0, 1], optional. When given, each radius shrinks to where the splat can
            still reach alpha >= 1/255 (sigma <= ln(255·opacity), at most `radius_sigma`), and
            splats that never reach it are culled, as gsplat does. Beyond that box no pixel would
            count anyway, so the image is unchanged; only fewer (tile, splat) pairs are visited.

    Returns:
        `Projected` splats; gradients flow to means, quats and scales.

    On the CPU this runs the C++ kernel (`csrc/projection.cpp`, forward and backward written out
    per Gaussian); elsewhere, or when the camera itself needs a gradient, `project_gaussians_torch`,
    the pure-torch version the tests hold the kernel to.
    """
    camera_grad = viewmat.requires_grad or K.requires_grad
    if means.device.type != "cpu" or camera_grad:
        return project_gaussians_torch(means, quats, scales, viewmat, K, width, height, radius_sigma, opacities)
    dtype = means.dtype
    means2d, conics, depths, cov_diag, det = _ProjectCPU.apply(
        means.contiguous(), quats.to(dtype).contiguous(), scales.to(dtype).contiguous(),
        viewmat.detach().to(dtype).contiguous(), K.detach().to(dtype).contiguous(), width, height)
    radii = _radii(means2d.detach(), cov_diag, det, depths.detach(), width, height, radius_sigma, opacities)
    return Projected(means2d, conics, depths, radii)


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, K, width, height):
        from .torch_backend import extension

        means2d, conics, depths, extra = extension().project_forward(means, quats, scales, viewmat, K, width, height,
                                                                    EPS_2D)
        ctx.save_for_backward(means, quats, scales, viewmat, K)
        ctx.size = (width, height)
        ctx.mark_non_differentiable(extra)
        return means2d, conics, depths, extra[:, :2], extra[:, 2]

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _grad_diag, _grad_det):
        from .torch_backend import extension

        means, quats, scales, viewmat, K = ctx.saved_tensors
        grads = [g.contiguous() if g is not None else torch.zeros(shape, dtype=means.dtype)
                 for g, shape in ((grad_means2d, (len(means), 2)), (grad_conics, (len(means), 3)),
                                  (grad_depths, (len(means),)))]
        g_means, g_quats, g_scales = extension().project_backward(means, quats, scales, viewmat, K, *ctx.size,
                                                                  EPS_2D, *grads)
        return g_means, g_quats, g_scales, None, None, None, None


def _radii(means2d: Tensor, cov_diag: Tensor, det: Tensor, depths: Tensor, width: int, height: int,
           radius_sigma: float, opacities: Tensor | None) -> Tensor:
    """[N, 2] int32 radius per axis in pixels (0 = culled) from the 2D covariance's diagonal."""
    with torch.no_grad():
        extent = torch.full_like(depths, radius_sigma)
        valid = (det > 0) & (depths > NEAR_PLANE)
        if opacities is not None:
            # alpha = o·exp(-½ dᵀΣ⁻¹d) >= 1/255  <=>  dᵀΣ⁻¹d <= 2 ln(255 o): an ellipse whose
            # bounding box has half-sides sqrt(2 ln(255 o))·σ_axis.
            log_reach = torch.log(255.0 * opacities.detach().to(depths.dtype).clamp_min(1e-30))
            extent = torch.sqrt(2.0 * log_reach.clamp_min(0.0)).clamp_max(radius_sigma)
            valid = valid & (log_reach >= 0)
        radius = torch.ceil(extent[:, None] * torch.sqrt(cov_diag))
        inside = (
            (means2d[:, 0] + radius[:, 0] > 0) & (means2d[:, 0] - radius[:, 0] < width)
            & (means2d[:, 1] + radius[:, 1] > 0) & (means2d[:, 1] - radius[:, 1] < height)
        )
        radius[~(valid & inside)] = 0
    return radius.to(torch.int32)


def project_gaussians_torch(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor,
                            width: int, height: int, radius_sigma: float = RADIUS_SIGMA,
                            opacities: Tensor | None = None) -> Projected:
    """`project_gaussians` in plain torch ops, differentiable by autograd (also in the camera):
    the oracle of the CPU kernel, and the projection of the dense reference backend."""
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ rotation.T + translation
    cov_c = rotation @ covariance_3d(quats, scales) @ rotation.T
    tx, ty, tz = means_c.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    # Clamp the Jacobian's view angle (not the mean): far off-screen splats stay bounded.
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    txc = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zeros, -fx * txc / tz**2, zeros, fy / tz, -fy * tyc / tz**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + EPS_2D * torch.eye(2, dtype=means.dtype, device=means.device)
    # Entries through one unbind: indexing each apart makes autograd build a full [N, 2, 2] gradient per entry.
    c00, c01, c10, c11 = cov2d.reshape(-1, 4).unbind(-1)
    det = (c00 * c11 - c01 * c10).clamp(min=1e-10)
    conics = torch.stack([c11 / det, -(c01 + c10) / 2 / det, c00 / det], -1)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    radii = _radii(means2d.detach(), torch.stack([c00, c11], -1).detach(), det.detach(), tz.detach(), width, height,
                   radius_sigma, opacities)
    return Projected(means2d, conics, tz, radii)


# Real spherical-harmonics constants (as in 3DGS and gsplat).
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """[N, (degree + 1)²] real SH basis functions of the (normalised) view directions [N, 3]."""
    n = dirs.shape[0]
    columns = [torch.full((n,), SH_C0, dtype=dirs.dtype, device=dirs.device)]
    if degree > 0:
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        columns += [-_C1 * y, _C1 * z, -_C1 * x]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            columns += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
            if degree > 2:
                columns += [_C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
                            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                            _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(columns, dim=-1)


def sh_to_rgb(sh: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colour from spherical harmonics: [N, K, 3] coefficients, [N, 3] view directions -> [N, 3].

    Uses the first (degree + 1)² coefficients; adds 0.5 and clamps at 0, as 3DGS does. The basis
    times the coefficients is one batched product (its backward two products, where indexing each
    coefficient apart made autograd build a full-size [N, K, 3] gradient per coefficient). On the
    CPU a C++ kernel computes basis and product per Gaussian, forward and backward (the tensor
    version's sixty-odd small operations and N tiny matrix products cost several times more); the
    tests hold it to the tensor version.
    """
    if not 0 <= degree <= 3 or sh.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"sh_degree {degree} needs (degree+1)^2 <= {sh.shape[1]} coefficients and degree in 0..3")
    if sh.device.type != "cpu":
        return sh_to_rgb_torch(sh, dirs, degree)
    result = _ShColourCPU.apply(dirs.to(sh.dtype).contiguous(), sh.contiguous(), degree)
    return torch.clamp_min(result + 0.5, 0.0)


def sh_to_rgb_torch(sh: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """`sh_to_rgb` in tensor operations (`sh_basis` and one batched product), differentiable by
    autograd: the oracle of the CPU kernel, the dense reference backend's colour and the CUDA path."""
    used = (degree + 1) ** 2
    coefficients = sh if sh.shape[1] == used else sh[:, :used]
    result = torch.bmm(sh_basis(dirs, degree)[:, None, :], coefficients)[:, 0]
    return torch.clamp_min(result + 0.5, 0.0)


class _ShColourCPU(torch.autograd.Function):
    """rgb[n, c] = Σ_k basis_k(dirs[n]) coeffs[n, k, c] before the offset and clamp, in the C++ extension."""

    @staticmethod
    def forward(ctx, dirs, coeffs, degree):
        from .torch_backend import extension

        ctx.save_for_backward(dirs, coeffs)
        ctx.degree = degree
        return extension().sh_colour_forward(dirs, coeffs, degree)

    @staticmethod
    def backward(ctx, grad):
        from .torch_backend import extension

        dirs, coeffs = ctx.saved_tensors
        grad_dirs, grad_coeffs = extension().sh_colour_backward(dirs, coeffs, ctx.degree, grad.contiguous())
        return grad_dirs, grad_coeffs, None


def depth_order(depths: Tensor, radii: Tensor) -> Tensor:
    """Indices of the visible splats (radii > 0), nearest first; ties keep index order."""
    visible = (radii > 0).all(-1)
    keyed = torch.where(visible, depths, torch.full_like(depths, float("inf")))
    return torch.argsort(keyed.detach(), stable=True)[: int(visible.sum())]
