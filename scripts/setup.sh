#!/usr/bin/env bash
# Create .venv and install everything sam2-3d needs. Idempotent: a second run only checks.
#
#   scripts/setup.sh                 # everything: serving + tests + evaluation (what scripts/test.sh runs)
#   scripts/setup.sh serve           # serving only (what scripts/serve.sh runs): requirements.txt
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/setup.sh
# torch comes from $TORCH_SPEC (default torch==2.13.0), on a CPU or a GPU machine.
#
# Why the three special installs (see README "Install"):
#  * torch first, so nothing else pulls a different (multi-GB CUDA) build;
#  * sam2 without build isolation, against that torch, without its optional CUDA extension;
#  * monailabel without its dependencies: it asks for monai[all extras] (itk, mlflow, openslide,
#    torchvision, ~3.7 GB); requirements.txt lists what the server really imports.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-all}
case "$profile" in serve|all) ;; *) echo "usage: scripts/setup.sh [serve|all]" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.sam2-3d-installed
want="$(cat requirements*.txt scripts/setup.sh | sha256sum | cut -c1-16)"
# a full install also serves; a serve-only install does not satisfy "all"
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want all" ] || [ "$(cat "$stamp")" = "$want $profile" ]; }; then
  exit 0
fi
python -m pip install -q --upgrade pip wheel setuptools
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
python -m pip install -q -r requirements.txt
SAM2_BUILD_CUDA=0 python -m pip install -q --no-build-isolation --no-deps sam2==1.1.0
python -m pip install -q --no-deps monailabel==0.8.5
if [ "$profile" = all ]; then
  for extra in requirements-eval.txt requirements-test.txt; do
    if [ -f "$extra" ]; then python -m pip install -q -r "$extra"; fi
  done
fi
python -c "import torch, sam2, monailabel, monai; print('sam2-3d env ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "$want $profile" > "$stamp"
