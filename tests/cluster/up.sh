#!/usr/bin/env bash
# Starts a real Kubernetes control plane from the upstream binaries (tests/cluster/upstream):
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler, on free ports, with generated
# certificates, a service-account signing key, `--authorization-mode=Node,RBAC` and the default
# admission plugins plus NodeRestriction (Pod Security Admission included). Nodes are not started
# here: tests start `lf-node` processes (the kubelet stand-in) with the identities made here.
#
#   tests/cluster/up.sh DIR        starts it; everything lives in DIR (certs, data, logs, env)
#   source DIR/env                 KUBECONFIG (admin) and the LF_CLUSTER_* variables
#   tests/cluster/down.sh DIR      stops every process and removes the network
#
# The pods' network: a Linux bridge whose address (10.N.0.1/16) is the API server's address as
# every client sees it; each pod gets its own network namespace on that bridge (lf-node). Nothing
# is routed off this machine. Needs root (network namespaces, mounts), openssl and iproute2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/pids" ] && [ -s "$dir/pids" ]; then
  "$here/down.sh" "$dir" >/dev/null 2>&1 || true
fi
rm -rf "$dir"/{etcd,logs}
mkdir -p "$dir"/{pki,logs,nodes,etcd}
: >"$dir/pids"
fail() { echo "cluster: $*" >&2; for f in "$dir"/logs/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; "$here/down.sh" "$dir" >&2 || true; exit 1; }
trap 'fail "interrupted"' INT TERM

bin=$("$here/upstream/build.sh")
start=$SECONDS

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- network: a bridge on an unused 10.N.0.0/16 -------------------------------------------------
bridge="lfbr$(echo "$dir" | sha256sum | cut -c1-8)"
ip link del "$bridge" 2>/dev/null || true
octet=
for n in $(seq 244 254); do
  if ! ip -4 -o addr show | grep -q " 10\.$n\.0\.1/"; then octet=$n; break; fi
done
[ -n "$octet" ] || fail "no free 10.N.0.0/16 for the pod network"
gw=10.$octet.0.1
ip link add "$bridge" type bridge
ip addr add "$gw/16" dev "$bridge"
ip link set "$bridge" up
echo "$bridge" >"$dir/bridge"

# ---- certificates ---------------------------------------------------------------------------------
pki=$dir/pki
openssl_q() { openssl "$@" >/dev/null 2>&1; }
openssl_q genrsa -out "$pki/ca.key" 2048
openssl_q req -x509 -new -nodes -key "$pki/ca.key" -days 3 -subj "/CN=lf-cluster-ca" -out "$pki/ca.crt"
# client_cert NAME CN [O]
client_cert() {
  local subj="/CN=$2"
  [ -n "${3:-}" ] && subj="/O=$3$subj"
  openssl_q genrsa -out "$pki/$1.key" 2048
  openssl_q req -new -key "$pki/$1.key" -subj "$subj" -out "$pki/$1.csr"
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >"$pki/$1.ext"
  openssl_q x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}
openssl_q genrsa -out "$pki/apiserver.key" 2048
openssl_q req -new -key "$pki/apiserver.key" -subj "/CN=kube-apiserver" -out "$pki/apiserver.csr"
cat >"$pki/apiserver.ext" <<EOF
extendedKeyUsage=serverAuth
keyUsage=digitalSignature,keyEncipherment
subjectAltName=IP:$gw,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
openssl_q x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 3 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt"
openssl_q genrsa -out "$pki/sa.key" 2048
openssl_q rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
client_cert admin lf-admin system:masters
client_cert controller-manager system:kube-controller-manager
client_cert scheduler system:kube-scheduler
nodes=${LF_CLUSTER_NODE_IDENTITIES:-4}
for i in $(seq 0 $((nodes - 1))); do client_cert "node-$i" "system:node:lf-node-$i" system:nodes; done

api_port=$(free_port)
server=https://$gw:$api_port
kubeconfig() { # file cert-name user
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lf
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $3
  user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}
