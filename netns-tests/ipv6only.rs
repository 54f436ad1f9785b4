//! IPv6-only end to end: `EnableIPv4: false` on an underlay with no IPv4 at
//! all — leases under flannel's `0.0.0.0-0&…` key, subnet.env with only the
//! `FLANNEL_IPV6_*` pair, ICMPv6, TCP and UDP over the overlay, and what
//! `weftd status`, the metrics and `weftd doctor` say about such a node.

use std::net::Ipv6Addr;
use std::process::Command;

use crate::harness::{Cluster, Opts, require_root, tcp_transfer, udp_echo_failures};
use weft::netns;

/// flannel's IPv6-only net-conf.json.
pub const IPV6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

/// `n` node namespaces on an underlay that carries IPv6 only: each node's
/// IPv4 address (and with it its IPv4 default route) is removed. Nodes name
/// their interface with `--iface eth0`, but the last, which finds it by its
/// IPv6 default route. No weftd runs yet.
pub fn ipv6_only_nodes(name: &str, n: usize) -> Cluster {
    let mut c = Cluster::build(
        name,
        &Opts {
            nodes: n,
            net_conf: Some(IPV6_ONLY),
            ..Opts::default()
        },
    );
    for (i, node) in c.nodes.iter_mut().enumerate() {
        netns::ip(&["-n", &node.ns, "-4", "addr", "flush", "dev", "eth0"]).unwrap();
        if i + 1 < n {
            node.extra = vec!["--iface".into(), "eth0".into()];
        } else {
            let gw = netns::UNDERLAY6_GW.to_string();
            netns::ip(&["-n", &node.ns, "-6", "route", "add", "default", "via", &gw]).unwrap();
        }
    }
    c
}

/// [`ipv6_only_nodes`] with weftd started on every node, each seeing the others.
pub fn ipv6_only_cluster(name: &str, n: usize) -> Cluster {
    let mut c = ipv6_only_nodes(name, n);
    for i in 0..n {
        c.start(i);
    }
    c.wait_peers(n - 1);
    c
}

