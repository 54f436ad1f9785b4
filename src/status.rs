//! `weftd status`: the live view of a running weftd ([`View`], taken from
//! its [`NodeState`]) — its lease and when it renews, its store, its peers
//! with their counters, and the dataplane's — as the JSON the running weftd
//! answers on its control socket ([`crate::handover`]), and as text for
//! people. Building and rendering the view do no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

use crate::dataplane::counters::{DropReason, PEER_DROPS};
use crate::state::NodeState;

/// Everything `weftd status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub version: String,
    pub pid: u32,
    /// When the view was taken (unix ms): the other times are read against it.
    pub now_ms: u64,
    pub started_ms: u64,
    pub ready: bool,
    pub node: Option<NodeView>,
    pub lease: Option<LeaseView>,
    pub store: Option<StoreView>,
    pub peers: Vec<PeerView>,
    pub dataplane: DataplaneView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub tun: String,
    pub mtu: u32,
    pub interface: String,
    /// The public IP; `null` on an IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    /// The public IPv6 of a dual-stack or IPv6-only node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The VtepMAC of the IPv4 VTEP, or of the IPv6 one on an IPv6-only node.
    pub vtep_mac: String,
    /// The IPv4 Network; `null` on an IPv6-only network.
    pub network: Option<Ipv4Net>,
    pub vni: u32,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The IPv4 subnet; `null` on an IPv6-only network.
    pub subnet: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// None: the lease does not expire (a Kubernetes podCIDR).
    pub expires_ms: Option<u64>,
    pub renew_at_ms: Option<u64>,
    pub last_renewal_ms: Option<u64>,
    /// Why the last renewal failed, if it did.
    pub last_renewal_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreView {
    pub describe: String,
    /// The etcd revision the watch last saw.
    pub revision: Option<i64>,
    /// Since when the store has not answered (routes are kept meanwhile).
    pub outage_since_ms: Option<u64>,
    /// When a watch event last reached the table.
    pub last_event_ms: Option<u64>,
    /// The last time the store's revision went back (a restore).
    pub rewound: Option<crate::store::Rewind>,
}

/// One lease in the forwarding table, with its peer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The lease's IPv4 subnet; `null` for a peer of an IPv6-only network.
    pub subnet: Option<Ipv4Net>,
    /// Its public IP; `null` for a peer of an IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    /// The peer's IPv6 route: its IPv6 subnet and VTEP (dual-stack or IPv6-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The VtepMAC of its IPv4 VTEP, or of its IPv6 one when it has no IPv4 half.
    pub vtep_mac: String,
    /// The counters are per public IP: `shared` when another lease has the
    /// same one (nodes behind one NAT) or the peer is beyond the slot
    /// limit (counted as `other`).
    pub shared: bool,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_in_ms: Option<u64>,
    pub last_out_ms: Option<u64>,
    /// Datagrams from the peer dropped, by reason (only reasons seen).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneView {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tun_reads: u64,
    pub tun_writes: u64,
    pub icmp_unreachable_sent: u64,
    /// By reason, only reasons seen.
    pub drops: BTreeMap<String, u64>,
}

