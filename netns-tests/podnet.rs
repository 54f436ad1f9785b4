//! The pod network as Kubernetes requires it, with weftd's `--ip-masq`, in
//! both rule backends: pods on different nodes see each other's own
//! addresses (TCP and UDP, both CNI modes); a pod reaching a host outside the
//! cluster network is seen there as its node; a node whose FORWARD policy is
//! DROP still forwards pod traffic; rules flushed by hand come back within the
//! resync period; a subnet change replaces the rules; a pod reaches itself
//! through a Service (hairpin); and the rules install inside a user
//! namespace (the rootless path). Pods on real flannel nodes beside weft's,
//! with flanneld's own rules, are in `flannel.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::cni::{Pod, add_pod, add_pod6};
use crate::harness::{Cluster, Opts, require_root, wait_until};
use weft::lease::{Lease, LeaseAttrs};
use weft::netfilter::Rules;
use weft::netns;
use weft::types::{Vni, VtepMac};

const NFT_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const IPT_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;
/// A Service address, DNATed by the kube-proxy stand-in of the hairpin check.
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn sh(ns: &str, program: &str, args: &[&str]) -> String {
    netns::run(netns::exec_in(ns, program).args(args))
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"))
}

/// The source address a TCP server bound to `bind` in `server_ns` sees when
/// `client_ns` connects to `to`; None when the connection does not work.
pub(crate) fn tcp_seen(
    server_ns: &str,
    bind: SocketAddr,
    client_ns: &str,
    to: SocketAddr,
) -> Option<IpAddr> {
    let listener = netns::in_netns(server_ns, || TcpListener::bind(bind))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {bind} in {server_ns}: {e}"));
    listener.set_nonblocking(true).unwrap();
    let client_ns = client_ns.to_string();
    let client = std::thread::spawn(move || {
        netns::in_netns(&client_ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .and_then(|mut s| std::io::Write::write_all(&mut s, b"x"))
                .is_ok()
        })
        .unwrap()
    });
    let end = Instant::now() + Duration::from_secs(4);
    let seen = loop {
        match listener.accept() {
            Ok((_, peer)) => break Some(peer.ip()),
            Err(_) if Instant::now() > end => break None,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let connected = client.join().unwrap();
    seen.filter(|_| connected)
}

/// The source address a UDP server bound to `bind` in `server_ns` sees for a
/// datagram `client_ns` sends to `bind`; None when none arrives.
pub(crate) fn udp_seen(server_ns: &str, bind: SocketAddr, client_ns: &str) -> Option<IpAddr> {
    let sock = netns::in_netns(server_ns, || UdpSocket::bind(bind))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind udp {bind} in {server_ns}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let any = if bind.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let client = netns::in_netns(client_ns, || UdpSocket::bind(any))
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..6 {
        let _ = client.send_to(b"hello", bind);
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            return Some(from.ip());
        }
    }
    None
}

pub(crate) fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The comments of weft's rules (`weft masq 1a2b3c4d/0` …) in the node's
/// namespace, with the listing they came from.
fn weft_rules(ns: &str, backend: &str) -> (Vec<String>, String) {
    let listing = if backend == "nftables" {
        netns::run(netns::exec_in(ns, "nft").args(["list", "table", "ip", "weft"]))
            .unwrap_or_default()
    } else {
        sh(ns, "iptables-save", &[])
    };
    let re = regex::Regex::new(r"weft (masq|forward) [0-9a-f]{8}/\d+").unwrap();
    let found = re
        .find_iter(&listing)
        .map(|m| m.as_str().to_string())
        .collect();
    (found, listing)
}

