#!/usr/bin/env bash
# Installs the libtorch that tch 0.26 builds against: the C++ part of PyPI's torch==2.13.0 wheel.
# One script for CI, the README and the Dockerfile.
#   scripts/install-libtorch.sh [cpu|cuda]   (default cpu)
# Prints nothing but progress on stderr; the root is $LF_LIBTORCH_ROOT (default ~/.cache/lf-operator/libtorch-2.13.0-<flavour>).
# Afterwards: export LIBTORCH=$root/torch LIBTORCH_CXX11_ABI=1
set -euo pipefail
flavour=${1:-cpu}
case "$flavour" in cpu|cuda) ;; *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;; esac
root=${LF_LIBTORCH_ROOT:-$HOME/.cache/lf-operator/libtorch-2.13.0-$flavour}
py=${PYTHON:-python3}
if [ -f "$root/torch/lib/libtorch_cpu.so" ]; then
  echo "libtorch ($flavour) already at $root" >&2
  echo "$root"
  exit 0
fi
mkdir -p "$root/dl"
wheels=(torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
if [ "$flavour" = cuda ]; then
  # The full CUDA runtime set that libtorch_cuda.so needs, plus the headers the NCCL shim compiles against.
  wheels+=(nvidia-cudnn-cu13 nvidia-cublas nvidia-cufft nvidia-curand nvidia-cusparse nvidia-cusparselt-cu13
           nvidia-nccl-cu13==2.29.7 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-cufile nvidia-cuda-nvrtc
           nvidia-cusolver==12.0.4.66 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
fi
echo "downloading ${wheels[*]}" >&2
"$py" -m pip download --no-cache-dir --no-deps -q -d "$root/dl" "${wheels[@]}"
"$py" - "$root" <<'PY'
import glob, os, sys, zipfile
root = sys.argv[1]
for whl in glob.glob(os.path.join(root, "dl", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        keep = [n for n in z.namelist()
                if n.startswith(("torch/lib/", "torch/include/"))
                or (n.startswith("nvidia/") and ("/lib/" in n or "/include/" in n))]
        z.extractall(root, keep)
PY
if [ "$flavour" = cpu ]; then
  # A CPU-only layout: torch-sys links libtorch_cuda only when it exists.
  rm -f "$root"/torch/lib/{libtorch_cuda.so,libtorch_cuda_linalg.so,libc10_cuda.so,libtorch_nvshmem.so,libtorch_python.so,libcaffe2_nvrtc.so}
fi
rm -rf "$root/dl"
echo "libtorch ($flavour) installed at $root" >&2
echo "$root"
