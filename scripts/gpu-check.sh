#!/usr/bin/env bash
# GPU check: everything CI (CPU only) cannot test, in a few minutes on a machine with CUDA GPUs.
#   scripts/gpu-check.sh
# 1. libtorch: $LIBTORCH if it already has libtorch_cuda.so, else scripts/install-libtorch.sh cuda
#    (downloads ~3 GB from PyPI; pre-install it where the machine is offline).
# 2. Builds lf-dist's checker with the `nccl` feature and TCH_FORCE_CUDA_LINK=1 (release).
# 3. Runs, with one process per GPU (NCCL cannot put two ranks on one GPU):
#    - NCCL collectives (all-reduce, reduce-scatter, all-gather, broadcast, barrier; f32 and bf16)
#      for world sizes 1..#GPUs (at most 8),
#    - the all-reduce bus bandwidth over all GPUs,
#    - a rank dying mid-job (needs >= 2 GPUs): the others must fail, not hang,
#    - the CUDA caching allocator's peak statistics read through the shim,
#    - lf-trainer (built with NCCL) on a generated 8-layer model: world 1, and on >= 2 GPUs ZeRO
#      stages 0-3 (and QLoRA under ZeRO-3) with world min(#GPUs, 3): max |Δparam| against world 1
#      and the CUDA allocator's peak against the planner's prediction, as a second table.
# Prints a table; exits non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

