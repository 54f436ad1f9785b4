#!/usr/bin/env bash
# deps.sh - install what weft's build, lab and tests need (Debian/Ubuntu, as root).
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
pkgs=(
	iproute2       # ip, bridge: namespaces, veth, kernel VXLAN peers
	iputils-ping   # ping in the netns tests and the lab
	iperf3         # throughput tests and peers.sh
	procps         # ps, pgrep
	etcd-server    # the etcd lease store's tests (real etcd)
	etcd-client    # etcdctl, as operators use it
	protobuf-compiler # protoc, for etcd-client's build
	libprotobuf-dev # google/protobuf/*.proto that etcd-client's protos import
	containernetworking-plugins # bridge, host-local: weft-cni's delegate mode
	openssl        # test certificates
	iptables       # weftd's iptables backend; the reference bridge plugin's ipMasq
	nftables       # nft: weftd's masquerade and forward rules (the default backend)
	ethtool        # checksum settings of kernel-VXLAN peers in the netns tests
	kmod           # modprobe tun / vxlan
	jq
	# The cluster tier (scripts/cluster.sh): a node's container runtime, and
	# what builds its images without a registry (scripts/cluster-images.sh).
	containerd runc conntrack
	buildah debootstrap busybox-static gcc libc6-dev
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $EUID -ne 0 ]]; then
		echo "deps.sh: missing packages ${missing[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "deps.sh: installing ${missing[*]}" >&2
	apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe tun 2>/dev/null || true
modprobe vxlan 2>/dev/null || true
