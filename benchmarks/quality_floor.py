"""The measurements behind tests/test_quality.py's floor: the tiny preset trained with the test's
iterations under every variant (default; the contrastive term on a tenth of its steps; label maps
shuffled between views; no contrastive term; the contrastive weight / 10) and several train seeds,
scored click-oracle on its test views, on one thread (as the test). `weakened_max` is over the
variants the test asserts.

Last line:
    RESULT seeds=<n> default_min=<x> default_mean=<x> weakened_max=<x> margin=<default_min - weakened_max>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_quality import TINY_MASKS, VARIANTS, WEAKENED, click_miou_after_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    import torch

    from cgc_core.config import load_config
    from cgc_core.pipeline import calibrate_stage, masks_stage, scene_stage

    torch.set_num_threads(1)  # as the test trains: one thread makes a run repeat exactly

    scores: dict[str, list[float]] = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data_dir={tmp}/data", "synthetic.preset=tiny", "synthetic.supersample=1",
                                 "calibrate.mode=known_poses", f"masks.generator={TINY_MASKS}"])
        scene, _ = calibrate_stage(cfg, scene_stage(cfg, "synthetic")[0])
        store = masks_stage(cfg, scene).result.outputs.store
        for variant in args.variants:
            for seed in args.seeds:
                began = time.perf_counter()
                miou, per_prompt = click_miou_after_training(scene, store, Path(tmp) / f"{variant}-{seed}", variant, seed)
                scores[variant].append(miou)
                print(f"{variant:<16} seed {seed}: mIoU {miou:.3f} ({time.perf_counter() - began:.0f} s) {per_prompt}",
                      flush=True)
    print("variant          min    mean   max")
    for variant, values in scores.items():
        print(f"{variant:<16} {min(values):.3f}  {statistics.mean(values):.3f}  {max(values):.3f}")
    default = scores.get("default", [float("nan")])
    weakened = [v for name in WEAKENED for v in scores.get(name, [])] or [float("nan")]
    print(f"RESULT seeds={len(args.seeds)} default_min={min(default):.4f} default_mean={statistics.mean(default):.4f} "
          f"weakened_max={max(weakened):.4f} margin={min(default) - max(weakened):.4f}")


if __name__ == "__main__":
    main()
