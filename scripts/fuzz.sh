#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the parsers that read untrusted bytes: builds
# every target in fuzz/ and runs each for SECONDS (default 30), starting from its committed seed
# corpus fuzz/corpus/<target>. Fails on any crash, panic, timeout (-timeout) or out-of-memory
# (-rss_limit_mb); libFuzzer leaves the input in fuzz/artifacts/<target>/. Prints per target the
# executions, executions per second and corpus size.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Works on a stable toolchain: with `-s none` cargo-fuzz needs no sanitizer (-Z) flags, and
# RUSTC_BOOTSTRAP=1 only lets it pass the unstable `-Z` options it still adds (see fuzz/README.md).
# New inputs found go to fuzz/target/corpus/<target> (ignored by git), never to the seed corpus.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
seconds=${1:-30}
shift || true
cd "$repo/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
if ! rustc -V | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
# Release with debug assertions (cargo-fuzz's default), no sanitizer: the targets are safe Rust
# whose bugs are panics, overflows, hangs and huge allocations, which this catches. 16 codegen units
# and lightly optimised dependencies (fuzz/Cargo.toml) keep a cold build to about 5 minutes.
cargo fuzz build -s none --codegen-units 16 >&2
build_s=$(( $(date +%s) - start ))
echo "build: ${build_s}s"

bin_dir="$repo/fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
failed=()
printf '%-20s %10s %10s %8s %s\n' target execs execs/s corpus result
for t in "${targets[@]}"; do
  work="$repo/fuzz/target/corpus/$t"
  artifacts="$repo/fuzz/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  log="$repo/fuzz/target/$t.log"
  rc=0
  "$bin_dir/$t" "$work" "$repo/fuzz/corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc; input in fuzz/artifacts/$t/, log $log)"
    failed+=("$t")
    grep -E '^(==|thread|panicked|SUMMARY|Failing input|artifact_prefix)|panicked at' "$log" | head -20 >&2 || true
  fi
  printf '%-20s %10s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done
echo "total: $(( $(date +%s) - start ))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}" >&2
  exit 1
fi
