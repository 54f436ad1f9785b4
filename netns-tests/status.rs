//! `weftd status` and the per-peer metrics on real nodes: the running node's
//! lease, store and peers, with the packets it exchanged with each; only
//! root (or weftd's user) may ask; a namespace without weftd is told so.

use std::process::{Command, Output};

use crate::harness::{Cluster, Opts, ping_from, require_root, wait_until, weftd_bin};
use weft::status::View;

fn status_in(ns: &str, pre: &[&str], args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(pre)
        .arg(weftd_bin())
        .arg("status")
        .args(args)
        .output()
        .expect("weftd status runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn status_shows_the_running_nodes_lease_store_and_peers_with_their_counters() {
    if !require_root("status_shows_the_running_nodes_lease_store_and_peers_with_their_counters") {
        return;
    }
    let c = Cluster::up(
        "stat",
        &Opts {
            nodes: 3,
            ..Opts::default()
        },
    );
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // Traffic with node 1 only: node 2's row must stay empty.
    for _ in 0..5 {
        assert!(ping_from(&n0.ns, n1.addr()), "{}", n0.log());
    }

    let o = status_in(&n0.ns, &[], &["--output", "json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: View = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v.ready);
    let node = v.node.as_ref().unwrap();
    assert_eq!(
        (node.public_ip, node.port, node.tun.as_str()),
        (Some(n0.ip), 8472, "weft0")
    );
    let lease = v.lease.as_ref().unwrap();
    assert_eq!(lease.subnet, Some(n0.subnet()));
    assert!(lease.expires_ms.unwrap() > v.now_ms && lease.renew_at_ms.unwrap() > v.now_ms);
    assert!(
        v.store.as_ref().unwrap().describe.starts_with("local:"),
        "{out}"
    );
    assert_eq!(v.peers.len(), 2, "{out}");
    let row = |ip| v.peers.iter().find(|p| p.public_ip == Some(ip)).unwrap();
    let (p1, p2) = (row(n1.ip), row(n2.ip));
    assert_eq!(p1.subnet, Some(n1.subnet()));
    assert!(p1.packets_out >= 5 && p1.packets_in >= 5, "{p1:?}");
    assert!(p1.bytes_out >= 5 * 84 && p1.bytes_in >= 5 * 84, "{p1:?}");
    let last_in = p1.last_in_ms.expect("a last packet in");
    assert!(v.now_ms - last_in < 60_000, "{p1:?} at {}", v.now_ms);
    assert!(p1.drops.is_empty() && !p1.shared, "{p1:?}");
    assert_eq!(
        (p2.packets_out, p2.packets_in, p2.last_out_ms),
        (0, 0, None),
        "{p2:?}"
    );
    assert!(v.dataplane.tx_packets >= p1.packets_out);

    // The same for people.
    let o = status_in(&n0.ns, &[], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    eprintln!("{out}");
    for want in [
        "ready: forwarding".to_string(),
        format!("lease      {}: expires in", n0.subnet()),
        "store      local:".to_string(),
        "peers      2".to_string(),
        "SUBNET".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} not in\n{out}");
    }
    // n1's row: its subnet, then its public IP, in the next column (the
    // columns are as wide as their widest cell, so count words, not spaces).
    let row1: Vec<&str> = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&n1.subnet().to_string()))
        .unwrap_or_else(|| panic!("no row for {} in\n{out}", n1.subnet()))
        .split_whitespace()
        .collect();
    assert_eq!(row1.get(1), Some(&n1.ip.to_string().as_str()), "{out}");
    let row2 = out
        .lines()
        .find(|l| l.contains(&n2.ip.to_string()))
        .unwrap();
    assert!(row2.contains("never"), "{row2}");

    // The per-peer series, one per peer, and an info series per lease.
    let m = n0.metrics();
    let get = |k: String| m.get(&k).copied().unwrap_or(-1.0);
    assert!(get(format!("weft_peer_tx_packets_total{{peer=\"{}\"}}", n1.ip)) >= 5.0);
    assert!(get(format!("weft_peer_rx_packets_total{{peer=\"{}\"}}", n1.ip)) >= 5.0);
    assert_eq!(
        get(format!("weft_peer_tx_packets_total{{peer=\"{}\"}}", n2.ip)),
        0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let seen = get(format!(
        "weft_peer_last_rx_timestamp_seconds{{peer=\"{}\"}}",
        n1.ip
    ));
    assert!(now - seen < 60.0 && now - seen > -5.0, "{seen} vs {now}");
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("weft_peer_info{"))
            .count(),
        2
    );
    assert_eq!(get("weft_ready".into()), 1.0);

    // Only root or weftd's own user may ask (abstract sockets have no modes).
    let o = status_in(
        &n0.ns,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("refused") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(n0.log().contains("refused `status` on the control socket"));

    // A namespace where no weftd runs is told so, with where to run it.
    let o = status_in(c.underlay_ns(), &[], &[]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("no weftd runs in this network namespace"),
        "{err}"
    );
    assert!(wait_until(5, || ping_from(&n0.ns, n1.addr())));
}
