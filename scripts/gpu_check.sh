#!/usr/bin/env bash
# Every CUDA check of cgc on a bare GPU machine, in one command (issue 41):
#
#   scripts/gpu_check.sh [--dry-run] [OUT]
#
# On the GPU machine (its own python3 and torch; nothing fetched): installs the kit that
# scripts/gpu_kit.sh fetched (.gpukit/gpu: wheels, gsplat's sdist) into a temporary site without
# any index, builds gsplat's CUDA extension for the GPU present only (all cores), runs
# `pytest -m gpu` and benchmarks/gpu_bench.py, and writes each step's log, steps.tsv (step,
# seconds, exit code) and RESULT.txt into OUT (default $OUT, else gpu-check-out/). Every step
# prints its time. With --dry-run, on a machine without CUDA: the same steps without CUDA (the
# kit's completeness for Python 3.12, this machine's copy of it installed and imported from the
# temporary site, gsplat installed without its extension, the GPU tests collected, the benchmark's
# --smoke mode) and the command lines the GPU run would use.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && { DRY=1; shift; }
OUTDIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
if [ $DRY = 1 ]; then PY=${PY:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}; KIT=.gpukit/host
else PY=${PY:-python3}; KIT=.gpukit/gpu; fi
SITE=$(mktemp -d /tmp/cgc-gpu-site.XXXXXX)
trap 'rm -rf "$SITE"' EXIT
: > "$OUTDIR/steps.tsv"
FAILED=0
T0=$(date +%s%N)
since() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100)); }

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, print and record the time
  local name=$1 limit=$2; shift 2
  local start rc seconds
  start=$(date +%s%N)
  echo "== [gpu_check] $name: $*"
  # through bash -c: the command may be one of the functions below (exported with the variables they read)
  timeout "$limit" bash -c '"$@"' step "$@" > >(tee "$OUTDIR/$name.log") 2>&1
  rc=$?
  seconds=$(since "$start")
  printf '[gpu_check] %-14s %7s s  exit %d\n' "$name" "$seconds" "$rc"
  printf '%s\t%s\t%d\n' "$name" "$seconds" "$rc" >> "$OUTDIR/steps.tsv"
  [ $rc = 0 ] || FAILED=1
  return $rc
}

pip_site() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
             --target "$SITE" "$@"; }

inspect() {
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| available', torch.cuda.is_available())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  echo "cores $(nproc)"
}

arch_list() {  # TORCH_CUDA_ARCH_LIST for the GPUs present, e.g. 9.0
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd ';'
}

build_gsplat() {
  if [ $DRY = 1 ]; then
    echo "would run: TORCH_CUDA_ARCH_LIST=<compute capability from nvidia-smi> MAX_JOBS=$(nproc) $PY -m pip install" \
         "--no-index --no-deps --no-build-isolation --target $SITE $KIT/gsplat-*.tar.gz"
    # Here: the same sdist installed without its CUDA extension (BUILD_NO_CUDA=1), to check it installs offline.
    BUILD_NO_CUDA=1 pip_site --no-build-isolation "$KIT"/gsplat-*.tar.gz
  else
    TORCH_CUDA_ARCH_LIST=$(arch_list) MAX_JOBS=$(nproc) pip_site --no-build-isolation "$KIT"/gsplat-*.tar.gz
  fi
}

imports() {  # every kit package importable, and imported from the temporary site
  PYTHONPATH="$SITE:$PWD" "$PY" - "$SITE" <<'PYEOF'
import importlib, sys
site = sys.argv[1]
for name in ("plyfile", "pycocotools.mask", "pycolmap", "segment_anything", "gsplat"):
    module = importlib.import_module(name)
    where = getattr(module, "__file__", None) or next(iter(module.__path__))
    assert where.startswith(site), f"{name} was imported from {where}, not from the kit ({site})"
    print(f"{name:18s} {getattr(module, '__version__', '')} from the kit")
import cgc_core.render, cgc_core.train
print("cgc_core imports; render backends here:", cgc_core.render.available_backends())
PYEOF
}

export DRY PY KIT SITE
export -f pip_site inspect arch_list build_gsplat imports
echo "[gpu_check] $( [ $DRY = 1 ] && echo "dry run (no CUDA)" || echo "GPU run"); kit $KIT; logs in $OUTDIR"
step inspect 60 inspect
step kit_check 120 "$PY" scripts/gpu_kit_check.py || { echo "[gpu_check] the kit is incomplete (scripts/gpu_kit.sh)"; exit 1; }
step install 120 pip_site "$KIT"/*.whl || exit 1
step build_gsplat 420 build_gsplat || exit 1
step imports 120 imports
export PYTHONPATH="$SITE:$PWD"
unset CI  # under CI=true the suite refuses skips; the GPU run wants the gpu tests' own verdicts
if [ $DRY = 1 ]; then
  step pytest_gpu 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider --collect-only
  step gpu_bench 600 "$PY" benchmarks/gpu_bench.py --smoke
else
  step pytest_gpu 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rA
  step gpu_bench 300 "$PY" benchmarks/gpu_bench.py --train-budget-s 60 --reps 5
fi
grep -h "^RESULT" "$OUTDIR"/gpu_bench.log > "$OUTDIR/RESULT.txt" 2>/dev/null
grep -hE "^[0-9]+ (passed|failed|skipped)|passed|tests collected" "$OUTDIR"/pytest_gpu.log | tail -1 >> "$OUTDIR/RESULT.txt"
printf '[gpu_check] total %s s; %s\n' "$(since "$T0")" "$( [ $FAILED = 0 ] && echo "every step passed" || echo "a step FAILED (see steps.tsv)")"
cat "$OUTDIR/RESULT.txt"
exit $FAILED
