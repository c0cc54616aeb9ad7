#!/usr/bin/env bash
# The operator at scale (issue 7): 1,000 FineTuneJobs created at once, reconciled by the real
# controller against the fake API server; prints the time until all are planned and applied,
# reconciliations per second, peak RSS and the ratios to the targets (10 s, 64 MiB).
# Runs twice: with the fake API server in the operator's process (as the scenario tests do), then
# in a child process behind HTTP, so that the operator's own peak RSS is measured alone.
#   scripts/bench_operator.sh [--jobs N] [--concurrency C]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p lf-operator --example scale_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/scale_bench"
"$bench" --apiserver in-process "$@"
echo
"$bench" --apiserver process "$@"