/// The view of `state` at `now_ms`.
pub fn view(state: &NodeState, now_ms: u64) -> View {
    let c = state.control();
    let node = state.node.get();
    let table = state.table.load();
    let mut leases: Vec<_> = table.peers().copied().collect();
    leases.sort_by_key(|p| (p.subnet.network(), p.subnet.prefix_len()));
    let mut only6: Vec<_> = table.peers6_only().copied().collect();
    only6.sort_by_key(|p| (p.subnet.network(), p.subnet.prefix_len()));
    let mut per_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for ip in leases
        .iter()
        .map(|p| IpAddr::V4(p.public_ip))
        .chain(only6.iter().map(|p| IpAddr::V6(p.public_ip)))
    {
        *per_ip.entry(ip).or_default() += 1;
    }
    let counted = |row: PeerView, ip: IpAddr, slot: u32| {
        let s = state.counters.peers.snapshot(slot);
        PeerView {
            shared: slot == 0 || per_ip.get(&ip).is_some_and(|n| *n > 1),
            packets_in: s.rx_packets,
            packets_out: s.tx_packets,
            bytes_in: s.rx_bytes,
            bytes_out: s.tx_bytes,
            last_in_ms: Some(s.last_rx_ms).filter(|t| *t > 0),
            last_out_ms: Some(s.last_tx_ms).filter(|t| *t > 0),
            drops: PEER_DROPS
                .iter()
                .zip(s.drops)
                .filter(|(_, v)| *v > 0)
                .map(|(r, v)| (r.name().to_string(), v))
                .collect(),
            ..row
        }
    };
    let dual = leases.iter().map(|p| {
        let v6 = table.peers6().find(|q| q.v4 == Some(p.subnet));
        let row = PeerView {
            subnet: Some(p.subnet),
            public_ip: Some(p.public_ip),
            subnet6: v6.map(|q| q.subnet),
            public_ipv6: v6.map(|q| q.public_ip),
            vtep_mac: p.vtep_mac.to_string(),
            ..PeerView::default()
        };
        counted(row, IpAddr::V4(p.public_ip), p.slot)
    });
    let v6_only = only6.iter().map(|q| {
        let row = PeerView {
            subnet6: Some(q.subnet),
            public_ipv6: Some(q.public_ip),
            vtep_mac: q.vtep_mac.to_string(),
            ..PeerView::default()
        };
        counted(row, IpAddr::V6(q.public_ip), q.slot)
    });
    let peers = dual.chain(v6_only).collect();
    let d = state.counters.snapshot();
    View {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        now_ms,
        started_ms: state.started_ms,
        ready: state.ready.load(Ordering::Relaxed),
        node: node.map(|n| NodeView {
            tun: n.tun.clone(),
            mtu: n.mtu,
            interface: n.interface.clone(),
            public_ip: n.public_ip,
            public_ipv6: n.public_ipv6,
            vtep_mac: n.vtep_mac.to_string(),
            network: n.network,
            vni: n.vni,
            port: n.port,
        }),
        lease: (state.subnet.get().is_some() || state.subnet6.get().is_some()).then(|| LeaseView {
            subnet: state.subnet.get().copied(),
            subnet6: state.subnet6.get().copied(),
            expires_ms: c.lease_expires_ms,
            renew_at_ms: c.renew_at_ms,
            last_renewal_ms: c.last_renewal.as_ref().map(|r| r.0),
            last_renewal_error: c.last_renewal.and_then(|r| r.1),
        }),
        store: node.map(|n| {
            let h = state.store_health.get();
            StoreView {
                describe: n.store.clone(),
                revision: h.and_then(|h| h.revision()),
                outage_since_ms: h.and_then(|h| h.outage_since_ms()),
                last_event_ms: c.last_event_ms,
                rewound: h.and_then(|h| h.rewound()),
            }
        }),
        peers,
        dataplane: DataplaneView {
            tx_packets: d.tx_packets,
            tx_bytes: d.tx_bytes,
            rx_packets: d.rx_packets,
            rx_bytes: d.rx_bytes,
            tun_reads: d.tun_reads,
            tun_writes: d.tun_writes,
            icmp_unreachable_sent: d.icmp_sent,
            drops: DropReason::ALL
                .iter()
                .filter(|r| d.drops[**r as usize] > 0)
                .map(|r| (r.name().to_string(), d.drops[*r as usize]))
                .collect(),
        },
    }
}

/// Why `weftd status` has nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "no weftd runs in this network namespace{}: run weftd status where weftd runs (on the node, in the host's namespace; in a DaemonSet pod, kubectl exec -n kube-flannel <pod> -- weftd status; for a namespace of your own, ip netns exec <ns> weftd status)",
        .port.map(|p| format!(" on VXLAN port {p}")).unwrap_or_default()
    )]
    NotRunning { port: Option<u16> },
    #[error(transparent)]
    Socket(#[from] crate::handover::HandoverError),
    #[error(
        "the weftd on VXLAN port {port} answered something that is not its status ({source}): is it an older weftd?"
    )]
    Answer {
        port: u16,
        source: serde_json::Error,
    },
}

