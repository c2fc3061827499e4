"""3D clustering on the embedded scene: ARI against the analytic ground truth, and clustering time.

Runs (or reuses, with --data-dir) the scene, calibrate, masks and train stages of the `demo`
preset, then the cluster stage, which scores the clusters against each Gaussian's nearest analytic
surface (see `cgc_core.pipeline.cluster_stage`). Timing: the trained Gaussians are tiled (features
with a little noise, positions shifted) to 100k and clustered with the default config (HDBSCAN on a
20k sample, then nearest centre), median of 3. Baseline in the same run: HDBSCAN fitted on every
opaque Gaussian (`cluster.max_fit_points=None`) of the first `--baseline-n` (40k) of them, run
once, against the default path timed on the same 40k.

Last line:
    RESULT ari=<0..1> cluster_s_100k=<s>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from cgc_core.cluster import cluster_gaussians
from cgc_core.config import load_config
from cgc_core.gaussians import load_ply
from cgc_core.pipeline import run_scene_stage


def tiled(params: dict, n: int, seed: int = 0) -> dict:
    """`n` Gaussians made from the trained ones: copies with feature noise and a position shift."""
    g = torch.Generator().manual_seed(seed)
    reps = -(-n // len(params["means"]))
    out = {k: params[k].repeat(reps, *[1] * (params[k].dim() - 1))[:n].clone() for k in ("means", "features", "opacities")}
    out["features"] += 0.02 * torch.randn(out["features"].shape, generator=g)
    out["means"] += 0.001 * torch.randn(out["means"].shape, generator=g)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data-dir", default=None, help="reuse a data folder (default: a fresh temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--baseline-n", type=int, default=40_000)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data_dir={args.data_dir or tmp}", f"synthetic.preset={args.preset}", *args.overrides])
        for stage in ("scene", "calibrate", "masks", "train"):
            _, result = run_scene_stage(cfg, "synthetic", stage)
            print(f"{stage}: {result.reason if result else 'read in place'}", flush=True)
        trained = result
        _, clustered = run_scene_stage(cfg, "synthetic", "cluster", force=True)
        summary = clustered.outputs.summary
        params = load_ply(trained.outputs.ply)
    print(f"{args.preset}: {summary['n_gaussians']} Gaussians -> {summary['n_clusters']} clusters in "
          f"{summary['cluster_seconds']:.1f} s; ARI {summary['ari']:.3f}, mean object IoU "
          f"{summary['mean_object_iou']:.3f}, mean click-selection IoU {summary['mean_selection_iou']:.3f}")
    for name, iou in summary["object_iou"].items():
        print(f"  {name:<22} best-cluster IoU {iou:.3f}  selection IoU {summary['selection_iou'].get(name, float('nan')):.3f}")

    big = tiled(params, args.n)
    opacities = torch.sigmoid(big["opacities"])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = cluster_gaussians(big["features"], big["means"], opacities, cfg.cluster)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{args.n} Gaussians, default (HDBSCAN on {cfg.cluster.max_fit_points} + nearest centre): "
          f"{median:.2f} s median of 3, {result.n_clusters} clusters; {torch.get_num_threads()} threads")
    if not args.skip_baseline:
        m = args.baseline_n
        sub = {k: v[:m] for k, v in big.items()}
        sub_opacities = opacities[:m]
        start = time.perf_counter()
        sampled = cluster_gaussians(sub["features"], sub["means"], sub_opacities, cfg.cluster)
        sampled_s = time.perf_counter() - start
        # Fitting on all of them: cluster sizes scale with the number fitted.
        scale = max(1, round(sampled.n_fitted and (sub_opacities >= cfg.cluster.min_opacity).sum().item() / sampled.n_fitted))
        start = time.perf_counter()
        full = cluster_gaussians(sub["features"], sub["means"], sub_opacities,
                                 replace(cfg.cluster, max_fit_points=None, min_cluster_size=cfg.cluster.min_cluster_size * scale))
        baseline = time.perf_counter() - start
        print(f"baseline on {m} Gaussians: HDBSCAN on all {full.n_fitted} opaque ones {baseline:.2f} s "
              f"({full.n_clusters} clusters) vs default {sampled_s:.2f} s ({sampled.n_clusters} clusters): "
              f"{baseline / sampled_s:.1f}x faster")
    print(f"RESULT ari={summary['ari']:.4f} cluster_s_100k={median:.3f}")


if __name__ == "__main__":
    main()
