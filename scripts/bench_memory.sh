#!/usr/bin/env bash
# Benchmark: peak host memory of one LoRA training micro-batch (8 layers, vocabulary 32k, 512 tokens)
# with and without the chunked loss and layer recomputation, printed as MiB and as ratios to the
# plain configuration. Each configuration runs in its own child process (peak RSS is per process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test -p lf-model --test memory -- --nocapture --test-threads=1 2>&1 \
  | grep -E "^(one micro-batch|configuration|recompute=|chunked loss|ratios)"
