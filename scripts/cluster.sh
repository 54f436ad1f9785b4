#!/usr/bin/env bash
# cluster.sh - a real Kubernetes v1.34 cluster on one machine, for weft's
# cluster tests and by hand: a control-plane host (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) and nodes (containerd + runc,
# kubelet, kube-proxy in iptables mode), each a network namespace, the nodes
# each with a mount namespace of their own, all on one underlay bridge that
# lives in a namespace of its own. Nothing touches the host's network.
#
#   scripts/cluster.sh up [--no-cni] [--nodes N]   build (cached), start, install weft
#   scripts/cluster.sh down                      remove everything it made (also after a crash)
#   scripts/cluster.sh kubectl ARGS...           kubectl against the cluster
#   scripts/cluster.sh node-exec NODE CMD...     run CMD in a node's namespaces
#   scripts/cluster.sh add-node NAME [--no-kube-proxy]
#   scripts/cluster.sh start-kube-proxy NAME
#   scripts/cluster.sh remove-node NAME          stop a node's processes and delete it from the API
#   scripts/cluster.sh install-weft [--api-server-address]  apply docker/weft.yaml (image localhost/weft:dev)
#   scripts/cluster.sh install-flannel           flannel's kube-flannel.yml beside weft, node by node:
#                                                flannel runs where the label pod-network=weft is
#                                                not, weft where it is (label the weft nodes first)
#   scripts/cluster.sh build                     build the Go binaries and the images only
#   scripts/cluster.sh build-flannel             build flanneld and flannel's CNI plugin only
#
# docs/kubernetes.md ("A real cluster in network namespaces") says how it is
# built and what the tests prove with it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${WEFT_CLUSTER_CACHE:-/var/cache/weft-cluster}
DIR=${WEFT_CLUSTER_DIR:-/tmp/weft-cluster}
BIN=$CACHE/bin
K8S_VERSION=v1.34.1
CGROUP=weftc # every process of the cluster lives under this cgroup

# The underlay: 198.51.100.0/24 (TEST-NET-2) inside the namespaces only.
UL_NS=wc-ul
UL_BR=wcbr0
UL_GW=198.51.100.1
CP=wc-cp
CP_IP=198.51.100.10
EXT=wc-ext
EXT_IP=198.51.100.100
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/12
KUBE_SVC_IP=10.96.0.1

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ---------------------------------------------------------------- building

