//! weftd started the way operators start flanneld: a systemd unit's command
//! line with Go's single-dash flags and `FLANNELD_*` variables against a real
//! etcd under seed 003's prefix, `Type=notify` against a notify socket the
//! test binds, and flanneld's `/healthz` and `/readyz`.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use weft::netns::{self, UNDERLAY_GW};

use crate::etcd_support::{EtcdServer, etcd_available};
use crate::harness::{Cluster, METRICS_PORT, Opts, require_root, weftd_bin};

const PREFIX: &str = "/kubernetes/network";

/// Every message the notify socket got within `wait`.
fn notifications(sock: &UnixDatagram, wait: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(wait)).unwrap();
    crate::harness::drain(|b| sock.recv(b))
}

#[test]
fn a_flanneld_unit_command_line_starts_weftd() {
    if !require_root("a_flanneld_unit_command_line_starts_weftd")
        || !etcd_available("a_flanneld_unit_command_line_starts_weftd")
    {
        return;
    }
    let mut c = Cluster::build(
        "dropin",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let etcd = EtcdServer::start_in_netns(c.underlay_ns(), UNDERLAY_GW);
    // Seed 001/003: `etcdctl set ${FLANNEL_ETCD_PREFIX}/config '{…, "SubnetLen": 24, …}'`.
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"172.30.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut socks = vec![];
    for i in 0..2 {
        let path = dir.path().join(format!("notify{i}"));
        socks.push(UnixDatagram::bind(&path).unwrap());
        let n = &c.nodes[i];
        let mut cmd = Command::new("ip");
        // The unit's ExecStart: flanneld's flags as Go writes them.
        cmd.args(["netns", "exec", &n.ns, &weftd_bin()])
            .arg(format!("-etcd-endpoints={}", etcd.endpoint()))
            .arg(format!("-etcd-prefix={PREFIX}"))
            .arg("-ip-masq")
            .arg("-v=2")
            .arg(format!(
                "-subnet-file={}",
                n.dir.join("subnet.env").display()
            ))
            .args(["-healthz-port", &METRICS_PORT.to_string()])
            .env("NOTIFY_SOCKET", &path)
            // From the unit's EnvironmentFile, flanneld's names.
            .env("FLANNELD_IFACE", "eth0")
            .env("FLANNELD_IPTABLES_FORWARD_RULES", "true");
        c.start_command(i, cmd);
    }
    c.wait_peers(1);
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    assert!(c.nodes[1].subnet().to_string().starts_with("172.30."));
    let keys = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("{PREFIX}/subnets/"),
    ]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 2, "{keys}");
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.log();
        assert!(log.contains("DEBUG"), "-v=2 is the debug level:\n{log}");
        assert_eq!(
            netns::http_get(&n.ns, METRICS_PORT, "/readyz").unwrap(),
            "ok\n"
        );
        assert_eq!(
            netns::http_get(&n.ns, METRICS_PORT, "/healthz").unwrap(),
            "ok\n"
        );
        let got = notifications(&socks[i], Duration::from_millis(200));
        assert!(
            got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
            "no READY=1: {got:?}"
        );
        assert!(
            std::fs::read_to_string(n.dir.join("subnet.env"))
                .unwrap()
                .contains("FLANNEL_IPMASQ=true"),
            "-ip-masq"
        );
    }
    c.nodes[0].stop();
    let got = notifications(&socks[0], Duration::from_millis(200));
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {got:?}"
    );
    // FLANNELD_IFACE is read: an interface that does not exist is named.
    let out = Command::new("ip")
        .args(["netns", "exec", &c.nodes[0].ns, &weftd_bin()])
        .arg(format!("-etcd-endpoints={}", etcd.endpoint()))
        .arg(format!("-etcd-prefix={PREFIX}"))
        .env("FLANNELD_IFACE", "nosuch0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nosuch0"), "{err}");
}

