#!/usr/bin/env bash
# Builds the upstream control-plane binaries from their Go sources (the module proxy is the only
# source): kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes
# v1.37.2), etcd (go.etcd.io/etcd/server/v3), helm (helm.sh/helm/v4) and Kueue's controller
# manager (sigs.k8s.io/kueue, with its CRDs in ../kueue-crds), each pinned by the go.mod and go.sum
# beside this script.
#
#   tests/cluster/upstream/build.sh        prints the directory holding the binaries
#
# The binaries land in a cache keyed by the Go version and every go.mod/go.sum/main.go here
# ($LF_CLUSTER_CACHE, default ~/.cache/lf-operator/k8s/<key>); a second run rebuilds nothing.
# One binary is linked at a time: on 2 cores that is as fast as parallel links and needs far less
# memory. Progress goes to stderr; stdout is only the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$( (go version; cd "$here" && cat build.sh ./*/go.mod ./*/go.sum ./*/*.go) | sha256sum | cut -c1-16)
out=${LF_CLUSTER_CACHE:-$HOME/.cache/lf-operator/k8s}/$key
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd helm kueue)

complete=1
for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || complete=0; done
[ -f "$out/kueue-crds/.complete" ] || complete=0
if [ "$complete" = 1 ]; then
  echo "upstream binaries: cached in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out/bin"
export GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0
# The version stamps Kubernetes' own build sets (hack/lib/version.sh): without them the binaries say
# v0.0.0-master, and Helm refuses charts that require a minimum kubeVersion.
kube_version=v1.37.2
stamp=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  stamp+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
helm_stamp="-X helm.sh/helm/v4/internal/version.version=v4.3.2 -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
build() { # module-dir output-name package
  local start=$SECONDS
  if [ -x "$out/bin/$2" ]; then return; fi
  echo "building $2 ($3)" >&2
  local flags="-s -w $stamp"
  [ "$2" = helm ] && flags="-s -w $helm_stamp"
  (cd "$here/$1" && go build -ldflags="$flags" -o "$out/bin/$2.partial" "$3")
  mv "$out/bin/$2.partial" "$out/bin/$2"
  echo "built $2 in $((SECONDS - start)) s" >&2
}
start=$SECONDS
build kube kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kube kubectl k8s.io/kubernetes/cmd/kubectl
build etcd etcd .
build helm helm helm.sh/helm/v4/cmd/helm
build kueue kueue sigs.k8s.io/kueue/cmd/kueue
# Kueue's CRDs, from the same module version, beside the binaries.
mkdir -p "$out/kueue-crds"
cp "$(cd "$here/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"/config/components/crd/bases/*.yaml "$out/kueue-crds/"
touch "$out/kueue-crds/.complete"
echo "upstream binaries built in $((SECONDS - start)) s into $out/bin" >&2
# Older builds (other pins) are no longer needed.
for old in "$(dirname "$out")"/*/; do [ "${old%/}" = "$out" ] || rm -rf "$old"; done
echo "$out/bin"
