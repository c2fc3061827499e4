"""The cgc-benchmark Prefect flow: stages cached on content, forced reruns of one stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.benchmark import cgc_benchmark


def _stages(result):
    return {name: info["cached"] for name, info in result["stages"].items()}


def test_flow_caches_stages_and_reruns_only_forced_ones(tmp_path, prefect_harness):
    overrides = [f"data_dir={tmp_path / 'data'}", f"reports_dir={tmp_path / 'reports'}", "synthetic.preset=tiny", "calibrate.mode=known_poses",
                 "train.iterations=20", "train.refine_start_iter=5", "train.refine_every=5", "train.checkpoint_every=10"]
    run = cgc_benchmark(["synthetic"], overrides=overrides)
    (first,) = run["scenes"]
    assert _stages(first) == {"scene": False, "calibrate": False, "masks": False, "train": False, "cluster": False,
                              "evaluate": False}
    assert not run["report_cached"] and (Path(run["report"]) / "report.html").is_file()
    assert (tmp_path / "data" / "synthetic" / "cluster" / "scene_clusters.ply").is_file()
    summary = first["stages"]["evaluate"]["info"]
    assert 0.0 <= summary["miou"] <= 1.0 and summary["psnr"] > 5  # a real (if barely trained) score
    assert (tmp_path / "data" / "synthetic" / "evaluate" / "results.parquet").is_file()
    assert (tmp_path / "data" / "synthetic" / "train" / "point_cloud.ply").is_file()
    calib_dir = tmp_path / "data" / "synthetic" / "calibrate"
    assert (calib_dir / "manifest.json").is_file() and (calib_dir / "sparse" / "0" / "images.bin").is_file()
    assert first["stages"]["calibrate"]["info"]["registered_share"] == 1.0

    rerun = cgc_benchmark(["synthetic"], overrides=overrides)
    (second,) = rerun["scenes"]
    assert all(_stages(second).values()) and rerun["report_cached"] and rerun["report"] == run["report"]
    assert first["stages"]["masks"]["info"]["generator"] == "classical"  # the synthetic scene's default

    (third,) = cgc_benchmark(["synthetic"], overrides=overrides, force=["calibrate"])["scenes"]
    # calibrate recomputed (same poses and points): its key is unchanged, so nothing after it reruns
    assert _stages(third) == {"scene": True, "calibrate": False, "masks": True, "train": True, "cluster": True,
                              "evaluate": True}

    # a config change in the masks section recomputes masks only
    changed = cgc_benchmark(["synthetic"], overrides=overrides + ["masks.classical.sigma=1.0"])
    (fourth,) = changed["scenes"]
    assert _stages(fourth) == {"scene": True, "calibrate": True, "masks": False, "train": False, "cluster": False,
                               "evaluate": False}
    assert not changed["report_cached"] and changed["report"] != run["report"]


def test_flow_rejects_unknown_stage_names(prefect_harness):
    with pytest.raises(ValueError, match="unknown stage"):
        cgc_benchmark(["synthetic"], force=["trian"])
