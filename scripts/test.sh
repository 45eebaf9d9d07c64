#!/usr/bin/env bash
# Install (if needed) and run the whole test suite:  scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec python -m pytest "$@"
