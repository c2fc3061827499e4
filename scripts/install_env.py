"""Install the project and its extras into a virtual environment, with uv where it can be had.

`make demo` and `make test` start by creating `.venv`; with pip that took about 2 minutes of a
fresh `make demo` (unpacking the 7 GB of torch and its CUDA libraries on one core, then compiling
every module to bytecode). uv installs the same packages in about 20 s: it unpacks in parallel and
leaves bytecode to be compiled on first import and cached by Python, as usual. Where
PYTHONDONTWRITEBYTECODE is set Python caches nothing, and every process would compile what it
imports again (torch, Prefect: seconds each); there uv compiles everything at install (about
55 s). uv does not read pip's configuration, so the index settings pip would use here (`pip config
list`: files and PIP_* variables, e.g. a local wheel folder and a version cap) are handed to it as
arguments, and it picks the best version across all indexes as pip does. If uv cannot be
installed or fails, pip does the install as before.

Usage: python scripts/install_env.py VENV_PYTHON 'SPEC'   (e.g. .venv/bin/python '.[test,gdino]')
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

# pip's configuration keys that choose where packages come from, and uv's option for each
_LIST_OPTIONS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links",
                 "constraint": "--constraint"}
# pip's precedence: a PIP_* variable (listed as ":env:.key") beats the files, and a key in a
# file's [install] section beats the same key in its [global] section; `pip config list` lists the
# files in pip's own order (global, user, site), so among equals the later line wins.


def pip_settings(config_list: str) -> dict[str, str]:
    """The value pip would use for each key, from the text of `pip config list`."""
    ranked: dict[str, tuple[tuple[int, int], str]] = {}
    for line in config_list.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not sep or not dot or section not in ("global", "install", ":env:"):
            continue
        rank = (1 if section == ":env:" else 0, 1 if section == "install" else 0)
        value = raw.strip().strip("'\"")
        if key not in ranked or rank >= ranked[key][0]:
            ranked[key] = (rank, value)
    return {key: value for key, (_, value) in ranked.items()}


def uv_arguments(settings: dict[str, str]) -> list[str]:
    """uv pip install options that take packages from where pip would (see the module docstring)."""
    args = ["--index-strategy", "unsafe-best-match"]
    if settings.get("index-url"):
        args += ["--index-url", settings["index-url"]]
    for key, option in _LIST_OPTIONS.items():
        for value in settings.get(key, "").split():
            args += [option, value]
    return args


def _run(command: list[str], env: dict[str, str] | None = None) -> int:
    print("+", shlex.join(command), flush=True)
    return subprocess.call(command, env=env)


def main(python: str, spec: str) -> int:
    uv = Path(python).parent / "uv"
    if _run([python, "-m", "pip", "install", "--quiet", "uv"]) == 0 and uv.exists():
        listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
        settings = pip_settings(listed)
        env = dict(os.environ)
        if settings.get("cert"):
            env.setdefault("SSL_CERT_FILE", settings["cert"])
        compile_now = ["--compile-bytecode"] if os.environ.get("PYTHONDONTWRITEBYTECODE") else []
        if _run([str(uv), "pip", "install", "--quiet", "--python", python, *compile_now,
                 *uv_arguments(settings), "-e", spec], env=env) == 0:
            return 0
        print("uv could not install the environment; installing with pip instead", flush=True)
    return _run([python, "-m", "pip", "install", "--quiet", "-e", spec])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(sys.argv[1], sys.argv[2]))
