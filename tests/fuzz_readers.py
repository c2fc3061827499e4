"""Property-based fuzzing of every reader of a file a user hands over.

Each reader starts from a small valid input in its real layout (a COLMAP model in binary and in
text, a 3DGS `.ply`, a point-cloud `.ply`, a nerfstudio `transforms.json` dataset, LERF-Mask and
3D-OVS folders, a mask store's Parquet file, an image, a video, a YAML config). Hypothesis then
mutates one of its files per case: bytes flipped, the file cut short, bytes inserted, a header
count or size replaced by a lie (0, -1, 2^31, 2^63 ...), a token of a text file replaced by NaN,
inf, a huge or negative number, a wrong JSON/YAML type, unicode, a path that leaves the folder or a
NUL; a file renamed to an odd name, deleted or emptied. The only outcomes allowed are a read whose
result is sound (finite cameras with positive focal lengths, finite Gaussians) or the reader's own
error class with a message that names a path inside the input. Anything else, a crash of the
process or a case slower than `CASE_LIMIT_S`, is a failure.

    python -m tests.fuzz_readers --reader colmap-bin --cases 200 --seed 0 --out stats.json

runs one reader in this process (the parent, `run_isolated`, restarts it after a crash and keeps
the case that crashed). `tests/test_fuzz.py` runs every reader for a few seconds; the benchmark
`benchmarks/fuzz_bench.py` runs thousands of cases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASE_LIMIT_S = 10.0
"""A case slower than this is a failure (a hang, or work out of proportion to a tiny input)."""
MIN_CASES = 20
"""A time budget still runs at least this many cases (Hypothesis's start alone can take seconds on a
loaded machine: a full `make test` once ran none in 3 s)."""
LIES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, 10**9, 65535)
"""Integers a lying header may carry (written as little-endian 4 or 8 bytes)."""
TOKENS = ("nan", "NaN", "inf", "-inf", "1e308", "-1e308", "-1", "0", "99999999999999999999", "1e-320", "", "[]",
          "{}", "null", "true", '"text"', "名前", "../../../../etc/passwd", "/absolute/file.png", "a\x00b", "x" * 300,
          "\u202egnp.exe", "-", "0x10", "1,5")
"""Replacements for one token of a text file: non-finite and huge numbers, wrong types, unicode,
paths that leave the folder, a NUL."""
ODD_NAMES = ("名前.png", "with space.png", "-dash.png", "..png", "x" * 200 + ".png", "new\nline.png", "UPPER.PNG")


# --------------------------------------------------------------------------------------- inputs

def _images(folder: Path, names: list[str], size=(16, 12)) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


def _cameras(n: int = 3, size=(16, 12)):
    from cgc_core.scene.model import Camera

    cams = []
    for i in range(n):
        w2c = np.eye(4)
        w2c[:3, 3] = [0.1 * i, 0.0, 3.0]
        K = np.array([[20.0, 0, size[0] / 2], [0, 20.0, size[1] / 2], [0, 0, 1]])
        cams.append(Camera(K, w2c, *size, f"{i:02d}.png"))
    return cams


def _colmap(folder: Path, text: bool) -> Path:
    from cgc_core.scene.colmap import write_model

    write_model(_cameras(), folder / "sparse" / "0", text=text)
    return folder / "sparse" / "0"


def _read_colmap(model_dir: Path):
    from cgc_core.scene.colmap import cameras_from_model, points_from_model, read_model

    rec = read_model(model_dir)
    return cameras_from_model(rec, model_dir), points_from_model(rec)


def _gaussian_ply(folder: Path) -> Path:
    import torch

    from cgc_core.gaussians import init_params, save_ply

    rng = np.random.default_rng(0)
    params = init_params(rng.normal(size=(12, 3)), rng.uniform(size=(12, 3)), sh_degree=1)
    folder.mkdir(parents=True)
    return save_ply({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in params.items()},
                    folder / "model.ply")


def _read_gaussians(path: Path):
    from cgc_core.gaussians import load_ply

    return load_ply(path)


def _point_ply(folder: Path) -> Path:
    from plyfile import PlyData, PlyElement

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vertex = np.array([(*p, 10, 20, 30) for p in rng.normal(size=(10, 3))],
                      dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(folder / "points.ply"))
    return folder / "points.ply"


def _read_points(path: Path):
    from cgc_core.scene.nerfstudio import _points

    return _points(path)


def _nerfstudio(folder: Path) -> Path:
    names = [c.image_name for c in _cameras()]
    _images(folder / "images", names)
    meta = {"camera_model": "OPENCV", "fl_x": 20.0, "fl_y": 20.0, "cx": 8.0, "cy": 6.0, "w": 16, "h": 12,
            "k1": 0.01, "frames": [], "ply_file_path": "points.ply"}
    for i, name in enumerate(names):
        c2w = np.eye(4)
        c2w[:3, 3] = [0.1 * i, 0.0, 3.0]
        meta["frames"].append({"file_path": f"./images/{name}", "transform_matrix": c2w.tolist()})
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    _point_ply(folder)
    return folder


def _lerf_mask(folder: Path) -> Path:
    from PIL import Image

    cams = _cameras(4)
    names = [c.image_name for c in cams]
    _images(folder / "images", names)
    _images(folder / "images_train", names[:3])
    from cgc_core.scene.colmap import write_model

    write_model(cams, folder / "sparse" / "0")
    (folder / "test_mask" / "0").mkdir(parents=True)
    mask = np.zeros((12, 16), np.uint8)
    mask[3:8, 4:10] = 255
    Image.fromarray(mask).save(folder / "test_mask" / "0" / "red mug.png")
    return folder


def _ovs3d(folder: Path) -> Path:
    from PIL import Image

    names = [f"{i:02d}.jpg" for i in range(3)]
    _images(folder / "images", names)
    pose = np.zeros((3, 5))
    pose[:, 0], pose[:, 1], pose[:, 2], pose[:, 3], pose[:, 4] = [0, -1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 5], [12, 16, 20]
    np.save(folder / "poses_bounds.npy", np.stack([np.concatenate([pose.ravel(), [0.1, 10.0]])] * 3))
    seg = folder / "segmentations"
    (seg / "01").mkdir(parents=True)
    (seg / "classes.txt").write_text("banana\nred bag\n")
    Image.fromarray(np.full((12, 16), 255, np.uint8)).save(seg / "01" / "banana.png")
    return folder


def _read_dataset(reader: str) -> Callable[[Path], Any]:
    def read(root: Path):
        from cgc_core.scene import lerf_mask, nerfstudio, ovs3d

        scene = {"nerfstudio": nerfstudio.read_nerfstudio_scene, "lerf-mask": lerf_mask.read_lerf_mask_scene,
                 "ovs3d": ovs3d.read_ovs3d_scene}[reader](root)
        scene.check_images()
        for view, masks in scene.gt_masks.items():
            for prompt in masks:
                scene.load_gt_mask(view, prompt)
        return scene

    return read


def _mask_store(folder: Path) -> Path:
    from cgc_core.masks.store import MaskStore, records_from_masks

    masks = [np.zeros((12, 16), bool) for _ in range(3)]
    masks[0][2:6, 2:8] = masks[1][5:11, 4:15] = masks[2][:, :8] = True
    store = MaskStore(folder / "store")
    store.write_image("00.png", 12, 16, records_from_masks("00.png", masks, "classical", "1", "abc"))
    return store.path("00.png")


def _read_mask_store(path: Path):
    from cgc_core.masks.store import MaskStore

    return MaskStore(path.parent).read_label_maps("00.png", 2)


def _image(folder: Path) -> Path:
    _images(folder, ["photo.png"])
    return folder / "photo.png"


def _read_image(path: Path):
    from cgc_core.scene.model import _read_image as read

    return read(path)


def _video(folder: Path) -> Path:
    import av

    folder.mkdir(parents=True)
    path = folder / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _read_video(path: Path):
    from cgc_core.scene.video import _decode

    return _decode(path, 3, 64)


def _config(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "cgc.yaml").write_text("data_dir: data\ntrain:\n  iterations: 100\n  lr:\n    means: 1.6e-4\n"
                                     "  densify:\n    refine_every: 100\nmasks:\n  generator: classical\n"
                                     "evaluate:\n  protocol: [click-oracle]\n")
    return folder / "cgc.yaml"


def _read_config(path: Path):
    from cgc_core.config import load_config

    return load_config(path)


# ------------------------------------------------------------------------------- soundness

def _finite_cameras(cameras) -> str | None:
    for cam in (cameras.values() if isinstance(cameras, dict) else cameras):
        if not (np.isfinite(cam.K).all() and np.isfinite(cam.world_to_camera).all()):
            return f"camera {cam.image_name}: non-finite intrinsics or pose"
        if not (cam.K[0, 0] > 0 and cam.K[1, 1] > 0 and cam.width > 0 and cam.height > 0):
            return f"camera {cam.image_name}: focal length or size not positive"
    return None


def _sound_scene(scene) -> str | None:
    return _finite_cameras(scene.cameras)


def _sound_colmap(result) -> str | None:
    cameras, (points, colors) = result
    if not np.isfinite(points).all():
        return "non-finite 3D points"
    return _finite_cameras(cameras)


def _sound_gaussians(params) -> str | None:
    for name, value in params.items():
        if not bool(np.isfinite(np.asarray(value.detach() if hasattr(value, "detach") else value)).all()):
            return f"non-finite {name}"
    return None


def _sound_config(config) -> str | None:
    from cgc_core.config import to_dict

    def walk(value, where):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where} = {value}"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        return next((found for key, item in items if (found := walk(item, f"{where}.{key}"))), None)

    found = walk(to_dict(config), "config")
    return f"accepted a non-finite value: {found}" if found else None


def _sound_points(result) -> str | None:
    points, _ = result
    return None if np.isfinite(points).all() else "non-finite points"


@dataclass(frozen=True)
class Reader:
    """One reader under fuzzing.

    Attributes:
        name: What the command line and the figures call it.
        make: Writes a small valid input under the given folder; returns what the reader is handed.
        read: Reads that input completely (a folder reader also opens its images and masks).
        errors: The reader's own error classes (a named error).
        sound: What a successful read must satisfy (None, or a sentence saying what is wrong).
    """

    name: str
    make: Callable[[Path], Path]
    read: Callable[[Path], Any]
    errors: tuple[type[BaseException], ...]
    sound: Callable[[Any], str | None] = lambda result: None


def readers() -> dict[str, Reader]:
    from cgc_core.config import ConfigError
    from cgc_core.gaussians import GaussianFileError
    from cgc_core.masks.store import MaskStoreError
    from cgc_core.scene.model import SceneError

    found = [
        Reader("colmap-bin", lambda d: _colmap(d, text=False), _read_colmap, (SceneError,), _sound_colmap),
        Reader("colmap-txt", lambda d: _colmap(d, text=True), _read_colmap, (SceneError,), _sound_colmap),
        Reader("ply-3dgs", _gaussian_ply, _read_gaussians, (GaussianFileError,), _sound_gaussians),
        Reader("ply-points", _point_ply, _read_points, (SceneError,), _sound_points),
        Reader("nerfstudio", _nerfstudio, _read_dataset("nerfstudio"), (SceneError,), _sound_scene),
        Reader("lerf-mask", _lerf_mask, _read_dataset("lerf-mask"), (SceneError,), _sound_scene),
        Reader("ovs3d", _ovs3d, _read_dataset("ovs3d"), (SceneError,), _sound_scene),
        Reader("mask-store", _mask_store, _read_mask_store, (MaskStoreError,)),
        Reader("image", _image, _read_image, (SceneError,)),
        Reader("video", _video, _read_video, (SceneError,)),
        Reader("config", _config, _read_config, (ConfigError,), _sound_config),
    ]
    return {reader.name: reader for reader in found}


# -------------------------------------------------------------------------------- mutations

def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def mutate(root: Path, target: Path, draw) -> str:
    """Apply one drawn mutation to `target` (a file under `root`); returns what was done."""
    from hypothesis import strategies as st

    data = target.read_bytes()
    kinds = ["flip", "truncate", "insert", "lie", "empty", "delete", "rename", "duplicate"]
    if _is_text(data):
        kinds += ["token", "token", "token"]
    kind = draw(st.sampled_from(kinds))
    n = len(data)
    if kind == "flip" and n:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
        data = bytes(out)
    elif kind == "truncate":
        data = data[:draw(st.integers(0, max(n - 1, 0)))]
    elif kind == "insert":
        at = draw(st.integers(0, n))
        data = data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    elif kind == "lie" and n >= 4:
        width = draw(st.sampled_from([4, 8])) if n >= 8 else 4
        at = draw(st.integers(0, min(n, 96) - width))
        value = draw(st.sampled_from(LIES)) % (1 << (8 * width))
        data = data[:at] + value.to_bytes(width, "little") + data[at + width:]
    elif kind == "duplicate" and n:
        at, length = draw(st.integers(0, n - 1)), draw(st.integers(1, 256))
        data = data[:at] + data[at:at + length] * draw(st.integers(2, 50)) + data[at:]
    elif kind == "token":
        text = data.decode("utf-8")
        spans = [(m.start(), m.end()) for m in re.finditer(r"[^\s,:\[\]{}\"]+", text)]
        if spans:
            start, end = spans[draw(st.integers(0, len(spans) - 1))]
            text = text[:start] + draw(st.sampled_from(TOKENS)) + text[end:]
        data = text.encode("utf-8", "surrogatepass")
    elif kind == "empty":
        data = b""
    elif kind == "delete":
        target.unlink()
        return f"delete {target.relative_to(root)}"
    elif kind == "rename":
        name = draw(st.sampled_from(ODD_NAMES))
        try:
            target.rename(target.with_name(name))
        except OSError:  # a name this file system refuses: nothing renamed
            return f"rename {target.relative_to(root)} refused"
        return f"rename {target.relative_to(root)} -> {name!r}"
    target.write_bytes(data)
    return f"{kind} {target.relative_to(root)}"


# ------------------------------------------------------------------------------------ a run

def fuzz_reader(reader: Reader, cases: int, seconds: float | None, seed: int, work: Path,
                crash_file: Path | None = None) -> dict:
    """Run up to `cases` mutated inputs (or until `seconds` pass) through one reader in this process.

    Returns {"reader", "cases", "read_ok", "named_errors", "unnamed_errors": [descriptions],
    "unsound_reads": [...], "slow_cases": [...], "max_case_s", "max_rss_mb"}. With `crash_file`,
    every case's input is copied there (a folder) before the reader runs, so a case that kills the
    process can be kept by the parent.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    pristine = work / "pristine"
    given_path = reader.make(pristine)
    relative_input = given_path.relative_to(pristine)
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*") if p.is_file())
    stats = {"reader": reader.name, "cases": 0, "read_ok": 0, "named_errors": 0, "unnamed_errors": [],
             "unsound_reads": [], "slow_cases": [], "max_case_s": 0.0}
    stop = time.monotonic() + seconds if seconds else math.inf

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def one_case(data):
        case = work / "case"
        if case.exists():
            shutil.rmtree(case)
        shutil.copytree(pristine, case)
        target = case / data.draw(st.sampled_from(files))
        what = mutate(case, target, data.draw)
        if stats["cases"] >= MIN_CASES and time.monotonic() > stop:  # after the draws: every case draws alike
            return
        if crash_file is not None:
            if crash_file.exists():
                shutil.rmtree(crash_file)
            shutil.copytree(case, crash_file)
            (crash_file.parent / f"{crash_file.name}.json").write_text(json.dumps({"reader": reader.name, "what": what}))
        stats["cases"] += 1
        began = time.perf_counter()
        try:
            result = reader.read(case / relative_input)
        except reader.errors as exc:
            if str(case) in str(exc):
                stats["named_errors"] += 1
            else:
                stats["unnamed_errors"].append(f"{what}: {type(exc).__name__} without the path: {exc}"[:400])
        except Exception as exc:  # noqa: BLE001 - any other exception is what this counts
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(traceback.extract_tb(exc.__traceback__))
                          if "cgc_core" in f.filename), "?")
            stats["unnamed_errors"].append(f"{what}: {type(exc).__name__} (from {where}): {exc}"[:400])
        else:
            problem = reader.sound(result)
            if problem:
                stats["unsound_reads"].append(f"{what}: {problem}"[:400])
            else:
                stats["read_ok"] += 1
        elapsed = time.perf_counter() - began
        stats["max_case_s"] = max(stats["max_case_s"], elapsed)
        if elapsed > CASE_LIMIT_S:
            stats["slow_cases"].append(f"{what}: {elapsed:.1f} s")

    one_case()
    stats["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def run_isolated(reader: str, cases: int, seconds: float | None, seed: int, work: Path,
                 timeout: float = 900.0, extra_env: dict[str, str] | None = None) -> dict:
    """`fuzz_reader` in a child process, restarted after a crash with the cases left (another
    seed); the input of each crash is kept under `work/crashes/`. Adds "crashes": [descriptions].
    `extra_env` goes to the child (`CGC_FUZZ_ABORT=1` makes its reader abort: the tests' crash)."""
    total: dict = {"reader": reader, "cases": 0, "read_ok": 0, "named_errors": 0, "unnamed_errors": [],
                   "unsound_reads": [], "slow_cases": [], "max_case_s": 0.0, "max_rss_mb": 0.0, "crashes": []}
    attempt, began = 0, time.monotonic()
    while total["cases"] < cases and attempt < 20:
        left_s = None if seconds is None else seconds - (time.monotonic() - began)
        if left_s is not None and left_s <= 0:
            break
        run_dir = Path(tempfile.mkdtemp(prefix=f"{reader}-", dir=work))
        out = run_dir / "stats.json"
        command = [sys.executable, "-m", "tests.fuzz_readers", "--reader", reader, "--cases", str(cases - total["cases"]),
                   "--seed", str(seed + 7919 * attempt), "--work", str(run_dir), "--out", str(out), "--keep-case"]
        if left_s is not None:
            command += ["--seconds", f"{left_s:.1f}"]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(extra_env or {})})
            failed = None if done.returncode == 0 and out.is_file() else f"exit {done.returncode}: {done.stderr[-600:]}"
        except subprocess.TimeoutExpired:
            failed = f"no answer within {timeout:.0f} s"
        if failed is None:
            stats = json.loads(out.read_text())
            for key in ("cases", "read_ok", "named_errors"):
                total[key] += stats[key]
            for key in ("unnamed_errors", "unsound_reads", "slow_cases"):
                total[key] += stats[key]
            total["max_case_s"] = max(total["max_case_s"], stats["max_case_s"])
            total["max_rss_mb"] = max(total["max_rss_mb"], stats["max_rss_mb"])
            break
        kept = work / "crashes" / f"{reader}-{seed}-{attempt}"
        if (run_dir / "current").exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(run_dir / "current", kept)
            shutil.copy(run_dir / "current.json", kept.with_suffix(".json"))
        described = json.loads((run_dir / "current.json").read_text())["what"] if (run_dir / "current.json").exists() else "?"
        total["crashes"].append(f"{described}: {failed} (input kept in {kept})")
        total["cases"] += 1
        attempt += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reader", required=True, choices=sorted(readers()))
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep-case", action="store_true", help="copy each case's input to WORK/current first")
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore")  # a reader's warnings on broken input are not failures
    reader = readers()[args.reader]
    if os.environ.get("CGC_FUZZ_ABORT") == "1":  # the tests' stand-in for a reader that crashes
        reader = replace(reader, read=lambda path: os.abort())
    stats = fuzz_reader(reader, args.cases, args.seconds, args.seed, args.work,
                        args.work / "current" if args.keep_case else None)
    args.out.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
