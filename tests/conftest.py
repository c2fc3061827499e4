"""Shared fixtures: the rendered synthetic scenes (once per session) and ../shared/ lookups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Keep Prefect's database inside the checkout and give its temporary server time to start on 2
# loaded cores (the Makefile sets the same; this covers a bare `pytest`).
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared project data is not checked out beside this repo")
    return SHARED


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory) -> Path:
    from cgc_core.config import SyntheticConfig
    from cgc_core.scene.synthetic import write_synthetic_scene

    return write_synthetic_scene(SyntheticConfig(preset="tiny"), tmp_path_factory.mktemp("tiny") / "scene")


@pytest.fixture(scope="session")
def demo_scene_dir(tmp_path_factory) -> Path:
    from cgc_core.config import SyntheticConfig
    from cgc_core.scene.synthetic import write_synthetic_scene

    return write_synthetic_scene(SyntheticConfig(preset="demo"), tmp_path_factory.mktemp("demo") / "scene")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API on a throw-away SQLite database, stopped cleanly after the tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield
