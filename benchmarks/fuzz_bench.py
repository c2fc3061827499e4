"""Every reader of a user's file under thousands of mutated inputs (tests/fuzz_readers.py), each
reader in its own child process so that a crash is counted (and its input kept) instead of ending
the run.

Last line:
    RESULT readers=<n> cases=<n> crashes=<n> unnamed_errors=<n> max_case_s=<x> max_rss_mb=<x>
(unnamed_errors counts every outcome that is neither a sound read nor the reader's own error naming
the file: other exceptions, unsound reads such as NaN cameras, and cases slower than 10 s.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz_readers import readers, run_isolated  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="cases per reader")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--readers", nargs="+", default=sorted(readers()), choices=sorted(readers()))
    args = parser.parse_args()
    totals = {"cases": 0, "crashes": 0, "unnamed": 0, "max_case_s": 0.0, "max_rss_mb": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.readers:
            began = time.perf_counter()
            stats = run_isolated(name, args.cases, None, args.seed, Path(tmp))
            bad = stats["unnamed_errors"] + stats["unsound_reads"] + stats["slow_cases"]
            print(f"{name:<11} {stats['cases']:>6} cases in {time.perf_counter() - began:6.1f} s: "
                  f"{stats['read_ok']} read, {stats['named_errors']} named errors, {len(bad)} other, "
                  f"{len(stats['crashes'])} crashes; slowest case {stats['max_case_s']:.3f} s, "
                  f"peak RSS {stats['max_rss_mb']:.0f} MB", flush=True)
            for line in (bad + stats["crashes"])[:10]:
                print("    " + line)
            totals["cases"] += stats["cases"]
            totals["crashes"] += len(stats["crashes"])
            totals["unnamed"] += len(bad)
            totals["max_case_s"] = max(totals["max_case_s"], stats["max_case_s"])
            totals["max_rss_mb"] = max(totals["max_rss_mb"], stats["max_rss_mb"])
    print(f"RESULT readers={len(args.readers)} cases={totals['cases']} crashes={totals['crashes']} "
          f"unnamed_errors={totals['unnamed']} max_case_s={totals['max_case_s']:.3f} "
          f"max_rss_mb={totals['max_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
