#!/usr/bin/env bash
# Set up (if needed) and run the demo: Suave and the supervised-only baseline on the same 40
# labeled CIFAR-10 images (4 per class), same backbone, head, optimiser and steps; the unlabeled
# images are the only difference. Both runs get as many epochs as fit in 10 minutes on this
# machine (measured by short probe runs, at most twice the recipe's 24; train.epochs=N fixes
# them). Prints the plan, then both validation accuracies and the gap as its last lines, and
# writes runs/<name>/accuracy.png (both curves).
#   bash scripts/demo.sh [run_name] [key.sub=value ...]
set -euo pipefail
started=$(date +%s)  # the 10 minutes count from here, set-up included
cd "$(dirname "$0")/.."
bash scripts/setup.sh
name=${1:-demo_$(date +%Y%m%d_%H%M%S)}
shift || true
.venv/bin/python scripts/demo.py --config suave/configs/demo_cifar10.yaml --name "$name" \
  --budget_minutes 10 --started_at "$started" "$@"
