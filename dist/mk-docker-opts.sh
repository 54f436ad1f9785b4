#!/bin/sh
# mk-docker-opts.sh - Docker daemon options (--bip, --ip-masq, --mtu) from
# the subnet.env weftd writes, with flanneld's script's options and output,
# so units that run it as ExecStartPost work unchanged. subnet.env is read
# as data, never sourced.
set -eu

usage() {
	cat >&2 <<USAGE
usage: $0 [-f SUBNET-ENV] [-d DOCKER-ENV] [-i] [-c] [-m] [-k KEY]
  -f  subnet.env to read (default /run/flannel/subnet.env)
  -d  file to write the Docker options to (default /run/docker_opts.env)
  -i  write each option as its own variable (DOCKER_OPT_BIP=...)
  -c  write all options in one variable (DOCKER_OPTS=...)
  -k  name of that variable (default DOCKER_OPTS)
  -m  leave out --ip-masq (Docker releases without it)
Without -i or -c, both are written.
USAGE
	exit 1
}

env_file=/run/flannel/subnet.env
out=/run/docker_opts.env
key=DOCKER_OPTS
each=false
combined=false
masq=true
while getopts "f:d:k:icmh" opt; do
	case $opt in
	f) env_file=$OPTARG ;;
	d) out=$OPTARG ;;
	k) key=$OPTARG ;;
	i) each=true ;;
	c) combined=true ;;
	m) masq=false ;;
	*) usage ;;
	esac
done
if [ "$each" = false ] && [ "$combined" = false ]; then
	each=true
	combined=true
fi
case $key in
'' | [0-9]* | *[!A-Za-z0-9_]*)
	echo "$0: -k $key is not a shell variable name" >&2
	exit 1
	;;
esac
if [ ! -r "$env_file" ]; then
	echo "$0: cannot read $env_file: weftd writes it once it holds a lease (--subnet-file)" >&2
	exit 1
fi

subnet=
mtu=
ipmasq=
while IFS='=' read -r name value || [ -n "$name" ]; do
	case $name in
	FLANNEL_SUBNET) subnet=$value ;;
	FLANNEL_MTU) mtu=$value ;;
	FLANNEL_IPMASQ) ipmasq=$value ;;
	esac
done <"$env_file"

bip=
opt_mtu=
opt_masq=
[ -n "$subnet" ] && bip="--bip=$subnet"
[ -n "$mtu" ] && opt_mtu="--mtu=$mtu"
if [ -n "$ipmasq" ] && [ "$masq" = true ]; then
	# weftd masquerades (true): Docker must not, and the other way round.
	case $ipmasq in
	true) opt_masq="--ip-masq=false" ;;
	false) opt_masq="--ip-masq=true" ;;
	*)
		echo "$0: FLANNEL_IPMASQ=$ipmasq in $env_file is neither true nor false" >&2
		exit 1
		;;
	esac
fi

# What the variable already holds in the environment comes first.
eval "opts=\${$key:-}"
[ -n "$opts" ] && opts="$opts "
tmp="$out.tmp.$$"
: >"$tmp"
for pair in "DOCKER_OPT_BIP=$bip" "DOCKER_OPT_IPMASQ=$opt_masq" "DOCKER_OPT_MTU=$opt_mtu"; do
	name=${pair%%=*}
	value=${pair#*=}
	[ -n "$value" ] || continue
	[ "$each" = true ] && printf '%s="%s"\n' "$name" "$value" >>"$tmp"
	opts="$opts $value"
done
[ "$combined" = true ] && printf '%s="%s"\n' "$key" "$opts" >>"$tmp"
mv "$tmp" "$out"
