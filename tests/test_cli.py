"""The Prefect-free `cgc` command line."""

from __future__ import annotations

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
