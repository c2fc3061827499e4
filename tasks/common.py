"""What every stage task shares: logging the cache decision and turning it into a Prefect state."""

from __future__ import annotations

import re

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.states import Completed, State

from cgc_core.stage import StageResult


def stage_state(result: StageResult, scene_name: str, **extra) -> State:
    """Completed state carrying the manifest; named `Cached` when the on-disk output was reused.

    cgc caches on the content of a stage's inputs in its own manifests under the data folder (they
    survive a deleted Prefect database), so the tasks opt out of Prefect's cache and report reuse
    through the state name instead.
    """
    manifest = result.manifest
    logger = get_run_logger()
    logger.info("%s/%s: %s -> %s", scene_name, manifest.stage, result.reason, result.stage_dir)
    payload = {"stage_dir": str(result.stage_dir), "cached": result.cached, "manifest": manifest.__dict__,
               "result": result, **extra}
    if result.cached:
        return Completed(name="Cached", message=result.reason, data=payload)
    rows = "\n".join(f"| {k} | {v} |" for k, v in manifest.info.items() if not isinstance(v, (dict, list)))
    create_markdown_artifact(
        key=re.sub(r"[^a-z0-9-]+", "-", f"{manifest.stage}-{scene_name}".lower()),  # Prefect's key alphabet
        markdown=f"### {manifest.stage}: {scene_name}\n\n{result.reason}\n\n| field | value |\n|---|---|\n{rows}\n",
        description=f"{manifest.stage} stage of {scene_name}",
    )
    return Completed(message=result.reason, data=payload)


class ProgressReporter:
    """A Prefect progress artifact plus a log line every `log_every` steps.

    Called as reporter(done, total, detail); `finish()` sets the artifact to 100 %.
    """

    def __init__(self, description: str, log_every: int):
        self.description = description
        self.log_every = log_every
        self.logger = get_run_logger()
        self.artifact_id = create_progress_artifact(progress=0.0, description=description)

    def __call__(self, done: int, total: int, detail) -> None:
        if done == total or done % self.log_every == 0:
            update_progress_artifact(artifact_id=self.artifact_id, progress=100.0 * done / max(total, 1))
            if isinstance(detail, dict):
                detail = " ".join(f"{k}={v:.4g}" for k, v in detail.items())
            self.logger.info("%s: %d/%d %s", self.description, done, total, detail)

    def finish(self) -> None:
        update_progress_artifact(artifact_id=self.artifact_id, progress=100.0)
