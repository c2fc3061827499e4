#!/usr/bin/env bash
# Fetch, here, what a bare GPU machine lacks to run cgc's CUDA checks (scripts/gpu_check.sh), into
# the git-ignored .gpukit/:
#   .gpukit/gpu/   wheels for the GPU machine's Python (3.12, manylinux x86_64) and gsplat's sdist,
#                  whose CUDA extension gpu_check.sh builds there for the GPU present (carry this folder)
#   .gpukit/host/  the same versions for this machine's Python, for `gpu_check.sh --dry-run` here
# The versions are the ones this checkout's environment (.venv, `make venv`) runs, so the GPU
# machine runs what the tests here ran. The GPU image already holds torch, numpy, scipy, pandas,
# pyarrow, scikit-*, pillow, pyyaml, filelock, typer, rich, pytest and hypothesis
# (scripts/gpu_image_packages.txt); the dry run checks that the two together cover every import.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KIT=${KIT:-.gpukit}
# What cgc_core, its tests and benchmarks/gpu_bench.py import that the GPU image lacks.
WHEELS=(plyfile pycocotools pycolmap segment-anything)
SDISTS=(gsplat)
PLATFORMS=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
pinned() { "$PY" -c "import importlib.metadata as m, sys; print('\n'.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@"; }
mapfile -t wheel_pins < <(pinned "${WHEELS[@]}")
mapfile -t sdist_pins < <(pinned "${SDISTS[@]}")
rm -rf "$KIT.tmp" && mkdir -p "$KIT.tmp/gpu" "$KIT.tmp/host"
pip_download() { "$PY" -m pip download -q --no-deps --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "gpu_kit: wheels for Python 3.12 (the GPU machine): ${wheel_pins[*]}"
pip_download --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$KIT.tmp/gpu" "${wheel_pins[@]}"
echo "gpu_kit: sources built there: ${sdist_pins[*]}"
# --no-build-isolation: reading gsplat's metadata imports torch, which the isolated build lacks
pip_download --no-binary=:all: --no-build-isolation -d "$KIT.tmp/gpu" "${sdist_pins[@]}"
echo "gpu_kit: the same for this machine's Python (dry run)"
pip_download --only-binary=:all: -d "$KIT.tmp/host" "${wheel_pins[@]}"
cp "$KIT.tmp"/gpu/*.tar.gz "$KIT.tmp/host/"
for pin in "${wheel_pins[@]}" "${sdist_pins[@]}"; do  # every pin fetched for both, or stop here
  name=$(echo "${pin%%==*}" | tr - _)
  for side in gpu host; do
    ls "$KIT.tmp/$side" | grep -iq "^${name}-${pin##*==}[-.]" || { echo "gpu_kit: $pin missing from $side" >&2; exit 1; }
  done
done
rm -rf "$KIT" && mv "$KIT.tmp" "$KIT"
du -sh "$KIT/gpu" "$KIT/host"
ls -1 "$KIT/gpu"
