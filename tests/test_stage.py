"""The stage cache: content-keyed reuse, checksum verification, crash safety."""

from __future__ import annotations

import json

import pytest

from cgc_core.config import CalibrateConfig
from cgc_core.stage import MANIFEST, Manifest, check_stage_dir, run_stage


def _writer(calls):
    def compute(tmp):
        calls.append(tmp)
        (tmp / "out.txt").write_text("result")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more.bin").write_bytes(b"\x00\x01")
        return {"rows": 2}
    return compute


def test_second_run_is_cached_and_input_change_recomputes(tmp_path):
    calls = []
    target = tmp_path / "scene" / "stage"
    first = run_stage(target, "stage", {"img": "aaa"}, CalibrateConfig(), _writer(calls))
    assert not first.cached and first.reason == "no finished output"
    assert json.loads((target / MANIFEST).read_text())["outputs"].keys() == {"out.txt", "sub/more.bin"}
    again = run_stage(target, "stage", {"img": "aaa"}, CalibrateConfig(), _writer(calls))
    assert again.cached and len(calls) == 1
    assert again.manifest.info == {"rows": 2}
    changed = run_stage(target, "stage", {"img": "bbb"}, CalibrateConfig(), _writer(calls))
    assert not changed.cached and changed.reason == "inputs changed (img)"
    other_cfg = run_stage(target, "stage", {"img": "bbb"}, CalibrateConfig(seed=1), _writer(calls))
    assert not other_cfg.cached
    forced = run_stage(target, "stage", {"img": "bbb"}, CalibrateConfig(seed=1), _writer(calls), force=True)
    assert not forced.cached and forced.reason == "recompute forced"
    assert len(calls) == 4
    # no temporary folders are left beside the output
    assert sorted(p.name for p in target.parent.iterdir()) == [".stage.lock", "stage"]  # the lock file stays (see stage_lock)


def test_corrupted_or_missing_output_is_detected_and_recomputed(tmp_path):
    calls = []
    target = tmp_path / "stage"
    key = run_stage(target, "stage", {}, CalibrateConfig(), _writer(calls)).manifest.key
    (target / "out.txt").write_text("tampered")
    assert check_stage_dir(target, key) == "output out.txt does not match its checksum"
    result = run_stage(target, "stage", {}, CalibrateConfig(), _writer(calls))
    assert not result.cached and "checksum" in result.reason
    assert (target / "out.txt").read_text() == "result"
    (target / "sub" / "more.bin").unlink()
    assert check_stage_dir(target, key) == "output sub/more.bin is missing"


def test_half_written_folder_is_not_taken_as_finished(tmp_path):
    target = tmp_path / "stage"
    target.mkdir()
    (target / "out.txt").write_text("partial")  # a folder filled by hand, no manifest
    calls = []
    result = run_stage(target, "stage", {}, CalibrateConfig(), _writer(calls))
    assert not result.cached and result.reason == "output folder has no manifest (unfinished)"
    assert len(calls) == 1 and (target / "out.txt").read_text() == "result"


def test_failed_compute_leaves_previous_output_intact(tmp_path):
    target = tmp_path / "stage"
    run_stage(target, "stage", {"v": "1"}, CalibrateConfig(), _writer([]))
    before = Manifest.read(target)

    def boom(tmp):
        (tmp / "out.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_stage(target, "stage", {"v": "2"}, CalibrateConfig(), boom)
    assert Manifest.read(target) == before and (target / "out.txt").read_text() == "result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stage.lock", "stage"]


def test_unreadable_manifest_recomputes(tmp_path):
    target = tmp_path / "stage"
    run_stage(target, "stage", {}, CalibrateConfig(), _writer([]))
    (target / MANIFEST).write_text("{not json")
    result = run_stage(target, "stage", {}, CalibrateConfig(), _writer([]))
    assert not result.cached and result.reason.startswith("manifest unreadable")


def test_a_second_run_waits_for_the_first_and_reuses_its_output(tmp_path):
    import threading
    import time

    calls, results = [], []

    def slow(tmp):
        calls.append(tmp)
        time.sleep(1.0)
        (tmp / "out.txt").write_text("result")

    target = tmp_path / "stage"
    runs = [threading.Thread(target=lambda: results.append(run_stage(target, "stage", {}, CalibrateConfig(), slow)))
            for _ in range(2)]
    for run in runs:
        run.start()
        time.sleep(0.2)  # the first takes the lock
    for run in runs:
        run.join()
    assert len(calls) == 1
    assert [r.cached for r in results] == [False, True]
    assert results[1].reason == "cached: computed by a concurrent run while this one waited"


def test_waiting_for_a_lock_gives_up_after_its_timeout_naming_the_folder(tmp_path):
    from cgc_core.stage import StageLockTimeout, stage_lock

    target = tmp_path / "stage"
    with stage_lock(target):  # another holder (flock: a second open file conflicts even in one process)
        with pytest.raises(StageLockTimeout, match=f"{target}: another run held .*\\.stage\\.lock for more than 0.3 s"):
            run_stage(target, "stage", {}, CalibrateConfig(), _writer([]), lock_timeout=0.3)
    assert run_stage(target, "stage", {}, CalibrateConfig(), _writer([]), lock_timeout=0.3).cached is False
