#!/usr/bin/env bash
# Are the dependency floors in pyproject.toml true? Installs every runtime dependency at its
# declared minimum (a constraints file with `name==floor` for each `name>=floor` of [project]
# dependencies; the test tools take their newest releases) into a scratch virtual environment,
# then runs a fast subset of the tests that exercises each dependency (smp, timm, Hub cache,
# safetensors, LightningCLI and the configs, torchmetrics, torchdata, W&B, matplotlib, the fused
# CPU kernel built against the floor torch).
#
#   bash tools/check_floors.sh                          # scratch venv in a temporary folder, removed after
#   FLOORS_DIR=/tmp/floors bash tools/check_floors.sh   # keep the venv and constraints.txt there
#   bash tools/check_floors.sh tests/training/test_weights.py    # other tests than the default subset
#
# CI (.ci/run) does not run it: a second environment (torch alone is hundreds of MB), a kernel
# build and the tests take about 15 minutes on the 2-core machine, on top of CI's own install
# and test suite. Run it by hand whenever a floor in pyproject.toml changes.
#
# Last run (2026-12-02, 2-core machine, the default subset below): every runtime floor installed
# together (lightning 2.6.0, torchmetrics 1.4.0, torchdata 0.8.0, smp 0.6.0, timm 1.0.3,
# huggingface_hub 1.0.0, safetensors 0.4.3, numpy 1.26.0, pillow 10.0.0, pyyaml 6.0, fsspec
# 2023.5.0, wandb 0.17.0, matplotlib 3.7.0, jsonargparse 4.39.0, torch 2.14.1, torchvision
# 0.29.1): 133 passed, 6 deselected (slow, cuda) in 10 min. Its first runs found two floor bugs,
# both fixed: `huggingface_hub.is_offline_mode` does not exist in 1.0.0, and wandb 0.17 does not
# create a missing run folder (it logged to the system temp folder instead).
# torch 2.13 was tried: its CPU wheel installs, but PyPI's torchvision 0.28.0 fails against it
# (`operator torchvision::nms does not exist`), so the torch floor is the oldest one verified.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${FLOORS_DIR:-}"
if [ -z "$dir" ]; then
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"

python3 - pyproject.toml > "$dir/constraints.txt" <<'PY'
import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
requirements = project["dependencies"]
for requirement in requirements:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
    if match:  # a floor: pin it (unpinned ones, e.g. ninja, take the newest)
        print(f"{match.group(1)}=={match.group(3)}")
PY
echo "+ constraints ($dir/constraints.txt):"
cat "$dir/constraints.txt"

python3 -m venv "$dir/venv"
# shellcheck disable=SC1091
source "$dir/venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c "$dir/constraints.txt" -e ".[test]"
python -m pip check
echo "+ installed:"
python -m pip list --format=freeze | grep -i -E "^($(sed -e 's/==.*//' -e 's/[-_.]/[-_.]/g' "$dir/constraints.txt" | paste -sd'|'))==" || true

unset PYTHONPATH  # the tests import the package installed above (this checkout, editable)
export WANDB_MODE=offline MPLBACKEND=Agg TORCH_EXTENSIONS_DIR="$dir/torch_extensions"
if [ "$#" -eq 0 ]; then
    set -- tests/training/test_weights.py tests/cli/test_cli_configs.py tests/training/test_training_module.py \
        tests/training/test_metrics_segmentation.py tests/sharing/test_sharing.py tests/training/callbacks/test_alpha_monitor.py \
        tests/training/callbacks/test_random_state.py tests/training/plugins/test_checkpoint_io.py tests/kernels/test_kernels.py
fi
python -m pytest -q -x -m "not slow and not cuda" -p no:cacheprovider "$@"
