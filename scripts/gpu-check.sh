#!/usr/bin/env bash
# The GPU proof in one call of the device tool (issue 15): what CI, on CPUs, cannot show.
#   scripts/gpu-check.sh             on the GPU device machine (needs device-bin/ from scripts/build-device.sh)
#   scripts/gpu-check.sh --dry-run   the same steps on this machine's CPU, small sizes (CI runs it)
#   options: --bench-1b (benchmark the Llama-3.2-1B shape instead of Llama-3-8B's)
#
# The device call (the run tool; what travels: the working tree + device-bin/, ~26 MiB; 8 min budget,
# so timeout_s 540 leaves room for the tool's start and transfers):
#   run  command: "scripts/gpu-check.sh"   carry: ["device-bin"]   timeout_s: 540
# A rerun of some steps only (prepare is what the later steps read):
#   run  command: "LF_GPU_CHECK_STEPS='prepare planner' LF_GPU_CHECK_BUDGET=300 scripts/gpu-check.sh"  carry: ["device-bin"]
# Results come back in $OUT: summary.md (the tables, appended as each step ends), results.jsonl (one
# JSON object per step), log.txt (every step's full output).
#
# Steps, in order, each under its own `timeout` (and all under LF_GPU_CHECK_BUDGET s, default 480;
# a step that no longer fits is SKIPPED and fails the check):
#  1. env      nvidia-smi, the image's torch/CUDA/cuDNN/NCCL/transformers/peft versions, device-bin's
#              BUILD-INFO, every shared library of both binaries resolved (ldd, LD_BIND_NOW), and the
#              SDPA kernel torch picks for bf16/fp16 at our models' head shapes (causal, GQA).
#  2. prepare  random-weight models and synthetic alpaca data (transformers' own Llama init, seed 0):
#              tiny; the benchmark model, Llama-3-8B's shape (16 GB bf16, in /dev/shm); the planner
#              model, Llama-3.2-1B's shape; the lf-trainer configs of every run.
#  3. nccl     lf-dist-check with NCCL, world size 1: every collective (f32, bf16), the all-reduce
#              bandwidth probe's path, the CUDA allocator peak through the shim. With >= 2 GPUs also
#              worlds 2..N and their bus bandwidth; with one GPU it says plainly that multi-GPU NCCL
#              and ZeRO equivalence need a machine of several GPUs.
#  4. tiny     lf-trainer on the GPU vs the CPU (CUDA_VISIBLE_DEVICES=), tiny model, 6 steps: the loss
#              of every step within 2e-2 (bf16) and 1e-3 (fp32) relative; and the attention kernel
#              lf-trainer reports for `flash_attn: fa2` in bf16 must be `flash` (else FAIL).
#  5. bench-lf, bench-hf, bench   LoRA r=16 on all linears, bf16, sequence 2048, micro-batch 1,
#              10 steps, gradient checkpointing, AdamW, on the 8B-shaped model: lf-trainer, then
#              transformers+PEFT (sdpa attention, adapters fp32, autocast bf16); tokens/s (whole loop
#              and steps 3+), MFU, the allocator's allocated peak (and reserved, where readable),
#              nvidia-smi's peak for each process, final loss.
#  6. planner  the planner's predicted peak (as lf-trainer logs it) vs the CUDA allocator's peak for
#              six runs on the 1B shape: LoRA 1k/4k/1k×mb4, QLoRA 1k×mb4, full 1k/4k.
#  7. zero     (>= 2 GPUs only) scripts/trainer-dist-check.sh: ZeRO 0-3 and QLoRA/ZeRO-3 vs world 1.
# The Python side (scripts/gpu_check.py) uses the image's /opt/torch/.venv/bin/python3 (torch 2.11,
# transformers, peft, safetensors; LF_GPU_PYTHON overrides) and never downloads anything.
#
# --dry-run: every step that needs no CUDA, on the CPU, with small shapes (models of 2-4 layers,
# sequences 64-512), the Python reference stack of .venv (scripts/install-python-ref.sh) and the
# device binaries when device-bin/ exists (run here with the cached libtorch 2.11 of
# build-device.sh and .venv's NVIDIA libraries: the artefacts that travel are the ones tested),
# else the production lf-trainer. The GPU-vs-CPU comparison then compares two CPU runs, the flash
# and memory checks are reported, not enforced: the dry run proves the plumbing, not the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
mode=device
bench_shape=llama3-8b
for a in "$@"; do
  case $a in
    --dry-run) mode=dry ;;
    --bench-1b) bench_shape=llama3.2-1b ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "usage: $0 [--dry-run] [--bench-1b]" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$repo/out/gpu-check-$mode}
