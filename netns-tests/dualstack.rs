//! Dual-stack end to end: weft nodes on a dual-stack underlay with
//! `EnableIPv6`, IPv6 pod traffic over the IPv6 underlay (ICMPv6, a TCP
//! stream, UDP of every size), flannel's subnet.env and lease shapes, and a
//! kernel VXLAN device set up as flannel sets up `flannel-v6.1`.

use std::net::Ipv6Addr;
use std::process::Command;

use crate::harness::{Cluster, Opts, require_root, tcp_transfer, udp_echo_failures, wait_until};
use weft::netns;

/// flannel's dual-stack net-conf.json (its README's example, VNI and port left default).
pub const DUAL_STACK: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

fn dual(nodes: usize) -> Opts {
    Opts {
        nodes,
        net_conf: Some(DUAL_STACK),
        ..Opts::default()
    }
}

/// `ping -6` output from namespace `ns` to `to` (one echo, 1 s).
fn ping6_output(ns: &str, to: Ipv6Addr) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-6", "-n", "-c1", "-W1"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Three dual-stack nodes: each holds an IPv4 and an IPv6 subnet (in
/// subnet.env as flannel writes it, in the store under flannel's `&` key
/// with PublicIPv6 and BackendV6Data), every node reaches every other over
/// IPv6 and IPv4 both ways, an IPv6 destination no lease holds gets ICMPv6
/// "no route", and IPv6 traffic really travels the IPv6 underlay.
#[test]
fn dual_stack_mesh_reaches_every_node_over_both_families() {
    if !require_root("dual_stack_mesh_reaches_every_node_over_both_families") {
        return;
    }
    let c = Cluster::up("dsmesh", &dual(3));
    let network6: ipnet::Ipv6Net = "fc00::/48".parse().unwrap();
    for n in &c.nodes {
        let env = std::fs::read_to_string(n.dir.join("subnet.env")).unwrap();
        let s6 = n.subnet6();
        assert!(network6.contains(&s6) && s6.prefix_len() == 64, "{s6}");
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fc00::/48\n")
                && env.contains(&format!("FLANNEL_IPV6_SUBNET={}1/64\n", s6.network()))
                && env.contains("FLANNEL_MTU=1430\n"),
            "{}: {env}",
            n.ns
        );
        // The TUN device holds the subnet's first address, as flannel-v6.1 does.
        let addrs = netns::ip(&["-n", &n.ns, "-6", "addr", "show", "dev", "weft0"]).unwrap();
        assert!(addrs.contains(&format!("{}/128", n.addr6())), "{addrs}");
    }
    let leases = c.store().leases().unwrap();
    assert_eq!(leases.len(), 3);
    for l in &leases {
        let s6 = l.ipv6_subnet.expect("a dual-stack lease");
        assert!(
            l.key().contains(&format!("&{}-64", s6.addr())),
            "{}",
            l.key()
        );
        let d6 = l.attrs.vxlan_v6_data().unwrap().expect("BackendV6Data");
        assert_ne!(
            Some(d6.vtep_mac),
            l.attrs.vxlan_data().ok().map(|d| d.vtep_mac)
        );
        let ip6 = l.attrs.public_ipv6.expect("PublicIPv6");
        assert!(
            ip6.segments()[0] == 0x2001,
            "the underlay's IPv6 address: {ip6}"
        );
    }
    let mut subnets: Vec<_> = c.nodes.iter().map(|n| n.subnet6()).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "distinct IPv6 subnets");
    for a in &c.nodes {
        for b in &c.nodes {
            if a.ns != b.ns {
                assert!(
                    a.ping6(b.addr6()),
                    "{} cannot reach {} over IPv6\n{}",
                    a.ns,
                    b.addr6(),
                    ping6_output(&a.ns, b.addr6())
                );
                assert!(a.ping(b.addr()), "{} cannot reach {}", a.ns, b.addr());
            }
        }
    }
    // `weftd doctor` on a healthy dual-stack node passes, and probes each
    // peer's IPv6 half through its IPv6 VTEP.
    let (ok, report) = c.doctor(0, &[]);
    assert!(ok, "{report}");
    assert!(report.contains("✓ IPv6 forwarding: on"), "{report}");
    for n in &c.nodes[1..] {
        let line = format!(
            "✓ peer {} ({}): reached through VXLAN ([",
            n.subnet6(),
            netns::underlay6_addr(c.nodes.iter().position(|m| m.ns == n.ns).unwrap())
        );
        assert!(
            report.contains(&line) && report.contains("1430-byte packets"),
            "{line}\n{report}"
        );
    }
    // `weftd status` shows both halves of the lease and each peer's IPv6 route.
    let out = Command::new("ip")
        .args(["netns", "exec", &c.nodes[0].ns])
        .arg(crate::harness::weftd_bin())
        .args(["status", "--output", "json"])
        .output()
        .unwrap();
    let v: weft::status::View = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v.lease.and_then(|l| l.subnet6), Some(c.nodes[0].subnet6()));
    assert_eq!(v.peers.len(), 2);
    for p in &v.peers {
        let n = c
            .nodes
            .iter()
            .find(|n| Some(n.subnet()) == p.subnet)
            .unwrap();
        assert_eq!(p.subnet6, Some(n.subnet6()), "{p:?}");
        assert!(p.public_ipv6.is_some(), "{p:?}");
    }
    // The per-peer info series names each peer's IPv6 half too.
    let m = c.nodes[0].metrics();
    for (i, n) in c.nodes.iter().enumerate().skip(1) {
        let want = format!(
            "subnet6=\"{}\",public_ipv6=\"{}\"",
            n.subnet6(),
            netns::underlay6_addr(i)
        );
        assert!(
            m.iter()
                .any(|(k, v)| k.starts_with("weft_peer_info{") && k.contains(&want) && *v == 1.0),
            "{want} in {m:?}"
        );
    }
    let unleased: Ipv6Addr = "fc00:0:0:fff0::1".parse().unwrap();
    let out = ping6_output(&c.nodes[0].ns, unleased);
    assert!(
        out.contains("Destination unreachable") && out.contains("No route"),
        "an unleased IPv6 destination is answered with ICMPv6 no-route: {out}"
    );
    // A firewall on node 1 that drops VXLAN over IPv6 only: the doctor on
    // node 0 says so for that peer's IPv6 half, with the ip6tables fix, while
    // its IPv4 half still passes.
    netns::run(netns::exec_in(&c.nodes[1].ns, "ip6tables").args([
        "-w", "-I", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP",
    ]))
    .unwrap();
    let (ok, report) = c.doctor(0, &[]);
    assert!(!ok, "{report}");
    let p6 = format!(
        "✗ peer {} (2001:db8::2): 2001:db8::2 answers ping, but VXLAN to it on UDP 8472 gets no answer",
        c.nodes[1].subnet6()
    );
    assert!(report.contains(&p6), "{p6}\n{report}");
    assert!(
        report.contains("ip6tables -I INPUT -p udp --dport 8472 -j ACCEPT"),
        "{report}"
    );
    assert!(
        report.contains(&format!("✓ peer {} (192.0.2.2)", c.nodes[1].subnet())),
        "{report}"
    );
    netns::run(netns::exec_in(&c.nodes[1].ns, "ip6tables").args([
        "-w", "-D", "INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP",
    ]))
    .unwrap();
    for n in &c.nodes {
        n.assert_nothing_wrong();
        // The IPv6 packets went as datagrams to the peers' IPv6 VTEPs: the
        // node's UDP/IPv6 counters moved.
        let snmp6 = netns::run(netns::exec_in(&n.ns, "cat").arg("/proc/net/snmp6")).unwrap();
        let out_datagrams: u64 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Udp6OutDatagrams"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            out_datagrams >= 2,
            "{}: Udp6OutDatagrams {out_datagrams}",
            n.ns
        );
    }
}

