//! The node's live state ([`Status`]) and its health and metrics endpoint
//! (flannel's `--healthz-ip`/`--healthz-port`): `GET /healthz` (liveness),
//! `GET /readyz` (200 once the dataplane forwards to the peers of the first
//! lease snapshot, else 503), and `GET /metrics` (Prometheus text: the node's
//! packets, bytes and drops by reason, and the same per peer, bounded by
//! [`PEER_SLOTS`](crate::dataplane::counters::PEER_SLOTS)).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::clock::now_ms;
use crate::dataplane::counters::{Counters, DropReason, PEER_DROPS};
use crate::dataplane::table::SharedTable;
use crate::store::WatchHealth;
use crate::types::VtepMac;

/// The node's live state: what `/metrics` and `weftd status` report. It
/// exists from the start of weftd (so `/healthz` answers while weftd waits
/// for its store); `node` and the subnet are set once leased, `ready` once
/// the dataplane forwards, `control` by the main loop as it renews.
pub struct Status {
    pub counters: Arc<Counters>,
    pub table: SharedTable,
    pub subnet: OnceLock<Ipv4Net>,
    /// The node's IPv6 subnet, in a dual-stack network.
    pub subnet6: OnceLock<ipnet::Ipv6Net>,
    pub ready: AtomicBool,
    /// Unix ms of weftd's start.
    pub started_ms: u64,
    pub node: OnceLock<NodeInfo>,
    pub store_health: OnceLock<Arc<WatchHealth>>,
    pub control: Mutex<Control>,
}

impl Default for Status {
    fn default() -> Status {
        Status {
            counters: Arc::default(),
            table: SharedTable::default(),
            subnet: OnceLock::new(),
            subnet6: OnceLock::new(),
            ready: AtomicBool::new(false),
            started_ms: now_ms(),
            node: OnceLock::new(),
            store_health: OnceLock::new(),
            control: Mutex::default(),
        }
    }
}

/// The node as it runs: fixed once the lease is taken.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub tun: String,
    pub mtu: u32,
    pub interface: String,
    /// The public IP; `None` on an IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    /// The public IPv6 of a dual-stack or IPv6-only node.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The VtepMAC of the IPv4 VTEP, or of the IPv6 one on an IPv6-only node.
    pub vtep_mac: VtepMac,
    /// The IPv4 Network; `None` on an IPv6-only network.
    pub network: Option<Ipv4Net>,
    pub vni: u32,
    pub port: u16,
    /// The store, as [`crate::store::LeaseStore::describe`] says.
    pub store: String,
}

/// The control plane's moving parts, set by the main loop (never the packet path).
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// The lease's expiry (unix ms; None: it does not expire).
    pub lease_expires_ms: Option<u64>,
    /// When the next renewal is due (unix ms).
    pub renew_at_ms: Option<u64>,
    /// The last renewal: when (unix ms), and its error if it failed.
    pub last_renewal: Option<(u64, Option<String>)>,
    /// When the watch last changed the table (unix ms).
    pub last_event_ms: Option<u64>,
}

