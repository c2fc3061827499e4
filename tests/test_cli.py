"""The Prefect-free `cgc` command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cgc_core.cli import app

runner = CliRunner()


def test_config_prints_overrides_and_rejects_unknown_keys():
    ok = runner.invoke(app, ["config", "--set", "calibrate.max_num_features=123"])
    assert ok.exit_code == 0 and "max_num_features: 123" in ok.output
    bad = runner.invoke(app, ["config", "--set", "calibrate.nope=1"])
    assert bad.exit_code == 2 and "calibrate.nope: unknown key" in bad.output


def test_scene_info_summarises_a_dataset(tiny_scene_dir):
    result = runner.invoke(app, ["scene-info", str(tiny_scene_dir)])
    assert result.exit_code == 0, result.output
    assert "layout synthetic, 24 images (21 train, 3 test)" in result.output
    assert "prompt 'red sphere'" in result.output


def test_scene_info_on_bad_folder_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["scene-info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "dataset folder not found" in result.output


def test_calibrate_command_runs_then_reuses_the_stage(tmp_path):
    args = ["calibrate", "--scene", "synthetic-tiny", "--set", f"data_dir={tmp_path}",
            "--set", "calibrate.mode=known_poses", "--set", "synthetic.supersample=1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "24/24 registered" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.output.startswith("cached")


def test_masks_then_masks_show_writes_an_overlay(tmp_path):
    common = ["--scene", "synthetic-tiny", "--set", f"data_dir={tmp_path}", "--set", "calibrate.mode=known_poses",
              "--set", "synthetic.supersample=1"]
    missing = runner.invoke(app, ["masks", "show", *common, "--image", "view_000.png"])
    assert missing.exit_code == 1 and "run `cgc masks run" in missing.output
    made = runner.invoke(app, ["masks", "run", *common])
    assert made.exit_code == 0, made.output
    assert "21 images (0 reused)" in made.output
    out = tmp_path / "overlay.png"
    shown = runner.invoke(app, ["masks", "show", *common, "--image", "view_000.png", "-o", str(out)])
    assert shown.exit_code == 0, shown.output
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (192, 144)


def test_single_stages_need_their_upstream_then_cluster_export_and_report(tmp_path):
    from cgc_core.gaussians import load_ply, read_ply_attribute

    common = ["--scene", "synthetic-tiny", "--set", f"data_dir={tmp_path / 'data'}", "--set",
              f"reports_dir={tmp_path / 'reports'}", "--set", "calibrate.mode=known_poses", "--set",
              "synthetic.supersample=1", "--set", "train.iterations=30", "--set", "train.densify.refine_start_iter=10",
              "--set", "train.densify.refine_every=10", "--set", "cluster.min_cluster_size=20"]
    premature = runner.invoke(app, ["stage", "train", *common])
    assert premature.exit_code == 1
    assert "the scene stage has no finished output" in premature.output  # nothing exists yet
    for stage in ("scene", "calibrate", "masks"):
        done = runner.invoke(app, ["stage", stage, *common])
        assert done.exit_code == 0, done.output
    no_model = runner.invoke(app, ["cluster", *common])
    assert no_model.exit_code == 1 and "train stage has no finished output" in no_model.output
    trained = runner.invoke(app, ["stage", "train", *common])
    assert trained.exit_code == 0, trained.output
    progress = next(line for line in trained.output.splitlines() if line.startswith("train: 30/30 "))
    assert " photometric=" in progress and " between=" in progress and " n=" in progress  # progress shows the health
    # 30 iterations leave the U[0,1) features nearly parallel: the command says so
    assert "WARNING: synthetic-tiny: the feature field has collapsed" in trained.output
    clustered = runner.invoke(app, ["cluster", *common])
    assert clustered.exit_code == 0, clustered.output
    assert "n_clusters" in clustered.output
    again = runner.invoke(app, ["stage", "cluster", *common])
    assert "cached" in again.output

    labels = read_ply_attribute(tmp_path / "data" / "synthetic-tiny" / "cluster" / "scene_clusters.ply", "cluster")
    if (labels >= 0).any():
        k = int(labels[labels >= 0][0])
        out = tmp_path / "cluster.ply"
        exported = runner.invoke(app, ["export", *common, "--cluster", str(k), "-o", str(out)])
        assert exported.exit_code == 0, exported.output
        assert len(load_ply(out)["means"]) == int((labels == k).sum())
    missing = runner.invoke(app, ["export", *common, "--cluster", "999", "-o", str(tmp_path / "x.ply")])
    assert missing.exit_code == 1 and "cluster 999 does not exist" in missing.output

    unknown = runner.invoke(app, ["export", *common, "--object", "unicorn", "-o", str(tmp_path / "u.ply")])
    assert unknown.exit_code == 1 and "'red sphere'" in unknown.output and not (tmp_path / "u.ply").exists()
    one = runner.invoke(app, ["export", *common, "--object", "red sphere", "-o", str(tmp_path / "one.ply")])
    grown = runner.invoke(app, ["export", *common, "--object", "red sphere", "--coarser", "2", "-o",
                                str(tmp_path / "grown.ply")])
    assert one.exit_code == 0 and grown.exit_code == 0, one.output + grown.output
    assert len(load_ply(tmp_path / "grown.ply")["means"]) >= len(load_ply(tmp_path / "one.ply")["means"])
    negative = runner.invoke(app, ["export", *common, "--object", "red sphere", "--coarser", "-1", "-o", "x.ply"])
    assert negative.exit_code == 2 and "steps must be >= 0" in negative.output
    # Editing: remove and keep are complements; the strips and the turntable are written beside the .ply.
    selected = len(load_ply(tmp_path / "one.ply")["means"])
    total = len(load_ply(tmp_path / "data" / "synthetic-tiny" / "train" / "point_cloud.ply")["means"])
    # After 30 iterations the feature field is nearly one feature (the query's mask covers every pixel), so
    # the default selection, lifted from the views, takes every Gaussian: an error naming it. Each
    # Gaussian's own feature (--view-share 0) leaves the spatial cleaning's outliers.
    everything = runner.invoke(app, ["edit", *common, "--remove", "--object", "red sphere", "-o", str(tmp_path / "a.ply")])
    assert everything.exit_code == 1 and "'red sphere' selects every Gaussian" in everything.output
    assert not (tmp_path / "a.ply").exists()
    removed = runner.invoke(app, ["edit", *common, "--remove", "--object", "red sphere", "--view-share", "0", "-o",
                                   str(tmp_path / "rm.ply")])
    assert removed.exit_code == 0, removed.output
    assert len(list((tmp_path / "rm_before_after").glob("*.png"))) == 3 and (tmp_path / "rm_turntable.gif").is_file()
    kept = runner.invoke(app, ["edit", *common, "--keep", "--object", "red sphere", "--view-share", "0", "-o",
                                str(tmp_path / "keep.ply")])
    assert kept.exit_code == 0, kept.output
    # Complements; the edit takes the object's faint Gaussians too, which the export's opacity floor leaves out.
    n_removed, n_kept = (len(load_ply(tmp_path / f)["means"]) for f in ("rm.ply", "keep.ply"))
    assert n_removed + n_kept == total and n_kept >= selected
    both_modes = runner.invoke(app, ["edit", *common, "--remove", "--keep", "--object", "red sphere", "-o", "x.ply"])
    assert both_modes.exit_code == 2 and "exactly one of --remove and --keep" in both_modes.output
    in_place = runner.invoke(app, ["edit", *common, "--remove", "--object", "red sphere", "-o",
                                   str(tmp_path / "data" / "synthetic-tiny" / "train" / "point_cloud.ply")])
    assert in_place.exit_code == 2 and "outside the stage folders" in in_place.output
    assert len(load_ply(tmp_path / "data" / "synthetic-tiny" / "train" / "point_cloud.ply")["means"]) == total
    nothing = runner.invoke(app, ["export", *common, "-o", "x.ply"])
    assert nothing.exit_code == 2 and "give --object, --click or --cluster" in nothing.output

    no_run = runner.invoke(app, ["report", "--run", "run-nope", *common[2:]])
    assert no_run.exit_code == 1 and "run.json: no run record" in no_run.output


def test_cgc_report_on_a_run_whose_report_fails_is_an_error_not_a_crash(tmp_path):
    evaluated = tmp_path / "evaluate"  # a stage folder that lost its summary
    evaluated.mkdir()
    run = tmp_path / "reports" / "run-broken"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "run-broken", "scenes": [
        {"scene": str(tmp_path / "gone"), "layout": "lerf-mask", "stages": {"evaluate": {"dir": str(evaluated)}}}]}))
    result = runner.invoke(app, ["report", "--run", str(run)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "evaluate/summary.json: cannot read" in result.output and "UnboundLocalError" not in result.output
    (run / "run.json").write_text("{")
    damaged = runner.invoke(app, ["report", "--run", str(run)])
    assert damaged.exit_code == 1 and "run.json: not a run record" in damaged.output


def test_the_viewer_entry_point_is_the_cgc_view_command(tmp_path):
    from cgc_core.cli import view_app

    help_text = runner.invoke(view_app, ["--help"]).output
    assert "--scene" in help_text and "--max-side" in help_text
    # No trained model: both front-ends stop with the missing stage named, before serving anything.
    for front, args in ((view_app, []), (app, ["view"])):
        result = runner.invoke(front, [*args, "--scene", "synthetic", "--set", f"data_dir={tmp_path}"])
        assert result.exit_code == 1, result.output
        assert "the scene stage has no finished output" in result.output


def test_segment_runs_a_capture_to_clusters_and_consistent_masks(tmp_path):
    import json

    result = runner.invoke(app, ["segment", "synthetic", "--set", f"data_dir={tmp_path}", "--set", "synthetic.preset=tiny",
                                 "--set", "synthetic.supersample=1", "--set", "calibrate.mode=known_poses",
                                 "--set", "train.iterations=30", "--set", "cluster.min_cluster_size=20"])
    assert result.exit_code == 0, result.output
    assert "clusters of" in result.output and "view it: cgc view --scene synthetic" in result.output
    cluster_dir = tmp_path / "synthetic" / "cluster"
    coco = json.loads((cluster_dir / "instance_masks" / "instances.json").read_text())
    assert len(coco["images"]) == len(list((cluster_dir / "instance_masks" / "labels").glob("*.png"))) > 0
    assert (cluster_dir / "scene_clusters.ply").is_file()
    again = runner.invoke(app, ["segment", "synthetic", "--set", f"data_dir={tmp_path}", "--set", "synthetic.preset=tiny",
                                "--set", "synthetic.supersample=1", "--set", "calibrate.mode=known_poses",
                                "--set", "train.iterations=30", "--set", "cluster.min_cluster_size=20"])
    assert again.exit_code == 0 and "cached" in again.output
    usage = runner.invoke(app, ["segment"])
    assert usage.exit_code == 2 and "give a PATH" in usage.output


def test_the_flow_command_line_is_typer_and_refuses_unknown_stages_before_any_work(monkeypatch):
    import flows.benchmark as benchmark

    ran = []
    monkeypatch.setattr(benchmark, "cgc_benchmark", lambda *args: ran.append(args))
    bad = runner.invoke(benchmark.cli, ["--scenes", "synthetic", "--force", "nope"])
    assert bad.exit_code == 2 and "unknown stage(s) ['nope']" in bad.output and not ran
    assert "--dask-address" in runner.invoke(benchmark.cli, ["--help"]).output
