#!/usr/bin/env bash
# Set up (if needed) and run the demo: Suave and the supervised-only baseline on the same 40
# labeled CIFAR-10 images (4 per class), same backbone, head, optimiser and steps; the unlabeled
# images are the only difference. Prints both validation accuracies and the gap as its last lines
# and writes runs/<name>/accuracy.png (both curves).
#   bash scripts/demo.sh [run_name] [key.sub=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
name=${1:-demo_$(date +%Y%m%d_%H%M%S)}
shift || true
.venv/bin/python scripts/demo.py --config suave/configs/demo_cifar10.yaml --name "$name" "$@"
