#!/usr/bin/env bash
# The README's first command: sets up everything on a fresh machine (libtorch, the two binaries)
# and runs the bundled quick start as a local FineTuneJob — planned, rendered and trained exactly as
# in a cluster, with the pods as local processes. No cluster, no GPU, no Python needed.
#   scripts/quickstart.sh [extra lf-operator local flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --bin lf-operator --bin lf-trainer
exec target/debug/lf-operator local -f examples/quickstart.yaml "$@"
