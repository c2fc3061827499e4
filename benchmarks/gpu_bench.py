"""cgc's figures on a CUDA GPU (issue 41): rendering, the channel layout, training, mask latency, SAM.

Run by `scripts/gpu_check.sh` on a GPU machine (under that machine's own python3 and torch); with
`--smoke`, everything runs small on the CPU (the dry run's check that the script works). Every
timing is a median over repetitions after a warm-up, with CUDA synchronised around each.

1. Render forward + backward with 16-d features at 100k and 1M Gaussians at 1920×1080: gsplat on
   the GPU; our torch backend (CPU C++ tiles) at 100k in the same run, for the ratio
   `gsplat_vs_torch` (its time / gsplat's).
2. Channel layout: gsplat rasterizes colour channels in chunks (20 channels pad to 32 in gsplat
   1.5): one pass of RGB + 16 features + depth (20, what `render` does) against two passes
   (RGB + depth, then the 16 features): `layout=one|two` names the faster.
3. Training on the `realistic` synthetic preset with the `paper` schedule (30k iterations) for a
   wall-clock budget: iterations per second, and the minutes 30k would take at that rate
   (`train_lerf_min`, extrapolated; `train_its` says how many ran; paper: about 20 min on an RTX
   4090), peak GPU memory.
4. Mask latency at 1080p of the trained model: render the features, threshold one query (paper: 5 ms).
5. SAM ViT-H automatic masks with random weights on a 1024-px image (speed only; paper: 5.1 s).

Last line:
    RESULT device=<name> render_1m_1080p_ms=<x> gsplat_vs_torch=<x> train_lerf_min=<x> train_peak_gb=<x>
           mask_ms=<x> sam_vit_h_s=<x> train_its=<n> layout=<one|two>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cgc_core.render import Gaussians, render
from cgc_core.scene.model import Camera
from cgc_core.scene.synthetic import look_at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds, synchronised, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def camera(width: int, height: int) -> Camera:
    focal = 0.9 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    return Camera(K, look_at(np.array([0.0, -3.0, 0.6]), np.zeros(3)), width, height, "bench")


def random_params(n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """n Gaussians in a 2 m box in front of the camera, a few pixels wide at 1080p, 16-d features."""
    g = torch.Generator().manual_seed(seed)
    params = {"means": (torch.rand(n, 3, generator=g) - 0.5) * 2.0, "quats": torch.randn(n, 4, generator=g),
              "scales": torch.rand(n, 3, generator=g) * 0.01 + 0.003, "opacities": torch.rand(n, generator=g) * 0.9,
              "sh": torch.randn(n, 16, 3, generator=g) * 0.2, "features": torch.randn(n, 16, generator=g)}
    return {k: v.to(device).requires_grad_() for k, v in params.items()}


def render_fwd_bwd_ms(params, cam: Camera, backend: str, device: torch.device, reps: int) -> float:
    gaussians = Gaussians(params["means"], params["quats"], params["scales"], params["opacities"], params["sh"])

    def once():
        out = render(gaussians, cam, features=params["features"], backend=backend)
        (out.rgb.sum() + out.features.sum() + out.depth.sum()).backward()

    return median_ms(once, device, reps)


def channel_layout_ms(params, cam: Camera, device: torch.device, reps: int) -> tuple[float, float]:
    """gsplat forward+backward: one pass of 3 + 16 channels + depth, against RGB+depth then the 16 features."""
    from gsplat import rasterization

    from cgc_core.render import camera_tensors

    viewmat, K = camera_tensors(cam, device, torch.float32)
    common = dict(means=params["means"], quats=params["quats"], scales=params["scales"],
                  opacities=params["opacities"], viewmats=viewmat[None], Ks=K[None], width=cam.width,
                  height=cam.height, packed=False)
    rgb = torch.sigmoid(params["sh"][:, 0])

    def one():
        image, _, _ = rasterization(colors=torch.cat([rgb, params["features"]], 1), render_mode="RGB+ED", **common)
        image.sum().backward()

    def two():
        colour, _, _ = rasterization(colors=rgb, render_mode="RGB+ED", **common)
        features, _, _ = rasterization(colors=params["features"], render_mode="RGB", **common)
        (colour.sum() + features.sum()).backward()

    return median_ms(one, device, reps), median_ms(two, device, reps)


def train_rate(preset: str, budget_s: float, smoke: bool) -> dict:
    """Train the preset with the paper schedule for `budget_s` seconds: iterations, rate, peak memory."""
    from cgc_core.config import load_config
    from cgc_core.pipeline import run_scene_stage
    from cgc_core.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data_dir={tmp}", f"synthetic.preset={preset}", "synthetic.supersample=1",
                     "calibrate.mode=known_poses", "train.schedule=paper", "train.checkpoint_every=0"]
        cfg = load_config(None, overrides + (["train.backend=torch"] if smoke else []))
        started = time.perf_counter()
        for stage in ("scene", "calibrate", "masks"):
            scene, result = run_scene_stage(cfg, f"synthetic-{preset}", stage)
        prepared = time.perf_counter() - started
        trainer = Trainer(scene, result.outputs.store, Path(tmp) / "train", cfg.train)
        trainer.restore()
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        while time.perf_counter() - start < budget_s and trainer.step_count < cfg.train.iterations:
            latest = trainer.step()
        _sync(device)
        seconds = time.perf_counter() - start
        its = trainer.step_count
        params = {k: v.detach() for k, v in trainer.params.items()}
        view = trainer.names[0]
        return {"its": its, "seconds": seconds, "prepare_s": prepared, "iterations": cfg.train.iterations,
                "minutes_full": cfg.train.iterations / max(its / seconds, 1e-9) / 60, "gaussians": latest["n"],
                "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
                "params": params, "camera": scene.cameras[view], "backend": cfg.train.backend, "device": device}


def mask_latency_ms(trained: dict, width: int, height: int, reps: int) -> float:
    """Render the trained model's features at width × height and threshold one query (cosine ≥ 0.7)."""
    params, device = trained["params"], trained["device"]
    gaussians = Gaussians.from_params(params)
    cam = trained["camera"].scaled(width, height)
    query = F.normalize(params["features"][0].float(), dim=0)

    @torch.no_grad()
    def once():
        out = render(gaussians, cam, features=params["features"], backend=trained["backend"])
        return (F.normalize(out.features, dim=-1) @ query) >= 0.7

    return median_ms(once, device, reps)