/// 64 MiB of TCP over IPv6 arrives byte-identical, through the offload
/// path (TSO6 super-packets cut into segments, coalesced on the way in),
/// and UDP over IPv6 of every size up to the MTU (and fragmented beyond it)
/// comes back intact.
#[test]
fn dual_stack_tcp_and_udp_over_ipv6_arrive_intact() {
    if !require_root("dual_stack_tcp_and_udp_over_ipv6_arrive_intact") {
        return;
    }
    let c = Cluster::up("dstcp", &dual(2));
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let total = 64 << 20;
    let t = std::time::Instant::now();
    let (sent, got, n) = tcp_transfer(&a.ns, &b.ns, b.addr6(), 5101, total);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, total, "bytes received over IPv6");
    assert_eq!(sent, got, "SHA-256 of the IPv6 stream differs");
    eprintln!(
        "64 MiB over IPv6 in {secs:.2} s ({:.0} Mbit/s, debug build)",
        total as f64 * 8.0 / secs / 1e6
    );
    // The stream went through the offload path both ways.
    let m = a.metrics();
    let segs = m
        .iter()
        .filter(|(k, _)| k.starts_with("weft_tx_packets_total"))
        .map(|(_, v)| *v)
        .sum::<f64>();
    let reads = m.get("weft_tun_reads_total").copied().unwrap_or(0.0);
    assert!(
        reads > 0.0 && segs > reads * 2.0,
        "TSO6 super-packets were cut into segments: {segs} packets from {reads} TUN reads"
    );
    let writes = b.metric("weft_tun_writes_total");
    let rx = b.metric("weft_rx_packets_total");
    assert!(
        writes > 0.0 && rx > writes * 2.0,
        "TCP/IPv6 segments were coalesced: {rx} packets in {writes} TUN writes"
    );
    // UDP: the IPv6 MTU leaves 1430 - 40 - 8 bytes of payload.
    let mtu_payload = 1430 - 40 - 8;
    let sizes: Vec<usize> = (1..=mtu_payload)
        .chain([mtu_payload + 1, 2000, 8000, 30000])
        .collect();
    let failures = udp_echo_failures(&a.ns, a.addr6(), &b.ns, b.addr6(), &sizes);
    assert!(failures.is_empty(), "no IPv6 echo for sizes {failures:?}");
    a.assert_nothing_wrong();
    b.assert_nothing_wrong();
}