/// What kube-proxy does for a Service whose one endpoint is `pod:8080`: DNAT
/// in PREROUTING, and a mark (masqueraded by its own rule) for hairpin traffic.
fn kube_proxy_service(node_ns: &str, pod: Ipv4Addr) {
    let svc = format!("{SERVICE_IP}/32");
    let ep = format!("{pod}:8080");
    let pod32 = format!("{pod}/32");
    for rule in [
        vec![
            "-A",
            "PREROUTING",
            "-s",
            &pod32,
            "-d",
            &svc,
            "-j",
            "MARK",
            "--set-xmark",
            "0x4000/0x4000",
        ],
        vec![
            "-A",
            "PREROUTING",
            "-d",
            &svc,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &ep,
        ],
        vec![
            "-A",
            "POSTROUTING",
            "-m",
            "mark",
            "--mark",
            "0x4000/0x4000",
            "-j",
            "MASQUERADE",
        ],
    ] {
        let mut args = vec!["-w", "-t", "nat"];
        args.extend(rule);
        sh(node_ns, "iptables", &args);
    }
}

/// Whether every port of `bridge` in `ns` is in hairpin mode (and there is one).
fn ports_hairpin(ns: &str, bridge: &str) -> bool {
    let out = netns::ip(&["-n", ns, "-d", "-j", "link", "show", "master", bridge]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ports = v.as_array().cloned().unwrap_or_default();
    !ports.is_empty()
        && ports
            .iter()
            .all(|p| p["linkinfo"]["info_slave_data"]["hairpin"] == true)
}

fn pod_network(backend: &str, conf: &'static str) {
    let mut c = Cluster::build(
        &format!("pn{}", &backend[..3]),
        &Opts {
            nodes: 2,
            net_conf: Some(conf),
            ..Opts::default()
        },
    );
    let outside = c.add_bare_node();
    for i in 0..2 {
        // As Docker, ufw and firewalld leave it.
        sh(&c.nodes[i].ns, "iptables", &["-w", "-P", "FORWARD", "DROP"]);
        c.nodes[i].extra = vec!["--ip-masq".into(), "--iptables-resync".into(), "1".into()];
        c.start(i);
    }
    c.wait_peers(1);
    for n in &c.nodes {
        let log = n.log();
        assert!(
            log.contains(&format!("installed with {backend}")),
            "{}: {log}",
            n.ns
        );
        let env = std::fs::read_to_string(n.dir.join("subnet.env")).unwrap();
        assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    }
    let empty = tempfile::tempdir().unwrap();
    let a = add_pod(
        &c.nodes[0],
        &format!("{}-pa", c.nodes[0].ns),
        "delegate",
        "/usr/lib/cni",
    );
    let b = add_pod(
        &c.nodes[1],
        &format!("{}-pb", c.nodes[1].ns),
        "builtin",
        empty.path().to_str().unwrap(),
    );

    // No NAT between pods, whichever mode sent, across FORWARD policy DROP.
    for (from, to, port) in [(&a, &b, 7001), (&b, &a, 7002)] {
        assert_eq!(
            tcp_seen(&to.ns, sa(to.ip, port), &from.ns, sa(to.ip, port)),
            Some(from.ip.into()),
            "TCP {} → {}: the far pod must see the sender's own address",
            from.ip,
            to.ip
        );
        assert_eq!(
            udp_seen(&to.ns, sa(to.ip, port), &from.ns),
            Some(from.ip.into()),
            "UDP {} → {}: the far pod must see the sender's own address",
            from.ip,
            to.ip
        );
    }

    // Egress: a host outside the cluster network sees the node, and answers.
    let egress = |c: &Cluster, port: u16| {
        for (pod, node) in [(&a, &c.nodes[0]), (&b, &c.nodes[1])] {
            assert_eq!(
                tcp_seen(
                    &outside.ns,
                    sa(outside.ip, port),
                    &pod.ns,
                    sa(outside.ip, port)
                ),
                Some(node.ip.into()),
                "TCP from pod {} to outside host {}: seen as its node {}",
                pod.ip,
                outside.ip,
                node.ip
            );
            assert_eq!(
                udp_seen(&outside.ns, sa(outside.ip, port), &pod.ns),
                Some(node.ip.into()),
                "UDP from pod {} to outside host {}",
                pod.ip,
                outside.ip
            );
        }
    };
    egress(&c, 7003);

    // Hairpin: each pod reaches itself through a Service, in both modes.
    for (pod, node, bridge) in [(&a, &c.nodes[0], "cni0"), (&b, &c.nodes[1], "cni0")] {
        kube_proxy_service(&node.ns, pod.ip);
        assert!(
            ports_hairpin(&node.ns, bridge),
            "{}: the pod's bridge port is not in hairpin mode",
            node.ns
        );
        assert!(
            tcp_seen(
                &pod.ns,
                sa(Ipv4Addr::UNSPECIFIED, 8080),
                &pod.ns,
                sa(SERVICE_IP, 80)
            )
            .is_some(),
            "pod {} cannot reach itself through Service {SERVICE_IP}",
            pod.ip
        );
    }

    // Flushed by hand: back within the resync period (1 s here).
    for n in &c.nodes {
        let (before, _) = weft_rules(&n.ns, backend);
        assert_eq!(before.len(), 8, "{}: {before:?}", n.ns);
        let restores = || n.log().matches("were out of step").count();
        let restored_before = restores();
        if backend == "nftables" {
            sh(&n.ns, "nft", &["flush", "table", "ip", "weft"]);
        } else {
            sh(
                &n.ns,
                "iptables",
                &["-w", "-t", "nat", "-F", "WEFT-POSTRTG"],
            );
            sh(&n.ns, "iptables", &["-w", "-F", "WEFT-FWD"]);
        }
        // (A resync may restore them before they can be listed here: the
        // log line counts each restore.)
        let t = Instant::now();
        assert!(
            wait_until(3, || weft_rules(&n.ns, backend).0 == before),
            "{}: rules not restored in 3 s:\n{}",
            n.ns,
            weft_rules(&n.ns, backend).1
        );
        eprintln!("{}: rules restored {:?} after the flush", n.ns, t.elapsed());
        // The line is written just after the rules: one more restore.
        assert!(
            wait_until(2, || restores() > restored_before),
            "{}",
            n.log()
        );
    }
    egress(&c, 7004);

    // A subnet change replaces the rules: node 1 restarts on another subnet
    // (its old one now held by someone else), as after seed 004's fix.
    let old = c.nodes[1].subnet();
    c.nodes[1].stop();
    c.store()
        .put_lease(&Lease {
            subnet: Some(old),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 0, 2, 99),
                Vni::new(1).unwrap(),
                VtepMac::derive(&[192, 0, 2, 99]),
            ),
            expiration: Some(SystemTime::now() + Duration::from_secs(600)),
        })
        .unwrap();
    c.start(1);
    let new = c.nodes[1].subnet();
    assert_ne!(old, new);
    let (rules, listing) = weft_rules(&c.nodes[1].ns, backend);
    assert_eq!(rules.len(), 8, "replaced, not duplicated:\n{listing}");
    assert!(
        listing.contains(&new.to_string()) && !listing.contains(&old.to_string()),
        "rules for {new} only:\n{listing}"
    );
    let want = Rules {
        ipv4: Some(weft::netfilter::Rules4 {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: new,
        }),
        masquerade: true,
        random_fully: true,
        forward: true,
        ipv6: None,
    };
    assert!(
        rules
            .iter()
            .all(|r| r.contains(&want.fingerprint(weft::netfilter::Family::V4))),
        "{rules:?}"
    );
    assert!(
        c.nodes[1].log().contains("differs from the previous run's"),
        "{}",
        c.nodes[1].log()
    );
}

