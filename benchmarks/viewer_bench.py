"""Viewer frame time on CPU: render (colour + 16-d features) and the similarity overlay at 256².

Runs (or reuses, with --data-dir) the stages up to training of a synthetic preset (default `demo`,
what `make demo` trains; `--preset tiny` is quick), then a `ViewerSession` with one click query
renders the scene's own cameras resized to 256×256; median of `--frames` after two warm-up frames.
Baseline in the same run: the plain colour render of the same cameras (no features, no overlay).

Last line:
    RESULT viewer_frame_ms=<ms>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from cgc_core.config import load_config
from cgc_core.gaussians import load_ply
from cgc_core.pipeline import run_scene_stage
from cgc_core.render import Gaussians, render
from cgc_core.scene.model import Camera
from cgc_core.viewer import ViewerSession


def trained(data_dir: str, preset: str, overrides: list[str]) -> tuple[dict, list[Camera]]:
    """The trained model of the preset and its calibrated cameras (stages run or reused)."""
    cfg = load_config(None, [f"data_dir={data_dir}", f"synthetic.preset={preset}", *overrides])
    for stage in ("scene", "calibrate", "masks", "train"):
        scene, result = run_scene_stage(cfg, "synthetic", stage)
    names = scene.test_names + scene.train_names
    return load_ply(result.outputs.ply), [scene.cameras[n] for n in names if n in scene.cameras]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data-dir", default=None, help="reuse a data folder (default: a fresh temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        params, scene_cameras = trained(args.data_dir or tmp, args.preset, args.overrides)
    means = params["means"]
    cameras = [scene_cameras[i % len(scene_cameras)].scaled(args.size, args.size) for i in range(args.frames + 2)]
    session = ViewerSession(params, backend="torch")
    session.render_view(cameras[0])
    for u, v in ((0.5, 0.5), (0.5, 0.6), (0.4, 0.6), (0.6, 0.6)):  # a query from the middle of the first view
        try:
            session.click(u, v)
            break
        except ValueError:
            continue
    frame_ms = []
    for camera in cameras:
        frame = session.render_view(camera)
        frame_ms.append(1000 * frame.seconds)
    gaussians = Gaussians.from_params(params)
    plain_ms = []
    with torch.no_grad():
        for camera in cameras:
            start = time.perf_counter()
            render(gaussians, camera, backend="torch")
            plain_ms.append(1000 * (time.perf_counter() - start))
    frame, plain = statistics.median(frame_ms[2:]), statistics.median(plain_ms[2:])
    print(f"{len(means)} Gaussians, {args.size}x{args.size}, {torch.get_num_threads()} threads, CPU")
    print(f"viewer frame (render colour + features, similarity overlay): {frame:.1f} ms median of {args.frames}")
    print(f"baseline, colour-only render: {plain:.1f} ms; the viewer frame costs {frame / plain:.2f}x the plain render")
    print(f"RESULT viewer_frame_ms={frame:.1f}")


if __name__ == "__main__":
    main()
