#!/usr/bin/env bash
# peers-weft.sh SIDE STATE - weft's hook for ../shared/bench/peers.sh.
#
# peers.sh runs WEFT_CMD_A in namespace pb-a and WEFT_CMD_B in pb-b and expects
# overlay 10.250.0.1 (pb-a) and 10.250.1.1 (pb-b) to reach each other. This runs
# weftd (release build, or $WEFTD) on a store shared by both sides under STATE,
# pins each side's subnet through a pre-written subnet.env (flannel's "previous
# subnet" rule), adds the benchmark address next to the TUN's .0, and stays in
# the foreground. Start with an empty STATE (rm -rf it first). Extra weftd flags
# (e.g. WEFT_ARGS='--queues 2') come from $WEFT_ARGS.
set -euo pipefail
side=$1
state=${2:-/tmp/weft-peers}
case $side in a) n=0 ;; b) n=1 ;; *) echo "usage: $0 a|b [STATE]" >&2; exit 2 ;; esac
weftd=${WEFTD:-$(cd "$(dirname "$0")/.." && pwd)/target/release/weftd}
mkdir -p "$state/$side"
conf=$state/net-conf.json
echo '{"Network":"10.250.0.0/16","SubnetLen":24,"SubnetMin":"10.250.0.0","Backend":{"Type":"vxlan"}}' >"$conf"
printf 'FLANNEL_NETWORK=10.250.0.0/16\nFLANNEL_SUBNET=10.250.%d.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n' "$n" \
	>"$state/$side/subnet.env"
"$weftd" --net-config-path "$conf" --state-dir "$state/store" --subnet-file "$state/$side/subnet.env" \
	--iface "pb-v$side" --log-level warn ${WEFT_ARGS:-} &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' EXIT TERM INT
for _ in $(seq 100); do
	ip -br addr show weft0 2>/dev/null | grep -q "10.250.$n.0/32" && break
	sleep 0.1
done
ip addr add "10.250.$n.1/32" dev weft0
wait $pid
