#!/usr/bin/env bash
# cluster-images.sh - build the container images of the cluster tier
# (scripts/cluster.sh) without any image registry, as docker-archive tarballs
# that containerd's `ctr -n k8s.io images import` takes, and print their paths:
#
#   pause.tar  registry.k8s.io/pause:3.10.1  Kubernetes' own pause.c (from the Go
#                                            module cache), static
#   test.tar   localhost/weft-test:dev       busybox (Debian's busybox-static) and
#                                            netprobe (cluster/cmd/netprobe)
#   weft.tar   localhost/weft:dev            docker/Dockerfile, built by buildah on
#                                            local bases: bookworm debootstrapped
#                                            from the host's own Debian mirror, and
#                                            the host's Rust toolchain mounted in
#   flannel.tar localhost/flannel:VERSION    stands in for flannel's release images
#                                            (ghcr.io/flannel-io/flannel and
#                                            flannel-cni-plugin): on the same bookworm
#                                            base, iproute2, iptables and nftables as
#                                            flannel's image has, /opt/bin/flanneld,
#                                            /opt/bin/install-conf,
#                                            /opt/bin/mk-docker-opts.sh and the CNI
#                                            plugin at /flannel, from the binaries
#                                            `scripts/cluster.sh build-flannel` caches
#
# Everything is cached under ${WEFT_CLUSTER_CACHE:-/var/cache/weft-cluster}: a
# tarball is rebuilt only when the hash of its inputs changed (NAME.tar.inputs
# beside it); the debootstrapped rootfs, buildah's layers and cargo's target/
# are kept. After a build the tarballs are checked in a throwaway containerd
# (imported, listed, run once) under /tmp, which is removed afterwards.
#
# Usage: scripts/cluster-images.sh [--force] [--verify|--no-verify]
#   --force      rebuild the tarballs even when their inputs are unchanged
#                (buildah's layer cache still applies; to start from nothing,
#                remove the cache directory)
#   --verify     check the tarballs in a throwaway containerd even if none was
#                rebuilt; --no-verify: never
# Environment:
#   WEFT_CLUSTER_CACHE   cache root (default /var/cache/weft-cluster)
#   WEFT_DEBIAN_MIRROR   Debian mirror for the bases (default: the host's apt
#                        sources' bookworm entry)
#   STORAGE_DRIVER       buildah's storage driver (default overlay; vfs where
#                        overlay cannot nest)
# Needs root, Go (cluster/go.mod) and rustup's stable toolchain; installs its
# Debian packages when missing. It never changes the host's network settings:
# builds use the host's network only to reach the Debian mirror and crates.io.
set -euo pipefail
t_start=$EPOCHREALTIME

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${WEFT_CLUSTER_CACHE:-/var/cache/weft-cluster}
out=$cache/images
work=$cache/images-work
suite=bookworm
# buildah's run-time state (locks, mounts) for this cache's storage.
runroot=/run/weft-cluster-buildah/$(printf %s "$cache" | sha256sum | cut -c1-12)

force=0 verify=auto
for arg in "$@"; do
	case $arg in
	--force) force=1 ;;
	--verify) verify=1 ;;
	--no-verify) verify=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*)
		echo "cluster-images.sh: unknown argument $arg (see --help)" >&2
		exit 2
		;;
	esac
done