def sam_seconds(model_type: str, image_size: int, side: int, device: str, reps: int, points_per_side: int = 32) -> float:
    """segment-anything's automatic mask generator (default 32 × 32 points), random weights, on one `side`-px image."""
    from cgc_core.config import SamConfig
    from cgc_core.masks.generators import SamGenerator

    generator = SamGenerator(SamConfig(model_type=model_type, allow_random_weights=True, device=device,
                                       image_size=image_size, max_side=side, points_per_side=points_per_side))
    image = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    return median_ms(lambda: generator.generate(image, "bench.png"), torch.device(device), reps) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--train-budget-s", type=float, default=90.0, help="wall-clock seconds of training")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: nothing measured (scripts/gpu_check.sh runs this on a GPU machine; --smoke checks it on CPU)")
        print("RESULT device=none")
        return
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device).replace(" ", "_") if cuda else "cpu-smoke"
    width, height = (1920, 1080) if cuda else (320, 180)
    small, large = (100_000, 1_000_000) if cuda else (2_000, 20_000)
    reps = args.reps if cuda else 1
    print(f"device {name}; torch {torch.__version__}; {width}x{height}; Gaussians {small} and {large}")
    cam = camera(width, height)

    backend = "gsplat" if cuda else "torch"
    render_small = render_fwd_bwd_ms(random_params(small, device), cam, backend, device, reps)
    render_large = render_fwd_bwd_ms(random_params(large, device), cam, backend, device, reps)
    torch_small = render_fwd_bwd_ms(random_params(small, torch.device("cpu")), cam, "torch", torch.device("cpu"), 1)
    ratio = torch_small / render_small if cuda else float("nan")
    print(f"render fwd+bwd, 16-d features: {backend} {render_small:.1f} ms at {small}, {render_large:.1f} ms at "
          f"{large}; torch backend (CPU) {torch_small:.1f} ms at {small} (x{ratio:.1f})")
    layout = "n/a"
    if cuda:
        one, two = channel_layout_ms(random_params(small, device), cam, device, reps)
        layout = "one" if one <= two else "two"
        print(f"channel layout at {small}: one pass of 20 channels {one:.2f} ms, two passes (4 + 16) {two:.2f} ms")

    trained = train_rate("realistic" if cuda else "tiny", args.train_budget_s if cuda else 10.0, smoke=not cuda)
    print(f"training ({trained['backend']}, paper schedule): {trained['its']} iterations in {trained['seconds']:.1f} s "
          f"({trained['its'] / trained['seconds']:.1f} it/s; scene, calibration and masks took {trained['prepare_s']:.1f} s), "
          f"{trained['gaussians']} Gaussians; {trained['iterations']} would take {trained['minutes_full']:.1f} min; "
          f"peak {trained['peak_gb']:.2f} GB")
    mask = mask_latency_ms(trained, width, height, max(reps, 3))
    print(f"mask latency at {width}x{height}: {mask:.1f} ms ({trained['gaussians']} Gaussians)")
    sam = sam_seconds("vit_h", 1024, 1024, "cuda", reps=2) if cuda else sam_seconds("vit_b", 256, 256, "cpu", reps=1, points_per_side=4)
    print(f"SAM {'ViT-H at 1024' if cuda else 'ViT-B at 256 (smoke)'} automatic masks, random weights: {sam:.2f} s per image")
    print(f"RESULT device={name} render_1m_1080p_ms={render_large:.2f} gsplat_vs_torch={ratio:.2f} "
          f"train_lerf_min={trained['minutes_full']:.2f} train_peak_gb={trained['peak_gb']:.2f} mask_ms={mask:.2f} "
          f"sam_vit_h_s={sam:.3f} train_its={trained['its']} layout={layout}"
          + ("" if cuda else f" smoke=1 sizes={small},{large}@{width}x{height} sam=vit_b@256x4points"))


if __name__ == "__main__":
    main()