#[test]
fn pod_network_nftables() {
    if !require_root("pod_network_nftables") {
        return;
    }
    pod_network("nftables", NFT_CONF);
}

#[test]
fn pod_network_iptables() {
    if !require_root("pod_network_iptables") {
        return;
    }
    pod_network("iptables", IPT_CONF);
}

const DUAL_NFT_CONF: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const DUAL_IPT_CONF: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;

#[test]
fn dual_stack_pod_network_nftables() {
    if !require_root("dual_stack_pod_network_nftables") {
        return;
    }
    dual_stack_pod_network("nftables", DUAL_NFT_CONF, false);
}

#[test]
fn dual_stack_pod_network_iptables() {
    if !require_root("dual_stack_pod_network_iptables") {
        return;
    }
    dual_stack_pod_network("iptables", DUAL_IPT_CONF, false);
}

const V6_NFT_CONF: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const V6_IPT_CONF: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;

#[test]
fn ipv6_only_pod_network_nftables() {
    if !require_root("ipv6_only_pod_network_nftables") {
        return;
    }
    dual_stack_pod_network("nftables", V6_NFT_CONF, true);
}

#[test]
fn ipv6_only_pod_network_iptables() {
    if !require_root("ipv6_only_pod_network_iptables") {
        return;
    }
    dual_stack_pod_network("iptables", V6_IPT_CONF, true);
}

