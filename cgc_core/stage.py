"""Content-addressed, crash-safe stage outputs: `data/<scene>/<stage>/` plus a manifest.

A stage's key is the hash of (stage name, the content hashes of its real input files, the hash of
the config section it reads, the fingerprint of the code it runs (`fingerprint.code_fingerprint`:
the `cgc_core` modules it imports, transitively, and the C++ sources), the package version). The
reason a stage recomputes names what changed: which inputs, the config, or which source files. `run_stage` reuses an existing output folder
only when its manifest carries the same key *and* every output file still has the checksum the
manifest recorded; otherwise it recomputes into a temporary folder beside the target and renames
it into place when complete, so a killed run never leaves a folder that looks finished.

Two runs of the same stage (two deployment runs, a flow run and `cgc stage`) serialise on a lock
file beside the folder (`filelock`, an OS `flock`): the second waits, then reuses what the first
wrote. The kernel drops the lock of a process that dies, so a killed run never blocks the next.
A full disk while computing removes the work folder, keeps the previous output, and raises
`StageWriteError` naming the stage and its folder.

Orchestrators (the Prefect tasks in `tasks/`) call `run_stage`; the library itself never imports one.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from .config import section_hash
from .fingerprint import changed_files

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
"""A stage's own summary of its figures (the cluster and evaluate stages write one)."""
LOCK_WAIT_LOG_S = 30.0
"""While waiting for another run's lock, log that we wait this often."""
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
logger = logging.getLogger("cgc")
_CACHED_ONLY = contextvars.ContextVar("cgc_cached_only", default=False)


class StageMissingError(RuntimeError):
    """A stage an operation needs has no finished output for the current inputs and config."""


class StageWriteError(OSError):
    """The disk filled up (or a quota ran out) while a stage wrote its output; `errno` is kept."""


class StageLockTimeout(TimeoutError):
    """Another run held a stage's lock for longer than the caller was willing to wait."""


def lock_path(stage_dir: str | Path) -> Path:
    """The lock file that serialises runs of one stage folder: `.<name>.lock` beside it."""
    stage_dir = Path(stage_dir)
    return stage_dir.parent / f".{stage_dir.name}.lock"


@contextlib.contextmanager
def stage_lock(stage_dir: str | Path, timeout: float | None = None):
    """Hold the stage folder's lock; waits for another holder (forever when `timeout` is None).

    The lock is an advisory `flock` on `lock_path(stage_dir)`: the kernel releases it when its
    holder exits or is killed, so a stale lock file never blocks. Raises `StageLockTimeout`
    naming the folder when `timeout` seconds pass first.
    """
    path = lock_path(stage_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("%s: another run is computing this stage; waiting for it (lock %s)", stage_dir, path)
        began = time.monotonic()
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - began)
            if left is not None and left <= 0:
                raise StageLockTimeout(f"{stage_dir}: another run held {path} for more than {timeout:g} s; "
                                       "gave up waiting") from None
            try:
                lock.acquire(timeout=LOCK_WAIT_LOG_S if left is None else min(LOCK_WAIT_LOG_S, left))
                break
            except Timeout:
                logger.info("%s: still waiting for the other run (%.0f s)", stage_dir, time.monotonic() - began)
    try:
        yield
    finally:
        lock.release()


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that says the device or the quota is full (ENOSPC, EDQUOT), also when a
    library re-raised it with the message but not the errno (pyarrow, torch)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
    """Installed version of cgc (part of every cache key, beside the code fingerprint)."""
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


