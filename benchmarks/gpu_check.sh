#!/usr/bin/env bash
# Every GPU check of lit_ppool in one command (about 6 minutes on one H200, never more than 9):
# CUDA tests, parity grid, >2**31-element tensors, op and Unet-step timings, a mixed-precision fit.
#
#   bash benchmarks/fetch_gpu_wheels.sh                 # beforehand, where PyPI is reachable: .whl/
#   bash benchmarks/gpu_check.sh [--out DIR] [--quick] [--skip-install] [gpu_check.py options]
#
# On the GPU machine: installs the wheels in .whl/ (the packages its image lacks) into /tmp/site,
# puts the working tree first on PYTHONPATH, runs benchmarks/gpu_check.py, and tees its log into
# DIR (default $OUT, else ./gpu_check_out), next to gpu_check.json and gpu_check.md.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$repo/gpu_check_out}"
install=yes
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --skip-install) install=no; shift ;;
        -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$out"
python="${PYTHON:-python3}"
site="${GPU_CHECK_SITE:-/tmp/site}"  # where the wheels go (pip --target)

if [ "$install" = yes ]; then
    shopt -s nullglob
    wheels=("$repo"/.whl/*.whl)
    if [ "${#wheels[@]}" -eq 0 ]; then
        echo "gpu_check.sh: no wheels in $repo/.whl: run 'bash benchmarks/fetch_gpu_wheels.sh' where PyPI" \
             "is reachable and carry .whl, or pass --skip-install where the packages are installed" >&2
        exit 2
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
    export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
export WANDB_MODE=offline MPLBACKEND=Agg PYTHONUNBUFFERED=1
cd "$repo"
"$python" benchmarks/gpu_check.py --out "$out" "${args[@]}" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
