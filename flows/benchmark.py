"""The `cgc-benchmark` flow: one `cgc-scene` subflow per scene, stages chained inside it, then one report.

Run it directly (`python -m flows.benchmark --scenes synthetic`, what `make demo` does; the
command line is typer's, like `cgc`'s) or as a
deployment (`prefect deployment run cgc-benchmark/cgc-benchmark`, see prefect.yaml and `make serve`).

Scenes fan out on the flow's task runner: each scene is a task that runs its `cgc-scene` subflow.
The runner is a thread pool by default; with `--dask-address tcp://host:8786` (or the environment
variable CGC_DASK_ADDRESS, e.g. set in a work pool's job variables) it is prefect-dask's
`DaskTaskRunner` on that cluster, so scenes spread over its workers' machines.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from cgc_core.cli import ConfigOpt, SetOpt
from cgc_core.config import CgcConfig, load_config
from cgc_core.evaluate import EvaluateOutputs, check_protocol_weights
from cgc_core import pipeline
from cgc_core.render import resolve_backend
from cgc_core.render.torch_backend import build_extension_in_background
from cgc_core.pipeline import STAGES, scene_dir, scene_name_of, stage_record, with_downstream
from tasks.report import report_task
from tasks.stage import stage_task


def _summary(payload: dict) -> dict:
    """What the flow reports of a stage: its folder, content key, cached or not, seconds, manifest info."""
    record = stage_record(payload.get("result"), payload.get("scene"))
    return record | {"info": payload["manifest"]["info"] if "manifest" in payload else {}}


def _run(task, cfg: CgcConfig, *args, **kwargs) -> dict:
    """Run the task with the retry policy of the config's `stage` section; its state's data, or its error."""
    task = task.with_options(retries=cfg.stage.retries, retry_delay_seconds=cfg.stage.retry_delay_seconds)
    return task(*args, return_state=True, **kwargs).result()


# validate_parameters=False: the config arrives validated by `load_config` (and pydantic cannot
# resolve the postponed annotation inside a Dask worker's task).
@flow(name="cgc-scene", log_prints=True, validate_parameters=False)
def cgc_scene(source: str, cfg: CgcConfig, force: list[str] | None = None) -> dict:
    """All stages of one scene; returns per stage its output folder and whether it was cached."""
    force = with_downstream(force or [])
    stages: dict[str, dict] = {}
    start = time.perf_counter()
    scene, results = source, {}
    for spec in pipeline.SCENE_SPECS:  # read at run time: the one declaration of the graph
        payload = _run(stage_task.with_options(name=spec.name), cfg, spec.name, cfg, scene,
                       {name: results[name] for name in spec.reads}, force=spec.name in force)
        scene, results[spec.name] = payload["scene"], payload.get("result")
        stages[spec.name] = _summary(payload)
        if spec.name == "scene":
            # Weights the evaluation protocols need are checked before any expensive stage starts.
            check_protocol_weights(cfg, scene)
    return {"scene": scene_name_of(source), "layout": scene.layout,
            "dir": str(scene_dir(cfg, scene_name_of(source))), "stages": stages,
            "seconds": round(time.perf_counter() - start, 2)}


DASK_ADDRESS_ENV = "CGC_DASK_ADDRESS"


def scene_task_runner(dask_address: str | None = None, max_workers: int | None = None):
    """The task runner scenes fan out on: `DaskTaskRunner(address=...)` for a Dask cluster
    (`dask_address`, else $CGC_DASK_ADDRESS), otherwise a thread pool."""
    address = dask_address or os.environ.get(DASK_ADDRESS_ENV)
    if address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=max_workers)


@task(name="scene-pipeline", cache_policy=None)
def scene_pipeline_task(source: str, cfg: CgcConfig, force: list[str] | None) -> dict:
    """One scene's `cgc-scene` subflow, as a task so that scenes run side by side on the task runner."""
    return cgc_scene(source, cfg, force)


