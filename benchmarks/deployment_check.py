"""The deployment end to end: server on 127.0.0.1, work pool, `prefect deploy`, worker, then
`prefect deployment run cgc-benchmark/cgc-benchmark --watch` on the tiny synthetic preset, twice
(cold, then all stages cached); checks that a report was written and stops every process it started.

Uses a throw-away PREFECT_HOME (its own SQLite database) and data/report folders under a temporary
directory, and a free port, so it never touches the checkout's `.prefect/`, `data/` or `reports/`.

Last line:
    RESULT deployment_run=ok cold_s=<s> cached_rerun_s=<s>
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
        "train.refine_start_iter=10", "train.refine_every=10", "cluster.min_cluster_size=20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_deployment(env: dict, params: dict, timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "cgc-benchmark/cgc-benchmark",
                           "--params", json.dumps(params), "--watch"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0 or "Completed" not in output:
        raise RuntimeError(f"deployment run failed (exit {done.returncode}):\n{output[-4000:]}")
    return seconds, output


def run_check(workdir: Path, overrides: list[str] = TINY, timeout: float = 900) -> dict:
    """Serve, deploy, run twice, check the report, stop; returns timings and the report folder."""
    home = workdir / "prefect-home"
    old_home = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    from flows import serve

    try:
        state = serve.start(free_port())
        env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=state["api_url"])
        params = {"scenes": ["synthetic"], "overrides": [f"data_dir={workdir / 'data'}",
                                                        f"reports_dir={workdir / 'reports'}", *overrides]}
        cold_s, _ = run_deployment(env, params, timeout)
        reports = sorted((workdir / "reports").glob("run-*/report.html"))
        if len(reports) != 1:
            raise RuntimeError(f"expected one report under {workdir / 'reports'}, found {reports}")
        manifest = json.loads((workdir / "data" / "synthetic" / "train" / "manifest.json").read_text())
        cached_s, _ = run_deployment(env, params, timeout)
        after = json.loads((workdir / "data" / "synthetic" / "train" / "manifest.json").read_text())
        if after["created"] != manifest["created"]:
            raise RuntimeError("the rerun retrained: train stage was not reused")
        return {"cold_s": cold_s, "cached_rerun_s": cached_s, "report": str(reports[0]), "state": state}
    finally:
        stopped = serve.stop()
        print("stopped: " + (", ".join(stopped) or "nothing"))
        if old_home is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old_home


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_check(Path(tmp))
        print(f"report written: {result['report']}")
    print(f"cold run {result['cold_s']:.1f} s, cached rerun {result['cached_rerun_s']:.1f} s "
          f"(both include the deployment run's start and the worker's process start)")
    print(f"RESULT deployment_run=ok cold_s={result['cold_s']:.1f} cached_rerun_s={result['cached_rerun_s']:.1f}")


if __name__ == "__main__":
    main()
