#!/usr/bin/env bash
# What the end-to-end cluster needs on the host besides Go (which builds the upstream binaries):
# iproute2 (network namespaces, veth, bridge), openssl (certificates), curl (readiness), util-linux
# (setpriv, unshare). Installed from Debian's packages when missing.
set -euo pipefail
missing=()
for tool in ip:iproute2 openssl:openssl curl:curl setpriv:util-linux unshare:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "error: Go 1.26 is needed to build the control plane (tests/cluster/upstream)" >&2; exit 1; }