# The Kubernetes binaries, etcd and the test program netprobe, from the
# cluster/ Go module (pinned in its go.mod), rebuilt only when it changes.
build_bins() {
	local sum stamp=$BIN/.stamp
	sum=$(cat "$REPO"/cluster/go.mod "$REPO"/cluster/go.sum "$REPO"/cluster/cmd/*/*.go | sha256sum | cut -c1-16)
	if [[ -f $stamp && $(cat "$stamp") == "$sum" ]]; then
		return
	fi
	command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
	command -v go >/dev/null || die "go is not installed (Go 1.24 or later builds Kubernetes $K8S_VERSION)"
	log "building Kubernetes $K8S_VERSION and etcd from the Go module proxy (cold: 15-25 min on 2 cores)"
	local t0=$SECONDS ld="-s -w"
	local v
	for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=34 -X $v.gitTreeState=clean"
	done
	mkdir -p "$BIN"
	(cd "$REPO/cluster" && CGO_ENABLED=0 go build -trimpath -ldflags="$ld" -o "$BIN/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 \
		./cmd/netprobe)
	mv "$BIN/server" "$BIN/etcd"
	echo "$sum" >"$stamp"
	log "built in $((SECONDS - t0)) s"
}

# flanneld and flannel's CNI plugin (named flannel, as flannel installs it),
# each from its own module under cluster/ (pinned in its go.mod), rebuilt
# only when one changes: what the netns tests and the cluster's flannel
# node run beside weft (docs/testing.md, "Real flannel").
FLANNEL_VERSION=v0.28.11
build_flannel() {
	local sum stamp=$BIN/.stamp-flannel
	sum=$(cat "$REPO"/cluster/flannel/go.{mod,sum} "$REPO"/cluster/flannel-cni/go.{mod,sum} | sha256sum | cut -c1-16)
	if [[ -f $stamp && $(cat "$stamp") == "$sum" ]]; then
		return
	fi
	command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
	command -v go >/dev/null || die "go is not installed (Go 1.26.8 or later builds flannel $FLANNEL_VERSION)"
	log "building flanneld $FLANNEL_VERSION and flannel's CNI plugin from the Go module proxy (cold: about 90 s on 2 cores)"
	local t0=$SECONDS
	mkdir -p "$BIN"
	# As flannel's Makefile builds it on amd64: with cgo (its udp backend's
	# proxy is C), linked statically.
	(cd "$REPO/cluster/flannel" && CGO_ENABLED=1 go build -trimpath -o "$BIN/flanneld" \
		-ldflags="-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION -extldflags -static" \
		github.com/flannel-io/flannel)
	(cd "$REPO/cluster/flannel" && CGO_ENABLED=0 go build -trimpath -o "$BIN/flannel-install-conf" \
		-ldflags="-s -w" github.com/flannel-io/flannel/cmd/install_conf)
	(cd "$REPO/cluster/flannel-cni" && CGO_ENABLED=0 go build -trimpath -o "$BIN/flannel" \
		-ldflags="-s -w" github.com/containernetworking/plugins/plugins/meta/flannel)
	echo "$sum" >"$stamp"
	log "built in $((SECONDS - t0)) s"
}

build_all() {
	"$REPO/scripts/deps.sh"
	build_bins
	build_flannel
	"$REPO/scripts/cluster-images.sh" >/dev/null
}

# ---------------------------------------------------------------- processes

# cgroup_dirs HOST: the host's cgroup in every v1 hierarchy (and the v2 one).
cgroup_dirs() {
	local h
	for h in /sys/fs/cgroup/*/; do
		[[ -f $h/cgroup.procs ]] && echo "${h%/}/$CGROUP/$1"
	done
}

# cgroup_make PATH: one cgroup (relative to the hierarchies' roots), its
# parents' cpusets copied down so tasks can join it.
cgroup_make() {
	local h rel path=""
	for h in /sys/fs/cgroup/*/; do
		[[ -f $h/cgroup.procs ]] || continue
		path=${h%/}
		for rel in ${1//\// }; do
			local parent=$path
			path+=/$rel
			if [[ ! -d $path ]]; then
				mkdir "$path"
				if [[ -f $path/cpuset.cpus ]]; then
					cat "$parent/cpuset.cpus" >"$path/cpuset.cpus"
					cat "$parent/cpuset.mems" >"$path/cpuset.mems"
				fi
			fi
		done
	done
}

# start HOST NAME CMD...: CMD in the background, in HOST's cgroup, its own
# session, output to $DIR/logs/NAME.log, pid to $DIR/pids/NAME.
start() {
	local host=$1 name=$2
	shift 2
	cgroup_make "$CGROUP/$host/system"
	mkdir -p "$DIR/logs" "$DIR/pids"
	local procs=""
	local d
	for d in $(cgroup_dirs "$host"); do procs+=" $d/system/cgroup.procs"; done
	# shellcheck disable=SC2016
	setsid bash -c 'for f in '"$procs"'; do echo $$ >"$f"; done; exec "$@"' bash "$@" \
		>>"$DIR/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$DIR/pids/$name"
}

# stop NAME: SIGTERM, then SIGKILL after 5 s.
stop() {
	local f=$DIR/pids/$1 pid
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$f"
}

# kill_cgroup PATH: SIGKILL every task under a cgroup until none is left.
kill_cgroup() {
	local root=/sys/fs/cgroup/pids/$1 pids
	[[ -d $root ]] || root=/sys/fs/cgroup/memory/$1
	[[ -d $root ]] || return 0
	for _ in $(seq 100); do
		pids=$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		[[ -z $pids ]] && return 0
		# shellcheck disable=SC2086
		kill -9 $pids 2>/dev/null || true
		sleep 0.1
	done
	log "warning: tasks left in cgroup $1: $pids"
}

rmdir_cgroup() {
	local h
	for h in /sys/fs/cgroup/*/; do
		[[ -d $h/$1 ]] && find "$h/$1" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	return 0
}

wait_for() { # SECONDS WHAT CMD...
	local t=$1 what=$2
	shift 2
	local end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || die "timed out after ${t}s waiting for $what"
		sleep 0.5
	done
}

# ---------------------------------------------------------------- certificates

# cert NAME CN O EKU [SANS]: a key and a certificate signed by the cluster CA.
cert() {
	local name=$1 cn=$2 o=$3 eku=$4 sans=${5:-}
	local p=$DIR/pki
	local subj="/CN=$cn"
	[[ -n $o ]] && subj="/O=$o$subj"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/$name.key" 2>/dev/null
	openssl req -new -key "$p/$name.key" -subj "$subj" -out "$p/$name.csr"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		[[ -n $sans ]] && echo "subjectAltName=$sans"
	} >"$p/$name.ext"
	openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
		-days 7 -sha256 -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
	rm -f "$p/$name.csr" "$p/$name.ext"
}

