"""A real capture end to end: the 42 bonsai photos of ../shared/data/bonsai through `cgc segment`
on the CPU at reduced resolution (SfM, classical masks, the default short schedule, clusters).

Last line:
    RESULT registered=<share of photos SfM registered> clusters=<n> minutes=<wall minutes of cgc segment>
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from cgc_core.stage import MANIFEST, SUMMARY

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "bonsai"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "data" / "bench-bonsai"))
    parser.add_argument("--max-side", type=int, default=480, help="photos are downscaled to this long side")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"{PHOTOS}: the bonsai photos are not there (../shared is not checked out beside this repo)")
    capture = Path(args.data_dir) / "capture" / "bonsai"
    if not capture.is_dir():
        tmp = capture.with_name("bonsai.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        for photo in sorted(PHOTOS.glob("*.JPG")):
            image = Image.open(photo)
            image.thumbnail((args.max_side, args.max_side))
            image.save(tmp / "images" / f"{photo.stem}.jpg", quality=95)
        tmp.rename(capture)
    command = [str(Path(sys.executable).parent / "cgc"), "segment", str(capture), "--set", f"data_dir={args.data_dir}",
               "--set", "masks.generator=classical", *[x for o in args.overrides for x in ("--set", o)]]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - start) / 60
    scene_dir = Path(args.data_dir) / "bonsai"
    calibration = json.loads((scene_dir / "calibrate" / MANIFEST).read_text())["info"]
    clusters = json.loads((scene_dir / "cluster" / SUMMARY).read_text())["n_clusters"]
    print(f"RESULT registered={calibration['registered_share']:.3f} clusters={clusters} minutes={minutes:.2f}")


if __name__ == "__main__":
    main()
