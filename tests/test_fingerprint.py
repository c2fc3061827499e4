"""Cache keys see code: the fingerprint of what a stage runs, on a copy of the package, and a
rerun of the tiny scene after an edit to training recomputes train and what follows it only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cgc_core import fingerprint
from cgc_core.fingerprint import changed_files, code_fingerprint
from cgc_core.pipeline import REPORT_SPEC, SCENE_SPECS, stage_code

PACKAGE = Path(fingerprint.__file__).resolve().parent
TRAIN_ROOTS = dict((s.name, s.code) for s in SCENE_SPECS)["train"]


@pytest.fixture
def package_copy(tmp_path) -> Path:
    return Path(shutil.copytree(PACKAGE, tmp_path / "cgc_core", ignore=shutil.ignore_patterns("__pycache__")))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r} is not there exactly once"
    path.write_text(text.replace(old, new))


def test_a_copy_has_the_same_fingerprint_and_every_stage_has_code(package_copy):
    assert code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy) == code_fingerprint(*TRAIN_ROOTS)
    for spec in (*SCENE_SPECS, REPORT_SPEC):
        code = stage_code(spec.name)
        assert any(path.endswith(f"pipeline.py:{spec.name}_stage") for path in code), spec.name
    train = code_fingerprint(*TRAIN_ROOTS)
    # what training imports, transitively, and the C++ kernels the CPU rasterizer compiles
    assert {"cgc_core/train.py", "cgc_core/losses.py", "cgc_core/render/torch_backend.py",
            "cgc_core/render/csrc/rasterize.cpp", "cgc_core/render/__init__.py"} <= set(train)
    assert "cgc_core/report.py" not in train and "cgc_core/pipeline.py" not in train


def test_editing_a_function_training_runs_changes_train_but_not_report(package_copy):
    before = {name: code_fingerprint(*roots, package_dir=package_copy) for name, roots in
              (("train", TRAIN_ROOTS), ("report", REPORT_SPEC.code), ("calibrate", ("cgc_core.calibrate",)))}
    # losses.py is not named by the train stage: it is reached through train.py's imports
    _edit(package_copy / "losses.py", "def spatial_regularization(", "def _edited():\n    return 1\n\n\ndef spatial_regularization(")
    after = {name: code_fingerprint(*roots, package_dir=package_copy) for name, roots in
             (("train", TRAIN_ROOTS), ("report", REPORT_SPEC.code), ("calibrate", ("cgc_core.calibrate",)))}
    assert changed_files(before["train"], after["train"]) == ["cgc_core/losses.py"]
    assert changed_files(before["report"], after["report"]) == ["cgc_core/losses.py"]  # the report imports training
    assert after["calibrate"] == before["calibrate"]


def test_editing_an_unrelated_module_or_a_docstring_changes_nothing_it_does_not_run(package_copy):
    train = code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy)
    report = code_fingerprint(*REPORT_SPEC.code, package_dir=package_copy)
    _edit(package_copy / "report.py", "from __future__ import annotations\n",
          "from __future__ import annotations\nimport math as _unused_math\n")  # report code changes
    assert code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy) == train
    assert changed_files(report, code_fingerprint(*REPORT_SPEC.code, package_dir=package_copy)) == ["cgc_core/report.py"]
    # a docstring or comment is not code: the trees compare without them
    text = (package_copy / "train.py").read_text()
    (package_copy / "train.py").write_text(text.replace('"""', '"""Edited. ', 1) + "\n# a trailing comment\n")
    assert code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy) == train
    # a config field's docstring neither, while its default is what runs
    _edit(package_copy / "config.py", '    """Code: 1e-6."""\n', '    """Code: 1e-6; edited."""\n')
    assert code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy) == train
    _edit(package_copy / "config.py", "    weight: float = 1e-6\n", "    weight: float = 2e-6\n")
    assert changed_files(train, code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy)) == ["cgc_core/config.py"]
    _edit(package_copy / "config.py", "    weight: float = 2e-6\n", "    weight: float = 1e-6\n")
    # the stage function itself and the C++ sources count
    cpp = package_copy / "render" / "csrc" / "rasterize.cpp"
    cpp.write_text(cpp.read_text() + "\n// edited\n")
    assert changed_files(train, code_fingerprint(*TRAIN_ROOTS, package_dir=package_copy)) == [
        "cgc_core/render/csrc/rasterize.cpp"]


def test_function_roots_cover_only_their_function(package_copy):
    roots = ("cgc_core.pipeline:train_stage",)
    before = code_fingerprint(*roots, package_dir=package_copy)
    _edit(package_copy / "pipeline.py", "def report_stage(", "def _edited():\n    return 1\n\n\ndef report_stage(")
    assert code_fingerprint(*roots, package_dir=package_copy) == before
    _edit(package_copy / "pipeline.py", "    inputs = {\"calibrate\": upstream[\"calibrate\"].manifest.key",
          "    _edited()\n    inputs = {\"calibrate\": upstream[\"calibrate\"].manifest.key")
    assert changed_files(before, code_fingerprint(*roots, package_dir=package_copy)) == [
        "cgc_core/pipeline.py:train_stage"]
    with pytest.raises(LookupError, match="no top-level function 'nope'"):
        code_fingerprint("cgc_core.pipeline:nope")
    with pytest.raises(ModuleNotFoundError, match="'cgc_core.nope' is not a module"):
        code_fingerprint("cgc_core.nope")


def test_editing_training_recomputes_train_and_what_follows_it_only(package_copy, tmp_path, monkeypatch):
    from cgc_core.config import load_config
    from cgc_core.pipeline import report_stage, run_scene_stage, stage_record

    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", package_copy)
    cfg = load_config(None, [f"data_dir={tmp_path / 'data'}", f"reports_dir={tmp_path / 'reports'}",
                             "synthetic.preset=tiny", "synthetic.supersample=1", "calibrate.mode=known_poses",
                             "train.iterations=20", "train.regularizer.samples=50", "cluster.min_cluster_size=20"])

    def run_all() -> dict[str, object]:
        results = {}
        for stage in [spec.name for spec in SCENE_SPECS]:
            scene, results[stage] = run_scene_stage(cfg, "synthetic", stage, run_upstream=True)
        record = [{"scene": "synthetic", "layout": scene.layout,
                   "stages": {name: stage_record(result, scene) for name, result in results.items()}}]
        results["report"] = report_stage(cfg, record)
        return results

    first = run_all()
    assert not any(result.cached for result in first.values())
    assert all(result.cached for result in run_all().values())
    _edit(package_copy / "train.py", "def train(", "def _edited():\n    return 1\n\n\ndef train(")
    edited = run_all()
    assert {name: result.cached for name, result in edited.items()} == {
        "scene": True, "calibrate": True, "masks": True,
        "train": False, "cluster": False, "evaluate": False, "report": False}
    assert edited["train"].reason == "code changed (cgc_core/train.py)"
    assert edited["cluster"].reason.startswith("inputs changed (train)")  # and its own code, which imports training
    # new numbers make a new run folder (run-<key of its inputs>)
    assert edited["report"].reason == "no finished output"
    assert edited["report"].stage_dir != first["report"].stage_dir
    assert edited["train"].manifest.code["cgc_core/train.py"] != first["train"].manifest.code["cgc_core/train.py"]
    # an edit to the report recomputes the report alone, in its folder
    _edit(package_copy / "report.py", "from __future__ import annotations\n",
          "from __future__ import annotations\nimport math as _unused_math\n")
    reported = run_all()
    assert [name for name, result in reported.items() if not result.cached] == ["report"]
    assert reported["report"].reason == "code changed (cgc_core/report.py)"
    assert reported["report"].stage_dir == edited["report"].stage_dir
