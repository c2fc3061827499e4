"""Content-addressed, crash-safe stage outputs: `data/<scene>/<stage>/` plus a manifest.

A stage's key is the hash of (stage name, the content hashes of its real input files, the hash of
the config section it reads, the package version). `run_stage` reuses an existing output folder
only when its manifest carries the same key *and* every output file still has the checksum the
manifest recorded; otherwise it recomputes into a temporary folder beside the target and renames
it into place when complete, so a killed run never leaves a folder that looks finished.

Orchestrators (the Prefect tasks in `tasks/`) call `run_stage`; the library itself never imports one.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import section_hash

MANIFEST = "manifest.json"
_CACHED_ONLY = contextvars.ContextVar("cgc_cached_only", default=False)


class StageMissingError(RuntimeError):
    """A stage an operation needs has no finished output for the current inputs and config."""


@contextlib.contextmanager
def cached_only():
    """Within this block `run_stage` never computes: a stage without a finished output for its
    current key raises `StageMissingError` (single-stage reruns: upstream stages must exist)."""
    token = _CACHED_ONLY.set(True)
    try:
        yield
    finally:
        _CACHED_ONLY.reset(token)


def package_version() -> str:
    """Installed version of cgc (part of every cache key: new code recomputes)."""
    try:
        return metadata.version("cgc")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> dict[str, str]:
    """Content hash per file, keyed by the path relative to `root` (or the file name)."""
    out = {}
    for path in paths:
        path = Path(path)
        key = path.relative_to(root).as_posix() if root is not None else path.name
        out[key] = hash_file(path)
    return out


def hash_tree(root: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """Content hash of every file under a folder, keyed by relative path (sorted)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in exclude)
    return hash_files(files, root)


def digest(mapping: dict[str, Any]) -> str:
    """Stable short digest of a JSON-able mapping."""
    return hashlib.sha256(json.dumps(mapping, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Manifest:
    """What a finished stage folder holds and what it was computed from."""

    stage: str
    key: str
    inputs: dict[str, str]
    config_hash: str
    version: str
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, stage_dir: Path) -> "Manifest":
        return cls(**json.loads((Path(stage_dir) / MANIFEST).read_text()))

    def write(self, stage_dir: Path) -> None:
        """Write atomically (temp file, then rename)."""
        path = Path(stage_dir) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


@dataclass
class StageResult:
    """The outcome of `run_stage`: the manifest, the folder, and whether the cache served it."""

    manifest: Manifest
    stage_dir: Path
    cached: bool
    reason: str
    """Why the stage was (re)computed or reused, in words for logs."""


def stage_key(stage: str, inputs: dict[str, str], config_hash: str, version: str) -> str:
    return digest({"stage": stage, "inputs": inputs, "config": config_hash, "version": version})


def check_stage_dir(stage_dir: Path, key: str) -> str | None:
    """None when `stage_dir` is a finished output for `key`, else the reason it is not."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / MANIFEST).is_file():
        return "no finished output" if not stage_dir.exists() else "output folder has no manifest (unfinished)"
    try:
        manifest = Manifest.read(stage_dir)
    except (OSError, ValueError, TypeError) as exc:
        return f"manifest unreadable ({exc})"
    if manifest.key != key:
        return "inputs, config or version changed"
    for rel, expected in manifest.outputs.items():
        path = stage_dir / rel
        if not path.is_file():
            return f"output {rel} is missing"
        if hash_file(path) != expected:
            return f"output {rel} does not match its checksum"
    return None


def run_stage(
    stage_dir: str | Path,
    stage: str,
    inputs: dict[str, str],
    config_section: Any,
    compute: Callable[[Path], dict[str, Any] | None],
    force: bool = False,
    resumable: bool = False,
) -> StageResult:
    """Reuse or compute one stage's output folder.

    Args:
        stage_dir: Final output folder, e.g. `data/<scene>/calibrate`.
        stage: Stage name (part of the key).
        inputs: Content hashes of the stage's real inputs (name -> hash).
        config_section: The config dataclass section the stage reads (hashed into the key).
        compute: Called with an empty temporary folder to fill; may return a JSON-able dict
            stored as the manifest's `info`.
        force: Recompute even when a valid output exists.
        resumable: Work in a folder named after the key (`.<name>.partial-<key>`) that survives a
            failure or a kill, so that `compute` can skip what a previous attempt finished; it
            becomes the output folder only when `compute` returns. Without it, each attempt
            starts from an empty temporary folder.

    Returns:
        A `StageResult`; `cached` says whether the existing folder was reused.
    """
    stage_dir = Path(stage_dir)
    config_hash = section_hash(config_section)
    version = package_version()
    key = stage_key(stage, inputs, config_hash, version)
    problem = "recompute forced" if force else check_stage_dir(stage_dir, key)
    if problem is None:
        return StageResult(Manifest.read(stage_dir), stage_dir, cached=True, reason="cached: inputs, config and outputs unchanged")
    if _CACHED_ONLY.get():
        raise StageMissingError(f"{stage_dir}: the {stage} stage has no finished output for the current inputs "
                                f"and config ({problem}); run the {stage} stage first")

    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    if resumable:
        tmp = stage_dir.parent / f".{stage_dir.name}.partial-{key}"
        if force and tmp.exists():
            shutil.rmtree(tmp)
        for stale in stage_dir.parent.glob(f".{stage_dir.name}.partial-*"):
            if stale != tmp:  # left by a run with other inputs or config: never resumable now
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(exist_ok=True)
        (tmp / MANIFEST).unlink(missing_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.tmp-", dir=stage_dir.parent))
    try:
        start = time.perf_counter()
        info = compute(tmp) or {}
        elapsed = time.perf_counter() - start
        manifest = Manifest(
            stage=stage, key=key, inputs=inputs, config_hash=config_hash, version=version,
            outputs=hash_tree(tmp), timings={"compute_s": round(elapsed, 3)},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), info=info,
        )
        manifest.write(tmp)
        # Move the old folder aside first, then rename the new one in: at every instant the target
        # is either absent, the old complete output, or the new complete output.
        if stage_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.old-", dir=stage_dir.parent))
            os.replace(stage_dir, trash / "old")
            os.replace(tmp, stage_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, stage_dir)
    except BaseException:
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StageResult(manifest, stage_dir, cached=False, reason=problem)
