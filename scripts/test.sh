#!/usr/bin/env bash
# Set up (if needed) and run the test suite (slow tests excluded; RUN_SLOW=1 includes them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
marker="not slow"
[ "${RUN_SLOW:-0}" = "1" ] && marker=""
exec .venv/bin/python -m pytest -q -m "$marker" "$@"
