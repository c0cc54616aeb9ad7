# syntax=docker/dockerfile:1
# The lf-operator image: both binaries, `lf-operator` (the controller; the Helm chart runs it) and
# `lf-trainer` (what every FineTuneJob pod runs), built against the libtorch CI uses: the C++ part
# of PyPI's torch 2.13.0 wheel, installed by scripts/install-libtorch.sh (here its `cuda` flavour,
# which adds the CUDA, cuDNN and NCCL libraries that wheel is built against).
#
#   docker build -t lf-operator:dev .
#
# The binaries carry a RUNPATH to /opt/libtorch/torch/lib (the rpath build scripts), and
# libtorch's own RPATH ($ORIGIN/../../nvidia/<lib>/lib) finds the NVIDIA libraries next to it, so
# the runtime stage keeps the same /opt/libtorch layout.

ARG RUST_VERSION=1.95
# `base` is the CUDA image with the container-toolkit settings (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES, the driver library path) and cudart only: every other CUDA library
# comes from the torch wheel's own set, at the exact versions libtorch was built against, so the
# much larger `runtime` image would only add duplicates.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---- builder -------------------------------------------------------------------------------
# Debian bookworm (glibc 2.36) builds binaries that run on Ubuntu 24.04 (glibc 2.39).
FROM rust:${RUST_VERSION}-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# pip downloads the torch and NVIDIA wheels; the C++ compiler (for torch-sys and the c10d shim)
# is already in the image. Unpinned: bookworm's packages only receive security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# libtorch first, in its own layer: it changes far less often than the sources.
COPY scripts/install-libtorch.sh scripts/install-libtorch.sh
ENV LF_LIBTORCH_ROOT=/opt/libtorch
RUN scripts/install-libtorch.sh cuda

# TCH_FORCE_CUDA_LINK keeps libtorch_cuda in the binaries' NEEDED list (rustc links with
# --as-needed, which would drop it and leave CUDA unavailable at run time).
ENV LIBTORCH=/opt/libtorch/torch \
    LIBTORCH_CXX11_ABI=1 \
    TCH_FORCE_CUDA_LINK=1
COPY . .
# lf-dist's `nccl` feature: ProcessGroupNCCL for multi-GPU training. The target directory is a
# cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lf-trainer --features lf-dist/nccl \
    && cargo build --release --locked -p lf-operator \
    && install -D -m 0755 -t /out/bin target/release/lf-trainer target/release/lf-operator

# Only what the binaries load at run time: libtorch's and the NVIDIA libraries (libraries that
# libtorch and cuDNN dlopen, such as cuDNN's engine libraries, are invisible to ldd, so whole
# library directories are kept), without headers, static archives or the Python bindings.
RUN rm -rf /opt/libtorch/torch/include /opt/libtorch/nvidia/*/include \
    && find /opt/libtorch \( -name '*.a' -o -name 'libtorch_python.so' \) -delete

# ---- runtime -------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime

# The non-root user the chart and the rendered trainer pods run as (uid/gid 65532).
RUN groupadd --gid 65532 lf \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lf

COPY --from=builder /opt/libtorch /opt/libtorch
COPY --from=builder /out/bin/ /usr/local/bin/

# A fallback for anything that bypasses the RUNPATH; the base image's driver paths are kept.
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib:${LD_LIBRARY_PATH}

USER 65532:65532
WORKDIR /tmp
CMD ["lf-operator", "--help"]