def hash_tree(root: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """Content hash of every file under a folder, keyed by relative path (sorted)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hash_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in exclude}


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A scene or prompt name made safe as one path component (no separators, no '..')."""
    cleaned = _SAFE.sub("_", name.strip()).strip("._")
    if not cleaned:
        raise ValueError(f"name {name!r} has no usable characters for a folder name")
    return cleaned


def digest(mapping: dict[str, Any]) -> str:
    """Stable short digest of a JSON-able mapping (`config.section_hash`, 20 hex digits)."""
    return section_hash(mapping, 20)


@dataclass
class Manifest:
    """What a finished stage folder holds and what it was computed from."""

    stage: str
    key: str
    inputs: dict[str, str]
    config_hash: str
    version: str
    outputs: dict[str, str] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)
    """The fingerprint of the code that computed it (`fingerprint.code_fingerprint`)."""
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


@dataclass(frozen=True)
class StageOutputs:
    """A finished stage's files. Each stage's module subclasses it with the files it writes
    (`train.TrainOutputs`, `cluster.ClusterOutputs`, `evaluate.EvaluateOutputs`), so that no other
    module spells a stage's file names."""

    folder: Path

    @property
    def summary(self) -> dict[str, Any]:
        """The stage's summary.json ({} for a stage that writes none)."""
        return json.loads((self.folder / SUMMARY).read_text()) if (self.folder / SUMMARY).is_file() else {}


@dataclass
class StageResult:
    """The outcome of `run_stage`: the manifest, the folder, whether the cache served it, and the
    typed outputs that later stages, the report and the tasks read."""

    manifest: Manifest
    stage_dir: Path
    cached: bool
    reason: str
    """Why the stage was (re)computed or reused, in words for logs."""
    outputs: StageOutputs | None = None
    """The stage's files (`as_outputs` sets the stage's own kind); a plain `StageOutputs` by default."""

    def __post_init__(self) -> None:
        if self.outputs is None:
            self.outputs = StageOutputs(self.stage_dir)

    def as_outputs(self, kind: type[StageOutputs]) -> "StageResult":
        """This result with its outputs read as `kind` (the stage's own outputs class)."""
        return replace(self, outputs=kind(self.stage_dir))


def stage_key(stage: str, inputs: dict[str, str], config_hash: str, version: str,
              code: dict[str, str] | None = None) -> str:
    return digest({"stage": stage, "inputs": inputs, "config": config_hash, "version": version, "code": code or {}})


