"""Start and stop a local Prefect server, work pool, deployment and worker for cgc (`make serve` / `make stop`).

    python -m flows.serve start [--port 4200]   server on 127.0.0.1 (SQLite under $PREFECT_HOME; --host
                                                another interface, with a warning that it is reachable),
                                                process work pool `cgc-local`, `prefect deploy --all`
                                                (prefect.yaml), one worker; PIDs in $PREFECT_HOME/cgc-serve.json
    python -m flows.serve stop                  stops exactly the processes `start` recorded

`start` also writes $PREFECT_HOME/env.sh, which exports PREFECT_HOME and PREFECT_API_URL so a shell
can then run `prefect deployment run cgc-benchmark/cgc-benchmark --watch`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from cgc_core.serving import DEFAULT_HOST, warn_if_exposed
from flows import PREFECT_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
POOL = "cgc-local"
STATE_FILE = "cgc-serve.json"
_CHILDREN: dict[int, subprocess.Popen] = {}
"""Processes this Python process started (to reap them on stop; `make stop` runs in a new one)."""


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", PREFECT_DEFAULTS["PREFECT_HOME"])).resolve()


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _env(api_url: str) -> dict[str, str]:
    # os.environ already holds the project's Prefect defaults (flows/__init__.py)
    env = dict(os.environ, PREFECT_HOME=str(prefect_home()), PREFECT_API_URL=api_url,
               PREFECT_UI_ENABLED=os.environ.get("PREFECT_UI_ENABLED", "true"))
    env.pop("PREFECT_API_KEY", None)
    return env


def wait_healthy(api_url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll the server's /health until it answers (or the process dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {api_url} not healthy after {timeout:.0f} s")


def start(port: int = 4200, log_dir: Path | None = None, host: str = DEFAULT_HOST) -> dict:
    """Start server, pool, deployment and worker; returns the recorded state (PIDs, URL, logs).

    The server listens on `host` (loopback by default); any other host prints a warning that the
    Prefect API, which has no authentication, is reachable from the network. Clients here always
    talk to it over 127.0.0.1.
    """
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    if (home / STATE_FILE).exists():
        raise RuntimeError(f"{home / STATE_FILE} exists: a cgc server may be running; `make stop` first")
    api_url = f"http://127.0.0.1:{port}/api"
    env = _env(api_url)
    log_dir = Path(log_dir or home)
    server_log = open(log_dir / "server.log", "ab")
    warn_if_exposed(host, "the Prefect server", port)
    # start_new_session so that `stop` can end the whole process group.
    server = subprocess.Popen(_prefect("server", "start", "--host", host, "--port", str(port)), cwd=ROOT,
                              env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[server.pid] = server
    state = {"api_url": api_url, "server_pid": server.pid, "worker_pid": None, "home": str(home),
             "logs": {"server": str(log_dir / "server.log"), "worker": str(log_dir / "worker.log")}}
    _write_state(home, state)
    try:
        wait_healthy(api_url, process=server)
        subprocess.run(_prefect("work-pool", "create", POOL, "--type", "process", "--overwrite"), cwd=ROOT, env=env,
                       check=True, capture_output=True, text=True)
        subprocess.run(_prefect("--no-prompt", "deploy", "--all"), cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True)
        worker_log = open(log_dir / "worker.log", "ab")
        worker = subprocess.Popen(_prefect("worker", "start", "--pool", POOL, "--type", "process"), cwd=ROOT, env=env,
                                  stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[worker.pid] = worker
        state["worker_pid"] = worker.pid
        _write_state(home, state)
    except subprocess.CalledProcessError as exc:
        stop()
        raise RuntimeError(f"{' '.join(exc.cmd[2:])} failed:\n{exc.stdout}\n{exc.stderr}") from exc
    except BaseException:
        stop()
        raise
    (home / "env.sh").write_text(f"export PREFECT_HOME={home}\nexport PREFECT_API_URL={api_url}\n")
    return state


def _write_state(home: Path, state: dict) -> None:
    tmp = home / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, home / STATE_FILE)


def _end_group(pid: int | None, timeout: float = 20.0) -> bool:
    """SIGTERM the process group `pid` leads, then SIGKILL what is left; True if it was running."""
    if not pid:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    child = _CHILDREN.pop(pid, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            child = None  # our own child has exited and is reaped; its group may still have members
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if child is not None:
        child.wait(timeout=10)
    return True


def stop() -> list[str]:
    """Stop the worker and the server that `start` recorded (and only those); returns what was stopped."""
    home = prefect_home()
    path = home / STATE_FILE
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    stopped = []
    if _end_group(state.get("worker_pid")):
        stopped.append(f"worker (pid {state['worker_pid']})")
    if _end_group(state.get("server_pid")):
        stopped.append(f"server (pid {state['server_pid']})")
    path.unlink(missing_ok=True)
    (home / "env.sh").unlink(missing_ok=True)
    return stopped


cli = typer.Typer(add_completion=False, help="A local Prefect server, work pool, deployment and worker for cgc.")


@cli.command("start")
def start_cmd(port: Annotated[int, typer.Option(envvar="CGC_PREFECT_PORT")] = 4200,
              host: Annotated[str, typer.Option(envvar="CGC_PREFECT_HOST", help="interface the server listens on "
                                                "(default loopback only; others are reachable from the network)")]
              = DEFAULT_HOST) -> None:
    """Start the server, the `cgc-local` pool, the deployments of prefect.yaml and one worker."""
    state = start(port, host=host)
    print(f"Prefect server: {state['api_url'].removesuffix('/api')} (UI), API {state['api_url']}")
    print(f"work pool {POOL}, deployment cgc-benchmark/cgc-benchmark, worker pid {state['worker_pid']}")
    print(f"logs: {state['logs']['server']}, {state['logs']['worker']}")
    print(f"then:  . {state['home']}/env.sh && .venv/bin/prefect deployment run cgc-benchmark/cgc-benchmark --watch")
    print("stop:  make stop")


@cli.command("stop")
def stop_cmd() -> None:
    """Stop exactly the processes `start` recorded."""
    stopped = stop()
    print("stopped " + ", ".join(stopped) if stopped else "nothing recorded as running")


if __name__ == "__main__":
    cli()
