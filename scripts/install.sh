#!/usr/bin/env bash
# Create the virtual environment and install fewstep for training, evaluation and tests.
#
# torch is installed first and then pinned, so that no other package can pull a different (multi-GB CUDA) build:
#   - TORCH_SPEC set (e.g. TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128):
#     exactly that, for GPU users who want a particular CUDA build;
#   - else, an NVIDIA GPU visible (nvidia-smi): PyPI's default torch 2.13.0 (a CUDA build);
#   - else: the CPU build of torch 2.13.0 (from a local wheel directory if pip has one, e.g. /opt/wheels,
#     otherwise from PyTorch's CPU index).
# A torch already present in the environment is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cpu_torch.sh
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-train,runtime,export,edge,serve,dev}
TORCH_VERSION=2.13.0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install --disable-pip-version-check --progress-bar off)

if ! "$py" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    echo "install: torch from TORCH_SPEC=$TORCH_SPEC ${TORCH_INDEX_URL:+(index $TORCH_INDEX_URL)}"
    "${pip[@]}" "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing torch==$TORCH_VERSION (CUDA build from PyPI)"
    "${pip[@]}" "torch==$TORCH_VERSION"
  elif has_local_cpu_torch "$TORCH_VERSION"; then
    echo "install: no GPU, installing the local CPU build of torch==$TORCH_VERSION"
    "${pip[@]}" --find-links "$WHEELS_DIR" "torch==$TORCH_VERSION"
  else
    echo "install: no GPU, installing the CPU build of torch==$TORCH_VERSION from PyTorch's CPU index"
    "${pip[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$py" -c "import torch; print(f'torch=={torch.__version__}')" > "$VENV/torch-constraint.txt"
echo "install: fewstep[$EXTRAS] with $(cat "$VENV/torch-constraint.txt") pinned"
"${pip[@]}" -c "$VENV/torch-constraint.txt" -e ".[$EXTRAS]"
"$py" -c "import fewstep, torch; print(f'install: fewstep {fewstep.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
