"""Task: evaluation of the trained model under the configured protocols (mIoU, mBIoU, PSNR; predictions and results.parquet)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import evaluate_stage
from cgc_core.scene import Scene
from cgc_core.stage import StageResult

from .common import stage_state


@task(name="evaluate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def evaluate_task(cfg: CgcConfig, scene: Scene, trained: StageResult, force: bool = False):
    result = evaluate_stage(cfg, scene, trained, force=force)
    return stage_state(result, scene.name, scene=scene)
