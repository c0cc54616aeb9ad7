#!/usr/bin/env bash
# The trainer's distributed check on whatever device lf-trainer picks (one GPU per rank when CUDA
# is available, with NCCL; else the CPU with Gloo):
#   scripts/trainer-dist-check.sh [LF_TRAINER_BIN] [WORLD]      (defaults: target/release, 2)
# Generates an 8-layer model (hidden 1024, LoRA r=16 on all linears, fp32, global batch 6, 6 steps)
# and trains it with world 1, then with WORLD ranks under ZeRO stages 0-3 and QLoRA under ZeRO-3.
# Prints one row per run: max |Δparam| against world 1 (PASS below 1e-5), rank 0's CUDA allocator
# peak next to the planner's per-GPU peak less its fixed overhead (n/a on the CPU), and rank 0's
# model-state bytes measured/planned. Exits non-zero if a run fails or differs.
# scripts/gpu-check.sh runs it on GPUs; on a CPU machine it is the same check CI's tests make, larger.
set -uo pipefail
cd "$(dirname "$0")/.."
trainer=${1:-target/release/lf-trainer}
world=${2:-2}
[ -x "$trainer" ] || { echo "trainer-dist-check: $trainer is not built" >&2; exit 2; }
[ -x .venv/bin/python ] || scripts/install-python-ref.sh >&2 || { echo "trainer-dist-check: the Python reference stack is missing" >&2; exit 2; }

work=$(mktemp -d)
logs="$work/logs"
mkdir -p "$logs"
# The model, data and config scripts/bench_zero.py benchmarks with, larger, with long answers so
# every sequence fills cutoff_len (one process and the ranks then run the same shapes); the
# overrides below make the run short and clip gradients.
cfg=$(.venv/bin/python scripts/bench_zero.py --prepare "$work" --layers 8 --hidden 1024 --lora-rank 16 --examples 256 --seq 512) \
  || { echo "trainer-dist-check: making the test model failed" >&2; exit 2; }

# train_run NAME WORLD STAGE OVERRIDES...: one process per rank; output in $work/NAME.
train_run() {
  local name=$1 n=$2 stage=$3; shift 3
  local port=$(( 20000 + RANDOM % 20000 )) pids=() r ok=0
  for (( r = 0; r < n; r++ )); do
    env -u LF_CONFIG -u LF_STATUS_FILE -u LF_METRICS_ADDR OMP_NUM_THREADS=1 \
      MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=$n RANK=$r LOCAL_RANK=$r \
      timeout -s KILL 900 "$trainer" train "$cfg" "output_dir=$work/$name" max_steps=6 logging_steps=1 \
      max_grad_norm=0.5 "zero_stage=$stage" "per_device_train_batch_size=$(( 6 / n ))" "$@" \
      >"$logs/$name.rank$r.out" 2>"$logs/$name.rank$r.err" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || ok=1; done
  return $ok
}

# compare REF OUT: "max|Δ| | allocator peak | planned peak | states measured/planned" (GiB).
compare() {
  .venv/bin/python - "$1" "$2" <<'PY'
import json, sys
from safetensors.torch import load_file
ref, out = sys.argv[1], sys.argv[2]
a, b = load_file(f"{ref}/adapter_model.safetensors"), load_file(f"{out}/adapter_model.safetensors")
d = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
rec = next(json.loads(l)["memory"] for l in open(f"{out}/trainer_log.jsonl") if '"memory"' in l)
m, p = rec["measured"], rec["planned"]
gib = lambda x: f"{x / 2**30:.3f}" if x is not None else "n/a"
st = lambda r: r["frozen_weight_bytes"] + r["trainable_weight_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"]
print(f"{d:.1e} | {gib(rec.get('measured_peak_bytes'))} | {gib(rec.get('planned_peak_bytes'))} | {gib(st(m))}/{gib(st(p))}")
PY
}

failed=0
rows=()
row() { rows+=("$(printf '%-18s %5s  %-4s  %s' "$1" "$2" "$3" "$4")"); [ "$3" = FAIL ] && failed=1; return 0; }

run_case() { # LABEL REF NAME WORLD STAGE OVERRIDES...
  local label=$1 ref=$2 name=$3 n=$4 stage=$5; shift 5
  if train_run "$name" "$n" "$stage" "$@"; then
    local res d verdict
    res=$(compare "$work/$ref" "$work/$name")
    d=${res%% *}
    verdict=$(awk -v d="$d" 'BEGIN { print (d + 0 < 1e-5) ? "PASS" : "FAIL" }')
    row "$label" "$n" "$verdict" "$res"
  else
    row "$label" "$n" FAIL "$(grep -h -m1 -i error "$logs/$name".rank*.err | head -c 160)"
  fi
}

run_case "lora world 1" w1 w1 1 0
run_case "qlora world 1" q1 q1 1 0 quantization_bit=4
if [ "$world" -ge 2 ]; then
  for stage in 0 1 2 3; do
    run_case "lora ZeRO-$stage" w1 "lora-s$stage" "$world" "$stage"
  done
  run_case "qlora ZeRO-3" q1 qlora-s3 "$world" 3 quantization_bit=4
fi

printf '%-18s %5s  %-4s  %s\n' run world res 'max|Δparam| vs world 1 | allocator peak GiB | planned peak GiB (less fixed overhead) | model states GiB measured/planned'
printf '%s\n' "${rows[@]}"
echo "logs: $logs"
exit $failed
