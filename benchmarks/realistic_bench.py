"""The realistic development scene (synthetic preset `realistic`: nine small objects in a furnished
room, soft shadows, highlights, a mirror ball) beside the demo preset, both with the default config.

For each scene: scene → calibrate (SfM) → masks (default generator) → train → evaluate (click-oracle
protocol: the query is the deepest pixel of the ground-truth mask, an upper bound on selection
from a click, not comparable with the paper's text protocol) → cluster. Stages are cached in the
data folder (default: the checkout's `data/bench-realistic`), so an ablation (`--set train.x=y`)
retrains without re-rendering. Prints per-object IoU, the pairwise cosine of the objects' mean
rendered features in the first test view, and the training health.

Last line:
    RESULT realistic_miou=<x> realistic_clusters=<n> demo_miou=<x> separation=<x> minutes=<x>
(separation: within − between of the realistic model's final health; minutes: its training time)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cgc_core.config import load_config
from cgc_core.gaussians import load_ply
from cgc_core.pipeline import run_scene_stage
from cgc_core.render import feature_renderer
from cgc_core.train import TrainOutputs, describe_depth_split

ROOT = Path(__file__).resolve().parent.parent


def object_cosines(scene, trained: TrainOutputs, backend: str) -> tuple[list[str], np.ndarray]:
    """Prompts of the first test view and the cosine matrix of their mean unit rendered features."""
    params = load_ply(trained.ply)
    view = scene.test_names[0]
    features = F.normalize(feature_renderer(params, scene, backend)(view), dim=-1)
    prompts = sorted(scene.gt_masks.get(view, {}))
    means = []
    for prompt in prompts:
        mask = torch.as_tensor(scene.load_gt_mask(view, prompt))
        means.append(F.normalize(features[mask].mean(0), dim=0))
    stacked = torch.stack(means)
    return prompts, (stacked @ stacked.T).numpy()


def run_scene(source: str, overrides: list[str], data_dir: str) -> dict:
    cfg = load_config(None, [f"data_dir={data_dir}", *overrides])
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
        scene, result = run_scene_stage(cfg, source, stage)
        print(f"[{source}] {stage:<9} {'cached' if result.cached else 'computed'}  {result.stage_dir}", flush=True)
        if stage == "train":
            trained = result.outputs
        if stage == "evaluate":
            evaluated = result.outputs.summary
        if stage == "cluster":
            clustered = result.outputs.summary
    record = trained.record
    prompts, cos = object_cosines(scene, trained, cfg.train.backend)
    print(f"[{source}] click-oracle mIoU {evaluated['miou']:.3f}  mBIoU {evaluated['mbiou']:.3f}  "
          f"test PSNR {evaluated['psnr']:.2f} dB  clusters {clustered['n_clusters']}  "
          f"3D ARI {clustered.get('ari', float('nan')):.3f}  3D object IoU {clustered.get('mean_object_iou', float('nan')):.3f}  "
          f"train {record['seconds'] / 60:.2f} min, "
          f"{record['n_gaussians']} Gaussians")
    for prompt, row in evaluated["prompts"].items():
        print(f"[{source}]   {prompt:<16} IoU {row['iou']:.3f}  BIoU {row['biou']:.3f}  ({row['views']} views)")
    off = cos[~np.eye(len(cos), dtype=bool)]
    print(f"[{source}] cosine of the objects' mean features, first test view: min {off.min():.2f}  "
          f"median {np.median(off):.2f}  max {off.max():.2f}; share >= 0.7: {(off >= 0.7).mean():.2f}")
    if record.get("depth_split"):
        print(f"[{source}] {describe_depth_split(record['depth_split'])}")
    health = record["health"]
    final = health["final"] or {}
    print(f"[{source}] health: within {final.get('within', float('nan')):.3f}  between {final.get('between', float('nan')):.3f}"
          f"  confusable {final.get('confusable', float('nan')):.3f}  warning: {health['warning'] or 'none'}")
    history = health["history"]
    for h in history[:: max(1, len(history) // 5)] + history[-1:]:
        print(f"[{source}]   step {h['step']:>5}  between {h.get('between', float('nan')):.3f}  within "
              f"{h.get('within', float('nan')):.3f}  |grad cc| {h.get('grad_cc', float('nan')):.3g}  "
              f"|grad reg| {h.get('grad_reg', float('nan')):.3g}  n {h['n']}")
    return {"miou": evaluated["miou"], "clusters": clustered["n_clusters"], "separation": final.get("separation"),
            "minutes": record["seconds"] / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--scenes", nargs="+", default=["realistic", "demo"], choices=["realistic", "demo"])
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-realistic"))
    args = parser.parse_args()
    out = {name: run_scene(f"synthetic-{name}", args.overrides, args.data_dir) for name in args.scenes}
    real, demo = out.get("realistic", {}), out.get("demo", {})

    def fmt(v, spec):
        return "nan" if v is None else format(v, spec)

    print(f"RESULT realistic_miou={fmt(real.get('miou'), '.4f')} realistic_clusters={real.get('clusters', 'nan')} "
          f"demo_miou={fmt(demo.get('miou'), '.4f')} separation={fmt(real.get('separation'), '.4f')} "
          f"minutes={fmt(real.get('minutes'), '.2f')}")


if __name__ == "__main__":
    main()
