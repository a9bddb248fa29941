# Sourced by the install scripts: where the CPU build of torch comes from (a local wheel directory pip has, e.g.
# /opt/wheels, else PyTorch's CPU index), so that no script pulls PyPI's multi-GB CUDA build by accident.
WHEELS_DIR=${PIP_FIND_LINKS:-/opt/wheels}

has_local_cpu_torch() {  # has_local_cpu_torch VERSION
  ls "$WHEELS_DIR"/torch-"$1"+cpu-*.whl >/dev/null 2>&1
}

# cpu_torch_args VERSION: sets the array `torch` to pip arguments installing that CPU build beside other packages
cpu_torch_args() {
  if has_local_cpu_torch "$1"; then
    torch=(--find-links "$WHEELS_DIR" "torch==$1")
  else
    torch=("torch==$1" --extra-index-url https://download.pytorch.org/whl/cpu)
  fi
}
