"""Task: train the Gaussian feature field (cached on calibration, masks and train config; resumes from its checkpoint on retry)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import train_stage
from cgc_core.scene import Scene
from cgc_core.stage import StageResult

from .common import ProgressReporter, stage_state


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def train_task(cfg: CgcConfig, scene: Scene, masks: StageResult, calibration: StageResult, force: bool = False):
    progress = ProgressReporter(f"training {scene.name}", log_every=100)
    result = train_stage(cfg, scene, masks, calibration, force=force, progress=progress)
    progress.finish()
    return stage_state(result, scene.name, scene=scene)
