#!/usr/bin/env bash
# Benchmark: time per step and rank 0's model-state bytes (measured vs the planner) for ZeRO
# stages 0-3 with 1, 2 and 3 local ranks on CPU (see scripts/bench_zero.py for the options).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >&2
[ -x .venv/bin/python ] || scripts/install-python-ref.sh >&2
cargo build --release --bin lf-trainer >&2
exec .venv/bin/python scripts/bench_zero.py "$@"