/// The pod network over IPv6 as over IPv4, with `--ip-masq` and FORWARD
/// policy DROP in both families: pods on two dual-stack nodes (one pod per
/// CNI mode) get an address of each family, see each other's own IPv6
/// addresses (TCP and UDP, no NAT), and reach an IPv6 host outside the
/// cluster network seen as their node's IPv6 address (masqueraded); weft's
/// IPv6 rules are in place, and come back when flushed.
///
/// With `ipv6_only` the network is IPv6-only (`EnableIPv4` false) and the
/// underlay has no IPv4 at all: the pods have only their IPv6 address.
fn dual_stack_pod_network(backend: &str, conf: &'static str, ipv6_only: bool) {
    let name = format!("p{}{}", if ipv6_only { "6" } else { "d" }, &backend[..3]);
    let mut c = Cluster::build(
        &name,
        &Opts {
            nodes: 2,
            net_conf: Some(conf),
            ..Opts::default()
        },
    );
    let outside = c.add_bare_node();
    let outside6 = netns::underlay6_addr(c.nodes.len());
    if ipv6_only {
        for ns in [&c.nodes[0].ns, &c.nodes[1].ns, &outside.ns] {
            netns::ip(&["-n", ns, "-4", "addr", "flush", "dev", "eth0"]).unwrap();
        }
    }
    for i in 0..2 {
        sh(&c.nodes[i].ns, "iptables", &["-w", "-P", "FORWARD", "DROP"]);
        sh(
            &c.nodes[i].ns,
            "ip6tables",
            &["-w", "-P", "FORWARD", "DROP"],
        );
        c.nodes[i].extra = vec!["--ip-masq".into(), "--iptables-resync".into(), "1".into()];
        if ipv6_only {
            c.nodes[i].extra.extend(["--iface".into(), "eth0".into()]);
        }
        c.start(i);
    }
    c.wait_peers(1);
    let empty = tempfile::tempdir().unwrap();
    let pod = |i: usize, tag: &str, mode: &str, path: &str| {
        let ns = format!("{}-{tag}", c.nodes[i].ns);
        if ipv6_only {
            // No IPv4 address: `ip` is not used on this path.
            let (ns, ip6) = add_pod6(&c.nodes[i], &ns, mode, path);
            Pod {
                ns,
                ip: Ipv4Addr::UNSPECIFIED,
                ip6: Some(ip6),
            }
        } else {
            add_pod(&c.nodes[i], &ns, mode, path)
        }
    };
    let a = pod(0, "pa", "delegate", "/usr/lib/cni");
    let b = pod(1, "pb", "builtin", empty.path().to_str().unwrap());
    let (a6, b6) = (a.ip6.expect("pod a's IPv6"), b.ip6.expect("pod b's IPv6"));
    assert!(c.nodes[0].subnet6().contains(&a6), "{a6}");
    assert!(c.nodes[1].subnet6().contains(&b6), "{b6}");
    for (from, to, port) in [(a6, b6, 7101), (b6, a6, 7102)] {
        let (fns, tns) = if from == a6 {
            (&a.ns, &b.ns)
        } else {
            (&b.ns, &a.ns)
        };
        assert_eq!(
            tcp_seen(tns, sa(to, port), fns, sa(to, port)),
            Some(from.into()),
            "TCP/IPv6 {from} → {to}: the far pod must see the sender's own address"
        );
        assert_eq!(
            udp_seen(tns, sa(to, port), fns),
            Some(from.into()),
            "UDP/IPv6 {from} → {to}: the far pod must see the sender's own address"
        );
    }
    let egress6 = |port: u16| {
        for (pod, i) in [(&a, 0usize), (&b, 1)] {
            let node6 = netns::underlay6_addr(i);
            assert_eq!(
                tcp_seen(&outside.ns, sa(outside6, port), &pod.ns, sa(outside6, port)),
                Some(node6.into()),
                "TCP/IPv6 from pod {:?} to outside host {outside6}: seen as its node {node6}",
                pod.ip6
            );
            assert_eq!(
                udp_seen(&outside.ns, sa(outside6, port), &pod.ns),
                Some(node6.into()),
                "UDP/IPv6 from pod {:?} to outside host {outside6}",
                pod.ip6
            );
        }
    };
    egress6(7103);
    // The IPv6 rules, flushed by hand, come back within the resync period.
    for n in &c.nodes {
        let listing = || {
            if backend == "nftables" {
                netns::run(netns::exec_in(&n.ns, "nft").args(["list", "table", "ip6", "weft"]))
                    .unwrap_or_default()
            } else {
                netns::run(&mut netns::exec_in(&n.ns, "ip6tables-save")).unwrap_or_default()
            }
        };
        let before = listing();
        let s6 = n.subnet6().to_string();
        assert!(
            before.contains("fc00::/48")
                && before.contains(&s6)
                && before.to_lowercase().contains("masquerade"),
            "{}: IPv6 rules\n{before}",
            n.ns
        );
        if backend == "nftables" {
            sh(&n.ns, "nft", &["flush", "table", "ip6", "weft"]);
        } else {
            sh(
                &n.ns,
                "ip6tables",
                &["-w", "-t", "nat", "-F", "WEFT-POSTRTG"],
            );
        }
        assert!(
            wait_until(3, || listing().matches("weft ").count()
                == before.matches("weft ").count()),
            "{}: IPv6 rules not restored:\n{}",
            n.ns,
            listing()
        );
    }
    egress6(7104);
}