/// Three nodes of an IPv6-only network on an IPv6-only underlay: each holds
/// an IPv6 subnet (flannel's `0.0.0.0-0&…` key, `PublicIP` 0.0.0.0 and
/// no `BackendData` beside `PublicIPv6` and `BackendV6Data`), writes
/// subnet.env with only the IPv6 pair, reaches every other node over IPv6,
/// carries a TCP stream byte-identical and UDP of every size, and shows
/// itself and its peers in status, the metrics and doctor.
#[test]
fn ipv6_only_cluster_on_an_ipv6_only_underlay() {
    if !require_root("ipv6_only_cluster_on_an_ipv6_only_underlay") {
        return;
    }
    let c = ipv6_only_cluster("v6o", 3);
    let network6: ipnet::Ipv6Net = "fc00::/48".parse().unwrap();
    for n in &c.nodes {
        let env = std::fs::read_to_string(n.dir.join("subnet.env")).unwrap();
        let s6 = n.subnet6();
        assert!(network6.contains(&s6) && s6.prefix_len() == 64, "{s6}");
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fc00::/48\n")
                && env.contains(&format!("FLANNEL_IPV6_SUBNET={}1/64\n", s6.network()))
                && env.contains("FLANNEL_MTU=1430\n")
                && !env.contains("FLANNEL_NETWORK=")
                && !env.contains("FLANNEL_SUBNET="),
            "{}: {env}",
            n.ns
        );
        // The TUN device holds the IPv6 subnet's first address and no IPv4 one.
        let addrs = netns::ip(&["-n", &n.ns, "addr", "show", "dev", "weft0"]).unwrap();
        assert!(
            addrs.contains(&format!("{}/128", n.addr6())) && !addrs.contains("inet "),
            "{addrs}"
        );
        let routes = netns::ip(&["-n", &n.ns, "-6", "route", "show", "dev", "weft0"]).unwrap();
        assert!(routes.contains("fc00::/48"), "{routes}");
    }
    // The leases, as flannel writes them on an IPv6-only network.
    let leases = c.store().leases().unwrap();
    assert_eq!(leases.len(), 3);
    for l in &leases {
        let s6 = l.ipv6_subnet.expect("an IPv6 subnet");
        assert_eq!(l.subnet, None);
        assert_eq!(l.key(), format!("0.0.0.0-0&{}-64", s6.addr()));
        assert_eq!(l.attrs.public_ip, std::net::Ipv4Addr::UNSPECIFIED);
        assert!(
            l.attrs.backend_data.is_null(),
            "BackendData {}",
            l.attrs.backend_data
        );
        let ip6 = l.attrs.public_ipv6.expect("PublicIPv6");
        assert_eq!(ip6.segments()[0], 0x2001, "the underlay's address: {ip6}");
        assert!(l.attrs.vxlan_v6_data().unwrap().is_some(), "BackendV6Data");
        let file = c.store_dir.join("subnets").join(l.key());
        let json = std::fs::read_to_string(&file).unwrap();
        assert!(json.contains(r#""Subnet":"0.0.0.0/0""#), "{json}");
    }
    for a in &c.nodes {
        for b in &c.nodes {
            if a.ns != b.ns {
                assert!(a.ping6(b.addr6()), "{} cannot reach {}", a.ns, b.addr6());
            }
        }
    }
    let (a, b) = (&c.nodes[0], &c.nodes[2]);
    let total = 16 << 20;
    let (sent, got, n) = tcp_transfer(&a.ns, &b.ns, b.addr6(), 5301, total);
    assert_eq!((n, sent), (total, got), "the TCP stream over IPv6 differs");
    let mtu_payload = 1430 - 40 - 8;
    let sizes: Vec<usize> = (1..=mtu_payload).chain([mtu_payload + 1, 8000]).collect();
    let failures = udp_echo_failures(&a.ns, a.addr6(), &b.ns, b.addr6(), &sizes);
    assert!(failures.is_empty(), "no IPv6 echo for sizes {failures:?}");
    let unleased: Ipv6Addr = "fc00:0:0:fff0::1".parse().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &a.ns, "ping", "-6", "-n", "-c1", "-W1"])
        .arg(unleased.to_string())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("No route"), "ICMPv6 no-route: {out}");

    // `weftd status`: the node and its peers by their IPv6 halves alone.
    let out = Command::new("ip")
        .args(["netns", "exec", &a.ns])
        .arg(crate::harness::weftd_bin())
        .args(["status", "--output", "json"])
        .output()
        .unwrap();
    let v: weft::status::View = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let node = v.node.unwrap();
    assert_eq!((node.network, node.public_ip), (None, None));
    assert_eq!(node.public_ipv6, Some(netns::underlay6_addr(0)));
    let lease = v.lease.unwrap();
    assert_eq!((lease.subnet, lease.subnet6), (None, Some(a.subnet6())));
    assert_eq!(v.peers.len(), 2);
    for (i, n) in c.nodes.iter().enumerate().skip(1) {
        let p = v
            .peers
            .iter()
            .find(|p| p.subnet6 == Some(n.subnet6()))
            .unwrap_or_else(|| panic!("{} in {:?}", n.subnet6(), v.peers));
        assert_eq!(p.subnet, None);
        assert_eq!(p.public_ipv6, Some(netns::underlay6_addr(i)));
    }
    let text = Command::new("ip")
        .args(["netns", "exec", &a.ns])
        .arg(crate::harness::weftd_bin())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("node       IPv6-only on weft0, MTU 1430; public IP 2001:db8::1 on eth0")
            && text.contains(&format!("lease      {}:", a.subnet6()))
            && text.contains("peers      2"),
        "{text}"
    );
    // The per-peer counters name the peer by its public IPv6; the stream
    // above went to node 2.
    let m = a.metrics();
    let peer2 = netns::underlay6_addr(2);
    assert_eq!(m.get("weft_peers"), Some(&2.0));
    assert!(
        m.keys().any(|k| k.starts_with("weft_peer_info{")
            && k.contains(&format!("peer=\"{peer2}\",subnet6=\"{}\"", b.subnet6()))),
        "{m:?}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("weft_lease_info{") && k.contains(&a.subnet6().to_string())),
        "{m:?}"
    );
    let to_peer2 = m
        .get(&format!("weft_peer_tx_packets_total{{peer=\"{peer2}\"}}"))
        .copied()
        .unwrap_or(0.0);
    assert!(to_peer2 > 1000.0, "packets to {peer2}: {to_peer2}");

    // `weftd doctor`: healthy, with IPv6 lines only, and every peer probed
    // through its IPv6 VTEP.
    let (ok, report) = c.doctor(0, &[]);
    assert!(ok, "{report}");
    assert!(
        report.contains("✓ IPv6 forwarding: on")
            && !report.contains("IPv4 forwarding")
            && report.contains("Network none (IPv6-only)")
            && report.contains(&format!(
                "✓ lease: {} for public IPv6 2001:db8::1",
                a.subnet6()
            )),
        "{report}"
    );
    for (i, n) in c.nodes.iter().enumerate().skip(1) {
        let line = format!(
            "✓ peer {} ({}): reached through VXLAN",
            n.subnet6(),
            netns::underlay6_addr(i)
        );
        assert!(report.contains(&line), "{line}\n{report}");
    }
    // Asked about an address no lease holds, it says which, and the flag.
    let (ok, report) = c.doctor(0, &["--public-ipv6", "2001:db8::99"]);
    assert!(
        !ok && report.contains("✗ lease: no lease in the store has public IPv6 2001:db8::99")
            && report.contains("--iface/--public-ipv6"),
        "{report}"
    );
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
}

/// An IPv6-only node that cannot tell its interface says what to do: with
/// no IPv6 default route it names the route to add and the flags; on an
/// IPv4 network, an interface with only IPv6 points to EnableIPv4 false.
#[test]
fn ipv6_only_startup_refusals_say_what_to_do() {
    if !require_root("ipv6_only_startup_refusals_say_what_to_do") {
        return;
    }
    let c = Cluster::build(
        "v6ref",
        &Opts {
            nodes: 1,
            net_conf: Some(IPV6_ONLY),
            ..Opts::default()
        },
    );
    let ns = c.nodes[0].ns.clone();
    netns::ip(&["-n", &ns, "-4", "addr", "flush", "dev", "eth0"]).unwrap();
    let err = c.refused(0, &[]);
    assert!(
        err.contains("no IPv6 default route")
            && err.contains("ip -6 route add default via GATEWAY")
            && err.contains("--iface"),
        "{err}"
    );
    assert!(
        netns::ip(&["-n", &ns, "link", "show", "weft0"]).is_err(),
        "no device left behind"
    );
    // The same underlay under an IPv4 network: its interface has no IPv4.
    std::fs::write(
        c.store_dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let err = c
        .command(0)
        .args(["--iface", "eth0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!err.status.success());
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(
        err.contains("interface eth0 has no IPv4 address") && err.contains("EnableIPv4 to false"),
        "{err}"
    );
}
