#!/usr/bin/env bash
# Benchmark (issue 18): the longest sequence Llama-3.1-8B QLoRA (NF4, r=32 on every linear, bf16,
# one sequence per micro-batch) trains on one GPU of 24, 40 and 80 GiB, as lf-operator's planner
# predicts it (`lf-operator plan --max-context`, 10% headroom kept), with the checkpoints on the
# GPU (`offload_activations: false`) and under `auto` (offloaded to host memory, MLPs tiled),
# beside the figures Unsloth published for the same setting (unsloth.ai/blog/llama3-3: "Llama 3.1
# (8B) max. context length", A100/L4-class GPUs, no headroom). A prediction, not a measurement:
# on a GPU the trainer's memory record (`measured_peak_bytes` vs `planned_peak_bytes`) checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >&2
cargo build -q -p lf-operator >&2
job=examples/llama31-8b-qlora-64k.yaml
off=$(mktemp --suffix=.yaml)
trap 'rm -f "$off"' EXIT
sed 's/offload_activations: auto/offload_activations: false/' "$job" > "$off"
tokens() { target/debug/lf-operator plan -f "$1" --max-context --gpu-memory "$2" | sed -n 's/.*at most \([0-9]*\) tokens.*/\1/p'; }
host() { target/debug/lf-operator plan -f "$1" --max-context --gpu-memory "$2" | sed -n 's/.*offloaded (\([0-9.]* GiB\) host.*/\1/p'; }
declare -A hf=([24]=5789 [40]=12264 [80]=28454) unsloth=([24]=78475 [40]=153977 [80]=342733)
printf '%-8s %14s %14s %16s %16s %14s %12s\n' GPU "HF measured" "Uns. measured" "lf pred. on GPU" "lf pred. offload" "host GiB pred" "pred/Uns."
for g in 24 40 80; do
  on_gpu=$(tokens "$off" "$g")
  offloaded=$(tokens "$job" "$g")
  printf '%-8s %14s %14s %16s %16s %14s %12s\n' "$g GiB" "${hf[$g]}" "${unsloth[$g]}" "$on_gpu" "$offloaded" \
    "$(host "$job" "$g" | sed 's/ GiB//')" "$(awk -v a="$offloaded" -v b="${unsloth[$g]}" 'BEGIN{printf "%.2fx", a/b}')"
done
