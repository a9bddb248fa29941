#!/usr/bin/env bash
# A separate environment with optimum-intel (OpenVINO), for the real-size side-by-side benchmark only
# (benchmarks/real_size_peers.py --optimum-intel-python .venv-optimum-intel/bin/python). optimum-intel 2.2 resolves
# diffusers 0.39 and transformers 5.5, which differ from fewstep's, so it cannot share .venv. Never needed to use
# fewstep; CI does not build it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cpu_torch.sh
ENV_DIR=${FEWSTEP_OPTIMUM_INTEL_ENV:-.venv-optimum-intel}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
PINS=("optimum-intel[openvino]==2.2.0" "optimum==2.3.0" "openvino==2026.4.1" "nncf==3.4.0" "diffusers==0.39.0"
      "transformers==5.5.4")
if [ -f "$ENV_DIR/.installed" ]; then
  exit 0
fi
echo "install: $ENV_DIR with ${PINS[*]} (for the optimum-intel side-by-side)"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
pip=("$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off)
cpu_torch_args "$TORCH_VERSION"
"${pip[@]}" "${PINS[@]}" "${torch[@]}"
# optimum-intel lists torchvision, and PyPI's torchvision is built for the CUDA torch: next to the CPU torch its
# operators are missing and importing transformers' models fails. Nothing on this path needs it.
"$ENV_DIR/bin/python" -m pip uninstall -y -q torchvision
touch "$ENV_DIR/.installed"