/// The views of the weftds running in this network namespace (the one on
/// `port`, when given).
///
/// # Errors
/// [`StatusError`], naming the port and what to do.
pub fn query(port: Option<u16>) -> Result<Vec<View>, StatusError> {
    let ports: Vec<u16> = crate::handover::running_ports()
        .into_iter()
        .filter(|p| port.is_none_or(|want| want == *p))
        .collect();
    if ports.is_empty() {
        return Err(StatusError::NotRunning { port });
    }
    ports
        .into_iter()
        .map(|port| {
            let text = crate::handover::ask_status(port)?;
            serde_json::from_str(&text).map_err(|source| StatusError::Answer { port, source })
        })
        .collect()
}

/// `1.2s`, `3m4s`, `5h6m`, `7d8h`: a span for people.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `t` against `now`: `3.2s ago`, `in 5m0s`, or `never`.
pub fn when(now: u64, t: Option<u64>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t <= now => format!("{} ago", span(now - t)),
        Some(t) => format!("in {}", span(t - now)),
    }
}

/// Bytes for people, in binary units.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn drops_line(d: &BTreeMap<String, u64>) -> String {
    if d.is_empty() {
        return "none".into();
    }
    d.iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A peer's IPv4 and IPv6 halves in one cell (`mark` after the IPv4 one, or
/// after the IPv6 one when there is no IPv4 half): `10.244.2.0/24 +
/// fc00:0:0:2::/64`, or one of them.
fn both(
    v4: Option<impl std::fmt::Display>,
    v6: Option<impl std::fmt::Display>,
    mark: &str,
) -> String {
    match (v4, v6) {
        (Some(a), Some(b)) => format!("{a}{mark} + {b}"),
        (Some(a), None) => format!("{a}{mark}"),
        (None, Some(b)) => format!("{b}{mark}"),
        (None, None) => "-".to_string(),
    }
}

