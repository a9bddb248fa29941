#!/usr/bin/env bash
# A separate environment with optimum-onnx, for the optimum interop test (tests/test_optimum_export.py) only.
# optimum-onnx 0.1.0 pins transformers<4.58 and breaks the diffusers fewstep uses, so it cannot share .venv
# (see the README, "Distill your own Stable Diffusion"). Built when missing and we may (CI, or
# FEWSTEP_INSTALL_OPTIMUM=1); otherwise that test skips with its reason. Never needed to use fewstep.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cpu_torch.sh
ENV_DIR=${FEWSTEP_OPTIMUM_ENV:-.venv-optimum}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
PINS=("optimum-onnx[onnxruntime]==0.1.0" "transformers==4.57.6" "huggingface-hub==0.36.2" "diffusers==0.39.0")
if [ -f "$ENV_DIR/.installed" ]; then
  exit 0
fi
if [ -z "${CI:-}" ] && [ "${FEWSTEP_INSTALL_OPTIMUM:-0}" != "1" ]; then
  echo "install: no $ENV_DIR; the optimum interop test will skip (FEWSTEP_INSTALL_OPTIMUM=1 make test builds it)"
  exit 0
fi
echo "install: $ENV_DIR with ${PINS[*]} (for the optimum interop test)"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
pip=("$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off)
cpu_torch_args "$TORCH_VERSION"
if "${pip[@]}" "${PINS[@]}" "${torch[@]}"; then
  touch "$ENV_DIR/.installed"
else
  echo "install: building $ENV_DIR failed; the optimum interop test will skip"
fi
