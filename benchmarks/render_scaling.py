"""How the CPU renderer's cost grows (issue 22, point 4): forward + backward time against the number
of Gaussians (10k to 1M, at 256×256) and against the number of pixels (128² to 1920×1080, at 100k
Gaussians), 19 channels (RGB + 16 features) as in training, on a log-log plot with fitted slopes.

Gaussians are random in front of the camera with sizes that shrink as N^(-1/2), so that their
summed screen area (the depth complexity of the image) stays the same at every N, as when a scene
is densified into more, smaller Gaussians. Medians over --repeats runs after one warm-up, each
size in the same process (the figure is about growth, not memory).

Writes benchmarks/figures/render_scaling.png. Last line:
    RESULT slope_gaussians=<d log t / d log N> slope_pixels=<d log t / d log pixels> s_1m_256=<s> s_100k_1080p=<s>
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

GAUSSIANS = [10_000, 30_000, 100_000, 300_000, 1_000_000]
IMAGES = [(128, 128), (256, 256), (512, 512), (1280, 720), (1920, 1080)]
FIXED_N, FIXED_IMAGE = 100_000, (256, 256)


def time_render(n: int, width: int, height: int, repeats: int) -> float:
    from cgc_core.render import Gaussians, render
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    g = torch.Generator().manual_seed(0)
    size = 0.03 * (10_000 / n) ** 0.5  # constant summed area: sizes shrink as N^(-1/2)
    params = [torch.randn(n, 3, generator=g) * 0.5, torch.randn(n, 4, generator=g),
              size * torch.exp(torch.randn(n, 3, generator=g) * 0.3), torch.rand(n, generator=g),
              torch.randn(n, 16, 3, generator=g) * 0.3, torch.rand(n, 16, generator=g)]
    for t in params:
        t.requires_grad_()
    focal = 1.1 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    camera = Camera(K, look_at(np.array([0.0, -3.0, 0.5]), np.zeros(3)), width, height, "scaling")
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = render(Gaussians(*params[:5]), camera, features=params[5], backend="torch")
        (out.rgb.sum() + out.features.sum() + out.alpha.sum()).backward()
        times.append(time.perf_counter() - start)
        for t in params:
            t.grad = None
    return statistics.median(times[1:])


def slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--figure", type=Path, default=Path(__file__).parent / "figures" / "render_scaling.png")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward, 19 channels")
    by_n = []
    for n in GAUSSIANS:
        by_n.append(time_render(n, *FIXED_IMAGE, args.repeats))
        print(f"  {n:>9,} Gaussians  {FIXED_IMAGE[0]}x{FIXED_IMAGE[1]}  {by_n[-1]:.4f} s", flush=True)
    by_pixels = []
    for width, height in IMAGES:
        by_pixels.append(time_render(FIXED_N, width, height, args.repeats))
        print(f"  {FIXED_N:>9,} Gaussians  {width}x{height}  {by_pixels[-1]:.4f} s", flush=True)
    pixels = [w * h for w, h in IMAGES]
    slope_n, slope_p = slope(GAUSSIANS, by_n), slope(pixels, by_pixels)

    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["font.size"] = 8
    fig = Figure(figsize=(7.5, 3))
    left, right = fig.subplots(1, 2)
    left.loglog(GAUSSIANS, by_n, "o-", color="#3b7dd8")
    left.set(xlabel="Gaussians", ylabel="seconds (forward + backward)",
             title=f"{FIXED_IMAGE[0]}x{FIXED_IMAGE[1]}: slope {slope_n:.2f}")
    right.loglog(pixels, by_pixels, "o-", color="#d8843b")
    right.set(xlabel="pixels", title=f"{FIXED_N // 1000}k Gaussians: slope {slope_p:.2f}")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120, bbox_inches="tight")
    print(f"figure: {args.figure}")
    print(f"RESULT slope_gaussians={slope_n:.3f} slope_pixels={slope_p:.3f} s_1m_256={by_n[-1]:.4f} "
          f"s_100k_1080p={by_pixels[-1]:.4f}")


if __name__ == "__main__":
    main()