fail() { echo "gpu-check: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: this script needs a machine with CUDA GPUs"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || true
[ "${ngpu:-0}" -ge 1 ] || fail "no CUDA GPU visible (nvidia-smi -L lists none)"
gpus=$(( ngpu > 8 ? 8 : ngpu ))

if [ -z "${LIBTORCH:-}" ] || [ ! -f "$LIBTORCH/lib/libtorch_cuda.so" ]; then
  root=$(scripts/install-libtorch.sh cuda) || fail "installing the cuda flavour of libtorch failed"
  export LIBTORCH="$root/torch"
fi
# c10d's ProcessGroupNCCL.hpp includes ATen/cuda headers that need cusolverDn.h, which the wheel set
# of install-libtorch.sh does not carry: add torch 2.13's own nvidia-cusolver (headers + lib).
lt_root=$(dirname "$LIBTORCH")
if ! ls "$lt_root"/nvidia/*/include/cusolverDn.h >/dev/null 2>&1; then
  echo "gpu-check: adding nvidia-cusolver headers to $lt_root" >&2
  dl=$(mktemp -d)
  python3 -m pip download --no-cache-dir --no-deps -q -d "$dl" nvidia-cusolver==12.0.4.66 \
    || fail "downloading nvidia-cusolver (for cusolverDn.h) failed"
  python3 - "$lt_root" "$dl" <<'PY' || fail "extracting nvidia-cusolver failed"
import glob, os, sys, zipfile
root, dl = sys.argv[1], sys.argv[2]
for whl in glob.glob(os.path.join(dl, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith("nvidia/") and ("/include/" in n or "/lib/" in n)])
PY
  rm -rf "$dl"
fi
export LIBTORCH_CXX11_ABI=1 TCH_FORCE_CUDA_LINK=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/targets/gpu}
echo "gpu-check: $ngpu GPU(s), libtorch at $LIBTORCH, building (release, feature nccl)..." >&2
cargo build --release -p lf-dist --features nccl --bin lf-dist-check >&2 || fail "build failed"
bin="$CARGO_TARGET_DIR/release/lf-dist-check"

logs=$(mktemp -d)
rows=()
failed=0
row() { rows+=("$(printf '%-34s %5s  %-4s  %s' "$1" "$2" "$3" "$4")"); [ "$3" = FAIL ] && failed=1; return 0; }

# run_job WORLD TIMEOUT_MS LIMIT_S ARGS... : one process per GPU on a fresh port; sets $codes and
# $job_s, logs in $logs/rank<r>.{out,err}.
run_job() {
  local world=$1 timeout_ms=$2 limit=$3; shift 3
  local port=$(( 20000 + RANDOM % 20000 )) pids=() r start
  start=$(date +%s.%N)
  for (( r = 0; r < world; r++ )); do
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=$world RANK=$r LOCAL_RANK=$r \
      LF_DIST_DEVICE=cuda LF_DIST_TIMEOUT_MS=$timeout_ms \
      timeout -s KILL "$limit" "$bin" "$@" >"$logs/rank$r.out" 2>"$logs/rank$r.err" &
    pids+=($!)
  done
  codes=()
  for pid in "${pids[@]}"; do wait "$pid"; codes+=($?); done
  job_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}
all_zero() { local c; for c in "${codes[@]}"; do [ "$c" = 0 ] || return 1; done; }
first_error() { grep -h -m1 -v '^\[W' "$logs"/rank*.err 2>/dev/null | head -c 160; }

for (( w = 1; w <= gpus; w++ )); do
  run_job "$w" 60000 120 collectives
  if all_zero; then row "nccl collectives f32+bf16" "$w" PASS "${job_s}s"
  else row "nccl collectives f32+bf16" "$w" FAIL "exit codes ${codes[*]}: $(first_error)"; fi
done

run_job "$gpus" 60000 120 bandwidth $(( 256 << 20 )) 20
if all_zero; then
  row "nccl all-reduce 256 MiB busbw" "$gpus" PASS "$(grep -h '^busbw_gbps=' "$logs"/rank0.out | cut -d= -f2) GB/s"
else row "nccl all-reduce 256 MiB busbw" "$gpus" FAIL "exit codes ${codes[*]}: $(first_error)"; fi

if [ "$gpus" -ge 2 ]; then
  victim=$(( gpus - 1 ))
  run_job "$gpus" 10000 60 die-after-first "$victim"
  ok=1; detail=""
  for (( r = 0; r < gpus; r++ )); do
    c=${codes[$r]}
    if [ "$r" = "$victim" ]; then [ "$c" = 9 ] || ok=0
    else { [ "$c" != 0 ] && [ "$c" != 137 ]; } || ok=0; detail+="rank $r exit $c; "; fi
  done
  if [ $ok = 1 ]; then row "nccl rank dies mid-job" "$gpus" PASS "${detail}${job_s}s (timeout 10s)"
  else row "nccl rank dies mid-job" "$gpus" FAIL "exit codes ${codes[*]} (137 = hung, killed): $(first_error)"; fi
else
  row "nccl rank dies mid-job" 1 SKIP "needs 2 GPUs"
fi

if LOCAL_RANK=0 "$bin" cuda-peak 256 >"$logs/peak.out" 2>"$logs/peak.err"; then
  row "cuda allocator peak stats" - PASS "$(cat "$logs/peak.out")"
else row "cuda allocator peak stats" - FAIL "$(head -c 160 "$logs/peak.err")"; fi

# The trainer itself on the GPU(s) (scripts/trainer-dist-check.sh): lf-trainer built with NCCL trains a generated model (8 layers,
# hidden 1024, up to 64 tokens, LoRA r=16 on all linears, fp32) with world 1 and, on >= 2 GPUs, with
# world min(#GPUs, 3) for ZeRO stages 0-3 (plus QLoRA under ZeRO-3) and the same global batch.
# Each row: max |Δparam| against world 1, and rank 0's CUDA allocator peak (through the shim)
# against the planner's per-GPU peak less its fixed overhead, with the model-state bytes.
if cargo build --release -p lf-trainer --features lf-dist/nccl --bin lf-trainer >&2; then
  tw=$(( gpus >= 3 ? 3 : gpus ))
  if scripts/trainer-dist-check.sh "$CARGO_TARGET_DIR/release/lf-trainer" "$tw" >"$logs/trainer.out" 2>"$logs/trainer.err"; then
    row "trainer ZeRO equivalence + peak" "$tw" PASS "table below"
  else row "trainer ZeRO equivalence + peak" "$tw" FAIL "table below; $(tail -n1 "$logs/trainer.err" | head -c 120)"; fi
  trainer_table="$logs/trainer.out"
else
  row "trainer build (nccl)" - FAIL "cargo build -p lf-trainer --features lf-dist/nccl failed"
fi

echo
printf '%-34s %5s  %-4s  %s\n' check world res detail
printf '%s\n' "${rows[@]}"
if [ -n "${trainer_table:-}" ]; then echo; cat "$trainer_table"; fi
echo "logs: $logs"
exit $failed