mkdir -p "$OUT"
summary=$OUT/summary.md results=$OUT/results.jsonl log=$OUT/log.txt
: >"$summary"; : >"$results"; : >"$log"
if [ "$mode" = device ]; then budget=${LF_GPU_CHECK_BUDGET:-480}; else budget=${LF_GPU_CHECK_BUDGET:-240}; fi
start=$(date +%s)
deadline=$(( start + budget ))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Python, binaries and the libraries they load.
if [ "$mode" = device ]; then
  py=${LF_GPU_PYTHON:-/opt/torch/.venv/bin/python3}
  bindir=$repo/device-bin
  if [ ! -x "$bindir/lf-trainer" ] || [ ! -x "$bindir/lf-dist-check" ]; then
    echo "gpu-check: $bindir/lf-trainer and lf-dist-check are missing: run scripts/build-device.sh here and carry device-bin" >&2
    exit 2
  fi
  torchdir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
    || { echo "gpu-check: $py cannot import torch" >&2; exit 2; }
  libs="$torchdir/lib"
  for d in "$(dirname "$torchdir")"/nvidia/*/lib; do [ -d "$d" ] && libs+=":$d"; done
  command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu-check: nvidia-smi not found: not a GPU machine (use --dry-run)" >&2; exit 2; }
  free_shm=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 { print int($4 / 1048576) }')
  if [ "${free_shm:-0}" -ge 40 ]; then work=/dev/shm/lf-gpu-check; else work=/tmp/lf-gpu-check; fi
  rm -rf "$work"; mkdir -p "$work"
else
  py=${LF_PYTHON:-$repo/.venv/bin/python}
  [ -x "$py" ] || scripts/install-python-ref.sh >&2 || { echo "gpu-check: the Python reference stack is missing" >&2; exit 2; }
  dl=${LF_DEVICE_LIBTORCH_ROOT:-$HOME/.cache/lf-operator/libtorch-2.11.0-device}/torch/lib
  venv_nv=$("$py" -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["purelib"], "nvidia"))')
  if [ -x "$repo/device-bin/lf-trainer" ] && [ -f "$dl/libtorch_cuda.so" ] && [ -d "$venv_nv" ]; then
    bindir=$repo/device-bin
    libs=$dl
    for d in "$venv_nv"/*/lib; do [ -d "$d" ] && libs+=":$d"; done
    binnote="device-bin (tch 0.24, libtorch 2.11 from $dl, NVIDIA libraries of .venv)"
  else
    bindir=""
    for p in "${CARGO_TARGET_DIR:-$repo/target}/release" "${CARGO_TARGET_DIR:-$repo/target}/debug"; do
      if [ -x "$p/lf-trainer" ] && [ -x "$p/lf-dist-check" ]; then bindir=$p; break; fi
    done
    [ -n "$bindir" ] || { echo "gpu-check: no device-bin/ and no production lf-trainer + lf-dist-check built" >&2; exit 2; }
    binnote="production build $bindir (no device-bin/)"
    libs=""
  fi
  work=$(mktemp -d)
fi
export CUDA_MODULE_LOADING=LAZY OMP_NUM_THREADS=${OMP_NUM_THREADS:-$([ "$mode" = dry ] && echo 2 || echo 8)}
trainer=$bindir/lf-trainer distcheck=$bindir/lf-dist-check
# The binaries' library path (the image's torch/lib and nvidia/*/lib; for the dry run the cached
# libtorch 2.11 and .venv's NVIDIA libraries), set for them alone, not for Python.
binld=$libs${LD_LIBRARY_PATH:+${libs:+:}$LD_LIBRARY_PATH}
gpu_name=""
[ "$mode" = device ] && gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
ngpu=0
[ "$mode" = device ] && ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
export mode py work trainer distcheck gpu_name ngpu repo bench_shape binld

{
  echo "# gpu-check ($mode) — $(date -u +%FT%TZ)"
  echo
  echo "GPU: ${gpu_name:-none (CPU dry run)}; binaries: ${binnote:-$bindir}; python: $py; work: $work; budget ${budget} s"
  echo
} >>"$summary"

