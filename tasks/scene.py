"""Task: load a dataset, or render the embedded synthetic scene (cached)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from cgc_core.config import CgcConfig
from cgc_core.pipeline import scene_stage

from .common import stage_state


@task(name="scene", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def scene_task(cfg: CgcConfig, source: str, force: bool = False):
    """Returns {"scene": Scene, ...stage info}; the Scene object feeds the next stages."""
    scene, result = scene_stage(cfg, source, force=force)
    if result is None:
        return Completed(message=f"read {source} in place", data={"scene": scene, "stage_dir": str(scene.root)})
    return stage_state(result, scene.name, scene=scene)
