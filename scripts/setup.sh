#!/usr/bin/env bash
# Create .venv and install everything sam2-3d needs. Idempotent: a second run only checks.
#
#   scripts/setup.sh                 # CPU or GPU machine; torch from $TORCH_SPEC (default torch==2.13.0)
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/setup.sh
#
# Why the three special installs (see README "Install"):
#  * torch first, so nothing else pulls a different (multi-GB CUDA) build;
#  * sam2 without build isolation, against that torch, without its optional CUDA extension;
#  * monailabel without its dependencies: it asks for monai[all extras] (itk, mlflow, openslide,
#    torchvision, ~3.7 GB); requirements.txt lists what the server really imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.sam2-3d-installed
want=$(cat requirements*.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
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
for extra in requirements-eval.txt requirements-test.txt; do
  if [ -f "$extra" ]; then python -m pip install -q -r "$extra"; fi
done
python -c "import torch, sam2, monailabel, monai; print('sam2-3d env ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "$want" > "$stamp"
