//! The etcd lease store against a real etcd started by the tests: flannel's
//! keys and values, races, malformed values, and the faults a node must
//! survive (etcd down, compaction, restore from a backup, TTL expiry, TLS).

mod etcd_support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_support::{EtcdServer, TlsFiles, cluster, etcd_available};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use weft::config::NetConfig;
use weft::lease::{Lease, LeaseAttrs};
use weft::node::{Admission, Renewal, Step};
use weft::store::etcd::{EtcdSettings, EtcdStore};
use weft::store::{AcquireRequest, EtcdError, LeaseStore, StoreError, WatchEvent};
use weft::types::{Vni, VtepMac};

const NET: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;
impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOGS.lock() {
            l.extend_from_slice(b);
        }
        std::io::stderr().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a subscriber that keeps every log line (for the tests that check them).
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

fn settings(srv: &EtcdServer) -> EtcdSettings {
    let mut s = EtcdSettings::new(vec![srv.endpoint()]);
    s.request_timeout = Duration::from_secs(1);
    s.relist_interval = Duration::from_secs(60);
    s
}

async fn store(srv: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(settings(srv)).await.expect("connects")
}

fn req(net: &str, ip: [u8; 4], ttl: Duration) -> AcquireRequest {
    AcquireRequest {
        config: NetConfig::parse(net, "etcd").unwrap(),
        attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
        previous: None,
        previous6: None,
        ttl,
    }
}

fn flannel_value(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// The table a daemon would build from the events.
#[derive(Default)]
struct Table {
    leases: BTreeMap<Ipv4Net, Lease>,
    snapshots: usize,
}

impl Table {
    fn apply(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Snapshot(all) => {
                self.snapshots += 1;
                self.leases = all
                    .into_iter()
                    .filter_map(|l| Some((l.subnet?, l)))
                    .collect();
            }
            WatchEvent::Upsert(l) => {
                if let Some(s) = l.subnet {
                    self.leases.insert(s, l);
                }
            }
            // A removal names the lease: the one held under its IPv4 subnet
            // goes only if it is that lease (not one that replaced it).
            WatchEvent::Remove(id) => {
                if let Some(s) = id.v4 {
                    if self.leases.get(&s).is_some_and(|l| l.id() == id) {
                        self.leases.remove(&s);
                    }
                }
            }
        }
    }

    fn subnets(&self) -> Vec<String> {
        self.leases.keys().map(|s| s.to_string()).collect()
    }

    /// What the daemon's reconciler makes of these leases in the network
    /// `net_conf`: the IPv4 subnets it routes, the IPv6 ones, and each
    /// lease (or half) it leaves out with why.
    fn routed(&self, net_conf: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        let config = NetConfig::parse(net_conf, "test").unwrap();
        let (t, skipped) = Admission::new(&config).table(self.leases.values(), None);
        let mut v4: Vec<String> = t.peers().map(|p| p.subnet.to_string()).collect();
        let mut v6: Vec<String> = t.peers6().map(|p| p.subnet.to_string()).collect();
        v4.sort();
        v6.sort();
        let why = skipped
            .iter()
            .map(|s| format!("{}: {}", s.subnet, s.why))
            .collect();
        (v4, v6, why)
    }

    /// Applies events until `done` holds; panics after `t` naming `what`.
    async fn until(
        &mut self,
        rx: &mut mpsc::Receiver<WatchEvent>,
        t: Duration,
        what: &str,
        done: impl Fn(&Table, Option<&WatchEvent>) -> bool,
    ) {
        let deadline = Instant::now() + t;
        if done(self, None) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(ev)) => {
                    let hit = done(self, Some(&ev));
                    self.apply(ev);
                    if hit || done(self, None) {
                        return;
                    }
                }
                Ok(None) => panic!("watch stream ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {t:?} waiting for {what}; table {:?}",
                    self.subnets()
                ),
            }
        }
    }
}

