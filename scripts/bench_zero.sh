#!/usr/bin/env bash
# Benchmark: time per step and rank 0's model-state bytes (measured vs the planner) for ZeRO
# stages 0-3 with 1, 2 and 3 local ranks on CPU; with --overlap, time per step at world 2 with and
# without overlap_comm for stages 0-2 (see scripts/bench_zero.py for the options).
# LF_BENCH_PROFILE=dev times the debug build instead of the release one (the kernels are
# libtorch's either way; say which when you report).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >&2
[ -x .venv/bin/python ] || scripts/install-python-ref.sh >&2
profile=${LF_BENCH_PROFILE:-release}
cargo build --profile "$profile" --bin lf-trainer >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
exec .venv/bin/python scripts/bench_zero.py --trainer "target/$dir/lf-trainer" "$@"
