"""The cgc-benchmark Prefect flow: stages cached on content, forced reruns with their downstream,
retries, and scenes fanned out on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.benchmark import cgc_benchmark

TINY = ["synthetic.preset=tiny", "synthetic.supersample=1", "calibrate.mode=known_poses", "train.iterations=20",
        "train.densify.refine_start_iter=5", "train.densify.refine_every=5", "train.checkpoint_every=10",
        "cluster.min_cluster_size=20", "stage.retry_delay_seconds=0"]


def _overrides(tmp_path):
    return [f"data_dir={tmp_path / 'data'}", f"reports_dir={tmp_path / 'reports'}", *TINY]


def _stages(result):
    return {name: info["cached"] for name, info in result["stages"].items()}


def _computed(run):
    """Stage names computed in this run (any scene), plus `report` when the report was written."""
    names = {name for scene in run["scenes"] for name, info in scene["stages"].items() if not info["cached"]}
    return names | ({"report"} if not run["report_cached"] else set())


def test_flow_caches_stages_and_reruns_only_what_changed(tmp_path, prefect_harness):
    overrides = _overrides(tmp_path)
    run = cgc_benchmark(["synthetic"], overrides=overrides)
    (first,) = run["scenes"]
    assert _computed(run) == {"scene", "calibrate", "masks", "train", "cluster", "evaluate", "report"}
    summary = first["stages"]["evaluate"]["info"]
    # The stage's mIoU is the one its predicted masks score against the ground truth (an
    # independent recomputation), and its PSNR is a trained render's, not a blank one's (below 12 dB).
    from conftest import miou_from_predictions
    from cgc_core.scene.synthetic import read_synthetic_scene

    scene = read_synthetic_scene(tmp_path / "data" / "synthetic" / "scene", name="synthetic")
    evaluate_dir = tmp_path / "data" / "synthetic" / "evaluate"
    assert summary["miou"] == pytest.approx(miou_from_predictions(scene, evaluate_dir, "click-oracle"), abs=1e-9)
    assert summary["psnr"] > 15
    assert (tmp_path / "data" / "synthetic" / "evaluate" / "results.parquet").is_file()
    assert (tmp_path / "data" / "synthetic" / "cluster" / "scene_clusters.ply").is_file()
    assert (Path(run["report"]) / "report.html").is_file() and Path(run["report"]).parent == tmp_path / "reports"
    assert first["stages"]["calibrate"]["info"]["registered_share"] == 1.0
    assert first["stages"]["masks"]["info"]["generator"] == "texture"  # the synthetic scene's default

    # Nothing changed: no stage body runs, the report is the same folder.
    rerun = cgc_benchmark(["synthetic"], overrides=overrides)
    assert _computed(rerun) == set() and rerun["report"] == run["report"]

    # force=["train"]: train and everything that reads it, nothing upstream.
    forced = cgc_benchmark(["synthetic"], overrides=overrides, force=["train"])
    assert _computed(forced) == {"train", "cluster", "evaluate", "report"}

    # A changed masks setting: masks and everything downstream of it, not the calibration.
    changed = cgc_benchmark(["synthetic"], overrides=overrides + ["masks.texture.window=2.5"])
    assert _computed(changed) == {"masks", "train", "cluster", "evaluate", "report"}
    assert changed["report"] != run["report"]


def test_a_stage_that_fails_once_succeeds_on_retry(tmp_path, prefect_harness, monkeypatch):
    from dataclasses import replace

    from cgc_core import pipeline

    overrides = _overrides(tmp_path)
    real = pipeline.cluster_stage
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("transient: disk hiccup")
        return real(*args, **kwargs)

    specs = tuple(replace(s, run=flaky) if s.name == "cluster" else s for s in pipeline.SCENE_SPECS)
    monkeypatch.setattr(pipeline, "SCENE_SPECS", specs)  # the flow and its task read the table at run time
    monkeypatch.setattr(pipeline, "SPECS", {s.name: s for s in (*specs, pipeline.REPORT_SPEC)})
    run = cgc_benchmark(["synthetic"], overrides=overrides)
    assert len(calls) == 2 and not run["scenes"][0]["stages"]["cluster"]["cached"]
    assert (tmp_path / "data" / "synthetic" / "cluster" / "summary.json").is_file()


def test_two_scenes_on_a_local_dask_cluster(tmp_path, prefect_harness, tiny_scene_dir):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    overrides = _overrides(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        flow = cgc_benchmark.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        run = flow(["synthetic", str(tiny_scene_dir)], overrides=overrides)
    names = [scene["scene"] for scene in run["scenes"]]
    assert names == ["synthetic", tiny_scene_dir.name]
    for scene in run["scenes"]:
        assert scene["stages"]["evaluate"]["info"]["miou"] >= 0.0
    assert (Path(run["report"]) / "report.html").read_text().count("<td>synthetic</td>") >= 1


def test_flow_rejects_unknown_stage_names(prefect_harness):
    with pytest.raises(ValueError, match="unknown stage"):
        cgc_benchmark(["synthetic"], force=["trian"])


@pytest.mark.parametrize("module", ["flows.benchmark", "flows.serve"])
def test_entry_points_set_the_prefect_defaults_unless_the_user_did(module, tmp_path):
    # README's commands without make: Prefect's home in the checkout, the longer start for its
    # temporary server, no analytics; a value the user set is kept.
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    probe = (f"import runpy, sys; sys.argv = ['{module}', '--help']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "from prefect.settings import get_current_settings\ns = get_current_settings()\n"
             "print('RESULT', s.home, s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"HOME": str(tmp_path)}
    for user_home, expected_home in ((None, root / ".prefect"), (tmp_path / "mine", tmp_path / "mine")):
        run_env = env | ({"PREFECT_HOME": str(user_home)} if user_home else {})
        done = subprocess.run([sys.executable, "-c", probe], cwd=root, env=run_env, capture_output=True, text=True,
                              timeout=300)
        line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
        assert line.split()[1:] == [str(expected_home), "120", "False"], done.stdout + done.stderr
