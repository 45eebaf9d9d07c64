#!/usr/bin/env bash
# Install (if needed) and start the server:  scripts/serve.sh <studies folder or DICOMweb URL> [--conf KEY VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
studies=${1:?usage: scripts/serve.sh <studies folder or DICOMweb URL> [--conf KEY VALUE ...]}
shift
scripts/setup.sh
. .venv/bin/activate
exec monailabel start_server --app apps/sam2_3d --studies "$studies" "$@"
