"""Training on the embedded scene: time per iteration, total minutes, test PSNR, click-protocol
mIoU/mBIoU, and the 3D clustering's ARI against the true objects.

Runs the scene, calibrate (SfM) and masks (the default weights-free generator, view-inconsistent) stages through their
caches under a temporary data folder, then trains from scratch with the default train config on
the default render backend (CPU here) and evaluates under the click protocol, then clusters.

Last line:
    RESULT miou=<0..1> mbiou=<0..1> psnr=<dB> ari=<-1..1> train_min=<minutes> s_per_iter=<s>
"""

from __future__ import annotations

import argparse
import tempfile

from cgc_core.config import load_config
from cgc_core.pipeline import calibrate_stage, cluster_stage, evaluate_stage, masks_stage, scene_stage, train_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--data-dir", default=None, help="reuse a data folder (default: a fresh temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data_dir={args.data_dir or tmp}", f"synthetic.preset={args.preset}", *args.overrides])
        scene, _ = scene_stage(cfg, "synthetic")
        calibrated, calibration = calibrate_stage(cfg, scene)
        masks = masks_stage(cfg, calibrated).result
        trained = train_stage(cfg, calibrated, {"masks": masks, "calibrate": calibration}, force=True).result
        clustered = cluster_stage(cfg, calibrated, {"train": trained}, force=True).result
        evaluated = evaluate_stage(cfg, calibrated, {"train": trained, "cluster": clustered}, force=True).result
        ari = clustered.manifest.info["ari"]
        info = trained.manifest.info
        summary = evaluated.outputs.summary
    s_per_iter = info["seconds"] / info["steps"]
    print(f"{args.preset}: {info['steps']} iterations in {info['seconds'] / 60:.2f} min ({s_per_iter:.3f} s/iter), "
          f"{info['n_gaussians']} Gaussians at the end; test PSNR {summary['psnr']:.2f} dB")
    for prompt, row in summary["prompts"].items():
        print(f"  {prompt:<22} IoU {row['iou']:.3f}  BIoU {row['biou']:.3f}  ({row['views']} views)")
    print(f"RESULT miou={summary['miou']:.4f} mbiou={summary['mbiou']:.4f} psnr={summary['psnr']:.2f} ari={ari:.4f} "
          f"train_min={info['seconds'] / 60:.2f} s_per_iter={s_per_iter:.3f}")


if __name__ == "__main__":
    main()
