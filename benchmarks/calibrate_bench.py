"""Calibration speed and quality: SfM on the synthetic demo scene and on the real bonsai photos.

Prints, per dataset, seconds per image (median of --repeats runs), the registration rate and, for
the synthetic scene, the camera-centre error after similarity alignment as a fraction of the scene
radius. Last line:

    RESULT synthetic_registered=<share> synthetic_center_err=<fraction> bonsai_registered=<share> s_per_image=<s>

`s_per_image` is the synthetic scene's median seconds per image. The bonsai photos come from
../shared/data/bonsai; without them bonsai_registered is reported as `nan`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cgc_core.calibrate import apply_calibration, calibrate, camera_center_error
from cgc_core.config import CalibrateConfig, SyntheticConfig
from cgc_core.scene import load_scene
from cgc_core.scene.synthetic import write_synthetic_scene

BONSAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "bonsai"


def _time_sfm(scene, repeats: int, work: Path) -> tuple[list[float], object, Path]:
    seconds, summary, out = [], None, None
    for i in range(repeats):
        out = work / f"{scene.name}-{i}"
        start = time.perf_counter()
        summary = calibrate(scene, out, CalibrateConfig(min_registered_share=0.0))
        seconds.append((time.perf_counter() - start) / len(scene.image_names))
    return seconds, summary, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene_dir = write_synthetic_scene(SyntheticConfig(preset=args.preset), work / "synthetic")
        synthetic = load_scene(scene_dir, name="synthetic")
        radius = json.loads((scene_dir / "ground_truth" / "scene.json").read_text())["radius"]
        seconds, summary, out = _time_sfm(synthetic, args.repeats, work)
        calibrated = apply_calibration(synthetic, out)
        _, errors = camera_center_error(calibrated.cameras, synthetic.cameras)
        syn_s = statistics.median(seconds)
        syn_reg = summary.registered_share
        syn_err = float(errors.max()) / radius
        print(f"synthetic ({args.preset}): {len(synthetic.image_names)} images, registered {syn_reg:.1%}, "
              f"median {syn_s:.3f} s/image (runs: {', '.join(f'{s:.3f}' for s in seconds)}), "
              f"worst centre error {syn_err:.3%} of scene radius, {summary.n_points} points")

        bonsai_reg = float("nan")
        if BONSAI.is_dir():
            bonsai = load_scene(BONSAI, layout="photos")
            b_seconds, b_summary, _ = _time_sfm(bonsai, args.repeats, work)
            bonsai_reg = b_summary.registered_share
            print(f"bonsai: {len(bonsai.image_names)} photos, registered {bonsai_reg:.1%}, "
                  f"median {statistics.median(b_seconds):.3f} s/image, {b_summary.n_points} points")
        else:
            print(f"bonsai: {BONSAI} absent, skipped")

    print(f"RESULT synthetic_registered={syn_reg:.4f} synthetic_center_err={syn_err:.5f} "
          f"bonsai_registered={bonsai_reg:.4f} s_per_image={syn_s:.4f}")


if __name__ == "__main__":
    main()