impl Status {
    /// Changes the control plane's state (a poisoned lock is taken as it is:
    /// the state is plain data).
    pub fn update(&self, f: impl FnOnce(&mut Control)) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c);
    }

    /// A copy of the control plane's state.
    pub fn control(&self) -> Control {
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus text exposition of the node's state.
    pub fn render(&self) -> String {
        let s = self.counters.snapshot();
        let mut o = String::new();
        let table = self.table.load();
        let _ = writeln!(
            o,
            "# HELP weft_peers Peers in the forwarding table.\n# TYPE weft_peers gauge"
        );
        let _ = writeln!(o, "weft_peers {}", table.len());
        let _ = writeln!(
            o,
            "# HELP weft_ready 1 once the dataplane forwards to the peers of the first lease snapshot.\n# TYPE weft_ready gauge\nweft_ready {}",
            u8::from(self.ready.load(Ordering::Relaxed))
        );
        let labels = [
            self.subnet.get().map(|s| format!("subnet=\"{s}\"")),
            self.subnet6.get().map(|s6| format!("subnet6=\"{s6}\"")),
        ];
        let labels: Vec<String> = labels.into_iter().flatten().collect();
        if !labels.is_empty() {
            let _ = writeln!(
                o,
                "# TYPE weft_lease_info gauge\nweft_lease_info{{{}}} 1",
                labels.join(",")
            );
        }
        for (name, v) in [
            ("weft_tx_packets_total", s.tx_packets),
            ("weft_tx_bytes_total", s.tx_bytes),
            ("weft_rx_packets_total", s.rx_packets),
            ("weft_rx_bytes_total", s.rx_bytes),
            ("weft_icmp_unreachable_sent_total", s.icmp_sent),
            ("weft_tun_reads_total", s.tun_reads),
            ("weft_tun_writes_total", s.tun_writes),
        ] {
            let _ = writeln!(o, "# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP weft_drops_total Packets dropped, by reason.\n# TYPE weft_drops_total counter"
        );
        for r in DropReason::ALL {
            let _ = writeln!(
                o,
                "weft_drops_total{{reason=\"{}\"}} {}",
                r.name(),
                s.drops[r as usize]
            );
        }
        self.render_peers(&table, &mut o);
        o
    }

    /// The per-peer series: one `weft_peer_info` per lease, and the counters
    /// per peer (public IP: what a datagram's source says), `peer="other"`
    /// for those beyond the slot limit. Drops only where nonzero.
    fn render_peers(&self, table: &crate::dataplane::table::Table, o: &mut String) {
        let mut leases: Vec<_> = table.peers().collect();
        leases.sort_by_key(|p| (p.public_ip, p.subnet));
        let _ = writeln!(
            o,
            "# HELP weft_peer_info A lease in the forwarding table: its subnet and VtepMAC, by the peer's public IP; in a dual-stack network also its IPv6 subnet, public IPv6 and IPv6 VtepMAC (its IPv6 traffic counts under the same peer).\n# TYPE weft_peer_info gauge"
        );
        for p in &leases {
            let six = table
                .peers6()
                .find(|q| q.lease.v4 == Some(p.subnet))
                .map(|q| {
                    format!(
                        ",subnet6=\"{}\",public_ipv6=\"{}\",vtep_mac6=\"{}\"",
                        q.subnet, q.public_ip, q.vtep_mac
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "weft_peer_info{{peer=\"{}\",subnet=\"{}\",vtep_mac=\"{}\"{six}}} 1",
                p.public_ip, p.subnet, p.vtep_mac
            );
        }
        // The peers of an IPv6-only network: named by their public IPv6.
        let mut only6: Vec<_> = table.peers6_only().collect();
        only6.sort_by_key(|q| (q.public_ip, q.subnet));
        for q in &only6 {
            let _ = writeln!(
                o,
                "weft_peer_info{{peer=\"{}\",subnet6=\"{}\",public_ipv6=\"{}\",vtep_mac6=\"{}\"}} 1",
                q.public_ip, q.subnet, q.public_ip, q.vtep_mac
            );
        }
        let mut peers: Vec<(String, u32)> = leases
            .iter()
            .filter(|p| p.slot != 0)
            .map(|p| (p.public_ip.to_string(), p.slot))
            .collect();
        peers.dedup();
        let mut peers6: Vec<(String, u32)> = only6
            .iter()
            .filter(|q| q.slot != 0)
            .map(|q| (q.public_ip.to_string(), q.slot))
            .collect();
        peers6.dedup();
        peers.extend(peers6);
        let other = self.counters.peers.snapshot(0);
        if other != Default::default() {
            peers.push(("other".into(), 0));
        }
        let snaps: Vec<_> = peers
            .iter()
            .map(|(name, slot)| (name, self.counters.peers.snapshot(*slot)))
            .collect();
        type Field = fn(&crate::dataplane::counters::PeerSnapshot) -> u64;
        let series: [(&str, &str, Field); 4] = [
            (
                "weft_peer_tx_packets_total",
                "VXLAN datagrams sent to the peer.",
                |s| s.tx_packets,
            ),
            (
                "weft_peer_tx_bytes_total",
                "Bytes of VXLAN payload sent to the peer.",
                |s| s.tx_bytes,
            ),
            (
                "weft_peer_rx_packets_total",
                "Inner packets accepted from the peer.",
                |s| s.rx_packets,
            ),
            (
                "weft_peer_rx_bytes_total",
                "Bytes of inner packets accepted from the peer.",
                |s| s.rx_bytes,
            ),
        ];
        for (name, help, f) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (peer, s) in &snaps {
                let _ = writeln!(o, "{name}{{peer=\"{peer}\"}} {}", f(s));
            }
        }
        let _ = writeln!(
            o,
            "# HELP weft_peer_drops_total Datagrams from the peer dropped, by reason (only reasons seen).\n# TYPE weft_peer_drops_total counter"
        );
        for (peer, s) in &snaps {
            for (r, v) in PEER_DROPS.iter().zip(s.drops) {
                if v != 0 {
                    let _ = writeln!(
                        o,
                        "weft_peer_drops_total{{peer=\"{peer}\",reason=\"{}\"}} {v}",
                        r.name()
                    );
                }
            }
        }
        for (name, help, f) in [
            (
                "weft_peer_last_rx_timestamp_seconds",
                "When a datagram last came in from the peer (unix time).",
                (|s| s.last_rx_ms) as Field,
            ),
            (
                "weft_peer_last_tx_timestamp_seconds",
                "When a datagram last went out to the peer (unix time).",
                |s| s.last_tx_ms,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (peer, s) in &snaps {
                let ms = f(s);
                if ms != 0 {
                    let _ = writeln!(
                        o,
                        "{name}{{peer=\"{peer}\"}} {}.{:03}",
                        ms / 1000,
                        ms % 1000
                    );
                }
            }
        }
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until the task is dropped.
/// Binds the /healthz and /metrics listener with `SO_REUSEPORT`, so a new
/// weftd taking over can bind it while the old one still serves.
///
/// # Errors
/// The bind error.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let s = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(128)
}

pub async fn serve(listener: TcpListener, status: Arc<Status>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            // Read until the end of the request head (or 4 KiB, or 5 s).
            let mut buf = [0u8; 4096];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout_at(deadline, conn.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(k)) => n += k,
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let target = req.split_whitespace().nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("");
            let ready = status.ready.load(Ordering::Relaxed);
            // As flanneld's: /healthz is liveness (the process serves),
            // /readyz readiness (the dataplane forwards to the peers it knows).
            let (code, body) = match path {
                "/healthz" | "/readyz" if ready => ("200 OK", "ok\n".to_string()),
                "/healthz" => ("200 OK", "ok (starting)\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                "/metrics" => ("200 OK", status.render()),
                _ => (
                    "404 Not Found",
                    "try /healthz, /readyz or /metrics\n".to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// Parses Prometheus text into `name{labels} → value` (for tests and the lab).
pub fn parse(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::counters::LocalCounts;
    use crate::dataplane::table::{Peer, Table};

    #[test]
    fn per_peer_series_are_labelled_by_public_ip_and_bounded() {
        let status = Status::default();
        let mut t = Table::default();
        for (i, slot) in [(2u8, 1u32), (3, 0)] {
            let ip = Ipv4Addr::new(192, 0, 2, i);
            t.insert(Peer {
                subnet: format!("10.244.{i}.0/24").parse().unwrap(),
                public_ip: ip,
                vtep_mac: VtepMac::derive(&ip.octets()),
                endpoint: std::net::SocketAddrV4::new(ip, 8472),
                slot,
            });
        }
        status.table.store(Arc::new(t));
        let mut l = LocalCounts::default();
        l.peers.tx(1, 4, 400);
        l.peers.drop(1, DropReason::WrongVni);
        l.peers.rx(0, 1, 10);
        status.counters.flush(&mut l);
        let m = parse(&status.render());
        assert_eq!(m["weft_peer_tx_packets_total{peer=\"192.0.2.2\"}"], 4.0);
        assert_eq!(
            m["weft_peer_drops_total{peer=\"192.0.2.2\",reason=\"wrong_vni\"}"],
            1.0
        );
        assert!(m.contains_key("weft_peer_last_tx_timestamp_seconds{peer=\"192.0.2.2\"}"));
        // A datagram dropped is still one that came in from the peer.
        assert!(m.contains_key("weft_peer_last_rx_timestamp_seconds{peer=\"192.0.2.2\"}"));
        assert_eq!(m["weft_peer_rx_packets_total{peer=\"192.0.2.2\"}"], 0.0);
        // Beyond the slot limit a peer is counted as `other`, never by its own label.
        assert_eq!(m["weft_peer_rx_packets_total{peer=\"other\"}"], 1.0);
        assert!(!m.contains_key("weft_peer_rx_packets_total{peer=\"192.0.2.3\"}"));
        assert_eq!(
            m.keys()
                .filter(|k| k.starts_with("weft_peer_info{"))
                .count(),
            2,
            "an info series per lease"
        );
        assert_eq!(m["weft_ready"], 0.0);
    }
}
