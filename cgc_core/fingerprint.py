"""What code a stage runs, as content hashes for its cache key.

A stage's key holds `code_fingerprint(...)` of its roots: the source of every `cgc_core` module
those roots import, transitively (found by reading the import statements, so an import inside a
function counts too), the `__init__` of every package on the way (Python runs it on import), and
the C++ sources a module compiles. A change to training changes the train stage's fingerprint (and,
through the keys that hold the train stage's key, every stage after it); a change to the report
changes only the report's.

A module is hashed as its syntax tree without docstrings (a config field's too), so an edited
comment or docstring recomputes nothing, while any change to what runs does. Like Prefect's
`TASK_SOURCE` cache policy, but it follows the imports instead of stopping at the task function's own
text.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "cgc_core"
PACKAGE_DIR = Path(__file__).resolve().parent
"""The package whose code is fingerprinted (a test points this at a copy of it)."""
NATIVE_SOURCES = {"cgc_core.render.torch_backend": "render/csrc"}
"""Module -> folder (relative to the package) of the C++ sources it compiles at run time."""


def code_fingerprint(*roots: str, package_dir: str | Path | None = None) -> dict[str, str]:
    """Content hashes of the code that `roots` run.

    Args:
        roots: Dotted module names (`"cgc_core.train"`), or `"module:function"` for one top-level
            function's own code only (`"cgc_core.pipeline:train_stage"`: the stage function,
            without the rest of its module). A module root brings in everything it imports.
        package_dir: The `cgc_core` folder to read (default: the one imported).

    Returns:
        {path relative to the package's parent (`"cgc_core/train.py"`, with `":function"` for a
        function root): 16 hex digits}, sorted by path.

    Raises:
        ModuleNotFoundError: a root names no module of the package.
        LookupError: a function root names no top-level function of its module.
    """
    package_dir = Path(package_dir or PACKAGE_DIR).resolve()
    hashes, todo, seen = {}, [], set()
    for root in roots:
        module, _, function = root.partition(":")
        path = _module_path(module, package_dir)
        if path is None:
            raise ModuleNotFoundError(f"code_fingerprint: {module!r} is not a module of {package_dir}")
        if function:
            hashes[f"{_relative(path, package_dir)}:{function}"] = _function_hash(path, function)
        else:
            todo.append(module)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(module, package_dir)
        hashes[_relative(path, package_dir)] = _source_hash(*_stamp(path))
        todo.extend(_parents(module))
        todo.extend(_imported_modules(module, package_dir, *_stamp(path)))
        if module in NATIVE_SOURCES:
            for source in sorted((package_dir / NATIVE_SOURCES[module]).iterdir()):
                if source.is_file():
                    hashes[_relative(source, package_dir)] = _file_hash(*_stamp(source))
    return dict(sorted(hashes.items()))


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The paths whose hash differs between two fingerprints (added and removed ones too)."""
    return sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))


def _module_path(module: str, package_dir: Path) -> Path | None:
    """The file of a dotted module name inside the package (a package's `__init__.py`), or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _relative(path: Path, package_dir: Path) -> str:
    return f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"


def _parents(module: str) -> list[str]:
    """The packages Python imports before `module` (`cgc_core`, `cgc_core.render`, ...)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=1024)
def _imported_modules(module: str, package_dir: Path, path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The package's modules that `module` (in file `path`) imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(_parse(path, mtime_ns, size)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append(base)
            # `from .render import torch_backend` imports a submodule, not only a name
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return tuple(name for name in found if _module_path(name, package_dir) is not None)


def _stamp(path: Path) -> tuple[Path, int, int]:
    """(path, mtime, size): the memo key, so an edited file is read again."""
    stat = path.stat()
    return path, stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=1024)
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_bytes(), filename=str(path))


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """The tree without its docstrings (a copy): every statement that is a bare string, which Python
    evaluates and drops: a module's, class's or function's docstring, and the attribute docstrings
    under a config field."""
    tree = copy.deepcopy(tree)  # the parsed tree is memoised: never edit it in place
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                and isinstance(s.value.value, str))]
                setattr(node, field, kept or [ast.Pass()])
    return tree


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


@lru_cache(maxsize=1024)
def _source_hash(path: Path, mtime_ns: int, size: int) -> str:
    return _digest(ast.dump(_without_docstrings(_parse(path, mtime_ns, size))))


@lru_cache(maxsize=256)
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    return _digest(path.read_bytes())


def _function_hash(path: Path, function: str) -> str:
    for node in _parse(*_stamp(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return _digest(ast.dump(_without_docstrings(node)))
    raise LookupError(f"code_fingerprint: {path} has no top-level function {function!r}")