log() { printf 'cluster-images: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# since T0: seconds since $EPOCHREALTIME was T0, as "12.3s".
since() {
	local us=$((${EPOCHREALTIME/./} - ${1/./}))
	printf '%d.%ds' $((us / 1000000)) $((us % 1000000 / 100000))
}

# timed LABEL CMD...: run CMD and log how long it took.
timed() {
	local label=$1 t0=$EPOCHREALTIME
	shift
	"$@"
	log "$label: $(since "$t0")"
}

sum256() { sha256sum | cut -c1-64; }

bh() { buildah --root "$cache/buildah/storage" --runroot "$runroot" "$@"; }

# Temporary directories, buildah containers and the verify containerd are
# removed on exit, whatever happens.
tmpdirs=() containers=() ctrd_pid=
cleanup() {
	local c d
	if [[ -n $ctrd_pid ]]; then
		kill "$ctrd_pid" 2>/dev/null || true
		wait "$ctrd_pid" 2>/dev/null || true
	fi
	for c in "${containers[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done
	for d in "${tmpdirs[@]}"; do
		# Unmount anything left under d (innermost first) before removing it.
		awk -v d="$d/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo |
			sort -r | xargs -r -n1 umount -l 2>/dev/null || true
		rm -rf "$d"
	done
}
trap cleanup EXIT

# ---------------------------------------------------------------- dependencies

[[ $EUID -eq 0 ]] || die "run as root (buildah, debootstrap and containerd need it)"

# need_pkgs PKG...: apt-get install those not installed yet.
need_pkgs() {
	local p missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	((${#missing[@]})) || return 0
	log "installing ${missing[*]}"
	apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${missing[@]}" >/dev/null
}
need_pkgs buildah debootstrap debian-archive-keyring busybox-static gcc libc6-dev binutils

command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "go not found: cluster/go.mod needs Go 1.24 or newer"
command -v rustup >/dev/null || PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
command -v rustup >/dev/null || die "rustup not found: the weft image builds with rustup's stable toolchain"

mkdir -p "$out" "$work" "$cache/buildah" "$cache/weft-target"
exec 9>"$out/.lock"
if ! flock -n 9; then
	log "waiting for another cluster-images.sh to finish"
	flock 9
fi

# ------------------------------------------------------------------ the inputs

# rustup's stable toolchain on the host, mounted into the weft build at the
# same name under RUSTUP_HOME=/usr/local/rustup.
rust_sysroot=$(realpath "$(rustup run stable rustc --print sysroot)")
rust_toolchain=$(basename "$rust_sysroot")
cargo_registry=${CARGO_HOME:-$HOME/.cargo}/registry

# host_apt_sources: "URI SUITE COMPONENT..." for each enabled deb entry of the
# host's apt sources, one-line (.list) and deb822 (.sources) formats.
host_apt_sources() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
			awk '$1 == "deb" && NF >= 4 { $1 = ""; sub(/^ +/, ""); print }'
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		grep -v '^#' "$f" | awk 'BEGIN { RS = ""; FS = "\n" }
		{
			delete v; k = ""
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^[ \t]/) { v[k] = v[k] " " $i; continue }
				p = index($i, ":")
				if (p) { k = tolower(substr($i, 1, p - 1)); v[k] = substr($i, p + 1) }
			}
			if (tolower(v["enabled"]) ~ /^[ \t]*no/) next
			if (v["types"] !~ /(^|[ \t])deb([ \t]|$)/) next
			c = v["components"]; gsub(/^[ \t]+|[ \t]+$/, "", c); gsub(/[ \t]+/, " ", c)
			nu = split(v["uris"], u, /[ \t]+/); ns = split(v["suites"], s, /[ \t]+/)
			for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
				if (u[a] != "" && s[b] != "") print u[a], s[b], c
		}'
	done
}

# The bases' apt sources: the host's entries for bookworm and bookworm-*, so
# the images use the mirror the host uses (no host name is written here).
if [[ -n ${WEFT_DEBIAN_MIRROR:-} ]]; then
	debian_sources="$WEFT_DEBIAN_MIRROR $suite main
$WEFT_DEBIAN_MIRROR $suite-updates main"
else
	debian_sources=$(host_apt_sources |
		awk -v s="$suite" '($2 == s || index($2, s "-") == 1) && !seen[$0]++')
fi
debian_mirror=$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$debian_sources")
[[ -n $debian_mirror ]] ||
	die "no '$suite' entry in the host's apt sources; set WEFT_DEBIAN_MIRROR to a Debian mirror URL"

kube_dir() {
	(cd "$repo/cluster" && go mod download k8s.io/kubernetes &&
		go list -m -f '{{.Dir}}' k8s.io/kubernetes)
}

# ------------------------------------------------------------- image helpers

# tar_dir DIR FILE: a reproducible tarball of DIR's contents.
tar_dir() {
	tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$2" .
}

# image_from_tar NAME TAR CONFIG-ARG...: commit image NAME from an empty image
# plus TAR's contents, configured by `buildah config CONFIG-ARG...`.
image_from_tar() {
	local name=$1 tarball=$2 c
	shift 2
	c=$(bh from scratch)
	containers+=("$c")
	bh add --quiet "$c" "$tarball" / >/dev/null
	bh config "$@" "$c"
	bh commit --quiet --identity-label=false --timestamp 0 --rm "$c" "$name" >/dev/null
}

# export_image NAME FILE: write image NAME as a docker-archive tarball FILE.
export_image() {
	rm -f "$2.tmp"
	bh push --quiet "$1" "docker-archive:$2.tmp:$1" >/dev/null
	mv "$2.tmp" "$2"
}

# is_current STAMP HASH [IMAGE]: whether STAMP records HASH (and IMAGE, if
# given, is in buildah's storage).
is_current() {
	[[ -f $1 && $(<"$1") == "$2" ]] || return 1
	[[ -z ${3:-} ]] || bh inspect --type image "$3" >/dev/null 2>&1
}

# new_tmpdir: a directory under $work in $tmp, removed on exit.
new_tmpdir() {
	tmp=$(mktemp -d "$work/tmp.XXXXXX")
	tmpdirs+=("$tmp")
}

# ------------------------------------------------------------------ pause.tar

pause_cflags=(-Os -Wall -Werror -static)

# build_pause DIR TAG: registry.k8s.io/pause:TAG as build/pause's Dockerfile
# makes it (the Makefile's CFLAGS; VERSION without its git revision).
build_pause() {
	local src=$1/build/pause/linux/pause.c tag=$2 d
	new_tmpdir
	d=$tmp
	mkdir "$d/root"
	gcc "${pause_cflags[@]}" -DVERSION="v$tag" -o "$d/root/pause" "$src"
	strip "$d/root/pause"
	tar_dir "$d/root" "$d/rootfs.tar"
	image_from_tar "registry.k8s.io/pause:$tag" "$d/rootfs.tar" \
		--entrypoint '["/pause"]' --user 65535:65535
	export_image "registry.k8s.io/pause:$tag" "$out/pause.tar"
}

# ------------------------------------------------------------------- test.tar

test_image=localhost/weft-test:dev

build_test() {
	local d
	new_tmpdir
	d=$tmp
	mkdir -p "$d/root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp,proc,sys,dev}
	chmod 1777 "$d/root/tmp"
	(cd "$repo/cluster" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' \
		-o "$d/root/usr/local/bin/netprobe" ./cmd/netprobe)
	cp /bin/busybox "$d/root/bin/busybox"
	chroot "$d/root" /bin/busybox --install -s
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
		>"$d/root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$d/root/etc/group"
	tar_dir "$d/root" "$d/rootfs.tar"
	image_from_tar "$test_image" "$d/rootfs.tar" \
		--env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd '["/usr/local/bin/netprobe","serve","-tcp",":8080","-udp",":8081","-http",":8082"]'
	export_image "$test_image" "$out/test.tar"
}

# ------------------------------------------------------------- the weft bases

debian_image=localhost/debian:$suite-slim
rust_image=localhost/rust:$suite
rootfs_tar=$work/debian-$suite-rootfs.tar

# make_rootfs: a minbase bookworm from the host's mirror, slimmed like the
# official -slim images, with the host's sources for apt.
make_rootfs() {
	local d r
	new_tmpdir
	d=$tmp
	r=$d/rootfs
	debootstrap --variant=minbase "$suite" "$r" "$debian_mirror" >"$d/debootstrap.log" 2>&1 ||
		die "debootstrap failed; its log: $(tail -5 "$d/debootstrap.log")"
	awk '{ print "deb", $0 }' <<<"$debian_sources" >"$r/etc/apt/sources.list"
	cat >"$r/etc/dpkg/dpkg.cfg.d/slim" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/lintian/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/locale/*
	EOF
	cat >"$r/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "$r"/usr/share/{man,groff,info,lintian,linda,locale}/*
	rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
	rm -f "$r"/var/log/*.log "$r"/var/log/apt/* "$r/etc/resolv.conf" "$r/etc/hostname"
	tar_dir "$r" "$rootfs_tar.tmp"
	mv "$rootfs_tar.tmp" "$rootfs_tar"
}

make_debian_image() {
	image_from_tar "$debian_image" "$rootfs_tar" \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd '["bash"]'
}

# make_rust_image: like the official rust image's layout, without a toolchain:
# the build mounts the host's at /usr/local/rustup/toolchains/<name>, and
# /usr/local/cargo/bin links to it.
make_rust_image() {
	local c b
	c=$(bh from --pull=never "$debian_image")
	containers+=("$c")
	bh run --isolation=chroot --network=host "$c" -- sh -c 'apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			gcc libc6-dev pkg-config ca-certificates &&
		rm -rf /var/lib/apt/lists/*' >/dev/null
	local links=()
	for b in "$rust_sysroot"/bin/*; do
		links+=("/usr/local/rustup/toolchains/$rust_toolchain/bin/${b##*/}")
	done
	bh run --isolation=chroot "$c" -- sh -c \
		'mkdir -p /usr/local/cargo/bin /usr/local/rustup/toolchains &&
		ln -s "$@" /usr/local/cargo/bin/' sh "${links[@]}"
	bh config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
		--env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		"$c"
	bh commit --quiet --identity-label=false --timestamp 0 --rm "$c" "$rust_image" >/dev/null
}

# ------------------------------------------------------------------- weft.tar

weft_image=localhost/weft:dev
weft_build_image=localhost/weft-build:dev

weft_context=$work/weft-context

# stage_weft_context: snapshot the build context into $weft_context (mtimes
# kept, for cargo): the paths .dockerignore re-includes ("!path") less those
# it excludes after them, and docker/Dockerfile. The inputs' hash and both
# buildah passes read the snapshot, so edits to the checkout meanwhile cannot
# make them disagree.
stage_weft_context() {
	local line incl=() excl=()
	while read -r line; do
		case $line in
		'' | '#'* | '*') ;;
		'!'*) incl+=("./${line#!}") ;;
		*) excl+=(-path "./${line%/}" -prune -o) ;;
		esac
	done <"$repo/.dockerignore"
	rm -rf "$weft_context"
	mkdir -p "$weft_context"
	(cd "$repo" && find "${incl[@]}" ./.dockerignore ./docker/Dockerfile "${excl[@]}" \
		-type f -print0 | tar --null --no-recursion -T - -cf -) | tar -C "$weft_context" -xf -
}

