#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite (the tests start their own GCS emulator).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
