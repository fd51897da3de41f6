#!/usr/bin/env bash
# Set up (if needed) and run the CPU demo: Suave on real CIFAR-100 images, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
name=${1:-cpu_demo_$(date +%Y%m%d_%H%M%S)}
.venv/bin/python main_suave.py --config suave/configs/cpu_demo.yaml --name "$name"
echo "demo run written to runs/$name (config.yaml, train.log, metrics_*.csv, checkpoints/)"
