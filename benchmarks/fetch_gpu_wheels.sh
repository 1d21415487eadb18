#!/usr/bin/env bash
# Fetch the wheels that benchmarks/gpu_check.sh installs on the GPU machine (which has no network)
# into .whl/ at the repository root (ignored by git; it travels with the working tree).
#
#   bash benchmarks/fetch_gpu_wheels.sh          # reads benchmarks/gpu_wheels.txt
#
# Wheels for CPython 3.12 on manylinux x86_64, without dependencies (each one needed is listed).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
list="$repo/benchmarks/gpu_wheels.txt"
dest="$repo/.whl"
python="${PYTHON:-python3}"

mapfile -t pins < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
if [ "${#pins[@]}" -eq 0 ]; then
    echo "fetch_gpu_wheels.sh: no NAME==VERSION lines in $list" >&2
    exit 1
fi
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "${pins[@]}"

# Keep one wheel per project (two versions stop the install there): drop any not pinned now.
for wheel in "$dest"/*.whl; do
    name_version="$(basename "$wheel" | cut -d- -f1-2 | tr '_' '-' | tr 'A-Z' 'a-z')"
    keep=no
    for pin in "${pins[@]}"; do
        pin_norm="$(echo "${pin/==/-}" | tr '_' '-' | tr 'A-Z' 'a-z')"
        [ "$name_version" = "$pin_norm" ] && keep=yes
    done
    if [ "$keep" = no ]; then
        echo "removing $(basename "$wheel") (not in $list)"
        rm -f "$wheel"
    fi
done
echo "wheels in $dest:"
ls -1 "$dest"
du -sh "$dest" | awk '{print "total: " $1 " (the working tree that travels may hold 64 MiB)"}'