# build_weft: docker/Dockerfile in two passes, so that the runtime stage is
# not built with the mounts (buildah's --volume applies to every RUN, and
# leaves the mount points behind as empty directories): the build stage with
# the toolchain, cargo's registry and the cached target/ mounted, then the
# whole image without mounts, on the build stage's layers from the first pass.
build_weft() {
	local bud=(bud --quiet --isolation=chroot --network=host --layers --force-rm
		--pull=never --identity-label=false -f "$weft_context/docker/Dockerfile"
		--build-arg RUST_IMAGE="$rust_image" --build-arg BASE_IMAGE="$debian_image")
	timed "cargo fetch (host registry)" \
		cargo fetch --locked --quiet --manifest-path "$weft_context/Cargo.toml"
	# Cargo judges weft's own sources fresh by mtime, which a checkout of older
	# files can move backwards; the inputs changed, so rebuild weft's crate
	# (not its dependencies) for certain.
	rm -rf "$cache/weft-target"/release/.fingerprint/weft-*
	timed "buildah bud: build stage" bh "${bud[@]}" --target build \
		--volume "$rust_sysroot:/usr/local/rustup/toolchains/$rust_toolchain:ro" \
		--volume "$cargo_registry:/usr/local/cargo/registry:rw" \
		--volume "$cache/weft-target:/src/target:rw" \
		-t "$weft_build_image" "$weft_context" >/dev/null
	timed "buildah bud: runtime stage" bh "${bud[@]}" -t "$weft_image" "$weft_context" >/dev/null
	# Drop the layers of earlier builds; the current images' keep the cache.
	bh rmi --prune >/dev/null
}

