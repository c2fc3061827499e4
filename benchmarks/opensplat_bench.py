"""cgc's CPU training beside OpenSplat's CPU mode (issue 22), in one run on this machine.

Both train colour only (no features, no contrastive or regulariser term) on the demo scene in
COLMAP layout (our calibrate stage's `sparse/0`, the scene's images), at the same resolution
(320×240, no downscale schedule), for the same number of iterations, from the same Gaussians: the
demo's trained model (default config, about 33k Gaussians), densification off in both, SH degree 3
from the first iterations. What is compared is the steady-state time of one training iteration
(forward, loss, backward, optimiser) with the same model size.

OpenSplat is a baseline only: built from source in a temporary folder (or `--build-dir`), never
copied into the project. Source: `--opensplat-src DIR` (a checkout), else `git clone` of
https://github.com/pierotofy/OpenSplat. Build needs cmake and Debian's libopencv-dev,
nlohmann-json3-dev, libnanoflann-dev and libcxxopts-dev (used instead of CMake's downloads). Two
build settings differ from upstream, both forced by the pip torch wheel whose libtorch it links:
C++20 (torch 2.14's headers require it) and a CUDA root of symlinks into the wheel's own CUDA
libraries (the wheel's CMake files were generated for a CUDA build and refuse to configure
without one); OpenSplat itself is configured with GPU_RUNTIME=CPU and run with `--cpu`.

Last line:
    RESULT cgc_it_per_s=<x> opensplat_it_per_s=<x> ratio=<cgc / opensplat>
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

OPENSPLAT_GIT = "https://github.com/pierotofy/OpenSplat"
DEBIAN_PACKAGES = "cmake libopencv-dev nlohmann-json3-dev libnanoflann-dev libcxxopts-dev"
WARMUP_STEPS = 10


def _run(cmd: list[str], log: Path, **kwargs) -> None:
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"opensplat_bench: {' '.join(cmd[:3])} ... failed (exit {done.returncode}); log {log}:\n{tail}")


def _fake_cuda_root(root: Path) -> Path:
    """A CUDA root of symlinks into the pip wheel's own CUDA libraries and headers (see the module
    docstring); nothing of it is compiled against: OpenSplat is built for the CPU."""
    import torch

    wheel = Path(torch.__file__).parent.parent / "nvidia"
    cuda = next((p for p in sorted(wheel.glob("cu*")) if (p / "include").is_dir()), None)
    if cuda is None:
        sys.exit(f"opensplat_bench: no CUDA libraries in {wheel} (a CPU-only torch needs none of this: "
                 "remove the CUDA root arguments)")
    (root / "lib64").mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "include").exists():
        (root / "include").symlink_to(cuda / "include")
    for lib in (cuda / "lib").glob("*.so.*"):
        for name in (lib.name, lib.name.split(".so.")[0] + ".so"):
            if not (root / "lib64" / name).exists():
                (root / "lib64" / name).symlink_to(lib)
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if Path(nvcc).exists() and not (root / "bin" / "nvcc").exists():
        (root / "bin" / "nvcc").symlink_to(nvcc)
    return root


def build_opensplat(source: Path | None, build_dir: Path) -> Path:
    """Configure and build OpenSplat's `opensplat` for the CPU; returns the executable."""
    import torch

    exe = build_dir / "build" / "opensplat"
    if exe.is_file():
        return exe
    missing = [tool for tool in ("cmake", "make", "c++") if shutil.which(tool) is None]
    if missing or not Path("/usr/include/opencv4").is_dir():
        sys.exit(f"opensplat_bench: missing {missing or 'OpenCV headers'}; on Debian: apt-get install {DEBIAN_PACKAGES}")
    src = build_dir / "src"
    if not src.is_dir():
        if source is not None:
            shutil.copytree(source, src, ignore=shutil.ignore_patterns(".git", "build"))
        else:
            _run(["git", "clone", "--depth", "1", OPENSPLAT_GIT, str(src)], build_dir / "clone.log")
    cmakelists = src / "CMakeLists.txt"
    cmakelists.write_text(cmakelists.read_text().replace("CXX_STANDARD 17", "CXX_STANDARD 20"))
    cuda = _fake_cuda_root(build_dir / "cuda")
    (build_dir / "build").mkdir(exist_ok=True)
    print(f"building OpenSplat (CPU) in {build_dir / 'build'} ...", flush=True)
    _run(["cmake", str(src), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", "-DGPU_RUNTIME=CPU",
          "-DCMAKE_BUILD_TYPE=Release", "-DFETCHCONTENT_TRY_FIND_PACKAGE_MODE=ALWAYS", f"-DCUDA_TOOLKIT_ROOT_DIR={cuda}",
          f"-DCUDAToolkit_ROOT={cuda}", "-DTORCH_CUDA_ARCH_LIST=8.0"], build_dir / "cmake.log", cwd=build_dir / "build")
    _run(["make", f"-j{os.cpu_count() or 2}", "opensplat"], build_dir / "make.log", cwd=build_dir / "build")
    return exe