fn subnets_of(leases: &[Lease]) -> Vec<String> {
    let mut v: Vec<String> = leases.iter().map(|l| l.id().to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn config_read_and_missing_config_says_how_to_create_it() {
    if !etcd_available("config_read_and_missing_config_says_how_to_create_it") {
        return;
    }
    let srv = EtcdServer::start();
    let s = store(&srv).await;
    let e = s.network_config().await.unwrap_err();
    assert!(
        matches!(e, StoreError::Etcd(EtcdError::ConfigMissing { .. })),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.contains("/coreos.com/network/config")
            && m.contains(&srv.endpoint())
            && m.contains(r#"etcdctl --endpoints="#)
            && m.contains(r#"put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'"#),
        "{m}"
    );
    // The operator runs the command from the message (seed 001's fix).
    srv.put("/coreos.com/network/config", NET);
    let text = s.network_config().await.unwrap().unwrap();
    let cfg = NetConfig::parse(&text, "etcd").unwrap();
    assert_eq!(cfg.network().unwrap().to_string(), "10.244.0.0/16");

    // Another prefix, as seed 001's `--etcd-prefix=/kubernetes/network`.
    let mut st = settings(&srv);
    st.prefix = "/kubernetes/network".into();
    let k = EtcdStore::connect(st).await.unwrap();
    let m = k.network_config().await.unwrap_err().to_string();
    assert!(m.contains("put /kubernetes/network/config '"), "{m}");
}

#[tokio::test]
async fn lease_create_renew_reuse_release_and_operator_delete() {
    if !etcd_available("lease_create_renew_reuse_release_and_operator_delete") {
        return;
    }
    let srv = EtcdServer::start();
    let s = store(&srv).await;
    let ttl = Duration::from_secs(60);
    let a = s.acquire(&req(NET, [192, 0, 2, 1], ttl)).await.unwrap();
    // flannel's key and value, attached to an etcd lease with the TTL.
    let key = format!(
        "/coreos.com/network/subnets/{}-24",
        a.subnet.unwrap().addr()
    );
    let out = srv.etcdctl(&["get", &key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kv = &v["kvs"][0];
    let lease_id = kv["lease"].as_i64().unwrap();
    assert_ne!(lease_id, 0, "the key must carry an etcd lease");
    let out = srv.etcdctl(&["get", &key, "--print-value-only"]);
    let attrs: LeaseAttrs = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(attrs, a.attrs);
    assert!(
        out.contains(
            r#""PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"#
        ),
        "{out}"
    );
    let ttl_out = srv.etcdctl(&["lease", "timetolive", &format!("{lease_id:x}")]);
    assert!(ttl_out.contains("granted with TTL(60s)"), "{ttl_out}");

    // Renew: a fresh etcd lease with the new TTL; the old one is revoked.
    let r = s.renew(&a, Duration::from_secs(120)).await.unwrap();
    assert_eq!(r.subnet, a.subnet);
    let v: serde_json::Value =
        serde_json::from_str(&srv.etcdctl(&["get", &key, "-w", "json"])).unwrap();
    let lease2 = v["kvs"][0]["lease"].as_i64().unwrap();
    assert_ne!(lease2, lease_id);
    let ttl_out = srv.etcdctl(&["lease", "timetolive", &format!("{lease2:x}")]);
    assert!(ttl_out.contains("granted with TTL(120s)"), "{ttl_out}");

    // A restart of the node (a new store, same public IP) gets its subnet back,
    // even when subnet.env names another one.
    let s2 = store(&srv).await;
    let mut again = req(NET, [192, 0, 2, 1], ttl);
    again.previous = Some("10.244.200.0/24".parse().unwrap());
    let a2 = s2.acquire(&again).await.unwrap();
    assert_eq!(a2.subnet, a.subnet);
    // Another node with subnet.env's previous subnet free gets that one.
    let mut other = req(NET, [192, 0, 2, 2], ttl);
    other.previous = Some("10.244.200.0/24".parse().unwrap());
    let b = s2.acquire(&other).await.unwrap();
    assert_eq!(b.id().to_string(), "10.244.200.0/24");

    // An operator deletes this node's key: the watch reports our own Remove,
    // renew says so, and acquiring again (previous = our subnet) gets it back.
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(
        &mut w,
        Duration::from_secs(5),
        "the first snapshot",
        |t, _| t.snapshots == 1,
    )
    .await;
    assert_eq!(t.leases.len(), 2);
    srv.del(&key);
    let sub = a.subnet.unwrap();
    t.until(&mut w, Duration::from_secs(5), "our own Remove", |_, e| {
        e == Some(&WatchEvent::Remove(weft::lease::LeaseId::v4(sub)))
    })
    .await;
    let e = s.renew(&a2, ttl).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseDeleted { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&key) && e.to_string().contains("deleted by an operator"),
        "{e}"
    );
    // weft's policy (node::Renewal, as the daemon runs it): acquire again,
    // the same subnet first.
    let policy = Renewal::new(ttl, Duration::from_secs(3600));
    let r = req(NET, [192, 0, 2, 1], ttl);
    let again = match policy.renewed(&a2, &r, s.renew(&a2, ttl).await) {
        Step::Reacquire { request, .. } => request,
        other => panic!("expected a re-acquisition, got {other:?}"),
    };
    let a3 = match policy.reacquired(&a2, s.acquire(&again).await) {
        Step::Keep { lease, .. } => lease,
        other => panic!("expected the same subnet back, got {other:?}"),
    };
    assert_eq!(a3.subnet, a.subnet);
    assert!(matches!(
        policy.renewed(&a3, &r, s.renew(&a3, ttl).await),
        Step::Keep { .. }
    ));
    t.until(&mut w, Duration::from_secs(5), "our lease back", |t, _| {
        t.leases.contains_key(&sub)
    })
    .await;

    // Another node's value on our key: LeaseLost, naming the holder.
    srv.put(&key, &flannel_value("192.0.2.77", "02:00:00:00:00:77"));
    let e = s.renew(&a3, ttl).await.unwrap_err().to_string();
    assert!(e.contains("192.0.2.77"), "{e}");

    // Release deletes only our own key.
    s.release(&a3).await.unwrap();
    assert!(
        !srv.etcdctl(&["get", &key]).is_empty(),
        "a foreign key must survive our release"
    );
    s2.release(&b).await.unwrap();
    assert!(
        srv.etcdctl(&["get", "/coreos.com/network/subnets/10.244.200.0-24"])
            .is_empty()
    );
}

#[tokio::test]
async fn racing_stores_end_with_distinct_subnets() {
    if !etcd_available("racing_stores_end_with_distinct_subnets") {
        return;
    }
    let srv = EtcdServer::start();
    // Four subnets; two taken by flannel nodes: two left for three racers.
    let net = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","Backend":{"Type":"vxlan"}}"#;
    srv.put(
        "/coreos.com/network/subnets/10.244.1.0-24",
        &flannel_value("192.0.2.101", "02:00:00:00:01:01"),
    );
    srv.put(
        "/coreos.com/network/subnets/10.244.3.0-24",
        &flannel_value("192.0.2.103", "02:00:00:00:01:03"),
    );
    let mut tasks = vec![];
    for i in 0..2u8 {
        let st = store(&srv).await;
        let r = req(net, [192, 0, 2, 10 + i], Duration::from_secs(60));
        tasks.push(tokio::spawn(async move { st.acquire(&r).await }));
    }
    let mut got = vec![];
    for t in tasks {
        got.push(
            t.await
                .unwrap()
                .expect("both racers get a subnet")
                .id()
                .to_string(),
        );
    }
    got.sort();
    assert_eq!(got, vec!["10.244.2.0/24", "10.244.4.0/24"]);
    // The range is full: one clear NoFreeSubnet.
    let e = store(&srv)
        .await
        .acquire(&req(net, [192, 0, 2, 30], Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NoFreeSubnet { count: 4, .. }),
        "{e:?}"
    );

    // Many racers for the last subnets of a small range, all at once: each
    // lost race is retried with another subnet.
    let net8 = r#"{"Network":"10.245.0.0/16","SubnetMin":"10.245.1.0","SubnetMax":"10.245.8.0","Backend":{"Type":"vxlan"}}"#;
    let mut tasks = vec![];
    for i in 0..8u8 {
        let st = store(&srv).await;
        let mut r = req(net8, [198, 51, 100, 1 + i], Duration::from_secs(60));
        // Everyone asks for the same subnet first, to force races.
        r.previous = Some("10.245.5.0/24".parse().unwrap());
        tasks.push(tokio::spawn(async move { st.acquire(&r).await }));
    }
    let mut got = std::collections::BTreeSet::new();
    for t in tasks {
        assert!(got.insert(t.await.unwrap().unwrap().subnet));
    }
    assert_eq!(got.len(), 8);
}

#[tokio::test]
async fn malformed_and_foreign_values_are_skipped_and_logged() {
    if !etcd_available("malformed_and_foreign_values_are_skipped_and_logged") {
        return;
    }
    capture_logs();
    let srv = EtcdServer::start();
    let p = "/coreos.com/network/subnets";
    srv.put(&format!("{p}/10.244.7.0-24"), "{not json");
    srv.put(
        &format!("{p}/10.244.8.0-24"),
        r#"{"PublicIP":"192.0.2.8","BackendType":"udp"}"#,
    );
    srv.put(
        &format!("{p}/garbage-key"),
        &flannel_value("192.0.2.9", "02:00:00:00:00:09"),
    );
    srv.put(
        &format!("{p}/10.244.10.0-24"),
        &flannel_value("192.0.2.10", "02:00:00:00:00:0a"),
    );
    // What flannel itself writes: newer versions add PublicIPv6, seed 001's has no VNI.
    srv.put(
        &format!("{p}/10.244.14.0-24"),
        r#"{"PublicIP":"192.168.1.14","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:14"}}"#,
    );
    srv.put(
        &format!("{p}/10.244.15.0-24"),
        r#"{"PublicIP":"192.168.1.137","BackendType":"vxlan","BackendData":{"VtepMAC":"62:fc:03:83:1b:2b"}}"#,
    );
    let s = store(&srv).await;
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    // A lease of another backend is reported as stored, and not routed.
    let net = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    assert_eq!(
        t.subnets(),
        vec![
            "10.244.8.0/24",
            "10.244.10.0/24",
            "10.244.14.0/24",
            "10.244.15.0/24"
        ]
    );
    let (routed, _, why) = t.routed(net);
    assert_eq!(
        routed,
        vec!["10.244.10.0/24", "10.244.14.0/24", "10.244.15.0/24"]
    );
    assert_eq!(
        why,
        [
            "10.244.8.0/24: its node 192.0.2.8 runs flannel's \"udp\" backend, not this network's \"vxlan\""
        ]
    );
    // A valid lease turning malformed goes away; a bad new one is skipped
    // by the store (a value that is not a lease) or by the reconciler (a
    // lease whose vxlan data is bad).
    srv.put(&format!("{p}/10.244.10.0-24"), r#"{"PublicIP":"nope"}"#);
    srv.put(
        &format!("{p}/10.244.11.0-24"),
        &flannel_value("192.0.2.11", "zz"),
    );
    srv.put(
        &format!("{p}/10.244.12.0-24"),
        &flannel_value("192.0.2.12", "02:00:00:00:00:0c"),
    );
    t.until(&mut w, Duration::from_secs(5), "the valid lease", |t, _| {
        t.routed(net).0 == vec!["10.244.12.0/24", "10.244.14.0/24", "10.244.15.0/24"]
            && !t.leases.contains_key(&"10.244.10.0/24".parse().unwrap())
    })
    .await;
    let (_, _, why) = t.routed(net);
    assert!(
        why.len() == 2 && why[1].starts_with("10.244.11.0/24: BackendData is not vxlan data"),
        "{why:?}"
    );
    // Acquire never takes a subnet whose key exists, valid or not.
    let net = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.7.0","SubnetMax":"10.244.13.0","Backend":{"Type":"vxlan"}}"#;
    let mut r = req(net, [192, 0, 2, 50], Duration::from_secs(60));
    r.previous = Some("10.244.7.0/24".parse().unwrap());
    let l = s.acquire(&r).await.unwrap();
    assert!(
        ["10.244.9.0/24", "10.244.13.0/24"].contains(&l.id().to_string().as_str()),
        "{l:?}"
    );
    let logs = logs();
    for k in ["10.244.7.0-24", "garbage-key", "10.244.10.0-24"] {
        assert!(
            logs.contains(&format!("skipping lease {p}/{k}")),
            "no warning naming {k} in:\n{logs}"
        );
    }
}

#[tokio::test]
async fn etcd_down_then_back_watch_resumes_and_reports_leases_written_meanwhile() {
    if !etcd_available("etcd_down_then_back_watch_resumes_and_reports_leases_written_meanwhile") {
        return;
    }
    let mut srv = EtcdServer::start();
    let s = store(&srv).await;
    // Its subnet.env's subnet, so that the flannel node's 10.244.99.0/24
    // below never meets a random draw.
    let mut r = req(NET, [192, 0, 2, 1], Duration::from_secs(60));
    r.previous = "10.244.1.0/24".parse().ok();
    let a = s.acquire(&r).await.unwrap();
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;

    srv.stop();
    let down = Instant::now();
    // While etcd is down: requests fail naming the endpoint, the stream stays open.
    let e = s.renew(&a, Duration::from_secs(60)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Etcd(EtcdError::Unreachable { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains(&srv.endpoint()), "{e}");
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(down.elapsed())).await;
    match w.try_recv() {
        Err(mpsc::error::TryRecvError::Empty) => {}
        other => panic!("the stream must stay open and quiet while etcd is down: {other:?}"),
    }
    srv.resume();
    let back = Instant::now();
    // A flannel node registers while our watch is still reconnecting.
    let key = "/coreos.com/network/subnets/10.244.99.0-24";
    srv.put(key, &flannel_value("192.0.2.99", "02:00:00:00:00:99"));
    let want: Ipv4Net = "10.244.99.0/24".parse().unwrap();
    t.until(
        &mut w,
        Duration::from_secs(20),
        "the lease written meanwhile",
        |t, _| t.leases.contains_key(&want) && t.leases.contains_key(&a.subnet.unwrap()),
    )
    .await;
    eprintln!("watch caught up {:?} after etcd came back", back.elapsed());
    assert!(t.snapshots >= 2, "a reconnect re-lists");
    // Unary requests work again through the same store.
    s.renew(&a, Duration::from_secs(60)).await.unwrap();
    // And the watch is live again.
    srv.del(key);
    t.until(&mut w, Duration::from_secs(5), "the delete", |t, _| {
        !t.leases.contains_key(&want)
    })
    .await;
}

#[tokio::test]
async fn compaction_while_behind_resyncs_with_a_snapshot() {
    if !etcd_available("compaction_while_behind_resyncs_with_a_snapshot") {
        return;
    }
    let srv = EtcdServer::start();
    let p = "/coreos.com/network/subnets";
    srv.put(
        &format!("{p}/10.244.1.0-24"),
        &flannel_value("192.0.2.1", "02:00:00:00:00:01"),
    );
    srv.put(
        &format!("{p}/10.244.2.0-24"),
        &flannel_value("192.0.2.2", "02:00:00:00:00:02"),
    );
    let s = store(&srv).await;
    // The watch will start 2 s after its listing: etcd moves on and compacts meanwhile.
    s.set_watch_start_delay(Duration::from_secs(2));
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    srv.del(&format!("{p}/10.244.1.0-24"));
    srv.put(
        &format!("{p}/10.244.3.0-24"),
        &flannel_value("192.0.2.3", "02:00:00:00:00:03"),
    );
    srv.put(
        &format!("{p}/10.244.2.0-24"),
        &flannel_value("192.0.2.22", "02:00:00:00:00:22"),
    );
    srv.compact();
    s.set_watch_start_delay(Duration::ZERO);
    t.until(
        &mut w,
        Duration::from_secs(10),
        "a second snapshot",
        |t, _| t.snapshots == 2,
    )
    .await;
    let now = s.leases().await.unwrap();
    assert_eq!(t.leases.values().cloned().collect::<Vec<_>>(), now);
    assert_eq!(subnets_of(&now), vec!["10.244.2.0/24", "10.244.3.0/24"]);
    assert_eq!(
        t.leases[&"10.244.2.0/24".parse::<Ipv4Net>().unwrap()]
            .attrs
            .public_ip,
        Ipv4Addr::new(192, 0, 2, 22)
    );
    // Watching on after the re-list.
    srv.put(
        &format!("{p}/10.244.4.0-24"),
        &flannel_value("192.0.2.4", "02:00:00:00:00:04"),
    );
    t.until(&mut w, Duration::from_secs(5), "an upsert", |t, _| {
        t.leases.len() == 3
    })
    .await;
}

#[tokio::test]
async fn restore_from_an_earlier_snapshot_converges_to_what_etcd_holds() {
    if !etcd_available("restore_from_an_earlier_snapshot_converges_to_what_etcd_holds") {
        return;
    }
    capture_logs();
    let mut srv = EtcdServer::start();
    let p = "/coreos.com/network/subnets";
    srv.put(
        &format!("{p}/10.244.1.0-24"),
        &flannel_value("192.0.2.1", "02:00:00:00:00:01"),
    );
    srv.put(
        &format!("{p}/10.244.2.0-24"),
        &flannel_value("192.0.2.2", "02:00:00:00:00:02"),
    );
    let backup = srv.snapshot_save("backup.db");
    // Life goes on after the backup: leases come and go, revisions climb.
    for i in 0..20 {
        srv.put("/unrelated/churn", &i.to_string());
    }
    srv.del(&format!("{p}/10.244.1.0-24"));
    srv.put(
        &format!("{p}/10.244.3.0-24"),
        &flannel_value("192.0.2.3", "02:00:00:00:00:03"),
    );
    let s = store(&srv).await;
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    assert_eq!(t.subnets(), vec!["10.244.2.0/24", "10.244.3.0/24"]);
    let before = srv.revision();

    srv.restore(&backup);
    let after = srv.revision();
    assert!(
        after < before,
        "the restore must take the revision back ({before} -> {after})"
    );
    t.until(
        &mut w,
        Duration::from_secs(20),
        "the restored table",
        |t, _| t.subnets() == vec!["10.244.1.0/24", "10.244.2.0/24"],
    )
    .await;
    assert_eq!(
        t.leases.values().cloned().collect::<Vec<_>>(),
        s.leases().await.unwrap()
    );
    assert!(logs().contains("revision went backwards"), "{}", logs());
    // Watching on at the restored revisions.
    srv.put(
        &format!("{p}/10.244.5.0-24"),
        &flannel_value("192.0.2.5", "02:00:00:00:00:05"),
    );
    t.until(
        &mut w,
        Duration::from_secs(5),
        "an upsert after the restore",
        |t, _| t.leases.len() == 3,
    )
    .await;
}

#[tokio::test]
async fn unrenewed_lease_expires_and_is_removed() {
    if !etcd_available("unrenewed_lease_expires_and_is_removed") {
        return;
    }
    let srv = EtcdServer::start();
    let observer = store(&srv).await;
    let mut w = observer.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    // A node acquires with a short TTL, then dies without releasing.
    let dead = store(&srv).await;
    let l = dead
        .acquire(&req(NET, [192, 0, 2, 66], Duration::from_secs(3)))
        .await
        .unwrap();
    drop(dead);
    let sub = l.subnet.unwrap();
    t.until(&mut w, Duration::from_secs(5), "its upsert", |t, _| {
        t.leases.contains_key(&sub)
    })
    .await;
    let since = Instant::now();
    t.until(
        &mut w,
        Duration::from_secs(15),
        "its removal after the TTL",
        |_, e| e == Some(&WatchEvent::Remove(weft::lease::LeaseId::v4(sub))),
    )
    .await;
    let took = since.elapsed();
    eprintln!("expired lease removed {took:?} after its upsert (TTL 3 s)");
    assert!(
        took >= Duration::from_secs(1),
        "removed too early: {took:?}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("http://127.0.0.1:{port}");
    let mut st = EtcdSettings::new(vec![ep.clone()]);
    st.request_timeout = Duration::from_secs(1);
    let e = EtcdStore::connect(st).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Etcd(EtcdError::Unreachable { .. })),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(m.contains(&ep) && m.contains("--etcd-endpoints"), "{m}");
}

#[tokio::test]
async fn tls_right_certs_connect_wrong_ca_and_wrong_name_are_explained() {
    if !etcd_available("tls_right_certs_connect_wrong_ca_and_wrong_name_are_explained") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path(), "DNS:localhost");
    let srv = EtcdServer::start_tls(dir, tls.clone());
    srv.put("/coreos.com/network/config", NET);
    let good = |srv: &EtcdServer| {
        let mut s = settings(srv);
        s.cafile = Some(tls.ca.clone());
        s.certfile = Some(tls.client_cert.clone());
        s.keyfile = Some(tls.client_key.clone());
        s
    };
    let s = EtcdStore::connect(good(&srv))
        .await
        .expect("the right certificates connect");
    assert!(
        s.network_config()
            .await
            .unwrap()
            .unwrap()
            .contains("10.244.0.0/16")
    );
    let l = s
        .acquire(&req(NET, [192, 0, 2, 1], Duration::from_secs(60)))
        .await
        .unwrap();
    s.renew(&l, Duration::from_secs(60)).await.unwrap();

    // A CA that did not sign etcd's certificate.
    let mut wrong = good(&srv);
    wrong.cafile = Some(tls.wrong_ca.clone());
    let e = EtcdStore::connect(wrong).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Etcd(EtcdError::Tls { .. })),
        "{e:?}"
    );
    let m = e.to_string();
    eprintln!("wrong CA: {m}");
    assert!(
        m.contains(&srv.endpoint())
            && m.contains(&tls.wrong_ca.display().to_string())
            && m.contains("not signed by the CA")
            && m.contains("names [localhost]"),
        "{m}"
    );

    // By IP, which the certificate does not name (seeds 000 and 002's missing SAN).
    let mut by_ip = good(&srv);
    by_ip.endpoints = vec![format!("https://127.0.0.1:{}", srv.client_port)];
    let e = EtcdStore::connect(by_ip).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Etcd(EtcdError::Tls { .. })),
        "{e:?}"
    );
    let m = e.to_string();
    eprintln!("wrong name: {m}");
    assert!(
        m.contains("not valid for \"127.0.0.1\"")
            && m.contains("expected name 127.0.0.1")
            && m.contains("names [localhost]"),
        "{m}"
    );

    // No client certificate: etcd refuses it, the message names that.
    let mut anon = good(&srv);
    anon.certfile = None;
    anon.keyfile = None;
    let e = EtcdStore::connect(anon).await.unwrap_err().to_string();
    eprintln!("no client cert: {e}");
    assert!(e.contains(&srv.endpoint()) && e.contains("client"), "{e}");
}

#[tokio::test]
async fn username_and_password() {
    if !etcd_available("username_and_password") {
        return;
    }
    let mut srv = EtcdServer::start();
    srv.enable_auth("flannel", "flannelpw", "/coreos.com/network");
    srv.put("/coreos.com/network/config", NET);
    let mut st = settings(&srv);
    st.username = Some("flannel".into());
    st.password = Some("flannelpw".into());
    let s = EtcdStore::connect(st.clone())
        .await
        .expect("the right password connects");
    assert!(s.network_config().await.unwrap().is_some());
    let l = s
        .acquire(&req(NET, [192, 0, 2, 1], Duration::from_secs(60)))
        .await
        .unwrap();
    s.renew(&l, Duration::from_secs(60)).await.unwrap();
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    assert_eq!(t.leases.len(), 1);

    let mut bad = st.clone();
    bad.password = Some("wrong".into());
    let e = EtcdStore::connect(bad).await.unwrap_err().to_string();
    assert!(
        e.contains("authentication failed") && e.contains("--etcd-password"),
        "{e}"
    );

    // The user may not touch another prefix.
    let mut other = st.clone();
    other.prefix = "/kubernetes/network".into();
    let e = EtcdStore::connect(other).await.unwrap_err().to_string();
    assert!(
        e.contains("permission denied") && e.contains("/kubernetes/network/"),
        "{e}"
    );

    let mut anon = settings(&srv);
    anon.username = None;
    let e = EtcdStore::connect(anon).await.unwrap_err().to_string();
    assert!(e.contains("--etcd-username"), "{e}");
}

#[tokio::test]
async fn leader_loss_resyncs_when_a_leader_is_back() {
    if !etcd_available("leader_loss_resyncs_when_a_leader_is_back") {
        return;
    }
    capture_logs();
    let mut members = cluster(3);
    let p = "/coreos.com/network/subnets";
    members[0].put(
        &format!("{p}/10.244.1.0-24"),
        &flannel_value("192.0.2.1", "02:00:00:00:00:01"),
    );
    // The node talks to member 0 only; the other two go away: no quorum, no leader.
    let s = store(&members[0]).await;
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "a snapshot", |t, _| {
        t.snapshots == 1
    })
    .await;
    members[1].stop();
    members[2].stop();
    let lost = Instant::now();
    // etcd cancels require-leader watches after a few election timeouts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs().contains("no leader") {
        assert!(
            Instant::now() < deadline,
            "no 'no leader' in the logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("watch noticed the leader loss after {:?}", lost.elapsed());
    assert_eq!(
        t.leases.len(),
        1,
        "routes are kept while there is no leader"
    );
    members[1].spawn();
    members[2].spawn();
    members[1].wait_healthy();
    members[0].put(
        &format!("{p}/10.244.2.0-24"),
        &flannel_value("192.0.2.2", "02:00:00:00:00:02"),
    );
    t.until(
        &mut w,
        Duration::from_secs(20),
        "the table after the leader is back",
        |t, _| t.leases.len() == 2 && t.snapshots >= 2,
    )
    .await;
}

#[tokio::test]
async fn periodic_relist_sends_snapshots() {
    if !etcd_available("periodic_relist_sends_snapshots") {
        return;
    }
    let srv = EtcdServer::start();
    srv.put(
        "/coreos.com/network/subnets/10.244.1.0-24",
        &flannel_value("192.0.2.1", "02:00:00:00:00:01"),
    );
    let mut st = settings(&srv);
    st.relist_interval = Duration::from_secs(1);
    let s = EtcdStore::connect(st).await.unwrap();
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(&mut w, Duration::from_secs(5), "three snapshots", |t, _| {
        t.snapshots == 3
    })
    .await;
    assert_eq!(t.subnets(), vec!["10.244.1.0/24"]);
}

const NET6: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

/// A dual-stack request, as weftd makes it.
fn req6(net: &str, ip: [u8; 4], ttl: Duration) -> AcquireRequest {
    let ip6 = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip[3]));
    let mut r = req(net, ip, ttl);
    r.attrs = r
        .attrs
        .with_ipv6(ip6, Vni::new(1).unwrap(), VtepMac::derive(&ip6.octets()));
    r
}

