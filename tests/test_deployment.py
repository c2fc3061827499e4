"""The deployment end to end: `make serve`'s server, pool, deployment and worker; two
`prefect deployment run cgc-benchmark/cgc-benchmark --watch` started together, then one more; then
every process stopped."""

from __future__ import annotations

import os

import pytest


@pytest.mark.slow
def test_deployment_runs_at_once_compute_each_stage_once_and_a_rerun_computes_nothing(tmp_path):
    from benchmarks.deployment_check import STAGE_TASKS, check_outcomes, run_check

    result = run_check(tmp_path)
    assert result["report"].endswith("report.html") and os.path.getsize(result["report"]) > 1000
    assert result["state"]["api_url"].startswith("http://127.0.0.1:")
    # Two runs of the same scene at once: each stage computed by one run, reused by the other.
    assert result["concurrent"] == {stage: ["Cached", "Completed"] for stage in STAGE_TASKS}
    # The rerun: every stage's task ended Cached, and no stage folder was rewritten.
    assert result["rerun"] == {stage: ["Cached"] for stage in STAGE_TASKS}
    assert result["manifests_after"] == result["manifests_before"] and len(result["manifests_after"]) == 7
    assert check_outcomes(result) == {"deployment_run": [], "concurrent_runs": []}
    for pid in (result["state"]["server_pid"], result["state"]["worker_pid"]):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the process group is gone
    assert not (tmp_path / "prefect-home" / "cgc-serve.json").exists()


def test_the_two_checks_are_judged_apart():
    from benchmarks.deployment_check import STAGE_TASKS, check_outcomes

    good = {"concurrent": {s: ["Cached", "Completed"] for s in STAGE_TASKS}, "rerun": {s: ["Cached"] for s in STAGE_TASKS},
            "manifests_before": {"a": "t0"}, "manifests_after": {"a": "t0"}}
    both_computed = good | {"concurrent": good["concurrent"] | {"train": ["Completed", "Completed"]}}
    assert check_outcomes(good) == {"deployment_run": [], "concurrent_runs": []}
    found = check_outcomes(both_computed)
    assert found["deployment_run"] == [] and found["concurrent_runs"] == [
        "two runs at once: train ended ['Completed', 'Completed'], expected one computed and one cached"]
    rewritten = check_outcomes(good | {"manifests_after": {"a": "t1"}})
    assert rewritten == {"deployment_run": ["rerun rewrote a stage folder"], "concurrent_runs": []}