def opensplat_ply(model: Path, out: Path) -> Path:
    """Our trained .ply in the layout OpenSplat resumes from: the same 3DGS columns in the same
    order, without the feature columns, with OpenSplat's iteration comment."""
    vertices = PlyData.read(str(model))["vertex"].data
    keep = [name for name in vertices.dtype.names if not name.startswith("feat_")]
    data = np.empty(len(vertices), dtype=[(name, "f4") for name in keep])
    for name in keep:
        data[name] = vertices[name]
    PlyData([PlyElement.describe(data, "vertex")], comments=["Generated by opensplat at iteration 0"]).write(str(out))
    return out


def steady_seconds(stamps: list[tuple[int, float]]) -> tuple[float, float]:
    """(mean, median) seconds per iteration over (step, time) stamps after the warm-up steps."""
    stamps = [s for s in stamps if s[0] > WARMUP_STEPS]
    steps = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(stamps, stamps[1:])]
    return (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0]), statistics.median(steps)


def train_cgc(cfg, scene, store, model: Path, iterations: int, work: Path) -> tuple[float, float, int]:
    from cgc_core.config import evolve
    from cgc_core.train import train

    train_cfg = evolve(cfg.train, init_ply=str(model), iterations=iterations, checkpoint_every=0, sh_degree_every=1,
                       contrastive={"enabled": False, "features_grad_between": "none"}, regularizer={"enabled": False},
                       health={"every": 0}, densify={"strategy": "none"})  # no feature ever moves: Adam skips them
    stamps: list[tuple[int, float]] = []
    result = train(scene, store, work, train_cfg, progress=lambda done, total, _: stamps.append((done, time.perf_counter())))
    return *steady_seconds(stamps), int(result.params["means"].shape[0])


def train_opensplat(exe: Path, calibration: Path, images: Path, model: Path, iterations: int, work: Path,
                    threads: int) -> tuple[float, float]:
    cmd = [str(exe), str(calibration), "--colmap-image-path", str(images), "--cpu", "--resume", str(model),
           "--keep-crs", "-n", str(iterations), "--num-downscales", "0", "--sh-degree-interval", "1",
           "--warmup-length", str(10 * iterations), "--refine-every", str(10 * iterations), "-o", str(work / "out.ply")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    stamps: list[tuple[int, float]] = []
    log = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work) as proc:
        for line in proc.stdout:
            log.append(line)
            if line.startswith("Step "):
                stamps.append((int(line.split()[1].rstrip(":")), time.perf_counter()))
    if proc.returncode != 0 or len(stamps) < WARMUP_STEPS + 2:
        sys.exit(f"opensplat_bench: OpenSplat failed (exit {proc.returncode}):\n{''.join(log[-30:])}")
    print("".join(line for line in log if not line.startswith("Step "))[-600:].rstrip())
    return steady_seconds(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--opensplat-src", type=Path, default=None, help="an OpenSplat checkout (default: git clone)")
    parser.add_argument("--build-dir", type=Path, default=None, help="reuse this OpenSplat build folder")
    parser.add_argument("--data-dir", default=None, help="reuse a cgc data folder (the demo's stages are cached)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from cgc_core.config import load_config
    from cgc_core.pipeline import run_scene_stage

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exe = build_opensplat(args.opensplat_src, args.build_dir or tmp / "opensplat")
        cfg = load_config(None, [f"data_dir={args.data_dir or tmp / 'data'}"])
        for stage in ("scene", "calibrate", "masks", "train"):  # cached stages; the demo model trains once
            scene, result = run_scene_stage(cfg, "synthetic", stage)
            if stage == "calibrate":
                calibration = result.stage_dir
            if stage == "masks":
                store = result.outputs.store
        model = result.outputs.ply
        (tmp / "cgc").mkdir()
        (tmp / "opensplat_run").mkdir()
        cgc_mean, cgc_median, n = train_cgc(cfg, scene, store, model, args.iterations, tmp / "cgc")
        os_mean, os_median = train_opensplat(exe, calibration, scene.image_dir, opensplat_ply(model, tmp / "model.ply"),
                                             args.iterations, tmp / "opensplat_run", args.threads)
    first = scene.cameras[scene.train_names[0]]
    print(f"demo scene, {first.width}x{first.height}, {n} Gaussians, {args.iterations} iterations each, colour only, "
          f"{args.threads} threads, steady state after {WARMUP_STEPS} iterations")
    print(f"  cgc        {cgc_mean:.4f} s/iter (median step {cgc_median:.4f} s)  {1 / cgc_mean:.2f} it/s")
    print(f"  OpenSplat  {os_mean:.4f} s/iter (median step {os_median:.4f} s)  {1 / os_mean:.2f} it/s")
    print(f"RESULT cgc_it_per_s={1 / cgc_mean:.3f} opensplat_it_per_s={1 / os_mean:.3f} ratio={os_mean / cgc_mean:.2f}")


if __name__ == "__main__":
    main()