# kubeconfig FILE CERTNAME SERVER
kubeconfig() {
	local p=$DIR/pki
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weft-cluster
  cluster:
    certificate-authority: $p/ca.crt
    server: $3
users:
- name: $2
  user:
    client-certificate: $p/$2.crt
    client-key: $p/$2.key
contexts:
- name: default
  context: {cluster: weft-cluster, user: $2}
current-context: default
EOF
}

make_pki() {
	local p=$DIR/pki
	mkdir -p "$p"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$p/ca.key" -subj "/CN=kubernetes" -days 7 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$p/ca.crt"
	# As kubeadm names them; the API server's SANs are kubeadm's set.
	cert apiserver kube-apiserver "" serverAuth \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$KUBE_SVC_IP,IP:$CP_IP,IP:127.0.0.1"
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
	cert apiserver-etcd-client kube-apiserver-etcd-client "" clientAuth
	cert etcd-server wc-cp "" serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1,IP:$CP_IP"
	cert admin kubernetes-admin system:masters clientAuth
	cert controller-manager system:kube-controller-manager "" clientAuth
	cert scheduler system:kube-scheduler "" clientAuth
	cert kube-proxy system:kube-proxy "" clientAuth
	cert front-proxy-client front-proxy-client "" clientAuth
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$p/sa.key" 2>/dev/null
	openssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub"
	kubeconfig "$DIR/admin.conf" admin "https://$CP_IP:6443"
	kubeconfig "$DIR/controller-manager.conf" controller-manager "https://127.0.0.1:6443"
	kubeconfig "$DIR/scheduler.conf" scheduler "https://127.0.0.1:6443"
	kubeconfig "$DIR/kube-proxy.conf" kube-proxy "https://$CP_IP:6443"
}

# ---------------------------------------------------------------- network

# attach NS NAME IP: a veth from NS (eth0) to the underlay bridge.
attach() {
	local ns=$1 name=$2 ip=$3
	ip netns add "$ns"
	ip -n "$UL_NS" link add "v-$name" type veth peer name eth0 netns "$ns"
	ip -n "$UL_NS" link set "v-$name" master "$UL_BR" up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$ip/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$UL_GW"
}

make_underlay() {
	ip netns add "$UL_NS"
	ip -n "$UL_NS" link set lo up
	ip -n "$UL_NS" link add "$UL_BR" type bridge
	ip -n "$UL_NS" addr add "$UL_GW/24" dev "$UL_BR"
	ip -n "$UL_NS" link set "$UL_BR" up
	attach "$CP" cp "$CP_IP"
	attach "$EXT" ext "$EXT_IP"
}

node_ip() { # wc-nK -> 198.51.100.(10+K)
	echo "198.51.100.$((10 + ${1#wc-n}))"
}

# ---------------------------------------------------------------- control plane

