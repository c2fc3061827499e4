"""Task: automatic masks of the training images (cached; resumes image by image after a kill)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import masks_stage
from cgc_core.scene import Scene

from .common import ProgressReporter, stage_state


@task(name="masks", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def masks_task(cfg: CgcConfig, scene: Scene, force: bool = False):
    """Returns {"scene": Scene, "store": path of the mask store, ...stage info}."""
    progress = ProgressReporter(f"masks of {scene.name}", log_every=10)
    store, result = masks_stage(cfg, scene, force=force, progress=progress)
    progress.finish()
    return stage_state(result, scene.name, scene=scene, store=str(store.root))
