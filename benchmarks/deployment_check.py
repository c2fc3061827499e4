"""The deployment end to end: server on 127.0.0.1, work pool, `prefect deploy`, worker, then
`prefect deployment run cgc-benchmark/cgc-benchmark --watch` on the tiny synthetic preset: two runs
started together (cold; the stage locks must let exactly one compute each stage while the other
waits and reuses it), then a third run in which every stage must be `Cached`. Stage outcomes are
read back from the server's task runs; it also checks the report and stops every process it started.

Uses a throw-away PREFECT_HOME (its own SQLite database) and data/report folders under a temporary
directory, and a free port, so it never touches the checkout's `.prefect/`, `data/` or `reports/`.

Last line:
    RESULT deployment_run=ok concurrent_runs=ok cold_s=<s> cached_rerun_s=<s>
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["synthetic.preset=tiny", "synthetic.supersample=1", "calibrate.mode=known_poses", "train.iterations=30",
        "train.densify.refine_start_iter=10", "train.densify.refine_every=10", "cluster.min_cluster_size=20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STAGE_TASKS = ("scene", "calibrate", "masks", "train", "cluster", "evaluate", "report")


def start_deployment_run(env: dict, params: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prefect", "deployment", "run", "cgc-benchmark/cgc-benchmark",
                             "--params", json.dumps(params), "--watch"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_deployment_run(run: subprocess.Popen, timeout: float) -> str:
    output, _ = run.communicate(timeout=timeout)
    if run.returncode != 0 or "Completed" not in output:
        raise RuntimeError(f"deployment run failed (exit {run.returncode}):\n{output[-4000:]}")
    return output


def stage_outcomes(api_url: str, seen: set) -> dict[str, list[str]]:
    """Final state name (`Cached` or `Completed`) of every stage task run not in `seen`, per stage;
    adds them to `seen`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200)  # the API allows at most 200 a call; a check makes about 21
    outcomes: dict[str, list[str]] = {stage: [] for stage in STAGE_TASKS}
    for run in runs:
        stage = run.name.rsplit("-", 1)[0]  # Prefect names a task run <task name>-<short id>
        if run.id in seen or stage not in outcomes:
            continue
        seen.add(run.id)
        outcomes[stage].append(run.state.name if run.state else "no state")
    return {stage: sorted(names) for stage, names in outcomes.items()}


def manifests(workdir: Path) -> dict[str, str]:
    """Creation stamp of every stage folder's manifest under the data and reports folders."""
    return {str(p.parent.relative_to(workdir)): json.loads(p.read_text())["created"]
            for folder in ("data", "reports") for p in sorted((workdir / folder).rglob("manifest.json"))}


def run_check(workdir: Path, overrides: list[str] = TINY, timeout: float = 900) -> dict:
    """Serve, deploy, run twice at once then once more, check outcomes and report, stop."""
    home = workdir / "prefect-home"
    old_home = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    from flows import serve

    try:
        state = serve.start(free_port())
        env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=state["api_url"])
        params = {"scenes": ["synthetic"], "overrides": [f"data_dir={workdir / 'data'}",
                                                        f"reports_dir={workdir / 'reports'}", *overrides]}
        start = time.perf_counter()
        together = [start_deployment_run(env, params) for _ in range(2)]
        for run in together:
            finish_deployment_run(run, timeout)
        cold_s = time.perf_counter() - start
        seen: set = set()
        concurrent = stage_outcomes(state["api_url"], seen)
        reports = sorted((workdir / "reports").glob("run-*/report.html"))
        if len(reports) != 1:
            raise RuntimeError(f"expected one report under {workdir / 'reports'}, found {reports}")
        before = manifests(workdir)
        start = time.perf_counter()
        finish_deployment_run(start_deployment_run(env, params), timeout)
        cached_s = time.perf_counter() - start
        rerun = stage_outcomes(state["api_url"], seen)
        return {"cold_s": cold_s, "cached_rerun_s": cached_s, "report": str(reports[0]), "state": state,
                "concurrent": concurrent, "rerun": rerun, "manifests_before": before,
                "manifests_after": manifests(workdir)}
    finally:
        stopped = serve.stop()
        print("stopped: " + (", ".join(stopped) or "nothing"))
        if old_home is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old_home


def check_outcomes(result: dict) -> dict[str, list[str]]:
    """What is wrong, per check (empty lists when both passed): `concurrent_runs`, the two runs
    started together (each stage computed by one, reused by the other); `deployment_run`, the
    rerun of the same deployment (every stage cached, no stage folder rewritten)."""
    problems: dict[str, list[str]] = {"deployment_run": [], "concurrent_runs": []}
    for stage in STAGE_TASKS:
        if result["concurrent"][stage] != ["Cached", "Completed"]:
            problems["concurrent_runs"].append(f"two runs at once: {stage} ended {result['concurrent'][stage]}, "
                                               "expected one computed and one cached")
        if result["rerun"][stage] != ["Cached"]:
            problems["deployment_run"].append(f"rerun: {stage} ended {result['rerun'][stage]}, expected Cached")
    if result["manifests_after"] != result["manifests_before"]:
        problems["deployment_run"].append("rerun rewrote a stage folder")
    return problems


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_check(Path(tmp))
        print(f"report written: {result['report']}")
    problems = check_outcomes(result)
    for stage in STAGE_TASKS:
        print(f"{stage:<10} two runs at once: {', '.join(result['concurrent'][stage]):<20} rerun: {', '.join(result['rerun'][stage])}")
    print(f"two runs at once {result['cold_s']:.1f} s, cached rerun {result['cached_rerun_s']:.1f} s "
          f"(both include the deployment run's start and the worker's process start)")
    for check, found in problems.items():
        for problem in found:
            print(f"PROBLEM ({check}): {problem}")
    verdict = {check: "ok" if not found else "failed" for check, found in problems.items()}
    print(f"RESULT deployment_run={verdict['deployment_run']} concurrent_runs={verdict['concurrent_runs']} "
          f"cold_s={result['cold_s']:.1f} cached_rerun_s={result['cached_rerun_s']:.1f}")


if __name__ == "__main__":
    main()
