"""Shared fixtures: the rendered synthetic scenes (once per session), ../shared/ lookups, Chromium;
and the rule that under CI (CI=true) only GPU tests may skip.

A test that needs a GPU carries `@pytest.mark.gpu`. Any other skip under CI (a missing browser,
Python package or shared folder) is turned into a failure that names what is missing: a green CI
must not hide a missing install step. Outside CI such tests skip with their reason as usual.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Prefect's database inside the checkout, time for its temporary server to start on 2 loaded cores:
# the defaults every entry point sets (flows/__init__.py), here for a bare `pytest` too.
import flows  # noqa: E402,F401  (sets the defaults on import)

SHARED = ROOT.parent / "shared"
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if UNDER_CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} would skip under CI=true ({reason}); only tests marked gpu may skip "
                           "in CI: install what is missing (make test's setup does)")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    gpu = [r for r in skipped if "gpu" in getattr(r, "keywords", {})]
    others = [r.nodeid for r in skipped if r not in gpu]
    terminalreporter.write_line(f"cgc skip list: {len(skipped)} skipped, {len(gpu)} of them GPU tests"
                                + (f"; not GPU: {', '.join(others)}" if others else ""))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium executable (Debian's `chromium`, which `make test` installs when it may)."""
    found = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; make test installs it as root)")
    return found


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
def tiny_inputs(tmp_path_factory):
    """The tiny synthetic preset through scene, calibrate (true poses) and the classical masks: the
    calibrated scene and its mask store, for tests that train (read only: shared by the whole
    session). Classical, not the synthetic default (texture): the quality floor is calibrated on
    them (`test_quality.TINY_MASKS`)."""
    from tests.test_quality import TINY_MASKS

    from cgc_core.config import CgcConfig
    from cgc_core.pipeline import calibrate_stage, masks_stage, scene_stage

    cfg = CgcConfig(data_dir=str(tmp_path_factory.mktemp("tiny-inputs")))
    cfg.synthetic.preset, cfg.synthetic.supersample, cfg.calibrate.mode = "tiny", 1, "known_poses"
    cfg.masks.generator = TINY_MASKS
    scene, _ = scene_stage(cfg, "synthetic")
    calibrated, _ = calibrate_stage(cfg, scene)
    store = masks_stage(cfg, calibrated).result.outputs.store
    return calibrated, store


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


def miou_from_predictions(scene, evaluate_dir: Path, protocol: str) -> float:
    """The mIoU of an evaluate stage's predicted PNGs against the scene's ground truth, recomputed
    here in plain numpy (per prompt over its views, then over prompts; predictions are stored at
    the ground truth's size): the oracle for the stage's summary."""
    import numpy as np
    from PIL import Image

    from cgc_core.evaluate import prediction_path

    per_prompt: dict[str, list[float]] = {}
    for view, masks in scene.gt_masks.items():
        for prompt in masks:
            gt = scene.load_gt_mask(view, prompt)
            pred = np.asarray(Image.open(prediction_path(evaluate_dir / "predictions" / protocol, scene, view, prompt)))
            pred = pred > 127
            assert pred.shape == gt.shape, (view, prompt)
            union = np.logical_or(pred, gt).sum()
            if union:
                per_prompt.setdefault(prompt, []).append(float(np.logical_and(pred, gt).sum() / union))
    assert per_prompt, f"{evaluate_dir}: no scored prediction"
    return float(np.mean([np.mean(v) for v in per_prompt.values()]))
