#!/usr/bin/env bash
# Set everything up, then export sample data in all four formats to a local GCS emulator and show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ctexport demo "$@"