start_control_plane() {
	local p=$DIR/pki cp=$DIR/cp
	mkdir -p "$cp/etcd"
	chmod 700 "$cp/etcd"
	start "$CP" etcd ip netns exec "$CP" "$BIN/etcd" --name wc-cp --data-dir "$cp/etcd" \
		--listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster wc-cp=http://127.0.0.1:2380 \
		--cert-file "$p/etcd-server.crt" --key-file "$p/etcd-server.key" \
		--trusted-ca-file "$p/ca.crt" --client-cert-auth \
		--listen-metrics-urls http://127.0.0.1:2381 --snapshot-count 10000
	start "$CP" kube-apiserver ip netns exec "$CP" "$BIN/kube-apiserver" \
		--advertise-address="$CP_IP" --secure-port=6443 --allow-privileged=true \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
		--etcd-servers=https://127.0.0.1:2379 --etcd-cafile="$p/ca.crt" \
		--etcd-certfile="$p/apiserver-etcd-client.crt" --etcd-keyfile="$p/apiserver-etcd-client.key" \
		--kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" --profiling=false \
		--requestheader-client-ca-file="$p/ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key"
	wait_for 120 "kube-apiserver to become ready" \
		ip netns exec "$CP" "$BIN/kubectl" --kubeconfig "$DIR/admin.conf" get --raw /readyz
	start "$CP" kube-controller-manager ip netns exec "$CP" "$BIN/kube-controller-manager" \
		--kubeconfig="$DIR/controller-manager.conf" \
		--authentication-kubeconfig="$DIR/controller-manager.conf" --authorization-kubeconfig="$DIR/controller-manager.conf" \
		--allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
		--service-cluster-ip-range="$SERVICE_CIDR" --cluster-name=weft-cluster \
		--cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
		--root-ca-file="$p/ca.crt" --service-account-private-key-file="$p/sa.key" \
		--use-service-account-credentials=true --controllers='*,bootstrapsigner,tokencleaner' \
		--leader-elect=false --bind-address=127.0.0.1 --profiling=false
	start "$CP" kube-scheduler ip netns exec "$CP" "$BIN/kube-scheduler" \
		--kubeconfig="$DIR/scheduler.conf" \
		--authentication-kubeconfig="$DIR/scheduler.conf" --authorization-kubeconfig="$DIR/scheduler.conf" \
		--leader-elect=false --bind-address=127.0.0.1 --profiling=false
}

kctl() {
	ip netns exec "$CP" "$BIN/kubectl" --kubeconfig "$DIR/admin.conf" "$@"
}

# ---------------------------------------------------------------- nodes

# The paths a node needs its own view of; each is bound from the node's
# directory (or is a fresh tmpfs for /run) in the node's mount namespace.
NODE_BINDS=(/etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log/containers)

node_setup_script() {
	local d=$1
	cat <<EOF
set -e
# /run: the node's own (containerd's socket and pod netns, /run/flannel, locks).
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/.cg
mount --rbind /sys/fs/cgroup /run/.cg
# sysfs of the node's network namespace, with the host's cgroups on it.
mount -t sysfs sysfs /sys
mount --move /run/.cg /sys/fs/cgroup
rmdir /run/.cg
for p in ${NODE_BINDS[*]}; do mkdir -p "$d/root\$p" "\$p"; mount --bind "$d/root\$p" "\$p"; done
mkdir -p /run/flannel /run/containerd
touch "$d/ready"
exec sleep infinity
EOF
}

containerd_config() {
	cat <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  enable_selinux = false
  disable_apparmor = true
  # No CAP_SYS_RESOURCE where this machine runs (a container itself):
  # keep pods' oom_score_adj no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
}

kubelet_config() { # NODE
	cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP/$1
cgroupsPerQOS: true
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
resolvConf: $DIR/nodes/$1/resolv.conf
rotateCertificates: false
serializeImagePulls: false
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
kubeletCgroups: ""
EOF
}

kube_proxy_config() { # NODE
	cat <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/kube-proxy.conf}
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $1
bindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

holder_pid() { cat "$DIR/pids/$1-ns"; }

# in_node NODE CMD...: CMD in the node's network and mount namespaces.
in_node() {
	local n=$1
	shift
	nsenter -t "$(holder_pid "$n")" -m -n -- "$@"
}

