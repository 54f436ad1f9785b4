//! Hostile input on the underlay: VXLAN from a host that holds no lease, and
//! a leased node sending inner packets with a source it does not own. Neither
//! reaches the pod; both are counted by reason and logged; good traffic flows.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::harness::{Cluster, Node, Opts, require_root, wait_until};
use weft::netns;
use weft::types::VtepMac;

/// A pod behind node `node_ns`: namespace `<prefix>-pod`, a veth whose node
/// end holds `.1` of `subnet`, the pod `.5` with a default route via `.1`.
fn pod_on(prefix: &str, node_ns: &str, subnet: Ipv4Net) -> (String, Ipv4Addr) {
    let ns = format!("{prefix}-pod");
    let base = u32::from(subnet.network());
    let (gw, pod) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 5));
    let len = subnet.prefix_len();
    for args in [
        vec!["netns", "add", &ns],
        vec![
            "link", "add", "veth-pod", "netns", node_ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ],
    ] {
        netns::ip(&args).unwrap();
    }
    let gw_cidr = format!("{gw}/{len}");
    let pod_cidr = format!("{pod}/{len}");
    let gw_s = gw.to_string();
    for args in [
        vec!["-n", node_ns, "addr", "add", &gw_cidr, "dev", "veth-pod"],
        vec!["-n", node_ns, "link", "set", "veth-pod", "up"],
        vec!["-n", &ns, "link", "set", "lo", "up"],
        vec!["-n", &ns, "addr", "add", &pod_cidr, "dev", "eth0"],
        vec!["-n", &ns, "link", "set", "eth0", "up"],
        vec!["-n", &ns, "route", "add", "default", "via", &gw_s],
    ] {
        netns::ip(&args).unwrap();
    }
    (ns, pod)
}

/// A VXLAN datagram for the node with `mac`: VNI 1, an inner IPv4/UDP packet
/// from `src` to `dst:port` carrying `payload` (UDP checksum 0: none).
fn frame(mac: VtepMac, src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&mac.octets());
    d.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = 28 + payload.len();
    let mut ip = vec![0u8; total];
    weft::wire::ipv4::emit_header(&mut ip, total as u16, 64, 17, src, dst);
    ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&port.to_be_bytes());
    ip[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    ip[28..].copy_from_slice(payload);
    d.extend_from_slice(&ip);
    d
}

/// Sends `d` ten times from namespace `ns` (from its own underlay address) to `to`.
fn inject(ns: &str, to: SocketAddrV4, d: &[u8]) {
    netns::in_netns(ns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..10 {
            s.send_to(d, to).unwrap();
        }
    })
    .unwrap();
}

/// Every payload the pod's socket has received within `wait`.
fn received(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(wait)).unwrap();
    crate::harness::drain(|b| sock.recv(b))
}

fn vtep_mac_of(c: &Cluster, node: &Node) -> VtepMac {
    c.store()
        .leases()
        .unwrap()
        .iter()
        .find(|l| l.attrs.public_ip == node.ip)
        .unwrap()
        .attrs
        .vxlan_data()
        .unwrap()
        .vtep_mac
}