/// The view as text: a few lines about the node, then a table of peers.
pub fn render(v: &View) -> String {
    let now = v.now_ms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "weftd {} (pid {}), up {}, {}",
        v.version,
        v.pid,
        span(now.saturating_sub(v.started_ms)),
        if v.ready {
            "ready: forwarding"
        } else {
            "not ready"
        }
    );
    if let Some(n) = &v.node {
        let _ = writeln!(
            o,
            "node       {} on {}, MTU {}; public IP {} on {}, VtepMAC {}; VNI {} on UDP {}",
            n.network
                .map_or_else(|| "IPv6-only".to_string(), |n| n.to_string()),
            n.tun,
            n.mtu,
            both(n.public_ip, n.public_ipv6, ""),
            n.interface,
            n.vtep_mac,
            n.vni,
            n.port
        );
    }
    match &v.lease {
        Some(l) => {
            let expires = match l.expires_ms {
                Some(t) => format!("expires {}", when(now, Some(t))),
                None => "does not expire".into(),
            };
            let last = match (&l.last_renewal_ms, &l.last_renewal_error) {
                (None, _) => String::new(),
                (Some(t), None) => format!("; renewed {}", when(now, Some(*t))),
                (Some(t), Some(e)) => {
                    format!("; the renewal {} FAILED: {e}", when(now, Some(*t)))
                }
            };
            let subnets = match (l.subnet, l.subnet6) {
                (Some(s), Some(s6)) => format!("{s} + {s6}"),
                (Some(s), None) => s.to_string(),
                (None, Some(s6)) => s6.to_string(),
                (None, None) => "(none)".to_string(),
            };
            let _ = writeln!(
                o,
                "lease      {subnets}: {expires}, renews {}{last}",
                when(now, l.renew_at_ms)
            );
        }
        None => {
            let _ = writeln!(o, "lease      none yet (waiting for the store)");
        }
    }
    if let Some(s) = &v.store {
        let state = match s.outage_since_ms {
            Some(t) => format!(
                "NOT ANSWERING since {} (routes are kept meanwhile)",
                when(now, Some(t))
            ),
            None => "watching".into(),
        };
        let rev = s
            .revision
            .map(|r| format!(", revision {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "store      {}: {state}{rev}; the table last changed {}",
            s.describe,
            when(now, s.last_event_ms)
        );
        if let Some(r) = s.rewound {
            let _ = writeln!(
                o,
                "           the revision went BACK from {} to {} {} (etcd restored from a backup?): the table was replaced with what etcd holds",
                r.from,
                r.to,
                when(now, Some(r.at_ms))
            );
        }
    }
    let d = &v.dataplane;
    let _ = writeln!(
        o,
        "dataplane  out {} packets ({}), in {} packets ({}); TUN reads {}, writes {}; ICMP unreachable sent {}",
        d.tx_packets,
        bytes(d.tx_bytes),
        d.rx_packets,
        bytes(d.rx_bytes),
        d.tun_reads,
        d.tun_writes,
        d.icmp_unreachable_sent
    );
    let _ = writeln!(o, "drops      {}", drops_line(&d.drops));
    let _ = writeln!(o, "peers      {}", v.peers.len());
    if v.peers.is_empty() {
        return o;
    }
    let head = [
        "SUBNET",
        "PUBLIC IP",
        "VTEP MAC",
        "LAST IN",
        "LAST OUT",
        "PKTS IN",
        "PKTS OUT",
        "BYTES IN",
        "BYTES OUT",
        "DROPS",
    ];
    let rows: Vec<[String; 10]> = v
        .peers
        .iter()
        .map(|p| {
            let mark = if p.shared { "*" } else { "" };
            [
                both(p.subnet, p.subnet6, ""),
                both(p.public_ip, p.public_ipv6, mark),
                p.vtep_mac.clone(),
                when(now, p.last_in_ms),
                when(now, p.last_out_ms),
                p.packets_in.to_string(),
                p.packets_out.to_string(),
                bytes(p.bytes_in),
                bytes(p.bytes_out),
                drops_line(&p.drops),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "  {c:<w$}", w = widths[i]);
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(o, "{}", line(&head));
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = writeln!(o, "{}", line(&cells));
    }
    if v.peers.iter().any(|p| p.shared) {
        let _ = writeln!(
            o,
            "  * counters shared with the other leases of this public IP (or, beyond {} peers, with every such peer)",
            crate::dataplane::counters::PEER_SLOTS - 1
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::counters::LocalCounts;
    use crate::dataplane::table::{Peer, Table};
    use crate::node::Admission;
    use crate::state::{Control, NodeInfo};
    use crate::types::VtepMac;

    fn peer(subnet: &str, ip: [u8; 4], slot: u32) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.into(),
            vtep_mac: VtepMac::derive(&ip),
            endpoint: std::net::SocketAddrV4::new(ip.into(), 8472),
            slot,
        }
    }

    #[test]
    fn the_view_shows_each_peer_with_its_counters_and_renders_as_a_table() {
        let state = NodeState::default();
        let mut t = Table::default();
        t.insert(peer("10.244.2.0/24", [192, 0, 2, 2], 1));
        t.insert(peer("10.244.3.0/24", [192, 0, 2, 3], 2));
        state.table.store(std::sync::Arc::new(t));
        state.subnet.set("10.244.1.0/24".parse().unwrap()).unwrap();
        state
            .node
            .set(NodeInfo {
                tun: "weft0".into(),
                mtu: 1450,
                interface: "eth0".into(),
                public_ip: Some([192, 0, 2, 1].into()),
                public_ipv6: None,
                vtep_mac: VtepMac::derive(&[192, 0, 2, 1]),
                network: "10.244.0.0/16".parse().ok(),
                vni: 1,
                port: 8472,
                store: "etcd http://127.0.0.1:2379".into(),
            })
            .unwrap();
        let now = state.started_ms + 65_000;
        state.update(|c| {
            *c = Control {
                lease_expires_ms: Some(now + 86_000_000),
                renew_at_ms: Some(now + 3_600_000),
                last_renewal: Some((now - 2_000, Some("etcd timed out".into()))),
                last_event_ms: Some(now - 30_000),
            }
        });
        let mut l = LocalCounts::default();
        l.peers.tx(1, 3, 3000);
        l.peers.rx(1, 1, 900);
        l.peers.drop(2, DropReason::SpoofedSource);
        l.drop(DropReason::SpoofedSource);
        l.tx_packets = 3;
        state.counters.flush(&mut l);
        let v = view(&state, now + 500);
        assert_eq!(v.peers.len(), 2);
        let p2 = &v.peers[0];
        assert_eq!((p2.packets_out, p2.bytes_out, p2.packets_in), (3, 3000, 1));
        assert!(p2.last_in_ms.is_some() && !p2.shared);
        assert_eq!(v.peers[1].drops["spoofed_source"], 1);
        assert_eq!(v.peers[1].last_out_ms, None);
        assert_eq!(v.dataplane.drops["spoofed_source"], 1);
        // The JSON `weftd status --output json` prints reads back the same.
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<View>(&json).unwrap(), v);
        let text = render(&v);
        for want in [
            "up 1m5s, not ready",
            "node       10.244.0.0/16 on weft0, MTU 1450; public IP 192.0.2.1 on eth0",
            "lease      10.244.1.0/24: expires in 23h53m, renews in 59m59s; the renewal 2.5s ago FAILED: etcd timed out",
            "store      etcd http://127.0.0.1:2379: watching; the table last changed 30.5s ago",
            "drops      spoofed_source 1",
            "peers      2",
            "SUBNET",
            "10.244.2.0/24  192.0.2.2",
            "never",
            "2.9 KiB",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    /// An IPv6-only node and its peers are shown by their IPv6 halves: the
    /// node line names its public IPv6, each peer row its IPv6 subnet, public
    /// IPv6 and IPv6 VtepMAC, with its counters.
    #[test]
    fn an_ipv6_only_node_and_peers_show_their_ipv6_halves() {
        use crate::lease::{Lease, LeaseAttrs};
        let vni = crate::types::Vni::new(1).unwrap();
        let only6 = |s6: &str, ip6: &str| {
            let ip6: std::net::Ipv6Addr = ip6.parse().unwrap();
            Lease {
                subnet: None,
                ipv6_subnet: s6.parse().ok(),
                attrs: LeaseAttrs::vxlan6_only(ip6, vni, VtepMac::derive(&ip6.octets())),
                expiration: None,
            }
        };
        let leases = [
            only6("fc00:0:0:2::/64", "2001:db8::2"),
            only6("fc00:0:0:3::/64", "2001:db8::3"),
        ];
        let (mut t, _) = Admission::vxlan("fc00::/48".parse().ok(), vni, 8472).table(&leases, None);
        let mut slots = rustc_hash::FxHashMap::default();
        slots.insert("2001:db8::2".parse().unwrap(), 1);
        t.set_slots(&slots);
        let state = NodeState::default();
        state.table.store(std::sync::Arc::new(t));
        state
            .subnet6
            .set("fc00:0:0:1::/64".parse().unwrap())
            .unwrap();
        let ip6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        state
            .node
            .set(NodeInfo {
                tun: "weft0".into(),
                mtu: 1430,
                interface: "eth0".into(),
                public_ip: None,
                public_ipv6: Some(ip6),
                vtep_mac: VtepMac::derive(&ip6.octets()),
                network: None,
                vni: 1,
                port: 8472,
                store: "local:/run/weft".into(),
            })
            .unwrap();
        let mut l = LocalCounts::default();
        l.peers.tx(1, 2, 200);
        state.counters.flush(&mut l);
        let v = view(&state, state.started_ms + 1_000);
        assert_eq!(v.peers.len(), 2);
        let p2 = &v.peers[0];
        assert_eq!((p2.subnet, p2.public_ip), (None, None));
        assert_eq!(p2.subnet6, "fc00:0:0:2::/64".parse().ok());
        assert_eq!(
            p2.vtep_mac,
            VtepMac::derive(
                &"2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
            )
            .to_string()
        );
        assert_eq!((p2.packets_out, p2.shared), (2, false));
        assert!(v.peers[1].shared, "beyond the slots: counted as other");
        let lease = v.lease.as_ref().unwrap();
        assert_eq!(
            (lease.subnet, lease.subnet6),
            (None, "fc00:0:0:1::/64".parse().ok())
        );
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<View>(&json).unwrap(), v);
        let text = render(&v);
        for want in [
            "node       IPv6-only on weft0, MTU 1430; public IP 2001:db8::1 on eth0",
            "lease      fc00:0:0:1::/64: does not expire",
            "peers      2",
            "fc00:0:0:2::/64  2001:db8::2",
            "fc00:0:0:3::/64  2001:db8::3*",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn spans_and_sizes_read_well() {
        assert_eq!(span(1_234), "1.2s");
        assert_eq!(span(184_000), "3m4s");
        assert_eq!(span(7_200_000 + 60_000), "2h1m");
        assert_eq!(span(90_000_000), "1d1h");
        assert_eq!(when(10_000, Some(4_000)), "6.0s ago");
        assert_eq!(when(10_000, None), "never");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
