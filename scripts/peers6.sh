#!/usr/bin/env bash
# peers6.sh - one TCP stream over IPv6 through weft beside kernel VXLAN, both
# on an IPv6 underlay, as root: the IPv6 counterpart of ../shared/bench/peers.sh's
# TCP figure (which is IPv4 only).
#
# Two namespaces p6-a and p6-b joined by a veth (MTU 1500, 2001:db8:201::1/64
# and ::2/64, with 192.168.201.1/24 and .2/24 beside them). kernel-vxlan: a
# VXLAN device set up as flannel sets up flannel-v6.1 (VNI 1, port 8472,
# fc00:0:0:N::/128, a route, neighbour and FDB entry to the peer), MTU 1430.
# weft: weftd (release build, or $WEFTD) on a dual-stack network with
# IPv6Network fc00::/48, subnets pinned through subnet.env, TUN MTU 1430.
# IPV6_ONLY=1: weft's network is IPv6-only (EnableIPv4 false) instead.
# Each kind runs iperf3 -6 for DURATION seconds from p6-a to p6-b, ROUNDS
# times, alternating; the table gives Gbit/s per round and weft's ratio.
# Traffic stays inside p6-a/p6-b; both are deleted on exit.
set -euo pipefail
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
weftd=${WEFTD:-$(cd "$(dirname "$0")/.." && pwd)/target/release/weftd}
state=$(mktemp -d)
declare -A UL6=([a]=2001:db8:201::1 [b]=2001:db8:201::2) UL4=([a]=192.168.201.1 [b]=192.168.201.2)
declare -A N=([a]=1 [b]=2) PEER=([a]=b [b]=a)

cleanup() {
	for s in a b; do
		ip netns pids "p6-$s" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "p6-$s" 2>/dev/null || true
	done
	rm -rf "$state"
}
trap cleanup EXIT

underlay() {
	cleanup
	mkdir -p "$state"
	for s in a b; do ip netns add "p6-$s"; ip -n "p6-$s" link set lo up; done
	ip link add p6-va netns p6-a type veth peer name p6-vb netns p6-b
	for s in a b; do
		ip -n "p6-$s" addr add "${UL4[$s]}/24" dev "p6-v$s"
		ip -n "p6-$s" addr add "${UL6[$s]}/64" dev "p6-v$s" nodad
		ip -n "p6-$s" link set "p6-v$s" mtu 1500 up
	done
}

mac_of() { printf '02:00:00:00:06:%02x' "$1"; }

up_kernel() {
	underlay
	for s in a b; do
		local ns=p6-$s p=${PEER[$s]}
		ip -n "$ns" link add vx6 type vxlan id 1 local "${UL6[$s]}" dev "p6-v$s" dstport 8472 nolearning
		ip -n "$ns" link set vx6 address "$(mac_of "${N[$s]}")" mtu 1430 up
		ip -n "$ns" -6 addr add "fc00:0:0:${N[$s]}::/128" dev vx6 nodad
		ip -n "$ns" -6 neigh replace "fc00:0:0:${N[$p]}::" lladdr "$(mac_of "${N[$p]}")" dev vx6 nud permanent
		bridge -n "$ns" fdb append "$(mac_of "${N[$p]}")" dev vx6 dst "${UL6[$p]}" self permanent
		ip -n "$ns" -6 route replace "fc00:0:0:${N[$p]}::/64" via "fc00:0:0:${N[$p]}::" dev vx6 onlink
	done
}

up_weft() {
	underlay
	if [ -n "${IPV6_ONLY:-}" ]; then
		echo '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}' >"$state/net-conf.json"
	else
		echo '{"Network":"10.250.0.0/16","SubnetLen":24,"SubnetMin":"10.250.0.0","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}' >"$state/net-conf.json"
	fi
	for s in a b; do
		mkdir -p "$state/$s"
		if [ -n "${IPV6_ONLY:-}" ]; then
			printf 'FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:%d::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n' \
				"${N[$s]}" >"$state/$s/subnet.env"
		else
			printf 'FLANNEL_NETWORK=10.250.0.0/16\nFLANNEL_SUBNET=10.250.%d.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:%d::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n' \
				"${N[$s]}" "${N[$s]}" >"$state/$s/subnet.env"
		fi
		# In a subshell: the shell does not track (or report the end of) it.
		(ip netns exec "p6-$s" timeout 300 "$weftd" --net-config-path "$state/net-conf.json" \
			--state-dir "$state/store" --subnet-file "$state/$s/subnet.env" --iface "p6-v$s" \
			--log-level warn ${WEFT_ARGS:-} >"$state/$s/log" 2>&1 &)
		sleep 0.3
	done
	for s in a b; do
		for _ in $(seq 100); do
			ip -n "p6-$s" -6 addr show dev weft0 2>/dev/null | grep -q "fc00:0:0:${N[$s]}::/128" && break
			sleep 0.1
		done
	done
	for _ in $(seq 50); do
		ip netns exec p6-a ping -6 -c1 -W1 fc00:0:0:2:: >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "weft did not come up:" >&2
	cat "$state"/*/log >&2
	return 1
}

# iperf3 -6 from p6-a to p6-b's overlay address: Gbit/s.
measure() {
	ip netns exec p6-b iperf3 -6 -s -1 -B fc00:0:0:2:: >/dev/null 2>&1 &
	sleep 0.5
	ip netns exec p6-a iperf3 -6 -c fc00:0:0:2:: -t "$DURATION" -J |
		jq -r '.end.sum_received.bits_per_second / 1e9'
	wait
}

declare -a K W
for r in $(seq "$ROUNDS"); do
	up_kernel
	K[r]=$(measure)
	up_weft
	W[r]=$(measure)
	cleanup
	echo "round $r: kernel-vxlan ${K[r]} Gbit/s, weft ${W[r]} Gbit/s" >&2
done
echo "| round | kernel VXLAN (Gbit/s) | weft (Gbit/s) | ratio |"
echo "|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
	awk -v r="$r" -v k="${K[r]}" -v w="${W[r]}" 'BEGIN { printf "| %d | %.2f | %.2f | %.3f |\n", r, k, w, w / k }'
done
