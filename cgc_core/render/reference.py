"""The oracle: dense, slow, obviously correct alpha blending of projected splats (pure torch).

Every pixel looks at every Gaussian. For pixel centre p and splat i (sorted by depth, stable):
    d = mean2d_i - p;   counts only if |d_x| <= radius_x and |d_y| <= radius_y
    sigma_i = 0.5 dᵀ conic_i d        (counts only if sigma_i >= 0)
    alpha_i = min(0.99, opacity_i · exp(-sigma_i))   (counts only if alpha_i >= 1/255)
    T_i = Π_{j<i} (1 - alpha_j)       front-to-back transmittance
    splat i is blended only if T_i (1 - alpha_i) >= 1e-4 (3DGS stops before crossing it)
    out = Σ_i alpha_i T_i c_i + T_final · background,   alpha_out = 1 - T_final
Gradients come from autograd; pixels are processed in chunks with activation checkpointing so
that memory stays bounded.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import depth_order

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4


def _blend_chunk(pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                 radii: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    d = means2d[None, :, :] - pixels[:, None, :]  # [P, N, 2]
    inside = (d[..., 0].abs() <= radii[:, 0]) & (d[..., 1].abs() <= radii[:, 1])
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities * torch.exp(-sigma), ALPHA_MAX)
    counts = inside & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(counts, alpha, torch.zeros_like(alpha))
    one_minus = 1 - alpha
    t_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), one_minus[:, :-1]], dim=1), dim=1)
    keep = (t_before * one_minus >= TRANSMITTANCE_MIN).detach()
    weights = torch.where(keep, alpha * t_before, torch.zeros_like(alpha))
    t_final = torch.prod(torch.where(keep, one_minus, torch.ones_like(alpha)), dim=1)
    image = weights @ colors + t_final[:, None] * background
    return image, 1 - t_final


def rasterize_reference(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, radii: Tensor,
                        depths: Tensor, width: int, height: int, background: Tensor,
                        chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Blend splats into an image.

    Args:
        means2d: [N, 2]; conics: [N, 3]; opacities: [N] in [0, 1]; colors: [N, C];
        radii: [N, 2] int (0 = culled); depths: [N] (sort key); background: [C].
        chunk: Pixels per checkpointed chunk.

    Returns:
        image [H, W, C] and alpha [H, W].
    """
    order = depth_order(depths, radii)
    args = (means2d[order], conics[order], opacities[order], colors[order], radii[order].to(means2d.dtype), background)
    jj, ii = torch.meshgrid(torch.arange(width, dtype=means2d.dtype, device=means2d.device),
                            torch.arange(height, dtype=means2d.dtype, device=means2d.device), indexing="xy")
    pixels = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1) + 0.5
    images, alphas = [], []
    for start in range(0, len(pixels), chunk):
        chunk_pixels = pixels[start:start + chunk]
        if torch.is_grad_enabled() and any(t.requires_grad for t in args):
            image, alpha = checkpoint(_blend_chunk, chunk_pixels, *args, use_reentrant=False)
        else:
            image, alpha = _blend_chunk(chunk_pixels, *args)
        images.append(image)
        alphas.append(alpha)
    return torch.cat(images).reshape(height, width, -1), torch.cat(alphas).reshape(height, width)
