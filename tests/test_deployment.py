"""The deployment end to end: `make serve`'s server, pool, deployment and worker, a
`prefect deployment run cgc-benchmark/cgc-benchmark --watch`, then every process stopped."""

from __future__ import annotations

import os

import pytest


@pytest.mark.slow
def test_deployment_runs_writes_a_report_and_stops_its_processes(tmp_path):
    from benchmarks.deployment_check import run_check

    result = run_check(tmp_path)
    assert result["report"].endswith("report.html") and os.path.getsize(result["report"]) > 1000
    assert result["state"]["api_url"].startswith("http://127.0.0.1:")
    assert result["cached_rerun_s"] < result["cold_s"]
    for pid in (result["state"]["server_pid"], result["state"]["worker_pid"]):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the process group is gone
    assert not (tmp_path / "prefect-home" / "cgc-serve.json").exists()
