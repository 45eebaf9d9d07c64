#!/usr/bin/env bash
# Install (if needed) and start the server:  scripts/serve.sh <studies folder or DICOMweb URL> [--conf KEY VALUE ...]
#
# Listens on 127.0.0.1:8000 (this machine only) unless you say otherwise: --host 0.0.0.0 (or
# SAM2_3D_HOST=0.0.0.0) exposes it to the network; do that only with authentication on
# (MONAI_LABEL_AUTH_ENABLE=true, see README "Exposing the server safely").
set -euo pipefail
cd "$(dirname "$0")/.."
studies=${1:?usage: scripts/serve.sh <studies folder or DICOMweb URL> [--host H] [--port P] [--conf KEY VALUE ...]}
shift
host=()
case " $* " in *" --host "*|*" -i "*) ;; *) host=(--host "${SAM2_3D_HOST:-127.0.0.1}") ;; esac
scripts/setup.sh serve
. .venv/bin/activate
exec monailabel start_server --app apps/sam2_3d --studies "$studies" "${host[@]}" "$@"
