//! The health and metrics endpoint (flannel's `--healthz-ip`/`--healthz-port`)
//! over the node's live state ([`NodeState`]): `GET /healthz` (liveness),
//! `GET /readyz` (200 once the dataplane forwards to the peers of the first
//! lease snapshot, else 503), and `GET /metrics` (Prometheus text: the node's
//! packets, bytes and drops by reason, and the same per peer, bounded by
//! [`PEER_SLOTS`](crate::dataplane::counters::PEER_SLOTS)); and [`parse`],
//! which reads that text back (for tests and the lab).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::dataplane::counters::{DropReason, PEER_DROPS};
use crate::dataplane::table::Table;
use crate::state::NodeState;

/// The Prometheus text exposition of the node's state.
pub fn render(state: &NodeState) -> String {
    let s = state.counters.snapshot();
    let mut o = String::new();
    let table = state.table.load();
    let _ = writeln!(
        o,
        "# HELP weft_peers Peers in the forwarding table.\n# TYPE weft_peers gauge"
    );
    let _ = writeln!(o, "weft_peers {}", table.len());
    let _ = writeln!(
        o,
        "# HELP weft_ready 1 once the dataplane forwards to the peers of the first lease snapshot.\n# TYPE weft_ready gauge\nweft_ready {}",
        u8::from(state.ready.load(Ordering::Relaxed))
    );
    let labels = [
        state.subnet.get().map(|s| format!("subnet=\"{s}\"")),
        state.subnet6.get().map(|s6| format!("subnet6=\"{s6}\"")),
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
    render_peers(state, &table, &mut o);
    o
}

/// The per-peer series: one `weft_peer_info` per lease, and the counters
/// per peer (public IP: what a datagram's source says), `peer="other"`
/// for those beyond the slot limit. Drops only where nonzero.
fn render_peers(state: &NodeState, table: &Table, o: &mut String) {
    let mut leases: Vec<_> = table.peers().collect();
    leases.sort_by_key(|p| (p.public_ip, p.subnet));
    let _ = writeln!(
        o,
        "# HELP weft_peer_info A lease in the forwarding table: its subnet and VtepMAC, by the peer's public IP; in a dual-stack network also its IPv6 subnet, public IPv6 and IPv6 VtepMAC (its IPv6 traffic counts under the same peer).\n# TYPE weft_peer_info gauge"
    );
    for p in &leases {
        let six = table
            .peers6()
            .find(|q| q.v4 == Some(p.subnet))
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
    let other = state.counters.peers.snapshot(0);
    if other != Default::default() {
        peers.push(("other".into(), 0));
    }
    let snaps: Vec<_> = peers
        .iter()
        .map(|(name, slot)| (name, state.counters.peers.snapshot(*slot)))
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

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the task
/// is dropped.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
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
            let ready = state.ready.load(Ordering::Relaxed);
            // As flanneld's: /healthz is liveness (the process serves),
            // /readyz readiness (the dataplane forwards to the peers it knows).
            let (code, body) = match path {
                "/healthz" | "/readyz" if ready => ("200 OK", "ok\n".to_string()),
                "/healthz" => ("200 OK", "ok (starting)\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                "/metrics" => ("200 OK", render(&state)),
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
    use crate::dataplane::table::Peer;
    use crate::types::VtepMac;
    use std::net::Ipv4Addr;

    #[test]
    fn per_peer_series_are_labelled_by_public_ip_and_bounded() {
        let state = NodeState::default();
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
        state.table.store(Arc::new(t));
        let mut l = LocalCounts::default();
        l.peers.tx(1, 4, 400);
        l.peers.drop(1, DropReason::WrongVni);
        l.peers.rx(0, 1, 10);
        state.counters.flush(&mut l);
        let m = parse(&render(&state));
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
