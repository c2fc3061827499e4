"""The CUDA backend: `gsplat.rasterization` with colour, features and depth in one pass.

Colour is evaluated from spherical harmonics by our own `sh_to_rgb` (so that it can be
concatenated with the features: 3 + 16 channels fit one gsplat chunk), and gsplat's
`RGB+ED` mode appends the expected depth. gsplat's `meta` is its `info` dict, which its
densification strategies read directly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import sh_to_rgb


def render_gsplat(gaussians, features: Tensor | None, viewmat: Tensor, K: Tensor, width: int, height: int,
                  degree: int, background: Tensor):
    from gsplat import rasterization

    from . import RenderOutput

    means = gaussians.means
    cam_center = torch.linalg.inv(viewmat)[:3, 3]
    rgb = sh_to_rgb(gaussians.sh, means - cam_center, degree)
    colors = rgb if features is None else torch.cat([rgb, features.to(rgb.dtype)], dim=1)
    n_feat = 0 if features is None else features.shape[1]
    backgrounds = torch.cat([background, torch.zeros(n_feat, dtype=rgb.dtype, device=rgb.device)])[None]
    image, alpha, info = rasterization(
        means, gaussians.quats, gaussians.scales, gaussians.opacities, colors,
        viewmat[None], K[None], width, height, render_mode="RGB+ED", backgrounds=backgrounds, packed=False,
    )
    image, alpha = image[0], alpha[0, ..., 0]
    info["backend"] = "gsplat"
    return RenderOutput(rgb=image[..., :3], features=image[..., 3:3 + n_feat] if features is not None else None,
                        alpha=alpha, depth=image[..., -1], meta=info)