contexts:
- name: lf
  context: {cluster: lf, user: $3}
current-context: lf
EOF
}
kubeconfig "$dir/admin.kubeconfig" admin lf-admin
kubeconfig "$dir/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
kubeconfig "$dir/scheduler.kubeconfig" scheduler system:kube-scheduler
for i in $(seq 0 $((nodes - 1))); do kubeconfig "$dir/nodes/lf-node-$i.kubeconfig" "node-$i" "system:node:lf-node-$i"; done

# ---- processes ------------------------------------------------------------------------------------
launch() { # name command...
  local name=$1; shift
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo "$! $name" >>"$dir/pids"
}
etcd_port=$(free_port); etcd_peer=$(free_port)
launch etcd "$bin/etcd" --name lf --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "lf=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 2147483648 \
  --log-level warn

# Audit: who wrote FineTuneJobs and their status (the e2e suite checks the trainer's own identity)
# and, when LF_CLUSTER_AUDIT_NAMESPACE names one, every request of that namespace's service
# accounts (the operator's: the suite derives the verbs it really uses from them).
audited_sas=""
if [ -n "${LF_CLUSTER_AUDIT_NAMESPACE:-}" ]; then
  audited_sas="- level: Metadata
  userGroups: [\"system:serviceaccounts:$LF_CLUSTER_AUDIT_NAMESPACE\"]"
fi
cat >"$dir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
$audited_sas
- level: Metadata
  resources: [{group: lf-operator.io, resources: [finetunejobs, finetunejobs/status]}]
  verbs: [create, update, patch, delete]
- level: None
EOF
launch kube-apiserver "$bin/kube-apiserver" \
  --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$gw" --advertise-address "$gw" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction,ExtendedResourceToleration \
  --service-cluster-ip-range 10.96.0.0/16 \
  --allow-privileged=true --profiling=false --v=1

ready() { # url
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$1" >/dev/null
}
until ready "$server/readyz"; do
  [ $((SECONDS - start)) -lt 120 ] || fail "kube-apiserver not ready after 120 s"
  while read -r pid name; do kill -0 "$pid" 2>/dev/null || fail "$name exited"; done <"$dir/pids"
  sleep 0.3
done
echo "kube-apiserver ready at $server after $((SECONDS - start)) s" >&2

kcm_port=$(free_port)
launch kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials --controllers '*' \
  --leader-elect=false --profiling=false --v=1
sched_port=$(free_port)
launch kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" \
  --leader-elect=false --profiling=false --v=1

export KUBECONFIG=$dir/admin.kubeconfig
# Ready when the controllers act: the default ServiceAccount and the root CA ConfigMap exist.
until "$bin/kubectl" -n default get serviceaccount default >/dev/null 2>&1 \
   && "$bin/kubectl" -n default get configmap kube-root-ca.crt >/dev/null 2>&1; do
  [ $((SECONDS - start)) -lt 120 ] || fail "controllers not acting after 120 s"
  while read -r pid name; do kill -0 "$pid" 2>/dev/null || fail "$name exited"; done <"$dir/pids"
  sleep 0.3
done
for p in "$kcm_port" "$sched_port"; do
  until curl -skf --max-time 2 "https://127.0.0.1:$p/healthz" >/dev/null; do
    [ $((SECONDS - start)) -lt 120 ] || fail "controller-manager/scheduler not healthy after 120 s"
    sleep 0.3
  done
done

cat >"$dir/env" <<EOF
export KUBECONFIG="$dir/admin.kubeconfig"
export LF_CLUSTER_DIR="$dir"
export LF_CLUSTER_BIN="$bin"
export LF_CLUSTER_SERVER="$server"
export LF_CLUSTER_API_HOST="$gw"
export LF_CLUSTER_API_PORT="$api_port"
export LF_CLUSTER_BRIDGE="$bridge"
export LF_CLUSTER_POD_PREFIX="10.$octet"
export PATH="$bin:\$PATH"
EOF
trap - INT TERM
echo "cluster up in $((SECONDS - start)) s: source $dir/env" >&2
