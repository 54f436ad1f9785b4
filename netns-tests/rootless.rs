//! The rootless tier: weftd run by an unprivileged user inside a user,
//! network and mount namespace of its own, as rootless kind or podman run
//! it. The runner (root) only prepares what such a host provides: a TUN node
//! the user may open and a `/run/netns` to mount over; everything else (the
//! namespaces, veths, weftd, the rules, the traffic) is done by the user.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::harness::{Cluster, Opts, require_root, tcp_transfer};

/// Set for the inner half, which runs inside the user namespace.
const INNER: &str = "WEFT_ROOTLESS_INNER";

/// Copies `from` into `dir` (mode 0755) and returns the copy's path.
fn copy_exec(from: &std::path::Path, dir: &std::path::Path) -> String {
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to.display().to_string()
}

#[test]
fn rootless_nodes_ping_carry_tcp_and_run_the_lab() {
    if !require_root("rootless_nodes_ping_carry_tcp_and_run_the_lab") {
        return;
    }
    if std::env::var_os(INNER).is_some() {
        return; // inside already: the inner half is the ignored test below
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tun = d.join("tun");
    crate::harness::tun_node(&tun, "666");
    std::fs::create_dir_all("/run/netns").unwrap();
    // Binaries the user may execute wherever the checkout lives.
    let weftd = copy_exec(env!("CARGO_BIN_EXE_weftd").as_ref(), d);
    let me = copy_exec(&std::env::current_exe().unwrap(), d);
    let script = format!(
        "set -e; mount --bind {tun} /dev/net/tun; mount -t tmpfs tmpfs /run/netns; \
         {me} --exact rootless::inner --ignored --nocapture --test-threads=1",
        tun = tun.display()
    );
    let out = crate::harness::unprivileged_in_userns(&script)
        .env(INNER, "1")
        .env("WEFT_TEST_WEFTD", &weftd)
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the rootless tier failed:\n{text}");
    assert!(
        text.contains("test result: ok. 1 passed")
            && text.contains("rootless: weftd lab --once passed"),
        "the inner half did not run:\n{text}"
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("rootless:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The inner half: an unprivileged user, root only in its user namespace.
#[test]
#[ignore = "run by rootless_nodes_ping_carry_tcp_and_run_the_lab inside a user namespace"]
fn inner() {
    assert!(
        std::env::var_os(INNER).is_some(),
        "run by rootless_nodes_ping_carry_tcp_and_run_the_lab"
    );
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(
        uid_map.split_whitespace().nth(1) == Some("65534"),
        "root here must be the unprivileged user outside: {uid_map}"
    );
    let mut c = Cluster::up(
        "rl",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    for n in &c.nodes {
        assert!(n.log().contains("installed with nftables"), "{}", n.log());
    }
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    assert!(a.ping(b.addr()) && b.ping(a.addr()), "rootless nodes ping");
    let size = 64 << 20;
    let (sent, got, n) = tcp_transfer(&a.ns, &b.ns, b.addr(), 5400, size);
    assert_eq!((n, sent), (size, got), "64 MiB of TCP, byte-identical");
    println!("rootless: two nodes ping and carry 64 MiB of TCP byte-identical");
    c.nodes[0].stop();
    drop(c);
    let lab = Command::new(crate::harness::weftd_bin())
        .args(["lab", "--once", "--nodes", "2"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&lab.stdout);
    assert!(
        lab.status.success(),
        "weftd lab --once, rootless:\n{out}\n{}",
        String::from_utf8_lossy(&lab.stderr)
    );
    println!("rootless: weftd lab --once passed");
}

/// Runs weftd as an unprivileged user with `/dev/net/tun` replaced by
/// `node` (or absent, with None), in a user namespace or not; its stderr.
fn weftd_as_nobody(d: &std::path::Path, node: Option<&str>, userns: bool) -> String {
    let weftd = copy_exec(env!("CARGO_BIN_EXE_weftd").as_ref(), d);
    let dev = match node {
        Some(n) => format!("mount --bind {n} /dev/net/tun"),
        None => "mount -t tmpfs tmpfs /dev/net".to_string(),
    };
    let run = format!(
        "{weftd} --iface lo --state-dir {d}/store --subnet-file {d}/subnet.env",
        d = d.display()
    );
    let drop = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    let script = if userns {
        format!(
            "{drop} unshare --user --map-root-user --net --mount sh -c '{dev}; ip link set lo up; {run}'"
        )
    } else {
        // A network namespace of root's: the user has no CAP_NET_ADMIN there.
        format!("{dev}; unshare --net sh -c 'ip link set lo up; {drop} {run}'")
    };
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(!out.status.success(), "weftd started?");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each cause of a TUN failure is named once, with its own fix.
#[test]
fn tun_errors_name_their_cause() {
    if !require_root("tun_errors_name_their_cause") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (mode, name) in [("600", "tun600"), ("666", "tun666")] {
        crate::harness::tun_node(&d.join(name), mode);
    }
    let node = |n: &str| d.join(n).display().to_string();
    let cases = [
        (
            weftd_as_nobody(d, Some(&node("tun600")), true),
            "permission denied. The device node's mode",
            "chmod 0666 /dev/net/tun",
        ),
        (
            weftd_as_nobody(d, None, true),
            "it does not exist",
            "modprobe tun",
        ),
        (
            weftd_as_nobody(d, Some(&node("tun666")), false),
            "operation not permitted. weftd needs CAP_NET_ADMIN over this network namespace",
            "unshare --user --map-root-user --net",
        ),
    ];
    for (err, cause, fix) in cases {
        assert_eq!(err.matches(cause).count(), 1, "the cause, once:\n{err}");
        assert!(err.contains(fix), "the fix:\n{err}");
        assert!(
            !err.contains("offloads"),
            "no offload fallback for this:\n{err}"
        );
        assert!(
            !err.contains("lease acquired"),
            "refused before the lease:\n{err}"
        );
    }
}
