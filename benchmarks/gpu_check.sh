#!/usr/bin/env bash
# Run the GPU check kit on a bare machine (see benchmarks/gpu_check.py's docstring).
#   bash benchmarks/gpu_check.sh OUT_DIR [gpu_check options, e.g. --budget-s 420 --digits-steps 5000]
# If the carry folder (GPU_CHECK_CARRY, default .gpu_carry in the repository root) holds
#   wheels/*.whl            installed offline into /tmp/gpu_check_site (no index, no dependencies)
#   data/MNIST/raw/*[.gz]   MNIST's raw files (gzipped or not) and data/usps*.bz2
# they are used; else the installed packages and --data (GPU_CHECK_DATA, default ../shared/data).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [options]}
shift
CARRY=${GPU_CHECK_CARRY:-.gpu_carry}
DATA=${GPU_CHECK_DATA:-../shared/data}
SITE=/tmp/gpu_check_site
if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/wheels/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d "$CARRY/data/MNIST/raw" ]; then
  DATA=/tmp/gpu_check_data
  mkdir -p "$DATA/MNIST/raw"
  for f in "$CARRY"/data/MNIST/raw/*; do
    case "$f" in
      *.gz) gunzip -c "$f" > "$DATA/MNIST/raw/$(basename "$f" .gz)" || exit 1 ;;
      *) cp "$f" "$DATA/MNIST/raw/" || exit 1 ;;
    esac
  done
  cp "$CARRY"/data/usps*.bz2 "$DATA/" 2>/dev/null || echo "gpu_check.sh: no usps*.bz2 in $CARRY/data" >&2
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_check --out "$OUT_DIR" --data "$DATA" "$@"
