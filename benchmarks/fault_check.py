"""Runs the fault-injection and bad-input tests (tests/test_faults.py) and counts them.

Each group runs as its own pytest session (markers `fault` and `bad_input`) writing a JUnit XML
report; the counts come from those reports. `concurrent_runs` is `ok` when the test that starts two
runs of the same scene together (each stage computed once, identical outputs) passed.

Last line:
    RESULT fault_cases=<n> fault_passed=<n> bad_input_cases=<n> bad_input_passed=<n> concurrent_runs=ok|failed
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


CONCURRENT_TEST = "test_two_concurrent_runs_compute_each_stage_once_with_identical_outputs"


def run_group(marker: str, workdir: Path) -> tuple[int, int, dict[str, bool]]:
    """(cases run, cases passed, {test name: passed}) of one marker's tests."""
    report = workdir / f"{marker}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
                    "tests/test_faults.py", f"--junitxml={report}"], cwd=ROOT, check=False)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    passed = {case.get("name"): not any(child.tag in ("failure", "error", "skipped") for child in case)
              for case in suite.iter("testcase")}
    return cases, cases - failed, passed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fault = run_group("fault", Path(tmp))
        bad = run_group("bad_input", Path(tmp))
    print(f"fault injection: {fault[1]}/{fault[0]} passed; bad input: {bad[1]}/{bad[0]} passed")
    concurrent = "ok" if fault[2].get(CONCURRENT_TEST) else "failed"
    print(f"RESULT fault_cases={fault[0]} fault_passed={fault[1]} bad_input_cases={bad[0]} bad_input_passed={bad[1]} "
          f"concurrent_runs={concurrent}")


if __name__ == "__main__":
    main()