/// A kernel-VXLAN node of an IPv6-only network and underlay, configured as
/// flannel's vxlan backend configures one (only `flannel-v6.1`; its lease
/// only the IPv6 half, `0.0.0.0-0&…`; for each peer a route, a permanent
/// neighbour and an FDB entry to the peer's PublicIPv6) and weft nodes
/// reach each other over IPv6 both ways, a TCP stream included. A stand-in,
/// because flanneld v0.28.11 itself cannot run an IPv6-only network in etcd
/// mode (`flannel::ipv6_only_etcd_network_beside_flanneld_as_far_as_flannel_goes`);
/// dual-stack is tested against the real flanneld (`flannel.rs`).
#[test]
fn ipv6_only_interop_with_kernel_vxlan_v6() {
    if !require_root("ipv6_only_interop_with_kernel_vxlan_v6") {
        return;
    }
    interop_with_kernel_vxlan_v6(crate::ipv6only::ipv6_only_nodes("v6kern", 2), true);
}

fn interop_with_kernel_vxlan_v6(mut c: Cluster, ipv6_only: bool) {
    let kn = c.add_bare_node();
    if ipv6_only {
        netns::ip(&["-n", &kn.ns, "-4", "addr", "flush", "dev", "eth0"]).unwrap();
    }
    let store = c.store();
    // The kernel node's lease, as flannel would write it: its own IPv6 VTEP MAC.
    let k_ip6 = netns::underlay6_addr(c.nodes.len());
    let k4: ipnet::Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let k6: ipnet::Ipv6Net = "fc00:0:0:c8::/64".parse().unwrap();
    let vni = weft::types::Vni::new(1).unwrap();
    let mac4 = weft::types::VtepMac::derive(&kn.ip.octets());
    let mac6 = weft::types::VtepMac::derive(&k_ip6.octets());
    let (subnet, attrs) = if ipv6_only {
        (None, weft::lease::LeaseAttrs::vxlan6_only(k_ip6, vni, mac6))
    } else {
        (
            Some(k4),
            weft::lease::LeaseAttrs::vxlan(kn.ip, vni, mac4).with_ipv6(k_ip6, vni, mac6),
        )
    };
    store
        .put_lease(&weft::lease::Lease {
            subnet,
            ipv6_subnet: Some(k6),
            attrs,
            expiration: Some(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)),
        })
        .unwrap();
    for i in 0..c.nodes.len() {
        c.start(i);
    }
    c.wait_peers(c.nodes.len());
    let ns = kn.ns.as_str();
    let ip = |args: &[&str]| {
        let mut a = vec!["-n", ns];
        a.extend_from_slice(args);
        netns::ip(&a).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
    };
    let k6s = k6.network().to_string();
    ip(&[
        "link",
        "add",
        "flannel-v6.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &k_ip6.to_string(),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ip(&["link", "set", "flannel-v6.1", "address", &mac6.to_string()]);
    ip(&[
        "-6",
        "addr",
        "add",
        &format!("{k6s}/128"),
        "dev",
        "flannel-v6.1",
        "nodad",
    ]);
    ip(&["link", "set", "flannel-v6.1", "mtu", "1430", "up"]);
    // Offloads stay on, as flanneld leaves them: across veth the inner
    // checksums arrive partial and TSO super-packets whole, and weft must
    // take both as the kernel would.
    for l in store
        .leases()
        .unwrap()
        .iter()
        .filter(|l| l.ipv6_subnet != Some(k6))
    {
        let s6 = l.ipv6_subnet.expect("a weft lease with an IPv6 half");
        let gw = s6.network().to_string();
        let mac = l
            .attrs
            .vxlan_v6_data()
            .unwrap()
            .unwrap()
            .vtep_mac
            .to_string();
        let dst = l.attrs.public_ipv6.unwrap().to_string();
        ip(&[
            "-6",
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac,
            "dev",
            "flannel-v6.1",
            "nud",
            "permanent",
        ]);
        netns::run(Command::new("bridge").args([
            "-n",
            ns,
            "fdb",
            "append",
            &mac,
            "dev",
            "flannel-v6.1",
            "dst",
            &dst,
            "self",
            "permanent",
        ]))
        .unwrap();
        ip(&[
            "-6",
            "route",
            "replace",
            &s6.to_string(),
            "via",
            &gw,
            "dev",
            "flannel-v6.1",
            "onlink",
        ]);
    }
    for n in &c.nodes {
        assert!(
            wait_until(5, || n.ping6(k6.network())),
            "weft {} cannot reach the kernel node over IPv6\n{}",
            n.ns,
            ping6_output(&n.ns, k6.network())
        );
        assert!(
            crate::harness::ping_from(ns, n.addr6()),
            "the kernel node cannot reach weft {} over IPv6\n{}",
            n.ns,
            ping6_output(ns, n.addr6())
        );
    }
    let size = 8 << 20;
    let (s, g, n) = tcp_transfer(&c.nodes[0].ns, ns, k6.network(), 5201, size);
    assert_eq!((n, s), (size, g), "weft → kernel TCP/IPv6 stream differs");
    let last = &c.nodes[c.nodes.len() - 1];
    let (s, g, n) = tcp_transfer(ns, &last.ns, last.addr6(), 5202, size);
    assert_eq!((n, s), (size, g), "kernel → weft TCP/IPv6 stream differs");
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
}

/// Start-up refusals of a dual-stack node say what to do: an underlay whose
/// MTU leaves the device under IPv6's 1280 bytes, and an interface without a
/// global IPv6 address; neither leaves a device behind.
#[test]
fn dual_stack_startup_refusals_say_what_to_do() {
    if !require_root("dual_stack_startup_refusals_say_what_to_do") {
        return;
    }
    let c = Cluster::build("dsref", &dual(1));
    let ns = c.nodes[0].ns.clone();
    netns::ip(&["-n", &ns, "link", "set", "eth0", "mtu", "1340"]).unwrap();
    let err = c.refused(0, &[]);
    assert!(
        err.contains("the TUN MTU would be 1270 (underlay 1340 − 70): too small to carry IPv6 (at least 1280)")
            && err.contains("raise the MTU of eth0 or Backend.MTU"),
        "{err}"
    );
    netns::ip(&["-n", &ns, "link", "set", "eth0", "mtu", "1500"]).unwrap();
    let v6 = netns::underlay6_addr(0).to_string() + "/64";
    netns::ip(&["-n", &ns, "addr", "del", &v6, "dev", "eth0"]).unwrap();
    let err = c.refused(0, &[]);
    assert!(
        err.contains("interface eth0 has no global IPv6 address")
            && err.contains("--public-ipv6")
            && err.contains("EnableIPv6 to false"),
        "{err}"
    );
    assert!(
        netns::ip(&["-n", &ns, "link", "show", "weft0"]).is_err(),
        "no device left behind"
    );
}
