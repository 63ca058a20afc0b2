#!/usr/bin/env bash
# cluster.sh: a real one-node Kubernetes cluster on this machine, built from
# source, for keyshift's end-to-end test and for trying keyshift by hand.
#
#   scripts/cluster.sh up           start it (builds what is missing first)
#   scripts/cluster.sh load TAR...  import image tarballs into its containerd
#   scripts/cluster.sh status       what runs, and the kubeconfig to use
#   scripts/cluster.sh down         stop it and put the host back as it was
#
# What runs (each a host process, logs in $CLUSTER_DIR/logs):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy
#   (iptables mode) and kubelet, from ~/.cache/keyshift/bin (scripts/kube-build.sh:
#   one multi-call `kube` binary); Debian's containerd 1.6 (CRI plugin,
#   overlayfs) and runc; Debian's CNI bridge and host-local plugins. CoreDNS
#   (built from the module proxy, only the plugins a cluster needs) runs as a
#   Deployment behind the kube-dns Service, as in a kubeadm cluster.
#
# Network: a bridge $BRIDGE holds the node address $NODE_IP (the API server,
# the kubelet and kube-proxy listen there and on loopback only) and the pods
# ($POD_CIDR). Services are $SERVICE_CIDR, routed by kube-proxy. Nothing is
# masqueraded and nothing is routed out: a KEYSHIFT-CLUSTER chain in FORWARD
# drops anything from the pods that is not for the pods, and the Service range
# is routed onto the bridge, never to the default route.
#
# `down` removes every process, mount, network namespace, link, route, iptables
# chain, cgroup and sysctl change that `up` made, then compares the host with
# the record `up` took before starting and fails if anything differs.
set -euo pipefail

CACHE="${KEYSHIFT_CACHE:-$HOME/.cache/keyshift}"
BIN="${KEYSHIFT_BIN:-$CACHE/bin}"
CLUSTER_DIR="${CLUSTER_DIR:-/var/tmp/keyshift-cluster}"
BRIDGE="${BRIDGE:-keyshift0}"
NODE_IP="${NODE_IP:-10.244.0.1}"
POD_CIDR="${POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/24}"
API_IP=10.96.0.1
DNS_IP=10.96.0.10
NODE_NAME="${NODE_NAME:-keyshift-node}"
ETCD_PORTS=(12379 12380)
CORE_IMAGE_TAG="${CORE_IMAGE_TAG:-e2e}"
KUBECONFIG_ADMIN="$CLUSTER_DIR/admin.kubeconfig"
# Host paths the runtime and the kubelet use whatever their configuration:
# `down` removes the ones `up` created.
HOST_PATHS=(/run/containerd /var/lib/cni /var/log/containers /var/log/pods /run/netns /var/run/netns /etc/cni /var/lib/kubelet /var/lib/containerd)
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

