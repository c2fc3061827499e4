"""Task: automatic masks of the training images (cached; resumes image by image after a kill)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import masks_stage
from cgc_core.scene import Scene

from .common import stage_state


@task(name="masks", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def masks_task(cfg: CgcConfig, scene: Scene, force: bool = False):
    """Returns {"scene": Scene, "store": path of the mask store, ...stage info}."""
    logger = get_run_logger()
    artifact_id = create_progress_artifact(progress=0.0, description=f"masks of {scene.name}")

    def progress(done: int, total: int, image_name: str) -> None:
        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / max(total, 1))
        if done == total or done % 10 == 0:
            logger.info("masks %s: %d/%d images (%s)", scene.name, done, total, image_name)

    store, result = masks_stage(cfg, scene, force=force, progress=progress)
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    return stage_state(result, scene.name, scene=scene, store=str(store.root))
