"""Segmentation quality on scenes nobody tuned on: the held-out synthetic presets and the hard
preset, each over several seeds (the seed changes the layout of the held-out presets, and the
cameras, textures and training of all of them).

Presets: `heldout-parts` (objects of several coloured parts: one prompt and one ground-truth mask
for the whole object), `heldout-clutter` (a furnished room: same-coloured neighbours of different
shapes, a thin pen, glossy and textured objects, occlusion) and `hard` (a thin pole, two
same-coloured cubes, a rarely seen ball). Every setting of the default config was chosen on the
`demo` preset (seed 0) only. For each (preset, seed): scene → calibrate → masks (default generator) →
train → evaluate → cluster, cached under the data folder (one folder per preset and seed), with
`synthetic.seed` and `train.seed` set to the seed.

Protocol of every mIoU here: **click-oracle** (the query is the deepest pixel of the ground-truth
mask in the first test view where the object is seen): an upper bound on selection from one
click, never comparable with the paper's text protocol. 3D ARI: the cluster stage's adjusted Rand
index of the Gaussians' clusters against their nearest object.

With `--family realistic`: the `realistic-family` preset (one distribution of tabletops, a layout,
orbit and light per seed) on its development seeds and its held-out seeds (`FAMILY_DEV_SEEDS`,
`FAMILY_HELDOUT_SEEDS`), with per-case IoU over the held-out runs; last line
    RESULT dev_miou=<mean> heldout_miou=<mean> heldout_std=<x> small_iou=<x> thin_iou=<x>
           mirror_iou=<x> multipart_iou=<one click> multipart_steps_iou=<x> minutes=<total>
(multipart_steps_iou: protocol click-oracle-steps, the click then coarser steps up the cluster tree
while the IoU in the grounding view rises, an upper bound; over the held-out family seeds'
multi-part objects and those of the held-out presets at `--steps-seeds`, which run too).

Otherwise the last line:
    RESULT heldout_miou=<mean> heldout_miou_std=<x> multipart_iou=<mean over multi-part objects>
           hard_miou=<mean> ari=<mean> minutes=<total>
(heldout_miou: mean over held-out presets × seeds of the run's mIoU, std over those runs;
multipart_iou: mean IoU of the compound objects over their runs; hard_miou: the hard preset's
mean; ari: mean 3D ARI over every run; minutes: the sum of the training times)
"""

from __future__ import annotations

import argparse
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ("heldout-parts", "heldout-clutter")


