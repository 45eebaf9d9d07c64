#!/usr/bin/env bash
# Install (if needed) and run the whole test suite:  scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Orthanc and Chromium for the client tests (Debian packages; needs root or sudo). Without them those
# tests skip and say why; everything else still runs.
scripts/setup_system.sh || echo "test.sh: system packages could not be installed; Orthanc/browser tests will skip"
. .venv/bin/activate
# lint and import order (ruff.toml); a finding fails the run before any test starts
ruff check apps tests benchmarks checkpoints
exec python -m pytest "$@"
