"""Task: the run's report (`cgc_core.report.ReportOutputs`), published as Prefect artifacts too."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cgc_core.config import CgcConfig
from cgc_core.pipeline import report_stage
from cgc_core.report import report_tables, scene_summaries

from .common import stage_state


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def report_task(cfg: CgcConfig, run_scenes: list[dict], force: bool = False):
    """A Completed state (named `Cached` when reused) whose data holds {"report_dir", "html", "cached",
    "manifest", ...}; the artifacts are published on every run."""
    result = report_stage(cfg, run_scenes, force=force)
    files = result.outputs
    html = files.html.resolve()
    # The artifact carries the tables; the figures stay in the HTML (Prefect renders no local images).
    create_markdown_artifact(key="cgc-report", markdown=report_tables(files.markdown.read_text()),
                             description=f"cgc benchmark report {html.parent.name}")
    run = json.loads(files.run_record.read_text())
    create_table_artifact(key="cgc-results", description="mIoU / mBIoU per scene (protocol named per row)", table=[
        {k: s[k] for k in ("scene", "benchmark", "protocol", "miou", "mbiou", "psnr", "paper_miou", "ari")}
        for s in scene_summaries(run)])
    create_link_artifact(key="cgc-report-html", link=html.as_uri(), link_text=str(html))
    return stage_state(result, "all scenes", report_dir=str(html.parent), html=str(html))
