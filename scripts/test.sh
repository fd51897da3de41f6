#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Excluded unless asked: slow tests (RUN_SLOW=1) and
# the tests that start a real local Slurm cluster (RUN_SLURM=1; root + Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
marker=""
[ "${RUN_SLOW:-0}" = "1" ] || marker="not slow"
[ "${RUN_SLURM:-0}" = "1" ] || marker="${marker:+$marker and }not slurm"
exec .venv/bin/python -m pytest -q ${marker:+-m "$marker"} "$@"
