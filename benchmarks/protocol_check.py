"""Every evaluation protocol end to end through the `cgc-benchmark` flow, on a LERF-Mask-layout
fixture (the tiny synthetic scene without its synthetic ground-truth folder) with randomly
initialised Grounding DINO (SwinT-OGC, a local one-layer BERT) and SAM ViT-B at a 256-pixel input.

The numbers it prints are not quality figures (random detector and segmenter weights, 20 training
iterations); what it checks is that each protocol yields one row per (test view, prompt) with its
query's provenance recorded (grounding view, box, detection score, SAM mask area) and nothing
skipped. Runs in a temporary folder with a throw-away Prefect API.

Last line:
    RESULT protocols=<n> rows=<n> skipped=0 text_rows=<n> box_rows=<n> ovs_rows=<n>
(skipped: (view, prompt) pairs of the ground truth with no row under some protocol)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROTOCOLS = ("text", "box-oracle", "click-oracle", "ovs-argmax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgc-protocols-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
        import pandas as pd
        import torch
        from prefect.testing.utilities import prefect_test_harness

        from cgc_core.fixtures import random_model_overrides, write_lerf_mask_fixture, write_local_bert
        from cgc_core.scene import load_scene
        from flows.benchmark import cgc_benchmark

        torch.manual_seed(0)
        fixture = write_lerf_mask_fixture(work / "lerf_tiny")
        scene = load_scene(fixture)
        bert_dir = work / "bert"
        bert = bert_dir if bert_dir.is_dir() else write_local_bert(
            bert_dir, sorted({w for p in scene.prompts for w in p.split()}))
        overrides = [f"data_dir={work / 'data'}", f"reports_dir={work / 'reports'}", "calibrate.mode=known_poses",
                     "masks.generator=classical", "train.iterations=20", "train.densify.refine_start_iter=5",
                     "train.densify.refine_every=5", "cluster.min_cluster_size=20", f"evaluate.protocol=[{', '.join(PROTOCOLS)}]",
                     *random_model_overrides(bert)]
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=None):
            run = cgc_benchmark([str(fixture)], overrides=overrides)
        seconds = time.perf_counter() - started
        evaluate_dir = Path(run["scenes"][0]["stages"]["evaluate"]["dir"])
        table = pd.read_parquet(evaluate_dir / "results.parquet")
        expected = {(v, p) for v, masks in scene.gt_masks.items() for p in masks}
        skipped = 0
        print(f"fixture: {fixture.name} (LERF-Mask layout, {len(scene.test_names)} test views, "
              f"{len(expected)} (view, prompt) pairs); flow {seconds:.1f} s")
        for protocol in PROTOCOLS:
            rows = table[table["protocol"] == protocol]
            have = set(zip(rows["view"], rows["prompt"]))
            skipped += len(expected - have)
            print(f"  {protocol:<13} rows {len(rows):>3}  detected {int(rows['detected'].sum()):>3}  "
                  f"with box {int(rows['box_x0'].notna().sum()):>3}  mIoU {rows['iou'].mean():.3f} (random weights)")
        print(f"report: {Path(run['report']) / 'report.html'}")
        count = lambda p: int((table["protocol"] == p).sum())  # noqa: E731
        print(f"RESULT protocols={table['protocol'].nunique()} rows={len(table)} skipped={skipped} "
              f"text_rows={count('text')} box_rows={count('box-oracle')} ovs_rows={count('ovs-argmax')}")


if __name__ == "__main__":
    main()