/// kube-flannel.yml's container args, flanneld's klog flags and the flags
/// weft has no use for are accepted: a DaemonSet swapped to weft's image
/// does not crash-loop on a parse error.
#[test]
fn flanneld_flags_weft_does_not_use_are_accepted_with_a_warning() {
    if !require_root("flanneld_flags_weft_does_not_use_are_accepted_with_a_warning") {
        return;
    }
    let mut c = Cluster::build(
        "noflag",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    c.nodes[0].extra = [
        "--ip-masq",
        "--ip-blackhole-route",
        "-vmodule=kube=3",
        "-public-ipv6",
        "2001:db8::1",
        "-v=1",
    ]
    .map(String::from)
    .to_vec();
    c.start(0);
    let log = c.nodes[0].log();
    for f in ["-ip-blackhole-route", "-vmodule"] {
        assert!(
            log.contains(&format!("flanneld's {f} has no effect in weft")),
            "{f}:\n{log}"
        );
    }
    // -public-ipv6 is taken (dual-stack), and said to do nothing on this
    // IPv4-only network.
    assert!(
        log.contains(
            "--public-ipv6 2001:db8::1 has no effect: the network config does not enable IPv6"
        ),
        "{log}"
    );
}

/// A node moving from flanneld to weft: flanneld's `flannel.1` still holds
/// UDP 8472. weftd names it with the fix; with `--replace-kernel-vxlan` it
/// deletes it, takes the node's lease over and forwards.
#[test]
fn a_leftover_flannel_device_is_named_then_replaced() {
    if !require_root("a_leftover_flannel_device_is_named_then_replaced") {
        return;
    }
    let mut c = Cluster::build(
        "swap",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let flannel_node = weft::netns::NodeNs {
        ns: c.nodes[1].ns.clone(),
        ip: c.nodes[1].ip,
    };
    let k = crate::harness::KernelNode::new(
        flannel_node,
        "10.244.77.0/24".parse().unwrap(),
        &c.store(),
    );
    c.start(0);
    let err = c.refused(1, &[]);
    assert!(
        err.contains("kernel VXLAN device flannel.1 (VNI 1) holds UDP port 8472")
            && err.contains("ip link del flannel.1")
            && err.contains("--replace-kernel-vxlan"),
        "{err}"
    );
    c.nodes[1].extra = vec!["--replace-kernel-vxlan".into()];
    c.start(1);
    c.wait_peers(1);
    let log = c.nodes[1].log();
    assert!(
        log.contains("deleted the kernel VXLAN device flannel.1 (VNI 1)"),
        "{log}"
    );
    assert_eq!(
        c.nodes[1].subnet(),
        k.subnet,
        "the node keeps flannel's lease"
    );
    let links = netns::ip(&["-n", &c.nodes[1].ns, "-br", "link"]).unwrap();
    assert!(!links.contains("flannel.1"), "{links}");
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    assert!(c.nodes[1].ping(c.nodes[0].addr()));
}

/// kube-flannel.yml's container, swapped to weftd and nothing else: its args
/// (`--ip-masq --kube-subnet-mgr --healthz-port=8081`), its environment
/// (`POD_NAME`, `POD_NAMESPACE`, `EVENT_QUEUE_DEPTH`, `CONT_WHEN_CACHE_NOT_READY`
/// and the kubelet's `KUBERNETES_SERVICE_*`), its mounts (the ServiceAccount
/// under /var/run/secrets, net-conf.json in /etc/kube-flannel, /run/flannel),
/// reached through a private mount namespace per node so the host's /etc and
/// /run stay untouched. Both nodes start, forward, and answer the probes.
#[test]
fn kube_flannel_yml_container_runs_weftd_unchanged() {
    use crate::kube_support::{ApiServer, new_state, node_json, tls_files};
    if !require_root("kube_flannel_yml_container_runs_weftd_unchanged") {
        return;
    }
    let c = Cluster::build(
        "kfyml",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = tls_files(dir.path(), "IP:192.0.2.254");
    let st = new_state();
    for i in 0..2 {
        let mut s = st.lock().unwrap();
        s.put_node(node_json(
            &format!("node{i}"),
            Some(&format!("10.244.{}.0/24", i + 1)),
            &c.nodes[i].ip.to_string(),
            serde_json::json!({}),
        ));
        s.put_pod(
            "kube-flannel",
            &format!("kube-flannel-ds-{i}"),
            &format!("node{i}"),
        );
    }
    let l = netns::in_netns(c.underlay_ns(), || {
        std::net::TcpListener::bind("192.0.2.254:0")
    })
    .unwrap()
    .unwrap();
    let port = l.local_addr().unwrap().port();
    let _srv = ApiServer::start(l, st.clone(), Some(tls));

    struct Killed(Vec<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut running = Killed(vec![]);
    for (i, n) in c.nodes.iter().enumerate() {
        let t = dir.path().join(format!("node{i}"));
        let sa = t.join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "sa-token").unwrap();
        std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
        std::fs::write(sa.join("namespace"), "kube-flannel").unwrap();
        std::fs::write(
            t.join("net-conf.json"),
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        for d in ["etc-up", "etc-work"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        // The pod's view: its own /run and /etc/kube-flannel, the host's network.
        let mounts = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/flannel /run/secrets/kubernetes.io/serviceaccount \
             && mount --bind {t}/sa /run/secrets/kubernetes.io/serviceaccount \
             && mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/etc-up,workdir={t}/etc-work /etc \
             && mkdir -p /etc/kube-flannel && cp {t}/net-conf.json /etc/kube-flannel/ \
             && exec \"$0\" \"$@\"",
            t = t.display()
        );
        let log = std::fs::File::create(t.join("weftd.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &mounts, &weftd_bin()])
            // kube-flannel.yml's args, exactly.
            .args(["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"])
            .env("POD_NAME", format!("kube-flannel-ds-{i}"))
            .env("POD_NAMESPACE", "kube-flannel")
            .env("EVENT_QUEUE_DEPTH", "5000")
            .env("CONT_WHEN_CACHE_NOT_READY", "false")
            .env("KUBERNETES_SERVICE_HOST", "192.0.2.254")
            .env("KUBERNETES_SERVICE_PORT", port.to_string())
            .env_remove("NODE_NAME")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        running.0.push(child);
    }
    let log = |i: usize| {
        std::fs::read_to_string(dir.path().join(format!("node{i}/weftd.log"))).unwrap_or_default()
    };
    for (i, n) in c.nodes.iter().enumerate() {
        let ready = crate::harness::wait_until(20, || {
            netns::http_get(&n.ns, 8081, "/readyz").is_ok_and(|b| b == "ok\n")
        });
        assert!(ready, "node{i} not ready:\n{}", log(i));
        assert!(netns::http_get(&n.ns, 8081, "/healthz").is_ok_and(|b| b.starts_with("ok")));
        assert!(!log(i).contains("has no effect"), "{}", log(i));
    }
    let to = |i: usize| -> std::net::Ipv4Addr { [10, 244, i as u8 + 1, 0].into() };
    assert!(
        crate::harness::wait_until(10, || crate::harness::ping_from(&c.nodes[0].ns, to(1))
            && crate::harness::ping_from(&c.nodes[1].ns, to(0))),
        "no forwarding:\n{}\n{}",
        log(0),
        log(1)
    );
    let node1 = st.lock().unwrap().node("node1");
    assert!(
        node1["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"].is_string(),
        "{node1}"
    );
    assert!(
        !std::path::Path::new("/etc/kube-flannel").exists(),
        "the host's /etc untouched"
    );
}