def why_key_changed(old: Manifest, inputs: dict[str, str], config_hash: str, version: str,
                    code: dict[str, str]) -> str:
    """What differs between a stage's manifest and the current inputs, config and code, in words."""
    def listed(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    reasons = []
    if changed_inputs := changed_files(old.inputs, inputs):
        reasons.append(f"inputs changed ({listed(changed_inputs)})")
    if old.config_hash != config_hash:
        reasons.append("config changed")
    if changed_code := changed_files(old.code, code):
        reasons.append(f"code changed ({listed(changed_code)})")
    if old.version != version:
        reasons.append(f"package version changed ({old.version} -> {version})")
    return "; ".join(reasons) or "stage name changed"


def check_stage_dir(stage_dir: Path, key: str, current: tuple[dict, str, str, dict] | None = None) -> str | None:
    """None when `stage_dir` is a finished output for `key`, else the reason it is not.

    `current` (inputs, config hash, version, code fingerprint) lets a changed key's reason say what
    changed; without it the reason is generic."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / MANIFEST).is_file():
        return "no finished output" if not stage_dir.exists() else "output folder has no manifest (unfinished)"
    try:
        manifest = Manifest.read(stage_dir)
    except (OSError, ValueError, TypeError) as exc:
        return f"manifest unreadable ({exc})"
    if manifest.key != key:
        return why_key_changed(manifest, *current) if current else "inputs, config, code or version changed"
    for rel, expected in manifest.outputs.items():
        path = stage_dir / rel
        try:
            actual = hash_file(path)
        except FileNotFoundError:
            return f"output {rel} is missing"
        except OSError as exc:  # e.g. the folder is being replaced by a concurrent run right now
            return f"output {rel} unreadable ({exc})"
        if actual != expected:
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
    lock_timeout: float | None = None,
    code: dict[str, str] | None = None,
) -> StageResult:
    """Reuse or compute one stage's output folder.

    Args:
        stage_dir: Final output folder, e.g. `data/<scene>/calibrate`.
        stage: Stage name (part of the key).
        inputs: Content hashes of the stage's real inputs (name -> hash).
        config_section: The config dataclass section the stage reads (hashed into the key).
        compute: Called with an empty temporary folder to fill; may return a JSON-able dict
            stored as the manifest's `info`.
        force: Recompute even when a valid output exists (unless another run finished this very
            output while we waited for its lock: then that fresh output is reused).
        resumable: Work in a folder named after the key (`.<name>.partial-<key>`) that survives a
            failure or a kill, so that `compute` can skip what a previous attempt finished; it
            becomes the output folder only when `compute` returns. Without it, each attempt
            starts from an empty temporary folder.
        lock_timeout: Seconds to wait for another run of this stage folder (None: as long as it
            takes; a killed holder releases the lock at once).
        code: The fingerprint of the code `compute` runs (`fingerprint.code_fingerprint` of the
            stage's modules), so that changed code recomputes the stage; None keys no code.

    Returns:
        A `StageResult`; `cached` says whether the existing folder was reused.

    Raises:
        StageMissingError: inside `cached_only()`, when no finished output matches.
        StageWriteError: the disk filled up while computing; the work folder is removed and the
            previous output, if any, is unchanged.
        StageLockTimeout: another run held the lock longer than `lock_timeout`.
    """
    stage_dir = Path(stage_dir)
    config_hash = section_hash(config_section)
    version = package_version()
    code = code or {}
    key = stage_key(stage, inputs, config_hash, version, code)
    current = (inputs, config_hash, version, code)
    problem = "recompute forced" if force else check_stage_dir(stage_dir, key, current)
    if problem is None:  # the common case needs no lock: finished folders are only ever replaced whole
        return StageResult(Manifest.read(stage_dir), stage_dir, cached=True, reason="cached: inputs, config, code and outputs unchanged")
    if _CACHED_ONLY.get():
        raise StageMissingError(f"{stage_dir}: the {stage} stage has no finished output for the current inputs "
                                f"and config ({problem}); run the {stage} stage first")
    before = _manifest_stamp(stage_dir)
    with stage_lock(stage_dir, lock_timeout):
        # Another run may have finished this output while we waited for its lock.
        if (not force or _manifest_stamp(stage_dir) != before) and check_stage_dir(stage_dir, key) is None:
            return StageResult(Manifest.read(stage_dir), stage_dir, cached=True,
                               reason="cached: computed by a concurrent run while this one waited")
        return _compute_stage(stage_dir, stage, key, inputs, config_hash, version, code, compute, force, resumable,
                              problem)


def _manifest_stamp(stage_dir: Path) -> tuple[int, int] | None:
    """Identity of a folder's manifest file (inode, mtime), to see whether it was replaced."""
    try:
        stat = (stage_dir / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _compute_stage(stage_dir: Path, stage: str, key: str, inputs: dict[str, str], config_hash: str, version: str,
                   code: dict[str, str], compute: Callable[[Path], dict[str, Any] | None], force: bool, resumable: bool,
                   problem: str) -> StageResult:
    """Compute into a work folder and swap it in; the caller holds the stage lock."""
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
            outputs=hash_tree(tmp), code=code, timings={"compute_s": round(elapsed, 3)},
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
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc)
        if full or not resumable:
            # A full disk: free what this attempt wrote rather than keep a partial that fills it.
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            previous = "the previous output is unchanged" if (stage_dir / MANIFEST).is_file() else "no previous output"
            raise StageWriteError(exc.errno if isinstance(exc, OSError) and exc.errno else errno.ENOSPC,
                                  f"{stage} stage: no space left on the device while writing {stage_dir} "
                                  f"({exc}); its work folder was removed and {previous}; free space and rerun") from exc
        raise
    return StageResult(manifest, stage_dir, cached=False, reason=problem)
