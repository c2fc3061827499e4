"""The paper's ablation on the embedded scene: complete, no 3D loss, no near (similarity) term,
no far (dissimilarity) term; click-protocol mIoU/mBIoU and the 3D clustering ARI of each.

For each preset (default: demo and hard) the scene, calibrate (SfM) and masks (default generator) stages
run once; each variant then trains from scratch with the default train config plus its switch,
and is evaluated and clustered. Prints a Markdown table (paste into RESULTS.md).

Last line:
    RESULT <preset>_<variant>_miou=<0..1> ... for every preset and variant
"""

from __future__ import annotations

import argparse
import tempfile

from cgc_core.config import load_config
from cgc_core.pipeline import run_scene_stage

VARIANTS = {
    "complete": [],
    "no3d": ["train.regularizer.enabled=false"],
    "nonear": ["train.regularizer.lambda_near=0"],
    "nofar": ["train.regularizer.lambda_far=0"],
}
LABELS = {"complete": "complete", "no3d": "no 3D loss", "nonear": "no similarity (near) term",
          "nofar": "no dissimilarity (far) term"}


def run_variant(data_dir: str, preset: str, extra: list[str], overrides: list[str]) -> dict:
    cfg = load_config(None, [f"data_dir={data_dir}", f"synthetic.preset={preset}", *overrides, *extra])
    for stage in ("scene", "calibrate", "masks"):
        run_scene_stage(cfg, "synthetic", stage)
    _, trained = run_scene_stage(cfg, "synthetic", "train")
    _, clustered = run_scene_stage(cfg, "synthetic", "cluster")
    _, evaluated = run_scene_stage(cfg, "synthetic", "evaluate")
    summary = evaluated.outputs.summary
    cluster = clustered.outputs.summary
    return {"miou": summary["miou"], "mbiou": summary["mbiou"], "psnr": summary["psnr"], "ari": cluster.get("ari"),
            "minutes": trained.manifest.info["seconds"] / 60, "n": trained.manifest.info["n_gaussians"],
            "prompts": {p: v["iou"] for p, v in summary["prompts"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["demo", "hard"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data-dir", default=None, help="reuse a data folder (default: a fresh temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for variant in args.variants:
                data_dir = f"{args.data_dir or tmp}/{preset}"
                r = results[preset, variant] = run_variant(data_dir, preset, VARIANTS[variant], args.overrides)
                print(f"{preset:<5} {LABELS[variant]:<28} mIoU {r['miou']:.4f} mBIoU {r['mbiou']:.4f} "
                      f"PSNR {r['psnr']:.2f} ARI {r['ari']:.3f} ({r['minutes']:.1f} min, {r['n']} Gaussians) "
                      + " ".join(f"{p}={v:.2f}" for p, v in r["prompts"].items()), flush=True)
    print()
    print("| variant | " + " | ".join(f"{p} mIoU / mBIoU | {p} 3D ARI" for p in args.presets) + " |")
    print("|---|" + "---|---|" * len(args.presets))
    for variant in args.variants:
        cells = []
        for preset in args.presets:
            r = results[preset, variant]
            cells += [f"{100 * r['miou']:.1f} / {100 * r['mbiou']:.1f}", f"{r['ari']:.3f}"]
        print(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
    print("RESULT " + " ".join(f"{p}_{v}_miou={results[p, v]['miou']:.4f} {p}_{v}_mbiou={results[p, v]['mbiou']:.4f}"
                               for p in args.presets for v in args.variants))


if __name__ == "__main__":
    main()