add_node() {
	local n=$1 kube_proxy=${2:-yes} d=$DIR/nodes/$1 ip
	ip=$(node_ip "$n")
	log "node $n ($ip)"
	mkdir -p "$d"
	rm -f "$d/ready"
	attach "$n" "${n#wc-}" "$ip"
	# What kubeadm's preflight asks of a node, set inside its own namespace.
	ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
		net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
	printf 'nameserver 10.96.0.10\nsearch svc.cluster.local cluster.local\n' >"$d/resolv.conf"
	cgroup_make "$CGROUP/$n"
	start "$n" "$n-ns" nsenter --net="/run/netns/$n" unshare --mount --propagation private \
		bash -c "$(node_setup_script "$d")"
	wait_for 20 "$n's namespaces" test -f "$d/ready"
	# The CNI plugins a node has from its packages (kubeadm's kubernetes-cni).
	cp /usr/lib/cni/* "$d/root/opt/cni/bin/"
	containerd_config >"$d/containerd.toml"
	kubelet_config "$n" >"$d/kubelet.yaml"
	kube_proxy_config "$n" >"$d/kube-proxy.yaml"
	cert "kubelet-$n" "system:node:$n" system:nodes clientAuth
	kubeconfig "$d/kubelet.conf" "kubelet-$n" "https://$CP_IP:6443"
	local h
	h=$(holder_pid "$n")
	start "$n" "$n-containerd" nsenter -t "$h" -m -n -- containerd --config "$d/containerd.toml"
	wait_for 60 "$n's containerd" in_node "$n" ctr -a /run/containerd/containerd.sock version
	import_images "$n"
	start "$n" "$n-kubelet" nsenter -t "$h" -m -n -- "$BIN/kubelet" \
		--config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.conf" \
		--hostname-override="$n" --node-ip="$ip" --root-dir=/var/lib/kubelet --cert-dir="$d/pki"
	if [[ $kube_proxy == yes ]]; then
		start_kube_proxy "$n"
	fi
	wait_for 120 "node $n to register" kctl get node "$n"
}

# import_images NODE: the images a node needs, into its containerd (no registry).
import_images() {
	local img
	for img in "$CACHE"/images/{pause,test,weft,flannel}.tar; do
		in_node "$1" ctr -a /run/containerd/containerd.sock -n k8s.io images import "$img" >/dev/null
	done
}

start_kube_proxy() {
	local n=$1
	start "$n" "$n-kube-proxy" nsenter -t "$(holder_pid "$n")" -m -n -- "$BIN/kube-proxy" \
		--config="$DIR/nodes/$n/kube-proxy.yaml"
}

remove_node() {
	local n=$1
	for c in kube-proxy kubelet containerd; do stop "$n-$c"; done
	kill_cgroup "$CGROUP/$n"
	rm -f "$DIR/pids/$n-ns"
	rmdir_cgroup "$CGROUP/$n"
	ip netns del "$n" 2>/dev/null || true
	kctl delete node "$n" --ignore-not-found --wait=false >/dev/null
}

# ---------------------------------------------------------------- weft

# install_weft [--api-server-address]: docker/weft.yaml as a user applies
# it: only the image name changed and, with --api-server-address, the
# manifest's commented KUBERNETES_SERVICE_HOST/PORT lines taken in with the
# API server's real address (the fix for the CNI-before-kube-proxy deadlock).
install_weft() {
	local edits=(-e 's|ghcr.io/weft-net/weft:v0.1.0|localhost/weft:dev|')
	if [[ ${1:-} == --api-server-address ]]; then
		edits+=(-e 's|^\(            \)# \(- name: KUBERNETES_SERVICE_\)|\1\2|'
			-e 's|^\(            \)#   \(value: \)"10.0.0.100"|\1  \2"'"$CP_IP"'"|'
			-e 's|^\(            \)#   \(value: "6443"\)|\1  \2|')
	fi
	sed "${edits[@]}" "$REPO/docker/weft.yaml" >"$DIR/weft.yaml"
	kctl apply -f "$DIR/weft.yaml" >/dev/null
}

# ---------------------------------------------------------------- flannel

# Node by node (docs/migrating.md): a node labelled pod-network=weft runs
# weft's DaemonSet, every other node flannel's; moving the label moves the
# node.
AGENT_LABEL=pod-network

# install_flannel: flannel's own release manifest (Documentation/
# kube-flannel.yml of the version cluster/flannel pins, read from the Go
# module cache) with only what an operator changes to run it beside weft:
# both image names become the locally built localhost/flannel:VERSION
# (scripts/cluster-images.sh), and the DaemonSet gets a node affinity
# "pod-network NotIn [weft]" while weft's gets "pod-network In [weft]"
# (kubectl patch; weft's first, so no node runs both). One more change is
# the harness's, not an operator's: the CNI plugin built here is flannel's
# ancestor (cluster/flannel-cni/go.mod), which speaks CNI up to 0.4.0, so
# cni-conf.json's cniVersion 1.0.0 becomes 0.4.0.
install_flannel() {
	command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
	local moddir manifest=$DIR/kube-flannel.json
	moddir=$(cd "$REPO/cluster/flannel" && go mod download github.com/flannel-io/flannel &&
		go list -m -f '{{.Dir}}' github.com/flannel-io/flannel)
	[[ -f $moddir/Documentation/kube-flannel.yml ]] || die "no kube-flannel.yml in $moddir"
	kctl create --dry-run=client -o json -f "$moddir/Documentation/kube-flannel.yml" |
		jq --arg img "localhost/flannel:$FLANNEL_VERSION" --arg k "$AGENT_LABEL" '
			if .kind == "DaemonSet" then
				(.spec.template.spec.initContainers[], .spec.template.spec.containers[]).image = $img
				| .spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions += [{key: $k, operator: "NotIn", values: ["weft"]}]
			elif .kind == "ConfigMap" then
				.data["cni-conf.json"] |= sub("\"cniVersion\": \"1.0.0\""; "\"cniVersion\": \"0.4.0\"")
			else . end' >"$manifest"
	jq -se 'any(.[]; .kind == "ConfigMap" and (.data["cni-conf.json"] | fromjson | .cniVersion == "0.4.0"))' \
		"$manifest" >/dev/null ||
		die "kube-flannel.yml's cni-conf.json did not say cniVersion 1.0.0 as expected: see $manifest"
	local weft_term
	weft_term=$(jq -nc --arg k "$AGENT_LABEL" '{key: $k, operator: "In", values: ["weft"]}')
	# weft's DaemonSet: its first node selector term gets the expression
	# (a JSON patch, once: a second install finds it there).
	if ! kctl -n kube-weft get ds weft -o json |
		jq -e --arg k "$AGENT_LABEL" '.spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions | any(.key == $k)' >/dev/null; then
		kctl -n kube-weft patch ds weft --type json -p "[{\"op\": \"add\", \"path\": \"/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/-\", \"value\": $weft_term}]" >/dev/null
	fi
	kctl apply -f "$manifest" >/dev/null
}

# ---------------------------------------------------------------- up / down

up() {
	local nodes=3 cni=yes
	while (($#)); do
		case $1 in
		--no-cni) cni=no ;;
		--nodes) nodes=$2 && shift ;;
		*) die "unknown option $1" ;;
		esac
		shift
	done
	[[ $EUID -eq 0 ]] || die "needs root (network and mount namespaces, cgroups)"
	if [[ -e $DIR || -e /run/netns/$UL_NS ]]; then
		log "a previous cluster is still there: removing it first"
		down
	fi
	build_all
	local t0=$SECONDS
	mkdir -p "$DIR"
	make_pki
	make_underlay
	start_control_plane
	local i
	for i in $(seq 1 "$nodes"); do add_node "wc-n$i"; done
	if [[ $cni == yes ]]; then
		install_weft
		kctl -n kube-weft rollout status ds/weft --timeout=300s >&2
		wait_for 300 "every node to become Ready" \
			bash -c "! '$REPO/scripts/cluster.sh' kubectl get nodes --no-headers | grep -v ' Ready '"
	fi
	log "cluster up in $((SECONDS - t0)) s"
	echo "kubeconfig: $DIR/admin.conf (API server https://$CP_IP:6443 in network namespace $CP)"
	echo "kubectl:    $0 kubectl get nodes"
	kctl get nodes -o wide
}

down() {
	local pid
	# Every process of the cluster is in its cgroup: pods, shims and daemons.
	for pid in "$DIR"/pids/*; do
		[[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null
	done
	sleep 0.5
	kill_cgroup "$CGROUP"
	rmdir_cgroup "$CGROUP"
	local ns
	for ns in $(ip netns list | awk '/^wc-/{print $1}'); do ip netns del "$ns"; done
	rm -rf "$DIR"
}

main() {
	local cmd=${1:-}
	shift || true
	case $cmd in
	up) up "$@" ;;
	down) down ;;
	build) build_all ;;
	build-flannel) build_flannel ;;
	kubectl) kctl "$@" ;;
	node-exec) in_node "$@" ;;
	add-node)
		n=$1
		[[ ${2:-} == --no-kube-proxy ]] && add_node "$n" no || add_node "$n"
		;;
	start-kube-proxy) start_kube_proxy "$1" ;;
	remove-node) remove_node "$1" ;;
	install-weft) install_weft "$@" ;;
	install-flannel) install_flannel ;;
	*)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 2
		;;
	esac
}

# Sourced (by a developer poking at one step), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
