"""Where one CPU training iteration of the demo goes (issue 22, point 1): each part of the training
step timed on its own, on a trained demo model (its Gaussian count is the one training ends at).

Parts: projection and SH colour (forward), tile binning and depth sort, the C++ blend forward, the
photometric loss (L1 + D-SSIM) forward, the contrastive loss forward, the regulariser (neighbour
search and loss) forward, the whole backward pass of the summed loss, the rasterizer's own backward
within it, the Adam steps, and the densification bookkeeping (gsplat's DefaultStrategy, the
gradient statistics it gathers every step). Medians over --repeats training views.

Needs a trained demo model: `make demo` (or any run of the train stage on `synthetic`).

Last line:
    RESULT s_per_iter=<sum of the parts' medians> render_s=<projection + binning + forward + rasterizer backward> n_gaussians=<n>
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cgc_core.config import load_config
from cgc_core.gaussians import load_ply
from cgc_core.losses import multilevel_contrastive_loss, photometric_loss, sample_neighbours, spatial_regularization
from cgc_core.pipeline import run_scene_stage
from cgc_core.render import Gaussians
from cgc_core.render.projection import project_gaussians, sh_to_rgb
from cgc_core.render import torch_backend
from cgc_core.render.torch_backend import _Rasterize, bin_tiles
from cgc_core.train import ContrastiveTerm, label_map_at, train_view

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--scene", default="synthetic")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    cfg = load_config(None, [f"data_dir={args.data_dir}"], cuda=False)
    train_cfg = cfg.train
    scene, masks = run_scene_stage(cfg, args.scene, "masks")
    _, trained = run_scene_stage(cfg, args.scene, "train")
    loaded = load_ply(trained.outputs.ply)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in loaded.items()}
    optimizers = [torch.optim.Adam([p], lr=1e-4, eps=1e-15) for p in params.values()]
    names = sorted(scene.train_names)[: args.repeats]
    # The rasterizer's share of the backward pass: its C++ backward, timed where autograd calls it.
    raster_backward: list[float] = []
    kernel = torch_backend.extension()

    class TimedKernel:
        def __getattr__(self, name):  # every other kernel function as it is
            return getattr(kernel, name)

        def backward(self, *args):
            out, seconds = _timed(lambda: kernel.backward(*args))
            raster_backward.append(seconds)
            return out

    timed_kernel = TimedKernel()
    torch_backend.extension = lambda: timed_kernel
    times: dict[str, list[float]] = {}
    for name in names:
        camera, target = train_view(scene, name, train_cfg.downscale)
        labels = label_map_at(masks.outputs.store, name, *target.shape[:2])
        g = Gaussians.from_params(params)
        viewmat = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
        K = torch.as_tensor(camera.K, dtype=torch.float32)
        w, h = camera.width, camera.height

        def project():
            p = project_gaussians(g.means, g.quats, g.scales, viewmat, K, w, h, opacities=g.opacities)
            rgb = sh_to_rgb(g.sh, g.means - torch.linalg.inv(viewmat)[:3, 3], 3)
            return p, torch.cat([rgb, params["features"], p.depths[:, None]], dim=1)

        (projected, colors), t_project = _timed(project)
        (offsets, ids), t_bin = _timed(lambda: bin_tiles(projected.means2d, projected.radii, projected.depths, w, h))
        background = torch.zeros(colors.shape[1])
        (image, alpha), t_forward = _timed(lambda: _Rasterize.apply(
            projected.means2d.contiguous(), projected.conics.contiguous(), g.opacities.contiguous(), colors.contiguous(),
            projected.radii.to(torch.int32).contiguous(), background, offsets, ids, w, h, 16))
        photo, t_photo = _timed(lambda: photometric_loss(image[..., :3], target))
        cc, t_cc = _timed(lambda: train_cfg.contrastive.weight * multilevel_contrastive_loss(
            image[..., 3:19], labels, train_cfg.contrastive.level_dims, **ContrastiveTerm(train_cfg.contrastive).options))

        def regulariser():
            samples, near, far = sample_neighbours(params["means"], train_cfg.regularizer.samples, train_cfg.regularizer.k_near,
                                                   train_cfg.regularizer.l_far, generator=torch.Generator().manual_seed(0))
            return spatial_regularization(params["features"], samples, near, far, train_cfg.regularizer.lambda_near,
                                          train_cfg.regularizer.lambda_far)

        reg, t_reg = _timed(regulariser)
        projected.means2d.retain_grad()
        raster_backward.clear()
        _, t_backward = _timed(lambda: (photo + cc + reg).backward())
        t_raster_backward = sum(raster_backward)
        def densify_stats():  # what DefaultStrategy does every step before refining
            grads = projected.means2d.grad.norm(dim=-1)
            visible = projected.radii.max(dim=-1).values > 0
            return grads[visible].sum()

        _, t_strategy = _timed(densify_stats)

        def step():
            for o in optimizers:
                o.step()
                o.zero_grad(set_to_none=True)

        _, t_optimizer = _timed(step)
        for key, value in (("projection + SH", t_project), ("binning + sort", t_bin), ("blend forward", t_forward),
                           ("L1 + D-SSIM", t_photo), ("contrastive loss", t_cc), ("regulariser", t_reg),
                           ("rasterizer backward", t_raster_backward),
                           ("rest of backward", t_backward - t_raster_backward), ("densification stats", t_strategy),
                           ("Adam steps", t_optimizer)):
            times.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in times.items()}
    total = sum(medians.values())
    n = loaded["means"].shape[0]
    print(f"demo model: {n} Gaussians, {w}x{h}, 19 channels, {torch.get_num_threads()} threads; medians of "
          f"{len(names)} views (every part on every view: the contrastive loss and regulariser run on every "
          f"2nd and 4th iteration in training)")
    for key, value in medians.items():
        print(f"  {key:<22} {value * 1000:8.1f} ms  {100 * value / total:5.1f} %")
    render = sum(medians[k] for k in ("projection + SH", "binning + sort", "blend forward", "rasterizer backward"))
    print(f"RESULT s_per_iter={total:.4f} render_s={render:.4f} n_gaussians={n}")


if __name__ == "__main__":
    main()