#[test]
fn strangers_and_spoofed_sources_never_reach_the_pod() {
    if !require_root("strangers_and_spoofed_sources_never_reach_the_pod") {
        return;
    }
    let mut c = Cluster::up(
        "hostile",
        &Opts {
            nodes: 3,
            ..Opts::default()
        },
    );
    let prefix = c.underlay_ns().trim_end_matches("-ul").to_string();
    let stranger = c.add_bare_node();
    let (victim_ns, victim_ip) = (c.nodes[1].ns.clone(), c.nodes[1].ip);
    let victim = SocketAddrV4::new(victim_ip, 8472);
    let mac = vtep_mac_of(&c, &c.nodes[1]);
    let (pod_ns, pod) = pod_on(&prefix, &victim_ns, c.nodes[1].subnet());
    let sock = netns::in_netns(&pod_ns, || UdpSocket::bind((pod, 7000)))
        .unwrap()
        .unwrap();
    let node0_pod = Ipv4Addr::from(u32::from(c.nodes[0].subnet().network()) + 9);
    let node2_pod = Ipv4Addr::from(u32::from(c.nodes[2].subnet().network()) + 9);

    // The stranger copies node 2's pod address, the right VNI and the
    // victim's VtepMAC (in the store for anyone to read).
    inject(
        &stranger.ns,
        victim,
        &frame(mac, node2_pod, pod, 7000, b"stranger"),
    );
    // Node 0 holds a lease, but sends as node 2's pod, and as a host outside.
    inject(
        &c.nodes[0].ns,
        victim,
        &frame(mac, node2_pod, pod, 7000, b"spoofed"),
    );
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    inject(
        &c.nodes[0].ns,
        victim,
        &frame(mac, outside, pod, 7000, b"spoofed"),
    );
    // The same frame with node 0's own pod address is what it may send.
    inject(
        &c.nodes[0].ns,
        victim,
        &frame(mac, node0_pod, pod, 7000, b"legit"),
    );

    let got = received(&sock, Duration::from_millis(800));
    assert_eq!(got, vec!["legit"; 10], "the pod saw: {got:?}");
    let n1 = &c.nodes[1];
    assert!(
        wait_until(5, || n1.drops("unknown_peer") >= 10.0
            && n1.drops("spoofed_source") >= 20.0),
        "{:?}",
        n1.metrics()
    );
    assert_eq!(n1.drops("unknown_peer"), 10.0, "{:?}", n1.metrics());
    assert_eq!(n1.drops("spoofed_source"), 20.0, "{:?}", n1.metrics());
    let log = n1.log();
    assert!(
        log.contains(&format!("dropped VXLAN from {}", stranger.ip))
            && log.contains("--accept-unknown-peers"),
        "{log}"
    );
    assert!(
        log.contains(&format!("dropped a packet from {}", c.nodes[0].ip))
            && log.contains("--accept-foreign-sources"),
        "{log}"
    );
    // Good traffic flows on, from every node.
    for n in [0, 2] {
        assert!(
            netns::in_netns(&c.nodes[n].ns, || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                s.send_to(b"good", (pod, 7000)).unwrap();
            })
            .is_ok()
        );
        let got = received(&sock, Duration::from_millis(500));
        assert_eq!(got, vec!["good"], "from node {n}");
        assert!(c.nodes[n].ping(pod), "node {n} pings the pod");
    }

    // --accept-unknown-peers (an underlay behind NAT): the stranger's frame
    // with a peer's pod address passes; one with an outside source does not.
    c.nodes[1].stop();
    c.nodes[1].extra = vec!["--accept-unknown-peers".into()];
    c.start(1);
    c.wait_peers(2);
    let n1 = &c.nodes[1];
    assert!(n1.log().contains("source checks relaxed"), "{}", n1.log());
    inject(
        &stranger.ns,
        victim,
        &frame(mac, node2_pod, pod, 7000, b"natted"),
    );
    inject(
        &stranger.ns,
        victim,
        &frame(mac, outside, pod, 7000, b"outside"),
    );
    let got = received(&sock, Duration::from_millis(800));
    assert_eq!(got, vec!["natted"; 10], "the pod saw: {got:?}");
    assert!(
        wait_until(5, || n1.drops("spoofed_source") >= 10.0),
        "{:?}",
        n1.metrics()
    );
    assert_eq!(n1.drops("unknown_peer"), 0.0, "{:?}", n1.metrics());
}

/// Leases no node can hold — a `/0`, a `/32`, a `/31` (an etcd key
/// `…/subnets/0.0.0.0-0`, a hand-written local-store file) — are ignored
/// with the subnet and the reason, and forwarding goes on; a `/0` Network
/// is refused at start, naming the field.
#[test]
fn unusable_leases_are_ignored_and_a_slash_zero_network_refused() {
    if !require_root("unusable_leases_are_ignored_and_a_slash_zero_network_refused") {
        return;
    }
    let mut c = Cluster::up(
        "badlease",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let store = c.store();
    for s in ["0.0.0.0/0", "10.244.250.1/32", "10.244.251.0/31"] {
        let ip: Ipv4Addr = [192, 0, 2, 77].into();
        store
            .put_lease(&weft::lease::Lease {
                subnet: s.parse().ok(),
                ipv6_subnet: None,
                attrs: weft::lease::LeaseAttrs::vxlan(
                    ip,
                    weft::types::Vni::new(1).unwrap(),
                    VtepMac::derive(&ip.octets()),
                ),
                expiration: Some(std::time::SystemTime::now() + Duration::from_secs(600)),
            })
            .unwrap();
    }
    for n in &c.nodes {
        let ok = wait_until(5, || {
            let log = n.log();
            log.contains("ignoring the lease for 0.0.0.0/0: it is outside the Network")
                && log.contains("ignoring the lease for 10.244.250.1/32")
                && log.contains("ignoring the lease for 10.244.251.0/31")
        });
        assert!(ok, "{}:\n{}", n.ns, n.log());
    }
    for (a, b) in [(0, 1), (1, 0)] {
        assert!(
            c.nodes[a].running(),
            "{}:\n{}",
            c.nodes[a].ns,
            c.nodes[a].log()
        );
        assert!(
            c.nodes[a].ping(c.nodes[b].addr()),
            "node {a} reaches node {b}"
        );
        assert_eq!(c.nodes[a].metric("weft_peers"), 1.0);
    }

    // A /0 Network: refused before anything is set up.
    let conf = c.store_dir.with_file_name("zero-net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    c.nodes[1].stop();
    c.nodes[1].extra = vec!["--net-config-path".into(), conf.display().to_string()];
    let err = c.refused(1, &[]);
    assert!(
        err.contains("Network") && err.contains(&conf.display().to_string()),
        "{err}"
    );
}
