# Sourced by the README's commands, .ci/run and the Dockerfile's build stage: installs libtorch (the
# C++ part of PyPI's torch 2.13.0 wheel) when missing and points tch at it.
#   source scripts/env.sh            (CPU libtorch)
#   LF_TORCH_FLAVOUR=cuda source scripts/env.sh
_lf_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust 1.89 or newer) is required: https://rustup.rs" >&2
  return 1 2>/dev/null || exit 1
fi
_lf_root=$("$_lf_repo/scripts/install-libtorch.sh" "${LF_TORCH_FLAVOUR:-cpu}") || { return 1 2>/dev/null || exit 1; }
export LIBTORCH="$_lf_root/torch" LIBTORCH_CXX11_ABI=1
# Test binaries of crates without the rpath build script still find libtorch.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LF_PYTHON="${LF_PYTHON:-$_lf_repo/.venv/bin/python}"
unset _lf_root
