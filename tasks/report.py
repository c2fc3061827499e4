"""Task: the run's report (report.md / report.html / results.parquet), published as Prefect artifacts too."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from cgc_core.config import CgcConfig
from cgc_core.pipeline import report_stage
from cgc_core.report import RUN_RECORD, report_tables, scene_summaries


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def report_task(cfg: CgcConfig, run_scenes: list[dict], scenes: dict | None = None, force: bool = False):
    """Returns {"report_dir", "cached", "manifest"}; the artifacts are published on every run."""
    result = report_stage(cfg, run_scenes, scenes, force=force)
    folder = result.stage_dir.resolve()
    get_run_logger().info("report: %s -> %s", result.reason, folder / "report.html")
    markdown = (folder / "report.md").read_text()
    # The artifact carries the tables; the figures stay in the HTML (Prefect renders no local images).
    create_markdown_artifact(key="cgc-report", markdown=report_tables(markdown),
                             description=f"cgc benchmark report {folder.name}")
    run = json.loads((folder / RUN_RECORD).read_text())
    create_table_artifact(key="cgc-results", description="mIoU / mBIoU per scene (protocol named per row)", table=[
        {k: s[k] for k in ("scene", "benchmark", "protocol", "miou", "mbiou", "psnr", "paper_miou", "ari")}
        for s in scene_summaries(run)])
    create_link_artifact(key="cgc-report-html", link=(folder / "report.html").as_uri(), link_text=str(folder / "report.html"))
    payload = {"report_dir": str(folder), "cached": result.cached, "manifest": result.manifest.__dict__}
    return Completed(name="Cached" if result.cached else "Completed", message=result.reason, data=payload)
