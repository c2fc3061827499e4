"""Rendering speed and memory: forward+backward of 19 channels (RGB + 16 features) per backend.

Cases: 5k / 10k / 50k Gaussians × 128² / 256² images, random Gaussians in front of the camera.
Each case runs in its own child process, so that its peak memory (ru_maxrss, less the resident
size just before the timed loop) is its own. Medians over --repeats runs after one warm-up.

The dense reference costs O(pixels × Gaussians) and is only run up to --reference-max-work
(pixels × Gaussians); larger cases print "not run" (nothing is estimated or extrapolated).
With CUDA and gsplat present, the gsplat backend is timed too.

Last line:
    RESULT torch_s_10k_128=<s> speedup_10k_128=<reference_s / torch_s> torch_s_50k_256=<s>
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

SIZES = [(5_000, 128), (10_000, 128), (5_000, 256), (10_000, 256), (50_000, 128), (50_000, 256)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _case(backend: str, n: int, size: int, repeats: int, queue) -> None:
    import numpy as np
    import torch

    from cgc_core.render import Gaussians, render
    from cgc_core.scene.model import Camera
    from cgc_core.scene.synthetic import look_at

    device = "cuda" if backend == "gsplat" else "cpu"
    g = torch.Generator().manual_seed(0)
    params = [
        torch.randn(n, 3, generator=g) * 0.6, torch.randn(n, 4, generator=g),
        torch.exp(torch.randn(n, 3, generator=g) * 0.5 - 3.5), torch.sigmoid(torch.randn(n, generator=g)),
        torch.randn(n, 16, 3, generator=g) * 0.3, torch.rand(n, 16, generator=g),
    ]
    params = [p.to(device).requires_grad_() for p in params]
    K = np.array([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2], [0, 0, 1.0]])
    camera = Camera(K, look_at(np.array([0.0, -3.0, 0.5]), np.zeros(3)), size, size, "bench")

    def step() -> float:
        for p in params:
            p.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = render(Gaussians(*params[:5]), camera, features=params[5], backend=backend)
        (out.rgb.sum() + out.features.sum()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up (builds the C++ extension on first use)
    before = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(repeats)]
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    queue.put((statistics.median(times), max(peak, 0.0)))


def run_case(backend: str, n: int, size: int, repeats: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(backend, n, size, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--reference-max-work", type=float, default=10_000 * 128 * 128,
                        help="largest pixels × Gaussians for which the dense reference is run")
    args = parser.parse_args()

    import torch

    backends = ["torch"]
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401

            backends.append("gsplat")
        except ImportError:
            pass
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends: {', '.join(backends)} + reference")
    results: dict[tuple[str, int, int], tuple[float, float]] = {}
    for n, size in SIZES:
        for backend in backends:
            results[(backend, n, size)] = run_case(backend, n, size, args.repeats)
        if n * size * size <= args.reference_max_work:
            results[("reference", n, size)] = run_case("reference", n, size, args.reference_repeats)
        line = f"{n // 1000:>3}k Gaussians {size}²:"
        for backend in backends + ["reference"]:
            if (backend, n, size) in results:
                s, mb = results[(backend, n, size)]
                line += f"  {backend} {s:.4f} s (peak +{mb:.0f} MB)"
            else:
                line += f"  {backend} not run (above --reference-max-work)"
        if ("reference", n, size) in results:
            line += f"  speed-up {results[('reference', n, size)][0] / results[('torch', n, size)][0]:.0f}×"
        print(line, flush=True)

    torch_10k = results[("torch", 10_000, 128)][0]
    ref_10k = results.get(("reference", 10_000, 128), (float("nan"), 0))[0]
    print(f"RESULT torch_s_10k_128={torch_10k:.4f} speedup_10k_128={ref_10k / torch_10k:.1f} "
          f"torch_s_50k_256={results[('torch', 50_000, 256)][0]:.4f}")


if __name__ == "__main__":
    main()
