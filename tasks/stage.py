"""The one Prefect task of every per-scene stage, built from its `StageSpec` (cgc_core.pipeline):
cached on the content of its inputs by cgc itself, retried by Prefect, progress as an artifact."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from cgc_core.config import CgcConfig
from cgc_core import pipeline
from cgc_core.scene import Scene
from cgc_core.stage import StageResult

from .common import ProgressReporter, stage_state


@task(name="stage", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def stage_task(name: str, cfg: CgcConfig, scene: Scene | str, upstream: dict[str, StageResult], force: bool = False):
    """Run stage `name` on `scene` (the source string for the scene stage) with the results of the
    stages it reads. Returns a Completed state (named `Cached` when reused) whose data holds
    {"scene": the scene for the next stages, "result": the StageResult, ...}."""
    spec = pipeline.SPECS[name]  # read at run time: the one declaration of the graph
    label = scene if isinstance(scene, str) else scene.name
    progress = ProgressReporter(f"{name} of {label}", log_every=spec.progress_every) if spec.progress_every else None
    out_scene, result = spec.run(cfg, scene, upstream, force, progress)
    if progress is not None:
        progress.finish()
    if result is None:  # a dataset folder, read in place
        return Completed(message=f"read {label} in place", data={"scene": out_scene, "stage_dir": str(out_scene.root)})
    return stage_state(result, out_scene.name, scene=out_scene)
