"""Evaluation throughput: IoU + boundary IoU per 1080p mask pair, and selection latency per view.

- metric: `score_pair` (resize check, IoU, boundary IoU with d = 44 at 1920×1080) on pairs of
  blob-shaped masks, masks per second (median of --repeats);
- selection: similarity to 8 query features and thresholding of a 16-d feature map at the same
  size (the step after rendering);
- mask latency of a trained model: render the feature map of a test view and select one object,
  median over the test views, for the model `make demo` trained (data/synthetic/train); skipped
  with a note when there is none. The paper's figure is 5 ms per mask on a GPU.

Last line:
    RESULT metric_masks_per_s_1080p=<n>
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from cgc_core.metrics import score_pair
from cgc_core.selection import Selector

HEIGHT, WIDTH = 1080, 1920


def blob(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    cy, cx = rng.uniform(200, 880), rng.uniform(300, 1600)
    ry, rx = rng.uniform(50, 300, size=2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(args.pairs):
        gt = blob(rng)
        pred = np.roll(gt, int(rng.integers(-20, 20)), axis=1)
        pairs.append((pred, gt))
    per_run = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for pred, gt in pairs:
            score_pair(pred, gt, "s", "v", "p")
        per_run.append(args.pairs / (time.perf_counter() - start))
    masks_per_s = statistics.median(per_run)
    print(f"metric: IoU + BIoU at {WIDTH}x{HEIGHT}: {masks_per_s:.1f} masks/s (median of {args.repeats} runs of {args.pairs})")

    fmap = torch.rand(HEIGHT, WIDTH, 16)
    queries = torch.rand(8, 16)
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        Selector(threshold=0.7).masks(fmap, queries)
        times.append(time.perf_counter() - start)
    print(f"selection: 8 queries on a {WIDTH}x{HEIGHT}x16 feature map: {1000 * statistics.median(times[1:]):.1f} ms "
          f"({1000 * statistics.median(times[1:]) / 8:.1f} ms per mask), CPU, {torch.get_num_threads()} threads")
    trained_mask_latency()
    print(f"RESULT metric_masks_per_s_1080p={masks_per_s:.1f}")


def trained_mask_latency() -> None:
    from cgc_core.config import load_config
    from cgc_core.gaussians import load_ply
    from cgc_core.pipeline import calibrate_stage, scene_dir, scene_stage
    from cgc_core.render import Gaussians, render

    cfg = load_config()
    ply = scene_dir(cfg, "synthetic") / "train" / "point_cloud.ply"
    if not ply.is_file():
        print(f"mask latency of a trained model: skipped, no model at {ply} (run make demo first)")
        return
    scene, _ = scene_stage(cfg, "synthetic")
    calibrated, _ = calibrate_stage(cfg, scene)
    params = load_ply(ply)
    gaussians = Gaussians.from_params(params)
    selector = Selector(threshold=0.7)
    times = []
    with torch.no_grad():
        for name in calibrated.test_names:
            camera = calibrated.cameras[name]
            start = time.perf_counter()
            fmap = render(gaussians, camera, features=params["features"]).features
            selector.masks(fmap, [selector.click(fmap, [(camera.height // 2, camera.width // 2)])])
            times.append(time.perf_counter() - start)
    print(f"mask latency of the trained demo model ({params['means'].shape[0]} Gaussians, "
          f"{calibrated.cameras[calibrated.test_names[0]].width}x{calibrated.cameras[calibrated.test_names[0]].height}, "
          f"render + select, CPU): {1000 * statistics.median(times):.1f} ms per view (median of {len(times)})")


if __name__ == "__main__":
    main()
