"""The cgc-benchmark Prefect flow: stages cached on content, forced reruns of one stage."""

from __future__ import annotations

import pytest

from flows.benchmark import cgc_benchmark


def _stages(result):
    return {name: info["cached"] for name, info in result["stages"].items()}


def test_flow_caches_stages_and_reruns_only_forced_ones(tmp_path, prefect_harness):
    overrides = [f"data_dir={tmp_path / 'data'}", "synthetic.preset=tiny", "calibrate.mode=known_poses",
                 "train.iterations=20", "train.refine_start_iter=5", "train.refine_every=5", "train.checkpoint_every=10"]
    (first,) = cgc_benchmark(["synthetic"], overrides=overrides)
    assert _stages(first) == {"scene": False, "calibrate": False, "masks": False, "train": False, "evaluate": False}
    summary = first["stages"]["evaluate"]["info"]
    assert 0.0 <= summary["miou"] <= 1.0 and summary["psnr"] > 5  # a real (if barely trained) score
    assert (tmp_path / "data" / "synthetic" / "evaluate" / "results.parquet").is_file()
    assert (tmp_path / "data" / "synthetic" / "train" / "point_cloud.ply").is_file()
    calib_dir = tmp_path / "data" / "synthetic" / "calibrate"
    assert (calib_dir / "manifest.json").is_file() and (calib_dir / "sparse" / "0" / "images.bin").is_file()
    assert first["stages"]["calibrate"]["info"]["registered_share"] == 1.0

    (second,) = cgc_benchmark(["synthetic"], overrides=overrides)
    assert all(_stages(second).values())
    assert first["stages"]["masks"]["info"]["generator"] == "classical"  # the synthetic scene's default

    (third,) = cgc_benchmark(["synthetic"], overrides=overrides, force=["calibrate"])
    # calibrate recomputed (same poses and points): its key is unchanged, so nothing after it reruns
    assert _stages(third) == {"scene": True, "calibrate": False, "masks": True, "train": True, "evaluate": True}


    # a config change in the masks section recomputes masks only
    (fourth,) = cgc_benchmark(["synthetic"], overrides=overrides + ["masks.classical.sigma=1.0"])
    assert _stages(fourth) == {"scene": True, "calibrate": True, "masks": False, "train": False, "evaluate": False}


def test_flow_rejects_unknown_stage_names(prefect_harness):
    with pytest.raises(ValueError, match="unknown stage"):
        cgc_benchmark(["synthetic"], force=["trian"])
