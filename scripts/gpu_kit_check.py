"""Is the GPU kit complete? (`scripts/gpu_check.sh` runs this first, here in the dry run and there.)

Checks, without installing anything:
1. the kit is under its size limit (what travels with a device call);
2. every wheel installs on the GPU machine's Python (its tags fit CPython 3.12 on manylinux x86_64);
3. every requirement of every wheel and sdist (extras left out, markers evaluated for that Python)
   is in the kit or in the GPU image (`scripts/gpu_image_packages.txt`);
4. every third-party module that the code run there imports (anywhere in cgc_core, the tests'
   conftest and GPU tests, `benchmarks/gpu_bench.py`; read from the source, lazy imports too) is
   in the kit or the image, but for the few that only paths never run there need (`NOT_THERE`).

Exits 1 naming each gap.
"""

from __future__ import annotations

import argparse
import ast
import email
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
OWN = {"cgc_core", "flows", "tasks", "tests", "benchmarks", "scripts", "conftest"}
RUN_THERE = ["cgc_core", "tests/conftest.py", "tests/test_render.py", "tests/test_gpu.py", "benchmarks/gpu_bench.py"]
"""What `pytest -m gpu` and `benchmarks/gpu_bench.py` run there (folders: every .py below)."""
NOT_THERE = {"viser": "the viewer", "av": "video input", "groundingdino": "text queries (Grounding DINO)",
             "prefect": "the flows", "playwright": "the browser tests"}
"""Modules imported only on paths the GPU checks never take, and what needs them."""
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "sklearn": "scikit-learn",
                "segment_anything": "segment-anything", "google": "protobuf"}
"""Import names that differ from their distribution's."""
PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "linux_x86_64"]


def metadata(path: Path) -> email.message.Message:
    """The METADATA of a wheel or the PKG-INFO of an sdist."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            return email.message_from_bytes(wheel.read(name))
    with tarfile.open(path) as sdist:
        member = next(m for m in sdist.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        return email.message_from_bytes(sdist.extractfile(member).read())


def check(kit: Path, image_list: Path, max_mib: float, python: tuple[int, int]) -> list[str]:
    problems: list[str] = []
    files = sorted(p for p in kit.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    if not files:
        return [f"{kit}: no wheels or sdists (run scripts/gpu_kit.sh)"]
    size = sum(p.stat().st_size for p in files) / 2**20
    if size > max_mib:
        problems.append(f"{kit}: {size:.1f} MiB, over the {max_mib:.0f} MiB a device call carries")
    abi = f"cp{python[0]}{python[1]}"
    target = {*cpython_tags(python, [abi, "abi3", "none"], PLATFORMS), *compatible_tags(python, abi, PLATFORMS)}
    provided = {line.strip().lower() for line in image_list.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    provided = {canonicalize_name(n) for n in provided}
    in_kit = set()
    for path in files:
        if path.suffix == ".whl":
            name, _, _, tags = parse_wheel_filename(path.name)
            if not tags & target:
                problems.append(f"{path.name}: does not install on CPython {python[0]}.{python[1]} manylinux x86_64")
        else:
            name, _ = parse_sdist_filename(path.name)
        in_kit.add(canonicalize_name(name))
    env = default_environment() | {"python_version": f"{python[0]}.{python[1]}",
                                   "python_full_version": f"{python[0]}.{python[1]}.0", "sys_platform": "linux",
                                   "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    for path in files:
        for line in metadata(path).get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue  # an extra, or another Python's
            wanted = canonicalize_name(requirement.name)
            if wanted not in in_kit | provided:
                problems.append(f"{path.name} requires {requirement}: neither in the kit nor in {image_list.name}")
    problems += check_imports(in_kit | provided)
    return problems


def imported_modules(paths: list[str]) -> dict[str, str]:
    """Top-level module -> the first file that imports it, over every import statement of the files."""
    found: dict[str, str] = {}
    files = [f for p in paths for f in ((ROOT / p).rglob("*.py") if (ROOT / p).is_dir() else [ROOT / p])
             if f.exists()]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(file.relative_to(ROOT)))
    return found


def check_imports(available: set[str]) -> list[str]:
    """Every third-party module the code run there imports, against what is available there."""
    problems = []
    for top, where in sorted(imported_modules(RUN_THERE).items()):
        if top in sys.stdlib_module_names or top in OWN or top in NOT_THERE or top == "__future__":
            continue
        if canonicalize_name(DISTRIBUTION.get(top, top)) not in available:
            problems.append(f"module {top} (imported in {where}) is neither in the kit nor in the GPU image")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", type=Path, default=ROOT / ".gpukit" / "gpu")
    parser.add_argument("--image", type=Path, default=ROOT / "scripts" / "gpu_image_packages.txt")
    parser.add_argument("--max-mib", type=float, default=60.0)
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version")
    args = parser.parse_args()
    problems = check(args.kit, args.image, args.max_mib, tuple(int(v) for v in args.python.split(".")))
    for problem in problems:
        print(f"gpu_kit_check: {problem}")
    if problems:
        sys.exit(1)
    files = sorted(p.name for p in args.kit.iterdir())
    print(f"gpu_kit_check: complete for Python {args.python}: {len(files)} files, "
          f"{sum(p.stat().st_size for p in args.kit.iterdir()) / 2**20:.1f} MiB; every import covered")


if __name__ == "__main__":
    main()