export PATH="$BIN:/usr/local/go/bin:$PATH"
set -E
trap 'log "FAIL at line $LINENO: $BASH_COMMAND"' ERR
log() { printf '%s cluster: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
kc() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

need_root() { [[ $(id -u) == 0 ]] || die "needs root (it runs a kubelet, containerd and iptables)"; }

# packages installs the Debian packages the node needs when they are missing.
packages() {
  local want=() p
  for p in containerd runc containernetworking-plugins iptables nftables conntrack iproute2 openssl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
  done
  if ((${#want[@]})); then
    log "installing Debian packages: ${want[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
}

# binaries builds the Kubernetes binaries and CoreDNS when they are not cached.
binaries() {
  "$(dirname "$0")/kube-build.sh"
  "$(dirname "$0")/coredns-build.sh"
}

# snapshot records what `down` must restore: links, routes, namespaces,
# mounts, iptables rules and sysctls.
snapshot() {
  {
    echo "## links"; ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    echo "## routes"; ip route show | sort
    echo "## netns"; { ip netns list 2>/dev/null || true; } | awk '{print $1}' | sort
    echo "## mounts"; awk '{print $2}' /proc/self/mounts | sort
    echo "## iptables"; { iptables-save 2>/dev/null || true; } | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//' | sort
    echo "## ip6tables"; { ip6tables-save 2>/dev/null || true; } | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//' | sort
    echo "## nft"; { nft list tables 2>/dev/null || true; } | sort
    echo "## paths"; for p in "${HOST_PATHS[@]}"; do if [[ -e $p ]]; then echo "$p exists"; else echo "$p absent"; fi; done
    echo "## sysctls"; for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s" 2>/dev/null || echo -)"; done
    echo "## cgroups"; for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do [[ -d $c ]] && echo "$c"; done; true
  }
}

# certs writes a CA, serving certificates and client certificates for every
# component, and their kubeconfigs.
certs() {
  local d="$CLUSTER_DIR/pki"
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=keyshift-cluster-ca" -days 30 -out "$d/ca.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  issue() { # name subject [sans]
    local name=$1 subj=$2 sans=${3:-}
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
    openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
    local ext="$d/$name.ext"
    if [[ -n $sans ]]; then
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >"$ext"
    else
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
      -extfile "$ext" -out "$d/$name.crt" 2>/dev/null
    rm -f "$d/$name.csr" "$ext"
  }
  issue apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$API_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  issue kubelet-serving "/CN=system:node:$NODE_NAME/O=system:nodes" "IP:$NODE_IP,DNS:$NODE_NAME"
  issue admin "/CN=keyshift-admin/O=system:masters"
  issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters"
  issue controller-manager "/CN=system:kube-controller-manager"
  issue scheduler "/CN=system:kube-scheduler"
  issue kubelet "/CN=system:node:$NODE_NAME/O=system:nodes"
  issue kube-proxy "/CN=system:kube-proxy"
  chmod 600 "$d"/*.key
  local c
  for c in admin controller-manager scheduler kubelet kube-proxy; do
    cat >"$CLUSTER_DIR/$c.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: keyshift
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $d/ca.crt
users:
- name: $c
  user:
    client-certificate: $d/$c.crt
    client-key: $d/$c.key
contexts:
- name: keyshift
  context: {cluster: keyshift, user: $c}
current-context: keyshift
EOF
  done
}

# alive reports whether pid runs (a zombie does not: nothing may reap
# orphans here).
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $st != Z* ]]
}

# start runs a component in its own session, logging to logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >>"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_DIR/pids/$name"
}

# wait_for polls a command until it succeeds, or fails naming the log.
wait_for() {
  local what=$1 secs=$2 logname=$3; shift 3
  local i
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [[ -n $logname && -f $CLUSTER_DIR/pids/$logname ]] && ! alive "$(cat "$CLUSTER_DIR/pids/$logname")"; then
      tail -40 "$CLUSTER_DIR/logs/$logname.log" >&2 || true
      die "$logname exited while waiting for $what (log: $CLUSTER_DIR/logs/$logname.log)"
    fi
    sleep 0.2
  done
  [[ -n $logname ]] && tail -40 "$CLUSTER_DIR/logs/$logname.log" >&2
  die "timed out after ${secs}s waiting for $what${logname:+ (log: $CLUSTER_DIR/logs/$logname.log)}"
}

network() {
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service addresses never take the default route: anything kube-proxy does
  # not translate goes onto the bridge and dies there.
  ip route add "$SERVICE_CIDR" dev "$BRIDGE"
  iptables -N KEYSHIFT-CLUSTER
  iptables -A KEYSHIFT-CLUSTER -s "$POD_CIDR" -d "$POD_CIDR" -j RETURN
  iptables -A KEYSHIFT-CLUSTER -s "$POD_CIDR" -j DROP
  iptables -A KEYSHIFT-CLUSTER -d "$POD_CIDR" ! -i "$BRIDGE" -j DROP
  iptables -I FORWARD 1 -j KEYSHIFT-CLUSTER
  mkdir -p "$CLUSTER_DIR/cni/net.d"
  cat >"$CLUSTER_DIR/cni/net.d/10-keyshift.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "keyshift",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

containerd_up() {
  local d="$CLUSTER_DIR/containerd"
  mkdir -p "$d/root" "$d/state"
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "keyshift/pause:$CORE_IMAGE_TAG"
  # Processes here lack CAP_SYS_RESOURCE: runc cannot set the kubelet's
  # negative OOM score ("can't get final child's PID from pipe") unless
  # containerd clamps it.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
  start containerd containerd --config "$d/config.toml"
  wait_for "containerd" 30 containerd ctr --address "$d/containerd.sock" version
}

ctr_() { ctr --address "$CLUSTER_DIR/containerd/containerd.sock" -n k8s.io "$@"; }

load() {
  [[ -S $CLUSTER_DIR/containerd/containerd.sock ]] || die "the cluster is not up (scripts/cluster.sh up)"
  local t
  for t in "$@"; do
    log "importing $t"
    ctr_ images import "$t" >/dev/null
  done
}

control_plane() {
  local d="$CLUSTER_DIR/pki"
  start etcd etcd --name keyshift --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORTS[0]}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORTS[0]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PORTS[1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PORTS[1]}" \
    --initial-cluster "keyshift=http://127.0.0.1:${ETCD_PORTS[1]}" --listen-metrics-urls "" --log-level warn
  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:${ETCD_PORTS[0]}" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" --client-ca-file "$d/ca.crt" \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC --allow-privileged=true \
    --kubelet-client-certificate "$d/apiserver-kubelet-client.crt" --kubelet-client-key "$d/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$d/ca.crt" --kubelet-preferred-address-types InternalIP \
    --enable-admission-plugins NodeRestriction --endpoint-reconciler-type lease --profiling=false
  wait_for "the API server" 120 kube-apiserver kc get --raw /readyz
  start kube-controller-manager kube-controller-manager --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$d/sa.key" --root-ca-file "$d/ca.crt" \
    --cluster-signing-cert-file "$d/ca.crt" --cluster-signing-key-file "$d/ca.key" --profiling=false
  start kube-scheduler kube-scheduler --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

node() {
  local d="$CLUSTER_DIR/pki"
  mkdir -p "$CLUSTER_DIR/kubelet" "$CLUSTER_DIR/pod-logs"
  echo "nameserver $DNS_IP" >"$CLUSTER_DIR/resolv.conf"
  cat >"$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $d/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $d/kubelet-serving.crt
tlsPrivateKeyFile: $d/kubelet-serving.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CLUSTER_DIR/containerd/containerd.sock
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $CLUSTER_DIR/resolv.conf
# The host has cgroup v1.
failCgroupV1: false
failSwapOn: false
# Secret volumes follow their Secret within about syncFrequency.
syncFrequency: 10s
podLogsDir: $CLUSTER_DIR/pod-logs
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
EOF
  cat >"$CLUSTER_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy kube-proxy --config "$CLUSTER_DIR/kube-proxy.yaml"
  start kubelet kubelet --config "$CLUSTER_DIR/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" \
    --root-dir "$CLUSTER_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
  wait_for "node $NODE_NAME Ready" 120 kubelet \
    bash -c "kubectl --kubeconfig '$KUBECONFIG_ADMIN' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
}

dns() {
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # No forward plugin: names outside the cluster do not resolve, so nothing
  # in the test cluster reaches out.
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "53"}]
      containers:
      - name: coredns
        image: keyshift/coredns:$CORE_IMAGE_TAG
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  wait_for "CoreDNS Ready" 120 "" kc -n kube-system rollout status deploy/coredns --timeout=1s
}

images() {
  local out="$CLUSTER_DIR/images"
  mkdir -p "$out"
  (cd "$(dirname "$0")/.." && go run ./test/images -out "$out" -tag "$CORE_IMAGE_TAG" -only pause,coredns)
  load "$out"/pause.tar "$out"/coredns.tar
}

up() {
  need_root
  if [[ -e $CLUSTER_DIR ]]; then
    local f
    for f in "$CLUSTER_DIR"/pids/*; do
      [[ -f $f ]] && alive "$(cat "$f")" && die "a cluster is up in $CLUSTER_DIR ($(basename "$f") runs): scripts/cluster.sh down first"
    done
    # A run that was killed left its state (mounts, links, chains) behind.
    log "stale cluster state in $CLUSTER_DIR and no process of it runs: taking it down first"
    down
  fi
  packages
  binaries
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  snapshot >"$CLUSTER_DIR/host.before"
  certs
  network
  containerd_up
  images
  control_plane
  node
  dns
  log "up: export KUBECONFIG=$KUBECONFIG_ADMIN (kubectl is $BIN/kubectl)"
}

# drop_chains removes, in every table, the chains named KEYSHIFT-*, KUBE-*
# or CNI-* that were not there before `up`, and the rules that jump to them.
drop_chains() {
  local ipt=$1 table chain rule
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    local chains=()
    while read -r chain; do
      if [[ -f $CLUSTER_DIR/host.before ]] && sed -n "/^## $ipt\$/,/^## /p" "$CLUSTER_DIR/host.before" | grep -q "^:$chain "; then
        continue
      fi
      chains+=("$chain")
    done < <("$ipt" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KEYSHIFT|KUBE|CNI)-/ {print $2}')
    ((${#chains[@]})) || continue
    for chain in "${chains[@]}"; do
      # Rules anywhere that jump to it: -A X ... -j CHAIN becomes -D X ... -j CHAIN.
      while read -r rule; do
        eval "$ipt -t $table ${rule/#-A/-D}" 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" || true)
    done
    for chain in "${chains[@]}"; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in "${chains[@]}"; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done
  done
}

stop_pid() {
  local name=$1 f="$CLUSTER_DIR/pids/$1" pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  need_root
  [[ -d $CLUSTER_DIR ]] || { log "nothing to take down ($CLUSTER_DIR does not exist)"; return 0; }
  # Stop what recreates pods, then let the kubelet tear every pod down through
  # the CNI (that releases addresses and deletes network namespaces).
  stop_pid kube-controller-manager
  stop_pid kube-scheduler
  if [[ -f $CLUSTER_DIR/pids/kubelet ]] && kc get --raw /readyz >/dev/null 2>&1; then
    kc delete pods --all-namespaces --all --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    local i
    # Done when no container runs and the CNI has released every sandbox's
    # network namespace (the kubelet keeps exited containers for its GC).
    for ((i = 0; i < 120; i++)); do
      [[ -z $(ctr_ tasks ls -q 2>/dev/null || true) && -z $(ip netns list 2>/dev/null | grep '^cni-' || true) ]] && break
      sleep 0.5
    done
  fi
  stop_pid kubelet
  if [[ -S $CLUSTER_DIR/containerd/containerd.sock ]]; then
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null || true); do ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $(ctr_ tasks ls -q 2>/dev/null || true); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid kube-proxy
  [[ -x $BIN/kube-proxy ]] && kube-proxy --cleanup --v=0 >/dev/null 2>&1 || true
  stop_pid kube-apiserver
  stop_pid etcd
  stop_pid containerd
  # Shims outlive containerd by design; ours are the ones with our address.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CLUSTER_DIR/" 2>/dev/null || true
  sleep 0.3
  # Mounts under the cluster directory (volumes, overlay rootfs, shm), deepest first.
  awk -v d="$CLUSTER_DIR/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # Network namespaces the CNI made for pods and did not get to remove.
  if [[ -f $CLUSTER_DIR/host.before ]]; then
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
      sed -n '/^## netns/,/^## mounts/p' "$CLUSTER_DIR/host.before" | grep -qx "$ns" || ip netns delete "$ns" 2>/dev/null || true
    done
  fi
  # Our chain, and every KUBE-*/CNI-* chain kube-proxy's cleanup left (the
  # kubelet's canaries, for one), in both families.
  drop_chains iptables
  drop_chains ip6tables
  # iptables-nft leaves the tables it created behind, empty: delete those too.
  if [[ -f $CLUSTER_DIR/host.before ]] && command -v nft >/dev/null; then
    local fam tbl
    while read -r _ fam tbl; do
      sed -n '/^## nft$/,/^## /p' "$CLUSTER_DIR/host.before" | grep -qx "table $fam $tbl" || nft delete table "$fam" "$tbl" 2>/dev/null || true
    done < <(nft list tables 2>/dev/null || true)
  fi
  ip link delete "$BRIDGE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  # Paths the runtime and kubelet made outside the cluster directory.
  if [[ -f $CLUSTER_DIR/host.before ]]; then
    local p
    for p in "${HOST_PATHS[@]}"; do
      grep -qx "$p absent" "$CLUSTER_DIR/host.before" || continue
      while mountpoint -q "$p" 2>/dev/null; do umount -l "$p" || break; done
      rm -rf "$p"
    done
    if grep -qx "/var/log/containers exists" "$CLUSTER_DIR/host.before"; then
      find /var/log/containers -maxdepth 1 -type l -lname "$CLUSTER_DIR/*" -delete 2>/dev/null || true
    fi
  fi
  # Pod veths die with their namespaces; cgroups the kubelet made, once any
  # container process a killed runtime left in them is gone.
  local c left i
  for ((i = 0; i < 50; i++)); do
    left=0
    for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
      [[ -d $c ]] || continue
      left=1
      find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null || true
      find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    ((left)) || break
    sleep 0.1
  done
  if [[ -f $CLUSTER_DIR/host.before ]]; then
    local kv
    while read -r kv; do
      [[ ${kv#*=} == - ]] || sysctl -qw "$kv" 2>/dev/null || true
    done < <(sed -n '/^## sysctls/,/^## cgroups/p' "$CLUSTER_DIR/host.before" | grep '=')
    local after diff
    after=$(snapshot)
    if ! diff=$(diff <(cat "$CLUSTER_DIR/host.before") <(echo "$after")); then
      echo "$diff" >&2
      die "the host differs from before 'up' (above; $CLUSTER_DIR kept for inspection)"
    fi
  fi
  rm -rf "$CLUSTER_DIR"
  log "down: the host is as it was before 'up'"
}

status() {
  local f
  for f in "$CLUSTER_DIR"/pids/*; do
    [[ -f $f ]] || continue
    if alive "$(cat "$f")"; then echo "$(basename "$f") running (pid $(cat "$f"))"; else echo "$(basename "$f") NOT running"; fi
  done
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  kc get nodes -o wide 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  load) shift; need_root; load "$@" ;;
  status) status ;;
  *) echo "usage: $0 up|down|load TAR...|status" >&2; exit 2 ;;
esac