steps=()
failed=0
# run_step NAME LIMIT_S FUNCTION: runs FUNCTION (exported) under `timeout`, bounded by the budget;
# its stdout (less JSON lines) goes to summary.md, its JSON lines to results.jsonl, both to log.txt.
run_step() {
  local name=$1 limit=$2 fn=$3 left rc t res
  left=$(( deadline - $(date +%s) - 5 ))
  if [ "$left" -lt 10 ]; then
    steps+=("| $name | SKIP | 0 | the $budget s budget is spent |"); failed=1
    printf '## %s: SKIPPED (budget spent)\n\n' "$name" >>"$summary"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "===== $name (limit ${limit} s) $(date -u +%T)" >>"$log"
  t=$(date +%s)
  timeout -k 10 "$limit" bash -c "$fn" >"$work/$name.stdout" 2>>"$log"
  rc=$?
  t=$(( $(date +%s) - t ))
  cat "$work/$name.stdout" >>"$log"
  case $rc in
    0) res=PASS ;;
    124|137) res=TIMEOUT; failed=1 ;;
    *) res=FAIL; failed=1 ;;
  esac
  { printf '## %s: %s (%s s)\n\n' "$name" "$res" "$t"; grep -v '^JSON ' "$work/$name.stdout"; echo; } >>"$summary"
  grep '^JSON ' "$work/$name.stdout" | sed 's/^JSON //' >>"$results"
  printf '{"step": "%s", "result": "%s", "seconds": %s, "exit": %s}\n' "$name" "$res" "$t" "$rc" >>"$results"
  steps+=("| $name | $res | $t | exit $rc |")
  echo "gpu-check: $name $res (${t} s)" >&2
}

# lf_train NAME CONFIG [ENV...]: one lf-trainer run, its log in $work/logs/NAME.log.
lf_train() {
  local name=$1 cfg=$2; shift 2
  mkdir -p "$work/logs"
  env -u LF_CONFIG -u LF_STATUS_FILE -u LF_METRICS_ADDR LD_LIBRARY_PATH="$binld" "$@" "$trainer" train "$cfg" >"$work/logs/$name.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || { echo "lf-trainer $name failed (exit $rc):"; sed 's/\x1b\[[0-9;]*m//g' "$work/logs/$name.log" | tail -n 12 | cut -c1-400; }
  return $rc
}
# kernel_of NAME: the attention kernel lf-trainer logged.
kernel_of() { sed 's/\x1b\[[0-9;]*m//g' "$work/logs/$1.log" 2>/dev/null | grep -m1 'attention backend' | grep -o 'kernel="[a-z]*"' | cut -d'"' -f2; }
# sampler FILE: nvidia-smi's used memory every 100 ms until killed (device mode).
sampler() { exec nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null; }
export -f lf_train kernel_of sampler