# ---------------------------------------------------------------- flannel.tar

# flannel's own release, built from its modules by `scripts/cluster.sh
# build-flannel` into $cache/bin: flanneld and install-conf from
# cluster/flannel (flannel's version), the CNI plugin from cluster/flannel-cni.
flannel_version=$(awk '$1 == "github.com/flannel-io/flannel" { print $2 }' "$repo/cluster/flannel/go.mod")
[[ -n $flannel_version ]] || die "cluster/flannel/go.mod does not require github.com/flannel-io/flannel"
flannel_image=localhost/flannel:$flannel_version
flannel_bins=("$cache/bin/flanneld" "$cache/bin/flannel-install-conf" "$cache/bin/flannel")

# build_flannel_image DIR: on the Debian base, what flannel's images/Dockerfile
# puts in its image that flanneld and its init containers use (iproute2,
# iptables, nftables, CA certificates; flanneld, install-conf and
# mk-docker-opts.sh under /opt/bin), plus its CNI plugin at /flannel, where
# the flannel-cni-plugin image keeps it. One image carries both, so the
# DaemonSet's two image names both become this one (scripts/cluster.sh
# install-flannel).
build_flannel_image() {
	local moddir=$1 c
	c=$(bh from --pull=never "$debian_image")
	containers+=("$c")
	bh run --isolation=chroot --network=host "$c" -- sh -c 'apt-get update -q &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			iproute2 iptables nftables ca-certificates &&
		rm -rf /var/lib/apt/lists/*' >/dev/null
	bh copy --chmod 0755 "$c" "$cache/bin/flanneld" /opt/bin/flanneld
	bh copy --chmod 0755 "$c" "$cache/bin/flannel-install-conf" /opt/bin/install-conf
	bh copy --chmod 0755 "$c" "$moddir/dist/mk-docker-opts.sh" /opt/bin/mk-docker-opts.sh
	bh copy --chmod 0755 "$c" "$cache/bin/flannel" /flannel
	bh config --entrypoint '["/opt/bin/flanneld"]' --cmd '' "$c"
	bh commit --quiet --identity-label=false --timestamp 0 --rm "$c" "$flannel_image" >/dev/null
	export_image "$flannel_image" "$out/flannel.tar"
}

# ---------------------------------------------------------------------- verify

# verify_images: import the tarballs into a throwaway containerd, list them,
# and run each image once.
verify_images() {
	local d c name
	need_pkgs containerd runc
	d=$(mktemp -d /tmp/weft-images-ctrd.XXXXXX)
	tmpdirs+=("$d")
	cat >"$d/config.toml" <<-EOF
		version = 2
		disabled_plugins = ["io.containerd.grpc.v1.cri"]
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$d/opt"
	EOF
	# In a mount namespace of its own with a private /run, so that neither it
	# nor its shims and runc leave anything in the host's /run.
	unshare --mount --propagation private -- sh -c 'mount -t tmpfs -o mode=755 tmpfs /run &&
		exec containerd "$@"' sh --config "$d/config.toml" --root "$d/root" \
		--state "$d/state" --address "$d/c.sock" >"$d/containerd.log" 2>&1 &
	ctrd_pid=$!
	c=(ctr -a "$d/c.sock" -n k8s.io)
	for _ in {1..100}; do
		"${c[@]}" version >/dev/null 2>&1 && break
		sleep 0.1
	done
	"${c[@]}" version >/dev/null || die "containerd did not start: $(tail -3 "$d/containerd.log")"
	for name in pause test weft flannel; do
		"${c[@]}" images import "$out/$name.tar" >>"$d/import.log" 2>&1 ||
			die "importing $out/$name.tar: $(tail -5 "$d/import.log")"
	done
	for name in "registry.k8s.io/pause:$pause_tag" "$test_image" "$weft_image" "$flannel_image"; do
		"${c[@]}" images ls -q | grep -qxF "$name" ||
			die "$name is not in containerd after the import; the import said: $(cat "$d/import.log"); containerd holds: $("${c[@]}" images ls -q | tr '\n' ' '); $(ls -l "$out"); df: $(df -h "$out" | tail -1); containerd's log: $(tail -5 "$d/containerd.log")"
	done
	"${c[@]}" images ls >&2
	# run IMAGE CMD...: run CMD once in IMAGE (its own network namespace, with
	# only lo), and log its output.
	local n=0 output
	run() {
		n=$((n + 1))
		output=$("${c[@]}" run --rm --fifo-dir "$d/fifo" "$1" "weft-verify-$$-$n" "${@:2}") ||
			die "$1: ${*:2} failed: $output"
		printf '%s\n' "$output" | while read -r line; do log "$1: $line"; done
	}
	run "registry.k8s.io/pause:$pause_tag" /pause -v
	run "$test_image" netprobe version
	# The image's own tools against its netprobe server, on lo.
	# shellcheck disable=SC2016 # $a expands in the container
	run "$test_image" sh -ec 'netprobe serve -tcp :8080 -udp :8081 -http :8082 2>/dev/null &
		sleep 0.5
		netprobe tcp 127.0.0.1:8080
		netprobe udp [::1]:8081
		wget -qO- http://127.0.0.1:8082/
		ping -c1 -W2 127.0.0.1 | grep -o "1 packets received"
		for a in ls cat sleep ip nc nslookup; do command -v "$a" >/dev/null; done
		echo "busybox applets ok"'
	run "$weft_image" weftd --version
	run "$weft_image" sh -c 'nft --version; iptables --version'
	run "$flannel_image" sh -c '/opt/bin/flanneld --version 2>&1'
	# What the DaemonSet's init containers and flanneld run, and the plugin's
	# CNI versions.
	# shellcheck disable=SC2016 # $f expands in the container
	run "$flannel_image" sh -ec 'for f in /opt/bin/install-conf /opt/bin/mk-docker-opts.sh /flannel; do
			test -x "$f"; done
		ip -V; iptables --version; nft --version
		CNI_COMMAND=VERSION /flannel </dev/null; echo'
	kill "$ctrd_pid"
	wait "$ctrd_pid" || true
	ctrd_pid=
}

# ------------------------------------------------------------------------ main

rebuilt=0

# pause.tar
kube=$(kube_dir)
pause_tag=$(sed -n 's/^TAG ?= *//p' "$kube/build/pause/Makefile")
[[ -n $pause_tag ]] || die "no TAG in $kube/build/pause/Makefile"
pause_hash=$({
	sha256sum <"$kube/build/pause/linux/pause.c"
	echo "$pause_tag ${pause_cflags[*]}"
	gcc --version | head -1
	declare -f build_pause image_from_tar tar_dir
} | sum256)
if ((force)) || ! is_current "$out/pause.tar.inputs" "$pause_hash" || [[ ! -f $out/pause.tar ]]; then
	timed "pause.tar built (registry.k8s.io/pause:$pause_tag)" build_pause "$kube" "$pause_tag"
	echo "$pause_hash" >"$out/pause.tar.inputs"
	rebuilt=1
else
	log "pause.tar is up to date"
fi

# test.tar
test_hash=$({
	cat "$repo"/cluster/cmd/netprobe/*.go | sha256sum
	grep '^go ' "$repo/cluster/go.mod"
	go version
	dpkg-query -W busybox-static
	declare -f build_test image_from_tar tar_dir
} | sum256)
if ((force)) || ! is_current "$out/test.tar.inputs" "$test_hash" || [[ ! -f $out/test.tar ]]; then
	timed "test.tar built ($test_image)" build_test
	echo "$test_hash" >"$out/test.tar.inputs"
	rebuilt=1
else
	log "test.tar is up to date"
fi

# weft.tar, on the bases
rootfs_hash=$({
	echo "$suite $debian_mirror"
	echo "$debian_sources"
	declare -f make_rootfs tar_dir
} | sum256)
debian_hash=$({
	echo "$rootfs_hash"
	declare -f make_debian_image image_from_tar
} | sum256)
rust_hash=$({
	echo "$debian_hash $rust_toolchain"
	ls "$rust_sysroot/bin"
	declare -f make_rust_image
} | sum256)
# debian_base: the debootstrapped rootfs and the Debian base image, each
# rebuilt only when its inputs changed (weft's and flannel's images need it).
debian_base() {
	if ! is_current "$rootfs_tar.inputs" "$rootfs_hash" || [[ ! -f $rootfs_tar ]]; then
		timed "debootstrap $suite rootfs from $debian_mirror" make_rootfs
		echo "$rootfs_hash" >"$rootfs_tar.inputs"
	fi
	if ! is_current "$cache/buildah/debian.inputs" "$debian_hash" "$debian_image"; then
		timed "base image $debian_image" make_debian_image
		echo "$debian_hash" >"$cache/buildah/debian.inputs"
	fi
}
stage_weft_context
weft_hash=$({
	echo "$rust_hash"
	"$rust_sysroot/bin/rustc" -vV
	(cd "$weft_context" && find . -type f | LC_ALL=C sort | xargs -d '\n' sha256sum)
	declare -f build_weft
} | sum256)
if ((force)) || ! is_current "$out/weft.tar.inputs" "$weft_hash" || [[ ! -f $out/weft.tar ]]; then
	t_weft=$EPOCHREALTIME
	debian_base
	if ! is_current "$cache/buildah/rust.inputs" "$rust_hash" "$rust_image"; then
		timed "base image $rust_image" make_rust_image
		echo "$rust_hash" >"$cache/buildah/rust.inputs"
	fi
	build_weft
	timed "weft.tar exported" export_image "$weft_image" "$out/weft.tar"
	echo "$weft_hash" >"$out/weft.tar.inputs"
	log "weft.tar built in $(since "$t_weft")"
	rebuilt=1
else
	log "weft.tar is up to date"
fi

# flannel.tar, on the Debian base, from the cached binaries
for f in "${flannel_bins[@]}"; do
	[[ -x $f ]] || "$repo/scripts/cluster.sh" build-flannel
done
flannel_moddir=$(cd "$repo/cluster/flannel" && go mod download github.com/flannel-io/flannel &&
	go list -m -f '{{.Dir}}' github.com/flannel-io/flannel)
flannel_hash=$({
	echo "$debian_hash $flannel_version"
	sha256sum "${flannel_bins[@]}" "$flannel_moddir/dist/mk-docker-opts.sh" | cut -c1-64
	declare -f build_flannel_image export_image
} | sum256)
if ((force)) || ! is_current "$out/flannel.tar.inputs" "$flannel_hash" || [[ ! -f $out/flannel.tar ]]; then
	debian_base
	timed "flannel.tar built ($flannel_image)" build_flannel_image "$flannel_moddir"
	echo "$flannel_hash" >"$out/flannel.tar.inputs"
	rebuilt=1
else
	log "flannel.tar is up to date"
fi

if [[ $verify == 1 ]] || [[ $verify == auto && $rebuilt == 1 ]]; then
	timed "verified in a throwaway containerd" verify_images
fi
log "done in $(since "$t_start"); sizes: $(cd "$out" && du -h pause.tar test.tar weft.tar flannel.tar | awk '{ printf "%s %s  ", $2, $1 }')"
printf '%s\n' "$out/pause.tar" "$out/test.tar" "$out/weft.tar" "$out/flannel.tar"
