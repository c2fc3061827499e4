"""The GPU kit's completeness check (scripts/gpu_kit_check.py) on hand-made kits: what the dry run
of scripts/gpu_check.sh relies on to say that a bare GPU machine lacks nothing."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gpu_kit_check  # noqa: E402

IMAGE = Path(__file__).resolve().parent.parent / "scripts" / "gpu_image_packages.txt"


def _wheel(folder: Path, name: str, version: str, tag: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def _complete_kit(folder: Path) -> None:
    folder.mkdir()
    _wheel(folder, "plyfile", "1.1.5", "py3-none-any", ["numpy>=1.21"])
    _wheel(folder, "pycocotools", "2.0.11", "cp312-abi3-manylinux_2_17_x86_64", ["numpy"])
    _wheel(folder, "pycolmap", "4.2.1", "cp312-cp312-manylinux_2_28_x86_64", ["numpy", 'pytest; extra == "dev"'])
    _wheel(folder, "segment_anything", "1.0", "py3-none-any", [])
    _wheel(folder, "gsplat", "1.5.3", "py3-none-any", ["torch", "jaxtyping", "rich>=12",
                                                       'typing_extensions; python_version < "3.8"'])


def test_a_complete_kit_passes(tmp_path):
    _complete_kit(tmp_path / "kit")
    assert gpu_kit_check.check(tmp_path / "kit", IMAGE, 60.0, (3, 12)) == []


def test_each_gap_is_named(tmp_path):
    kit = tmp_path / "kit"
    _complete_kit(kit)
    (kit / "pycolmap-4.2.1-cp312-cp312-manylinux_2_28_x86_64.whl").unlink()  # imported by cgc_core.calibrate
    _wheel(kit, "needy", "1.0", "py3-none-any", ["not-on-the-gpu-image>=2"])
    _wheel(kit, "oldabi", "1.0", "cp311-cp311-manylinux_2_17_x86_64", [])
    problems = gpu_kit_check.check(kit, IMAGE, 60.0, (3, 12))
    assert any("module pycolmap" in p and "cgc_core" in p for p in problems), problems
    assert any(p.startswith("needy-1.0-py3-none-any.whl requires not-on-the-gpu-image>=2") for p in problems)
    assert any("oldabi-1.0-cp311" in p and "does not install on CPython 3.12" in p for p in problems)
    assert len(problems) == 3
    assert any("over the 0 MiB" in p for p in gpu_kit_check.check(kit, IMAGE, 0.0001, (3, 12)))


def test_an_empty_kit_says_how_to_fetch_one(tmp_path):
    (tmp_path / "kit").mkdir()
    assert gpu_kit_check.check(tmp_path / "kit", IMAGE, 60.0, (3, 12)) == [
        f"{tmp_path / 'kit'}: no wheels or sdists (run scripts/gpu_kit.sh)"]
