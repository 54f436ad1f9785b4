#!/usr/bin/env bash
# profile.sh - one iperf3 run through two weft nodes in network namespaces, with
# what docs/performance.md's analysis quotes. As root, after
# `cargo build --release`:
#
#   scripts/profile.sh             # TCP, 1 stream: Gbit/s, CPU idle, weft CPU per thread
#   P=4 scripts/profile.sh         # 4 streams
#   UDP=1 scripts/profile.sh       # 1400-byte UDP flood, and where the drops were
#   PERF=1 scripts/profile.sh      # + perf record -a -g (then: perf report -i /tmp/weft-profile.perf --no-children --sort comm,sym)
#   SCHED=1 scripts/profile.sh     # + perf sched record (then: perf sched timehist -i /tmp/weft-profile.sched)
#   PING=1 scripts/profile.sh      # 200 pings at 10 ms before the transfer
#   WEFT_ARGS='--queues 2' ...     # extra weftd flags
#
# Namespaces pa/pb on a veth, as ../shared/bench/peers.sh builds them; weftd is
# started through scripts/peers-weft.sh. Everything is removed at the end.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
P=${P:-1} T=${T:-6}
netns_cleanup() {
	for ns in pa pb; do
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
}
netns_cleanup # leftovers of an interrupted run
state=$(mktemp -d /tmp/weft-profile.XXXXXX)
trap 'netns_cleanup; rm -rf "$state"' EXIT
ip netns add pa && ip netns add pb
ip link add pb-va netns pa type veth peer name pb-vb netns pb
for s in a b; do
	ip -n p$s link set lo up
	ip -n p$s addr add 192.168.200.$([ $s = a ] && echo 1 || echo 2)/24 dev pb-v$s
	ip -n p$s link set pb-v$s up
done
ip netns exec pa "$here/peers-weft.sh" a "$state" >"$state/a.log" 2>&1 &
disown
ip netns exec pb "$here/peers-weft.sh" b "$state" >"$state/b.log" 2>&1 &
disown
for _ in $(seq 50); do
	ip netns exec pa ping -c1 -W1 -I 10.250.0.1 10.250.1.1 >/dev/null 2>&1 && break
	sleep 0.2
done
[ "${PING:-0}" = 1 ] && ip netns exec pa ping -n -I 10.250.0.1 -c 200 -i 0.01 -q 10.250.1.1 | tail -1
ip netns exec pb iperf3 -s -1 -B 10.250.1.1 >/dev/null 2>&1 &
disown
sleep 0.5
mode=(-P "$P")
[ "${UDP:-0}" = 1 ] && mode=(-u -b 0 -l 1400)
rec=
if [ "${PERF:-0}" = 1 ]; then
	perf record -o /tmp/weft-profile.perf -a -g -F 999 -e cpu-clock -- sleep $((T - 1)) >/dev/null 2>&1 &
	rec=$!
elif [ "${SCHED:-0}" = 1 ]; then
	(sleep 2 && perf sched record -o /tmp/weft-profile.sched -- sleep 1 >/dev/null 2>&1) &
	rec=$!
fi
read -r _ u1 n1 s1 i1 _ </proc/stat
ip netns exec pa iperf3 -c 10.250.1.1 -B 10.250.0.1 -t "$T" "${mode[@]}" -J >"$state/iperf.json"
read -r _ u2 n2 s2 i2 _ </proc/stat
[ -n "$rec" ] && wait "$rec"
jq -r '(.end.sum_received.bits_per_second // .end.sum.bits_per_second) / 1e9 | "Gbit/s \(.)"' "$state/iperf.json"
[ "${UDP:-0}" = 1 ] && jq -r '"lost \(.end.sum.lost_percent)% of \(.end.sum.packets)"' "$state/iperf.json"
echo "CPU idle $((100 * (i2 - i1) / ((u2 - u1) + (n2 - n1) + (s2 - s1) + (i2 - i1))))%"
for p in $(ip netns pids pa) $(ip netns pids pb); do
	[ "$(cat /proc/$p/comm 2>/dev/null)" = weftd ] || continue
	for t in /proc/$p/task/*; do
		case $(cat "$t/comm") in weft-dp*) echo "weftd $p $(cat "$t/comm"): $(awk '{ print $14 + $15 }' "$t/stat") ticks" ;; esac
	done
done
if [ "${UDP:-0}" = 1 ]; then
	echo "A's TUN queue: $(ip -n pa -s link show weft0 | awk '/TX:/ { getline; print $4 }') dropped"
	echo "B: $(ip netns exec pb nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/ { print $1, $2 }')"
fi
