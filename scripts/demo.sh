#!/usr/bin/env bash
# Set up (if needed) and run the CPU demo: Suave on real CIFAR-100 images, a few minutes on 2 cores.
#   bash scripts/demo.sh [run_name] [key.sub=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
name=${1:-cpu_demo_$(date +%Y%m%d_%H%M%S)}
shift || true
.venv/bin/python main_suave.py --config suave/configs/cpu_demo.yaml --name "$name" "$@"
.venv/bin/python - "runs/$name" <<'PY'
import json, sys
run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
print(f"demo finished: validation top-1 {s.get('val_top1', float('nan')):.2f}% "
      f"(chance 1%), top-5 {s.get('val_top5', float('nan')):.2f}% after {s['step']} steps")
print(f"run directory: {run} (config.yaml, train.log, metrics_*.csv, *.png, checkpoints/)")
PY
