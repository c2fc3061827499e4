"""The `cgc-benchmark` flow: one `cgc-scene` subflow per scene, stages chained inside it.

Run it directly (`python -m flows.benchmark --scenes synthetic`, what `make demo` does) or as a
deployment (`prefect deployment run cgc-benchmark/cgc-benchmark`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prefect import flow, get_run_logger

from cgc_core.config import CgcConfig, load_config
from cgc_core.pipeline import STAGES, scene_dir, scene_name_of, stage_record
from tasks.calibrate import calibrate_task
from tasks.cluster import cluster_task
from tasks.evaluate import evaluate_task
from tasks.masks import masks_task
from tasks.report import report_task
from tasks.scene import scene_task
from tasks.train import train_task


def _configured(task, cfg: CgcConfig):
    """The task with the retry policy of the config's `stage` section."""
    return task.with_options(retries=cfg.stage.retries, retry_delay_seconds=cfg.stage.retry_delay_seconds)


def _summary(payload: dict) -> dict:
    """What the flow reports of a stage: its folder, content key, cached or not, seconds, manifest info."""
    record = stage_record(payload.get("result"), payload.get("scene"))
    return record | {"info": payload["manifest"]["info"] if "manifest" in payload else {}}


def _run(task, cfg: CgcConfig, *args, **kwargs) -> dict:
    state = _configured(task, cfg)(*args, return_state=True, **kwargs)
    return state.result()  # raises the stage's error when it failed


@flow(name="cgc-scene", log_prints=True)
def cgc_scene(source: str, config_path: str | None = None, overrides: list[str] | None = None,
              force: list[str] | None = None) -> dict:
    """All stages of one scene; returns per stage its output folder and whether it was cached."""
    cfg = load_config(config_path, overrides)
    force = set(force or [])
    stages: dict[str, dict] = {}
    start = time.perf_counter()
    loaded = _run(scene_task, cfg, cfg, source, force="scene" in force)
    stages["scene"] = _summary(loaded)
    calibrated = _run(calibrate_task, cfg, cfg, loaded["scene"], force="calibrate" in force)
    stages["calibrate"] = _summary(calibrated)
    masks = _run(masks_task, cfg, cfg, calibrated["scene"], force="masks" in force)
    stages["masks"] = _summary(masks)
    trained = _run(train_task, cfg, cfg, calibrated["scene"], masks["result"], calibrated["result"],
                   force="train" in force)
    stages["train"] = _summary(trained)
    clustered = _run(cluster_task, cfg, cfg, calibrated["scene"], trained["result"], force="cluster" in force)
    stages["cluster"] = _summary(clustered)
    evaluated = _run(evaluate_task, cfg, cfg, calibrated["scene"], trained["result"], force="evaluate" in force)
    stages["evaluate"] = _summary(evaluated)
    return {"scene": scene_name_of(source), "layout": loaded["scene"].layout,
            "dir": str(scene_dir(cfg, scene_name_of(source))), "stages": stages,
            "seconds": round(time.perf_counter() - start, 2), "scene_object": loaded["scene"]}


@flow(name="cgc-benchmark", log_prints=True)
def cgc_benchmark(scenes: list[str] | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None, force: list[str] | None = None) -> dict:
    """Run every scene's stages, then write one report over all scenes.

    Args:
        scenes: `synthetic`, `synthetic-<preset>`, or dataset folders; default the synthetic scene.
        config_path: Optional YAML config (see `cgc_core.config`).
        overrides: `section.field=value` strings applied after the file.
        force: Stage names to recompute even when cached (see `cgc_core.pipeline.STAGES`).
    """
    unknown = set(force or []) - set(STAGES)
    if unknown:
        raise ValueError(f"force: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    results = [cgc_scene(source, config_path, overrides, force) for source in (scenes or ["synthetic"])]
    logger = get_run_logger()
    for r in results:
        logger.info("%s: outputs in %s (%s)", r["scene"], r["dir"],
                    ", ".join(f"{k} {'cached' if v['cached'] else 'computed'}" for k, v in r["stages"].items()))
    cfg = load_config(config_path, overrides)
    run_scenes = [{"scene": r["scene"], "layout": r["layout"],
                   "stages": {k: {f: v[f] for f in ("dir", "key", "cached", "seconds")} for k, v in r["stages"].items()}}
                  for r in results]
    report = _run(report_task, cfg, cfg, run_scenes, {r["scene"]: r.pop("scene_object") for r in results},
                  force="report" in (force or []))
    logger.info("report: %s", Path(report["report_dir"]) / "report.html")
    return {"scenes": results, "report": report["report_dir"], "report_cached": report["cached"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Run the cgc-benchmark flow locally.")
    parser.add_argument("--scenes", nargs="+", default=["synthetic"])
    parser.add_argument("--config", default=None, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--force", nargs="*", default=[], choices=STAGES)
    args = parser.parse_args(argv)
    run = cgc_benchmark(args.scenes, args.config, args.overrides, args.force)
    results = run["scenes"]
    print()
    for r in results:
        print(f"[cgc] scene {r['scene']}: {r['seconds']} s")
        for stage, info in r["stages"].items():
            print(f"[cgc]   {stage:<10} {'cached  ' if info['cached'] else 'computed'}  {Path(info['dir']).resolve()}")
    for r in results:
        info = r["stages"]["evaluate"]["info"]
        if "miou" in info:
            print(f"[cgc] {r['scene']}: click protocol mIoU {info['miou']:.3f}, mBIoU {info['mbiou']:.3f}, "
                  f"test PSNR {info['psnr']:.2f} dB; rows in {Path(r['stages']['evaluate']['dir']).resolve()}/results.parquet")
    print(f"[cgc] report ({'cached' if run['report_cached'] else 'written'}): {Path(run['report']) / 'report.html'}")
    print(f"[cgc]   also report.md, results.parquet and figures/ in {run['report']}")
    print(json.dumps({"outputs": [str(Path(r["dir"]).resolve()) for r in results], "report": run["report"]}))
    return run


if __name__ == "__main__":
    main()