@flow(name="cgc-benchmark", log_prints=True, task_runner=scene_task_runner())
def cgc_benchmark(scenes: list[str] | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None, force: list[str] | None = None) -> dict:
    """Run every scene's stages, then write one report over all scenes.

    Args:
        scenes: `synthetic`, `synthetic-<preset>`, or dataset folders; default the synthetic scene.
        config_path: Optional YAML config (see `cgc_core.config`).
        overrides: `section.field=value` strings applied after the file.
        force: Stage names to recompute even when cached (see `cgc_core.pipeline.STAGES`); every
            stage that reads a forced stage's output is recomputed too (force=["train"]: train,
            cluster, evaluate and report).
    """
    forced = with_downstream(force or [])  # also refuses unknown stage names, before any work
    cfg = load_config(config_path, overrides)  # once: every scene and the report read this one
    sources = scenes or ["synthetic"]
    if len(sources) == 1:
        results = [cgc_scene(sources[0], cfg, force)]
    else:
        futures = [scene_pipeline_task.submit(s, cfg, force) for s in sources]
        results = [f.result() for f in futures]
    logger = get_run_logger()
    for r in results:
        logger.info("%s: outputs in %s (%s)", r["scene"], r["dir"],
                    ", ".join(f"{k} {'cached' if v['cached'] else 'computed'}" for k, v in r["stages"].items()))
    run_scenes = [{"scene": r["scene"], "layout": r["layout"],
                   "stages": {k: {f: v[f] for f in ("dir", "key", "cached", "seconds")} for k, v in r["stages"].items()}}
                  for r in results]
    report = _run(report_task, cfg, cfg, run_scenes, force="report" in forced)
    logger.info("report: %s", report["html"])
    return {"scenes": results, "report": report["report_dir"], "report_html": report["html"],
            "report_cached": report["cached"]}


cli = typer.Typer(add_completion=False, help="Run the cgc-benchmark flow locally.")


@cli.command()
def main(scenes: Annotated[list[str], typer.Option("--scenes", help="synthetic, synthetic-<preset>, a dataset "
                                                   "folder or a video (repeat for several)")] = ["synthetic"],
         config: ConfigOpt = None, set_: SetOpt = None,
         force: Annotated[Optional[list[str]], typer.Option(help=f"recompute a stage and what reads it "
                                                            f"(repeatable; one of {', '.join(STAGES)})")] = None,
         dask_address: Annotated[Optional[str], typer.Option(help="run scenes on this Dask scheduler "
                                                             "(tcp://host:port)")] = None) -> dict:
    """Run every scene's stages and the report, then print where the outputs and the report are."""
    try:
        with_downstream(force or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--force") from exc
    try:
        cpu_kernels = not dask_address and resolve_backend(load_config(config, set_ or []).train.backend) == "torch"
    except (ValueError, RuntimeError):  # a bad config or backend: the flow itself reports it
        cpu_kernels = False
    if cpu_kernels:  # they compile while the Prefect server starts and the first stages run
        build_extension_in_background()
    benchmark = cgc_benchmark
    if dask_address:
        benchmark = cgc_benchmark.with_options(task_runner=scene_task_runner(dask_address))
    run = benchmark(scenes, str(config) if config else None, set_ or [], force or [])
    results = run["scenes"]
    print()
    for r in results:
        print(f"[cgc] scene {r['scene']}: {r['seconds']} s")
        for stage, info in r["stages"].items():
            print(f"[cgc]   {stage:<10} {'cached  ' if info['cached'] else 'computed'}  {Path(info['dir']).resolve()}")
    for r in results:
        info = r["stages"]["evaluate"]["info"]
        if "miou" in info:
            rows = EvaluateOutputs(Path(r["stages"]["evaluate"]["dir"]).resolve()).results_table
            print(f"[cgc] {r['scene']}: {info['protocol']} protocol mIoU {info['miou']:.3f}, mBIoU {info['mbiou']:.3f}, "
                  f"test PSNR {info['psnr']:.2f} dB; rows in {rows}")
    print(f"[cgc] report ({'cached' if run['report_cached'] else 'written'}): {run['report_html']}")
    print(f"[cgc]   also the Markdown report, every row as Parquet and the figures in {run['report']}")
    print(json.dumps({"outputs": [str(Path(r["dir"]).resolve()) for r in results], "report": run["report"]}))
    return run


if __name__ == "__main__":
    cli()
