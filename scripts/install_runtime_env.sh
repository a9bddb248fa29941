#!/usr/bin/env bash
# A runtime-only environment, as a serving container or an edge box has it: `pip install 'fewstep[runtime,serve]'`,
# no torch. tests/test_runtime_only_install.py runs the runtime's commands in it against a bundle the test exports
# with the full install. Rebuilt when pyproject.toml changes; cheap (no torch): ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR=${FEWSTEP_RUNTIME_ENV:-.venv-runtime}
PYTHON=${PYTHON:-python3}
STAMP="$ENV_DIR/.installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
echo "install: $ENV_DIR with fewstep[runtime,serve] only (no torch), for the runtime-only test"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off -e ".[runtime,serve]"
if "$ENV_DIR/bin/python" -c "import torch" 2>/dev/null; then
  echo "install: $ENV_DIR has torch although fewstep[runtime,serve] must not pull it" >&2
  exit 1
fi
touch "$STAMP"
