"""Task: calibrate the scene's cameras with COLMAP (cached on image contents + calibrate config)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import calibrate_stage
from cgc_core.scene import Scene

from .common import stage_state


@task(name="calibrate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def calibrate_task(cfg: CgcConfig, scene: Scene, force: bool = False):
    """Returns {"scene": the calibrated Scene, ...stage info}."""
    calibrated, result = calibrate_stage(cfg, scene, force=force)
    return stage_state(result, scene.name, scene=calibrated)