def run_one(preset: str, seed: int, overrides: list[str], data_dir: str, steps: bool = False) -> dict:
    """One (preset, seed) through every stage; its figures (with `steps`, the click-oracle-steps
    protocol's IoU per prompt too: an evaluation setting, not a training one)."""
    from cgc_core.config import load_config
    from cgc_core.pipeline import run_scene_stage
    from cgc_core.scene.synthetic import build_scene

    folder = Path(data_dir) / f"{preset}-seed{seed}"
    protocols = ["evaluate.protocol=[click-oracle, click-oracle-steps]"] if steps else []
    cfg = load_config(None, [f"data_dir={folder}", f"synthetic.seed={seed}", f"train.seed={seed}", *protocols,
                             *overrides])
    for stage in ("scene", "calibrate", "masks", "train", "cluster", "evaluate"):
        _, result = run_scene_stage(cfg, f"synthetic-{preset}", stage)
        if stage == "train":
            record = result.outputs.record
        if stage == "evaluate":
            evaluated = result.outputs.summary
        if stage == "cluster":
            clustered = result.outputs.summary
    syn = cfg.synthetic
    syn.preset = preset
    objects = build_scene(syn).objects
    multipart = [o.name for o in objects if o.kind == "compound"]
    return {"preset": preset, "seed": seed, "miou": evaluated["miou"], "mbiou": evaluated["mbiou"],
            "prompts": {p: row["iou"] for p, row in evaluated["prompts"].items()}, "multipart": multipart,
            "steps_prompts": {p: row["iou"] for p, row in
                              evaluated["protocols"].get("click-oracle-steps", {}).get("prompts", {}).items()},
            "steps_taken": evaluated["protocols"].get("click-oracle-steps", {}).get("steps", {}),
            "roles": {o.name: o.role for o in objects if o.role},
            "ari": clustered.get("ari"), "clusters": clustered["n_clusters"], "minutes": record["seconds"] / 60,
            "schedule": record.get("schedule"), "depth_split": record.get("depth_split")}


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--presets", nargs="+", default=[*HELDOUT, "hard"], choices=[*HELDOUT, "hard"])
    parser.add_argument("--family", choices=["realistic"], help="the realistic family's development and held-out "
                        "seeds instead of --presets/--seeds")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--split", choices=["all", "dev"], default="all", help="with --family: `dev` runs the "
                        "development seeds only (to choose a setting; no held-out figure is printed)")
    parser.add_argument("--steps-seeds", nargs="+", type=int, default=[0], help="with --family: seeds of the "
                        "held-out presets whose multi-part objects join the family's in multipart_steps_iou")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each on one thread)")
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-heldout"))
    args = parser.parse_args()
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # before the workers start: one core each
    if args.family:
        from cgc_core.scene.synthetic import FAMILY_DEV_SEEDS, FAMILY_HELDOUT_SEEDS

        held_out = [] if args.split == "dev" else [*FAMILY_HELDOUT_SEEDS]
        args.presets, args.seeds = [f"{args.family}-family"], [*FAMILY_DEV_SEEDS, *held_out]
    jobs = [(p, s) for p in args.presets for s in args.seeds]
    if args.family and args.split == "all":  # multipart_steps_iou also counts the held-out presets' multi-part objects
        jobs += [(p, s) for p in HELDOUT for s in args.steps_seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run_one, *zip(*jobs), [args.overrides] * len(jobs), [args.data_dir] * len(jobs),
                             [bool(args.family)] * len(jobs)))

    from cgc_core.train import describe_depth_split  # torch only after OMP_NUM_THREADS is set for the workers

    print(f"settings: default config{' + ' + ' '.join(args.overrides) if args.overrides else ''}; seeds {args.seeds}; "
          "protocol click-oracle (upper bound)")
    for preset in dict.fromkeys(r["preset"] for r in runs):
        mine = [r for r in runs if r["preset"] == preset]
        mean, std = _mean_std([r["miou"] for r in mine])
        ari, ari_std = _mean_std([r["ari"] for r in mine])
        print(f"[{preset}] mIoU {mean:.3f} ± {std:.3f}  3D ARI {ari:.3f} ± {ari_std:.3f}  "
              f"per seed: " + ", ".join(f"{r['seed']}: {r['miou']:.3f} ({r['clusters']} clusters, "
                                       f"{r['minutes']:.1f} min)" for r in mine))
        for r in mine:
            if r.get("depth_split"):
                print(f"[{preset}]   seed {r['seed']}: {describe_depth_split(r['depth_split'])}")
        for prompt in sorted({p for r in mine for p in r["prompts"]}):
            value, spread = _mean_std([r["prompts"].get(prompt) for r in mine])
            tag = "  (multi-part)" if any(prompt in r["multipart"] for r in mine) else ""
            stepped = [r["steps_prompts"].get(prompt) for r in mine if prompt in r["steps_prompts"]]
            if stepped:
                taken = [r["steps_taken"].get(prompt, 0) for r in mine if prompt in r["steps_prompts"]]
                tag += f"  with steps {_mean_std(stepped)[0]:.3f} (steps {taken})"
            print(f"[{preset}]   {prompt:<16} IoU {value:.3f} ± {spread:.3f}{tag}")
    if args.family:
        family = [r for r in runs if r["preset"] == f"{args.family}-family"]
        dev = [r for r in family if r["seed"] in FAMILY_DEV_SEEDS]
        held = [r for r in family if r["seed"] in FAMILY_HELDOUT_SEEDS]
        for label, group in (("development", dev), ("held-out", held)):  # names change by seed; roles do not
            for kind in sorted({v for r in group for v in r["roles"].values()}):
                value, spread = _mean_std([r["prompts"].get(p) for r in group for p, v in r["roles"].items() if v == kind])
                print(f"[{label}] role {kind:<9} IoU {value:.3f} ± {spread:.3f}")
        role = {k: _mean_std([r["prompts"].get(p) for r in held for p, v in r["roles"].items() if v == k])[0]
                for k in ("small", "thin", "mirror", "multipart")}
        # One click plus coarser steps on every multi-part object: the held-out family seeds' and
        # the held-out presets' compound objects (click-oracle-steps, an upper bound).
        multipart = [(r, p) for r in held for p, v in r["roles"].items() if v == "multipart"] + \
                    [(r, p) for r in runs if r["preset"] in HELDOUT for p in r["multipart"] if p in r["prompts"]]
        one_click = _mean_std([r["prompts"].get(p) for r, p in multipart])[0]
        steps_iou = _mean_std([r["steps_prompts"].get(p) for r, p in multipart])[0]
        print(f"multi-part objects ({len(multipart)}): one click {one_click:.3f}, click-oracle-steps {steps_iou:.3f}")
        for label, group in (("development", dev), ("held-out", held)):
            value = _mean_std([r["steps_prompts"].get(p) for r in group for p in r["steps_prompts"]])[0]
            print(f"[{label}] click-oracle-steps mIoU {value:.3f} (one click: "
                  f"{_mean_std([r['miou'] for r in group])[0]:.3f})")
        print(f"RESULT dev_miou={_mean_std([r['miou'] for r in dev])[0]:.4f} "
              f"heldout_miou={_mean_std([r['miou'] for r in held])[0]:.4f} "
              f"heldout_std={_mean_std([r['miou'] for r in held])[1]:.4f} small_iou={role['small']:.4f} "
              f"thin_iou={role['thin']:.4f} mirror_iou={role['mirror']:.4f} multipart_iou={role['multipart']:.4f} "
              f"multipart_steps_iou={steps_iou:.4f} minutes={sum(r['minutes'] for r in runs):.2f}")
        return
    held = [r for r in runs if r["preset"] in HELDOUT]
    heldout_miou, heldout_std = _mean_std([r["miou"] for r in held])
    multipart, _ = _mean_std([r["prompts"][p] for r in runs for p in r["multipart"] if p in r["prompts"]])
    hard, _ = _mean_std([r["miou"] for r in runs if r["preset"] == "hard"])
    ari, _ = _mean_std([r["ari"] for r in runs])
    minutes = sum(r["minutes"] for r in runs)
    print(f"RESULT heldout_miou={heldout_miou:.4f} heldout_miou_std={heldout_std:.4f} multipart_iou={multipart:.4f} "
          f"hard_miou={hard:.4f} ari={ari:.4f} minutes={minutes:.2f}")


if __name__ == "__main__":
    main()
