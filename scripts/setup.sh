#!/usr/bin/env bash
# Create ./.venv and `pip install -e .[dev,wandb,timm]` into it (idempotent: a second run only checks).
#   GPU machine (nvidia-smi works): CUDA build of torch from the package index.
#   CPU machine: torch pinned by constraints-cpu.txt. Elsewhere than our dev machines set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to fetch the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.suavedaino-installed
want=$(cat pyproject.toml constraints-cpu.txt | sha1sum | cut -c1-12)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_args=(-q -e ".[dev,wandb,timm]")
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  echo "setup: no GPU found, installing the CPU build of torch" >&2
  .venv/bin/python -m pip install -q -c constraints-cpu.txt torch
  pip_args+=(-c constraints-cpu.txt)
fi
.venv/bin/python -m pip install "${pip_args[@]}"
(cd /tmp && "$OLDPWD/.venv/bin/python" -c "import common, torch, torchvision; print('setup: torch', torch.__version__)")
echo "$want" > "$stamp"
