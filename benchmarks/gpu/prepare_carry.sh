#!/usr/bin/env bash
# Here, once, on a machine with the package registries: the wheels and the volume that
# benchmarks/gpu/run_on_device.sh needs on a GPU machine that has only torch, numpy and pillow and no
# network (docs/benchmark.md). Both folders are ignored by git; carry them with the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}  # needs torch and setuptools to build sam2's wheel without isolation
mkdir -p .whl .gpu-data
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0
"$PY" -m pip wheel -q --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \
    iopath==0.1.10 nibabel==5.4.2
cp ../shared/data/brats2013/pat0001/flair.nii.gz .gpu-data/
ls .whl && du -sh .whl .gpu-data
