//! The health and metrics endpoint (flannel's `--healthz-ip`/`--healthz-port`):
//! `GET /healthz` (liveness), `GET /readyz` (200 once the dataplane forwards
//! to the peers of the first lease snapshot, else 503), and `GET /metrics`
//! (Prometheus text: peers, packets, bytes and drops by reason).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::dataplane::counters::{Counters, DropReason};
use crate::dataplane::table::SharedTable;

/// What the endpoint reports. It serves from the start of weftd (so
/// `/healthz` answers while weftd waits for its store); the subnet is set
/// once leased, and `ready` once the dataplane forwards.
#[derive(Default)]
pub struct Status {
    pub counters: Arc<Counters>,
    pub table: SharedTable,
    pub subnet: std::sync::OnceLock<Ipv4Net>,
    pub ready: AtomicBool,
}

impl Status {
    /// The Prometheus text exposition of the node's state.
    pub fn render(&self) -> String {
        let s = self.counters.snapshot();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP weft_peers Peers in the forwarding table.\n# TYPE weft_peers gauge"
        );
        let _ = writeln!(o, "weft_peers {}", self.table.load().len());
        if let Some(subnet) = self.subnet.get() {
            let _ = writeln!(
                o,
                "# TYPE weft_lease_info gauge\nweft_lease_info{{subnet=\"{subnet}\"}} 1"
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
        o
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