fn value_of(srv: &EtcdServer, key: &str) -> String {
    srv.etcdctl(&["get", key, "--print-value-only"])
        .trim()
        .to_string()
}

fn keys_of(srv: &EtcdServer) -> Vec<String> {
    let out = srv.etcdctl(&[
        "get",
        "/coreos.com/network/subnets/",
        "--prefix",
        "--keys-only",
    ]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dual_stack_lease_key_json_renew_and_flannel_peers() {
    if !etcd_available("dual_stack_lease_key_json_renew_and_flannel_peers") {
        return;
    }
    capture_logs();
    let srv = EtcdServer::start();
    let s = store(&srv).await;
    let ttl = Duration::from_secs(60);
    // This node's subnet is the one its subnet.env would name, so that the
    // flannel peers put below (10.244.77–79) never meet a random draw.
    let mut r = req6(NET6, [192, 0, 2, 1], ttl);
    r.previous = "10.244.1.0/24".parse().ok();
    let a = s.acquire(&r).await.unwrap();
    assert_eq!(a.subnet, r.previous);
    let s6 = a.ipv6_subnet.expect("an IPv6 subnet");
    assert!("fc00::/48".parse::<ipnet::Ipv6Net>().unwrap().contains(&s6));
    assert_eq!(s6.prefix_len(), 64);
    // flannel's dual-stack key and value.
    let key = format!(
        "/coreos.com/network/subnets/{}-24&{}-64",
        a.subnet.unwrap().addr(),
        s6.addr()
    );
    assert_eq!(keys_of(&srv), vec![key.clone()]);
    let v = value_of(&srv, &key);
    let mac6 = VtepMac::derive(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert!(
        v.contains(r#""PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"vxlan""#)
            && v.contains(&format!(
                r#""BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}"#
            )),
        "{v}"
    );
    let attrs: LeaseAttrs = serde_json::from_str(&v).unwrap();
    assert_eq!(attrs, a.attrs);
    // Renew keeps the key.
    let r = s.renew(&a, Duration::from_secs(120)).await.unwrap();
    assert_eq!(r.key(), a.key());
    assert_eq!(keys_of(&srv), vec![key.clone()]);
    // A restart gets the same lease back, IPv6 subnet included.
    let again = store(&srv)
        .await
        .acquire(&req6(NET6, [192, 0, 2, 1], ttl))
        .await
        .unwrap();
    assert_eq!(again.key(), a.key());

    // A dual-stack lease written by flannel is seen with its IPv6 half.
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(
        &mut w,
        Duration::from_secs(5),
        "the first snapshot",
        |t, _| t.snapshots == 1,
    )
    .await;
    srv.put(
        "/coreos.com/network/subnets/10.244.77.0-24&fc00:0:0:77::-64",
        r#"{"PublicIP":"192.0.2.77","PublicIPv6":"fd00::77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}}"#,
    );
    let s77: Ipv4Net = "10.244.77.0/24".parse().unwrap();
    t.until(
        &mut w,
        Duration::from_secs(5),
        "flannel's dual-stack peer",
        |t, _| t.leases.contains_key(&s77),
    )
    .await;
    let p = &t.leases[&s77];
    assert_eq!(p.ipv6_subnet, Some("fc00:0:0:77::/64".parse().unwrap()));
    assert_eq!(p.attrs.public_ipv6, Some("fd00::77".parse().unwrap()));
    assert_eq!(
        p.attrs
            .vxlan_v6_data()
            .unwrap()
            .unwrap()
            .vtep_mac
            .to_string(),
        "8a:2e:0c:11:3d:4f"
    );
    // Its IPv6 half outside the IPv6Network, or without PublicIPv6: the IPv4 half stays.
    srv.put(
        "/coreos.com/network/subnets/10.244.78.0-24&fd99:0:0:78::-64",
        r#"{"PublicIP":"192.0.2.78","PublicIPv6":"fd00::78","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2c"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:50"}}"#,
    );
    srv.put(
        "/coreos.com/network/subnets/10.244.79.0-24&fc00:0:0:79::-64",
        r#"{"PublicIP":"192.0.2.79","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2d"},"BackendV6Data":null}"#,
    );
    let (s78, s79): (Ipv4Net, Ipv4Net) = (
        "10.244.78.0/24".parse().unwrap(),
        "10.244.79.0/24".parse().unwrap(),
    );
    t.until(&mut w, Duration::from_secs(5), "the IPv4 halves", |t, _| {
        t.leases.contains_key(&s78) && t.leases.contains_key(&s79)
    })
    .await;
    // The store reports them as stored; the reconciler routes their IPv4
    // halves alone and says why.
    let (routed, routed6, why) = t.routed(NET6);
    for s in [s78, s79] {
        assert!(routed.contains(&s.to_string()), "{s}: {routed:?}");
    }
    assert!(
        !routed6
            .iter()
            .any(|s| s.contains(":78:") || s.contains(":79:")),
        "{routed6:?}"
    );
    assert!(
        why.iter().any(
            |w| w.starts_with("10.244.78.0/24: its IPv6 half is not routed")
                && w.contains("outside the IPv6Network fc00::/48")
        ) && why.iter().any(
            |w| w.starts_with("10.244.79.0/24: its IPv6 half is not routed")
                && w.contains("no PublicIPv6")
        ),
        "{why:?}"
    );
    s.release(&a).await.unwrap();
    assert!(!keys_of(&srv).contains(&key));
}

#[tokio::test]
async fn an_ipv4_only_own_lease_gets_an_ipv6_subnet_when_the_network_turns_dual_stack() {
    if !etcd_available(
        "an_ipv4_only_own_lease_gets_an_ipv6_subnet_when_the_network_turns_dual_stack",
    ) {
        return;
    }
    let srv = EtcdServer::start();
    let ttl = Duration::from_secs(60);
    let a = store(&srv)
        .await
        .acquire(&req(NET, [192, 0, 2, 1], ttl))
        .await
        .unwrap();
    let old = format!(
        "/coreos.com/network/subnets/{}-24",
        a.subnet.unwrap().addr()
    );
    assert_eq!(keys_of(&srv), vec![old.clone()]);
    let v = value_of(&srv, &old);
    assert!(
        v.contains(r#""PublicIPv6":null"#) && !v.contains("BackendV6Data"),
        "{v}"
    );
    // A peer's lease, to see that the watch shows a move, not a loss.
    let s = store(&srv).await;
    let mut w = s.watch().await.unwrap();
    let mut t = Table::default();
    t.until(
        &mut w,
        Duration::from_secs(5),
        "the first snapshot",
        |t, _| t.snapshots == 1,
    )
    .await;
    let mut r6 = req6(NET6, [192, 0, 2, 1], ttl);
    r6.previous6 = Some("fc00:0:0:42::/64".parse().unwrap());
    let b = s.acquire(&r6).await.unwrap();
    assert_eq!(b.subnet, a.subnet, "the IPv4 subnet is kept");
    assert_eq!(b.ipv6_subnet, Some("fc00:0:0:42::/64".parse().unwrap()));
    let new = format!(
        "/coreos.com/network/subnets/{}-24&fc00:0:0:42::-64",
        a.subnet.unwrap().addr()
    );
    assert_eq!(keys_of(&srv), vec![new.clone()]);
    let sub = a.subnet.unwrap();
    t.until(&mut w, Duration::from_secs(5), "the moved lease", |_, e| {
        matches!(e, Some(WatchEvent::Upsert(l)) if l.subnet == Some(sub) && l.ipv6_subnet.is_some())
    })
    .await;
    assert!(t.leases.contains_key(&sub));
    // The lease key carries the etcd lease of the TTL.
    let v: serde_json::Value =
        serde_json::from_str(&srv.etcdctl(&["get", &new, "-w", "json"])).unwrap();
    assert_ne!(v["kvs"][0]["lease"].as_i64().unwrap_or(0), 0);
    // Renewing the new lease works; back to IPv4 only moves it back.
    s.renew(&b, ttl).await.unwrap();
    let c = s.acquire(&req(NET, [192, 0, 2, 1], ttl)).await.unwrap();
    assert_eq!((c.subnet, c.ipv6_subnet), (a.subnet, None));
    assert_eq!(keys_of(&srv), vec![old]);
}

#[tokio::test]
async fn two_nodes_never_get_the_same_ipv6_subnet() {
    if !etcd_available("two_nodes_never_get_the_same_ipv6_subnet") {
        return;
    }
    capture_logs();
    let srv = EtcdServer::start();
    // Three IPv6 subnets, one held by a flannel node: two left for three racers.
    let net = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:3::","Backend":{"Type":"vxlan"}}"#;
    srv.put(
        "/coreos.com/network/subnets/10.244.9.0-24&fc00:0:0:2::-64",
        r#"{"PublicIP":"192.0.2.9","PublicIPv6":"fd00::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}}"#,
    );
    let mut tasks = vec![];
    for i in 0..3u8 {
        let st = store(&srv).await;
        let mut r = req6(net, [192, 0, 2, 10 + i], Duration::from_secs(60));
        // Every racer asks for the same IPv6 subnet first.
        r.previous6 = Some("fc00:0:0:1::/64".parse().unwrap());
        tasks.push(tokio::spawn(async move { st.acquire(&r).await }));
    }
    let mut got = vec![];
    let mut refused = vec![];
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => got.push(l.ipv6_subnet.unwrap().to_string()),
            Err(e) => refused.push(e.to_string()),
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec!["fc00:0:0:1::/64", "fc00:0:0:3::/64"],
        "{refused:?}"
    );
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("no free IPv6 subnet"), "{refused:?}");
    // What etcd holds agrees: every IPv6 subnet once.
    let mut v6: Vec<String> = keys_of(&srv)
        .iter()
        .filter_map(|k| k.split_once('&').map(|(_, s)| s.to_string()))
        .collect();
    v6.sort();
    let n = v6.len();
    v6.dedup();
    assert_eq!((n, v6.len()), (3, 3), "{v6:?}");
}
