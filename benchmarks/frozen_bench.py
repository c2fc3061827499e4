"""Segmenting a model trained elsewhere: the feature field trained on the frozen Gaussians of a
trained model, against full training from scratch, on the same scene (one run each).

Full: the default config through the train stage (photometric + contrastive + regulariser,
densification). Frozen: the full run's Gaussians without their features, saved as a standard
3DGS .ply, then `train.init_ply=<it> train.frozen.enabled=true` (features only). Both evaluated
with the click-oracle protocol (an upper bound on a click; not the paper's text protocol).

Last line:
    RESULT frozen_speedup=<full train seconds / frozen train seconds> frozen_miou=<x> full_miou=<x>
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cgc_core.config import load_config
from cgc_core.gaussians import load_ply, save_ply
from cgc_core.pipeline import run_scene_stage

ROOT = Path(__file__).resolve().parent.parent


def train_and_evaluate(source: str, overrides: list[str]) -> tuple[dict, dict, Path]:
    cfg = load_config(None, overrides)
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
        _, result = run_scene_stage(cfg, source, stage)
        if stage == "train":
            trained = result.outputs
    return trained.record, result.outputs.summary, trained.ply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="synthetic-demo")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-frozen"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    base = [f"data_dir={args.data_dir}", *args.overrides]
    full_record, full_eval, full_ply = train_and_evaluate(args.scene, base)
    model = Path(args.data_dir) / "model_without_features.ply"
    save_ply({k: v for k, v in load_ply(full_ply).items() if k != "features"}, model)
    frozen_record, frozen_eval, _ = train_and_evaluate(
        args.scene, [*base, f"train.init_ply={model}", "train.frozen.enabled=true"])
    speedup = full_record["seconds"] / frozen_record["seconds"]
    print(f"full:   {full_record['seconds'] / 60:.2f} min, {full_record['n_gaussians']} Gaussians, "
          f"click-oracle mIoU {full_eval['miou']:.3f}")
    print(f"frozen: {frozen_record['seconds'] / 60:.2f} min, {frozen_record['n_gaussians']} Gaussians, "
          f"click-oracle mIoU {frozen_eval['miou']:.3f}")
    print(f"RESULT frozen_speedup={speedup:.2f} frozen_miou={frozen_eval['miou']:.4f} full_miou={full_eval['miou']:.4f}")


if __name__ == "__main__":
    main()