s_env() {
  if [ "$mode" = device ]; then
    nvidia-smi || return 1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  fi
  echo
  "$py" "$repo/scripts/gpu_check.py" env || return 1
  echo
  [ -f "$(dirname "$trainer")/BUILD-INFO" ] && { echo '```'; cat "$(dirname "$trainer")/BUILD-INFO"; echo '```'; }
  local b bad=0
  for b in "$trainer" "$distcheck"; do
    if LD_LIBRARY_PATH=$binld ldd "$b" | grep -q 'not found'; then
      echo "$b: unresolved libraries:"; LD_LIBRARY_PATH=$binld ldd "$b" | grep 'not found'; bad=1
    fi
    # Every symbol bound at load (LD_BIND_NOW=1): a missing one fails before main, whatever the arguments.
    LD_LIBRARY_PATH=$binld LD_BIND_NOW=1 "$b" --help >/dev/null 2>"$work/bind.err"
    if grep -q 'symbol lookup error\|error while loading shared libraries' "$work/bind.err"; then
      echo "$b does not load with every symbol bound (LD_BIND_NOW=1):"; head -c 600 "$work/bind.err"; bad=1
    fi
  done
  [ $bad = 0 ] && echo "binaries: every NEEDED library found and every symbol bound (LD_BIND_NOW=1)"
  return $bad
}
s_prepare() { # LF_GPU_CHECK_SIZES=dry: the dry run's small shapes in device mode (to test this script without a GPU)
  "$py" "$repo/scripts/gpu_check.py" prepare "$work" --mode "${LF_GPU_CHECK_SIZES:-$mode}" --bench-shape "$bench_shape"
}
s_nccl() {
  local dev=cpu bytes=$(( 16 << 20 )) iters=5 rc=0 w
  [ "$mode" = device ] && { dev=cuda; bytes=$(( 256 << 20 )); iters=20; }
  one() { # WORLD ARGS...
    local world=$1 port=$(( 20000 + RANDOM % 20000 )) r pids=() codes=() c ok=0; shift
    for (( r = 0; r < world; r++ )); do
      MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=$world RANK=$r LOCAL_RANK=$r LF_DIST_DEVICE=$dev \
        LF_DIST_TIMEOUT_MS=30000 LD_LIBRARY_PATH=$binld "$distcheck" "$@" >"$work/nccl.$r.out" 2>"$work/nccl.$r.err" &
      pids+=($!)
    done
    for c in "${pids[@]}"; do wait "$c"; codes+=($?); done
    for c in "${codes[@]}"; do [ "$c" = 0 ] || ok=1; done
    echo "| $* | $world | $dev | $([ $ok = 0 ] && echo PASS || echo "FAIL (exit ${codes[*]})") | $(tr '\n' ' ' <"$work/nccl.0.out" | head -c 120) $(grep -hv '^\[W' "$work"/nccl.*.err | head -n1 | head -c 160) |"
    return $ok
  }
  echo "| check | world | device | result | output |"
  echo "|---|---|---|---|---|"
  one 1 collectives || rc=1
  one 1 bandwidth "$bytes" "$iters" || rc=1
  if [ "$mode" = device ]; then
    if LOCAL_RANK=0 LD_LIBRARY_PATH=$binld "$distcheck" cuda-peak 256 >"$work/peak.out" 2>&1; then
      echo "| cuda-peak 256 MiB | - | cuda | PASS | $(tr '\n' ' ' <"$work/peak.out" | head -c 160) |"
    else echo "| cuda-peak 256 MiB | - | cuda | FAIL | $(head -c 160 "$work/peak.out") |"; rc=1; fi
  fi
  if [ "$ngpu" -ge 2 ]; then
    for (( w = 2; w <= (ngpu > 8 ? 8 : ngpu); w++ )); do one "$w" collectives || rc=1; done
    one "$(( ngpu > 8 ? 8 : ngpu ))" bandwidth "$bytes" "$iters" || rc=1
  else
    echo
    echo "World size 1 exercises NCCL's plumbing (communicator, store rendezvous, every collective, the probe's"
    echo "path; a one-rank all-reduce moves no bytes, so its bandwidth is not a link figure). Multi-GPU NCCL"
    echo "(bus bandwidth over NVLink/PCIe) and ZeRO-1/2/3 equivalence need a machine of several GPUs:"
    echo "there, this script runs worlds 2..N and the ZeRO runs of scripts/trainer-dist-check.sh (step zero);"
    echo "neither has run on a GPU yet."
  fi
  echo "JSON {\"step\": \"nccl\", \"device\": \"$dev\", \"gpus\": $ngpu, \"ok\": $([ $rc = 0 ] && echo true || echo false)}"
  return $rc
}
s_tiny() {
  local rc=0 prec k gpuenv=()
  [ "$mode" = device ] || gpuenv=(CUDA_VISIBLE_DEVICES=)
  for prec in bf16 fp32; do
    lf_train "tiny-$prec-gpu" "$work/tiny-$prec-gpu.yaml" "${gpuenv[@]}" || rc=1
    lf_train "tiny-$prec-cpu" "$work/tiny-$prec-cpu.yaml" CUDA_VISIBLE_DEVICES= || rc=1
  done
  "$py" "$repo/scripts/gpu_check.py" report tiny "$work" --gpu "$gpu_name" || rc=1
  k=$(kernel_of tiny-bf16-gpu)
  echo
  echo "lf-trainer's attention kernel for flash_attn: fa2, bf16 (its own report, from libtorch's choice): ${k:-not logged}"
  if [ "$mode" = device ] && [ "$k" != flash ]; then echo "FAIL: flash_attn: fa2 is not honoured on this GPU"; rc=1; fi
  [ "$mode" = dry ] && echo "(dry run: both runs on the CPU; the kernel is not enforced)"
  echo "JSON {\"step\": \"flash\", \"kernel\": \"${k:-none}\", \"enforced\": $([ "$mode" = device ] && echo true || echo false)}"
  return $rc
}
s_bench_lf() {
  local sp rc
  if [ "$mode" = device ]; then
    sampler "$work/smi-base" & sp=$!; sleep 1; kill $sp 2>/dev/null; wait $sp 2>/dev/null
    sampler "$work/smi-lf" & sp=$!
  fi
  lf_train bench "$work/bench.yaml"; rc=$?
  [ -n "${sp:-}" ] && { kill $sp 2>/dev/null; wait $sp 2>/dev/null; }
  local k
  k=$(kernel_of bench)
  echo "lf-trainer: exit $rc, attention kernel for flash_attn: fa2 at this model's shape: ${k:-not logged}; last lines:"
  sed 's/\x1b\[[0-9;]*m//g' "$work/logs/bench.log" | grep -v '^\s*$' | tail -n 4 | cut -c1-300
  if [ "$mode" = device ] && [ "$k" != flash ]; then echo "FAIL: flash_attn: fa2 is not honoured at the benchmark's shape"; rc=1; fi
  return $rc
}
s_bench_hf() {
  local sp rc
  [ "$mode" = device ] && { sampler "$work/smi-hf" & sp=$!; }
  "$py" "$repo/scripts/gpu_check.py" hf-train "$work" >"$work/hf.json" 2>"$work/logs/hf.log"; rc=$?
  [ -n "${sp:-}" ] && { kill $sp 2>/dev/null; wait $sp 2>/dev/null; }
  echo "transformers+PEFT: exit $rc"
  [ $rc = 0 ] || tail -n 15 "$work/logs/hf.log"
  return $rc
}
s_bench() {
  "$py" "$repo/scripts/gpu_check.py" report bench "$work" --gpu "$gpu_name" --hf "$work/hf.json" \
    --sampler-lf "$work/smi-lf" --sampler-hf "$work/smi-hf" --baseline "$work/smi-base"
}
s_planner() {
  local rc=0 name
  for name in $("$py" -c 'import json,sys; print(" ".join(c["name"] for c in json.load(open(sys.argv[1]))["planner"]))' "$work/plan.json"); do
    timeout -k 5 90 bash -c "lf_train $name $work/$name.yaml" || { echo "$name: failed or timed out"; rc=1; }
  done
  "$py" "$repo/scripts/gpu_check.py" report planner "$work" --gpu "$gpu_name" || rc=1
  return $rc
}
s_zero() { # >= 2 GPUs only: ZeRO 0-3 (and QLoRA under ZeRO-3) against world 1 (scripts/trainer-dist-check.sh)
  [ -e "$repo/.venv/bin/python" ] || { mkdir -p "$repo/.venv/bin"; ln -sf "$py" "$repo/.venv/bin/python"; }
  LD_LIBRARY_PATH=$binld "$repo/scripts/trainer-dist-check.sh" "$trainer" "$(( ngpu >= 3 ? 3 : 2 ))"
}
export -f s_env s_prepare s_nccl s_tiny s_bench_lf s_bench_hf s_bench s_planner s_zero

only=" ${LF_GPU_CHECK_STEPS:-env prepare nccl tiny bench-lf bench-hf bench planner zero} "
step() { case $only in *" $1 "*) run_step "$@" ;; esac; }
step env 60 s_env
step prepare 150 s_prepare
step nccl 60 s_nccl
step tiny 90 s_tiny
step bench-lf 120 s_bench_lf
step bench-hf 120 s_bench_hf
step bench 30 s_bench
step planner 170 s_planner
[ "$ngpu" -ge 2 ] && step zero 240 s_zero

total=$(( $(date +%s) - start ))
{
  echo "## steps ($mode, ${total} s of ${budget} s)"
  echo
  echo "| step | result | seconds | detail |"
  echo "|---|---|---|---|"
  printf '%s\n' "${steps[@]}"
  echo
  echo "overall: $([ $failed = 0 ] && echo PASS || echo FAIL)"
} >>"$summary"
cat "$summary"
[ "$mode" = dry ] && rm -rf "$work"
exit $failed