/// Rootless: weftd as an unprivileged user in its own user, network and mount
/// namespaces installs its rules there (and nowhere else).
#[test]
fn rules_install_inside_a_user_namespace() {
    if !require_root("rules_install_inside_a_user_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // A TUN node the user may open (the host's /dev/net/tun may be 0600).
    let tun = d.join("tun");
    crate::harness::tun_node(&tun, "666");
    let script = format!(
        "set -e; mount --bind {tun} /dev/net/tun; ip link set lo up; iptables -w -P FORWARD DROP; \
         {weftd} --iface lo --ip-masq --state-dir {d}/store --subnet-file {d}/subnet.env >{d}/log 2>&1 & pid=$!; \
         for i in $(seq 100); do [ -f {d}/subnet.env ] && break; sleep 0.1; done; \
         nft list table ip weft; echo ---; iptables-save -t filter; kill $pid; wait $pid || true",
        tun = tun.display(),
        weftd = env!("CARGO_BIN_EXE_weftd"),
        d = d.display()
    );
    let out = crate::harness::unprivileged_in_userns(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(d.join("log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{text}\n{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let re = regex::Regex::new(r"weft (masq|forward) [0-9a-f]{8}/\d+").unwrap();
    let (nft, ipt) = text.split_once("---").unwrap();
    assert_eq!(re.find_iter(nft).count(), 8, "{text}\n{log}");
    assert!(
        ipt.contains("-j WEFT-FWD"),
        "FORWARD DROP in the user namespace is answered too:\n{text}"
    );
    assert!(log.contains("installed with nftables"), "{log}");
    // The host's own namespace got none of it.
    let host = netns::run(Command::new("nft").args(["list", "tables"])).unwrap_or_default();
    assert!(!host.contains("table ip weft"), "{host}");
}
