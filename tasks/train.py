"""Task: train the Gaussian feature field (cached on calibration, masks and train config; resumes from its checkpoint on retry)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import train_stage
from cgc_core.scene import Scene
from cgc_core.stage import StageResult

from .common import stage_state


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def train_task(cfg: CgcConfig, scene: Scene, masks: StageResult, calibration: StageResult, force: bool = False):
    logger = get_run_logger()
    artifact_id = create_progress_artifact(progress=0.0, description=f"training {scene.name}")

    def progress(step: int, total: int, losses: dict) -> None:
        if step % 100 == 0 or step == total:
            update_progress_artifact(artifact_id=artifact_id, progress=100.0 * step / max(total, 1))
            logger.info("train %s: %d/%d %s", scene.name, step, total,
                        " ".join(f"{k}={v:.4g}" for k, v in losses.items()))

    result = train_stage(cfg, scene, masks, calibration, force=force, progress=progress)
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    return stage_state(result, scene.name, scene=scene)
