//! weftd on a real etcd, end to end: etcd runs in the underlay namespace on the
//! bridge address (192.0.2.254), every node reaches it over its `eth0`, and the
//! leases are in flannel's layout so `etcdctl` reads and writes them as an
//! operator would. The fault tests keep a UDP stream running between two nodes
//! and print the loss each one measured (docs/etcd.md lists them).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft::lease::{Lease, LeaseAttrs, parse_subnet_key};
use weft::netns::{self, UNDERLAY_GW};

use crate::etcd_support::{EtcdServer, etcd_available};
use crate::harness::{Cluster, KernelNode, Node, Opts, require_root, wait_until};

const PREFIX: &str = "/coreos.com/network";
/// The nodes lease from 10.244.1.0 to 10.244.240.0: the subnets above are
/// the tests' own, for the leases they write by hand (a random choice once
/// took 10.244.251.0/24, which a test then wrote over as another node's).
const NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.240.0","Backend":{"Type":"vxlan"}}"#;

fn runnable(test: &str) -> bool {
    require_root(test) && etcd_available(test)
}

/// A cluster of `nodes` namespaces with etcd in the underlay namespace holding
/// the network config; starts weftd on the first `start` nodes (in etcd mode)
/// and waits until they see each other.
fn etcd_cluster(
    name: &str,
    nodes: usize,
    start: usize,
    ttl: &'static str,
) -> (Cluster, EtcdServer) {
    let mut c = Cluster::build(
        name,
        &Opts {
            nodes,
            ttl,
            ..Opts::default()
        },
    );
    let etcd = EtcdServer::start_in_netns(c.underlay_ns(), UNDERLAY_GW);
    etcd.put(&format!("{PREFIX}/config"), NET_CONF);
    c.etcd = Some(etcd.endpoint());
    for i in 0..start {
        c.start(i);
    }
    if start > 0 {
        c.wait_peers(start - 1);
    }
    (c, etcd)
}

/// Dual-stack on a real etcd: each node's key is flannel's
/// `10.244.X.0-24&fc00:0:0:Y::-64` with PublicIPv6 and BackendV6Data in the
/// value, the nodes reach each other over IPv6, and a restarted node comes
/// back on the same two subnets (its subnet.env's, then its own lease's).
#[test]
fn etcd_dual_stack_leases_and_a_restart() {
    if !runnable("etcd_dual_stack_leases_and_a_restart") {
        return;
    }
    let mut c = Cluster::build(
        "etcd6",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let etcd = EtcdServer::start_in_netns(c.underlay_ns(), UNDERLAY_GW);
    etcd.put(&format!("{PREFIX}/config"), crate::dualstack::DUAL_STACK);
    c.etcd = Some(etcd.endpoint());
    c.start(0);
    c.start(1);
    c.wait_peers(1);
    let leases = etcd_leases(&etcd);
    assert_eq!(leases.len(), 2);
    let keys = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("{PREFIX}/subnets/"),
    ]);
    for (l, n) in leases.iter().map(|l| {
        (
            l,
            c.nodes
                .iter()
                .find(|n| Some(n.subnet()) == l.subnet)
                .unwrap(),
        )
    }) {
        assert_eq!(l.ipv6_subnet, Some(n.subnet6()), "{keys}");
        assert!(
            keys.contains(&format!(
                "{}&{}-64",
                weft::lease::subnet_key(&n.subnet()),
                n.subnet6().addr()
            )),
            "{keys}"
        );
        assert!(l.attrs.public_ipv6.is_some() && l.attrs.vxlan_v6_data().unwrap().is_some());
    }
    assert!(c.nodes[0].ping6(c.nodes[1].addr6()));
    assert!(c.nodes[1].ping6(c.nodes[0].addr6()));
    let (s4, s6) = (c.nodes[0].subnet(), c.nodes[0].subnet6());
    c.nodes[0].stop();
    c.start(0);
    c.wait_peers(1);
    assert_eq!((c.nodes[0].subnet(), c.nodes[0].subnet6()), (s4, s6));
    assert_eq!(etcd_leases(&etcd).len(), 2, "the restart reuses its key");
    assert!(wait_until(5, || c.nodes[1].ping6(c.nodes[0].addr6())));
}

/// IPv6-only on a real etcd that the nodes reach over the IPv6 underlay
/// (`http://[2001:db8::fe]:PORT`; the nodes have no IPv4 address): each
/// node's key is flannel's `0.0.0.0-0&fc00:0:0:Y::-64`, its value has
/// `PublicIP` 0.0.0.0, no `BackendData`, PublicIPv6 and BackendV6Data; a
/// restarted node comes back on its subnet under the same key, and a lease
/// deleted with etcdctl is routed no more.
#[test]
fn etcd_ipv6_only_leases_and_a_restart() {
    if !runnable("etcd_ipv6_only_leases_and_a_restart") {
        return;
    }
    let mut c = crate::ipv6only::ipv6_only_nodes("etcd6o", 2);
    let etcd = EtcdServer::start_in_netns6(c.underlay_ns(), netns::UNDERLAY6_GW);
    etcd.put(&format!("{PREFIX}/config"), crate::ipv6only::IPV6_ONLY);
    c.etcd = Some(etcd.endpoint());
    c.start(0);
    c.start(1);
    c.wait_peers(1);
    let sub = format!("{PREFIX}/subnets/");
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", &sub]);
    for n in &c.nodes {
        let key = format!("{sub}0.0.0.0-0&{}-64", n.subnet6().addr());
        assert!(keys.contains(&key), "{key} in {keys}");
        let value = etcd.etcdctl(&["get", "--print-value-only", &key]);
        let v: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
        assert_eq!(v["PublicIP"], "0.0.0.0", "{value}");
        assert!(
            v.get("BackendData").is_none(),
            "no BackendData, as flanneld: {value}"
        );
        assert!(
            v["PublicIPv6"]
                .as_str()
                .is_some_and(|a| a.starts_with("2001:db8::")),
            "{value}"
        );
        assert!(v["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
    }
    assert!(c.nodes[0].ping6(c.nodes[1].addr6()));
    assert!(c.nodes[1].ping6(c.nodes[0].addr6()));
    let s6 = c.nodes[0].subnet6();
    c.nodes[0].stop();
    c.start(0);
    c.wait_peers(1);
    assert_eq!(c.nodes[0].subnet6(), s6);
    assert_eq!(etcd_leases(&etcd).len(), 2, "the restart reuses its key");
    assert!(wait_until(5, || c.nodes[1].ping6(c.nodes[0].addr6())));
    // An operator deletes node 1's lease: node 0 drops its route.
    let key1 = format!("{sub}0.0.0.0-0&{}-64", c.nodes[1].subnet6().addr());
    c.nodes[1].stop();
    etcd.etcdctl(&["del", &key1]);
    c.wait_peers(0);
    assert!(!c.nodes[0].ping6(c.nodes[1].addr6()));
    c.nodes[0].assert_nothing_wrong();
}

/// The subnets etcd holds leases for now (`etcdctl get --prefix --keys-only`).
fn etcd_subnets(etcd: &EtcdServer) -> BTreeSet<Ipv4Net> {
    let sub = format!("{PREFIX}/subnets/");
    etcd.etcdctl(&["get", "--prefix", "--keys-only", &sub])
        .lines()
        .filter_map(|k| k.strip_prefix(&sub))
        .filter_map(|k| parse_subnet_key(k).ok())
        .filter_map(|id| id.v4)
        .collect()
}

/// Every lease in etcd, read back as a flannel node would (`etcdctl get --prefix`).
fn etcd_leases(etcd: &EtcdServer) -> Vec<Lease> {
    let sub = format!("{PREFIX}/subnets/");
    let out = etcd.etcdctl(&["get", "--prefix", &sub]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            let key = kv[0].strip_prefix(&sub).expect("a lease key");
            let attrs: LeaseAttrs = serde_json::from_str(kv[1])
                .unwrap_or_else(|e| panic!("{}: not flannel's lease JSON: {e}", kv[1]));
            Lease {
                subnet: parse_subnet_key(key).unwrap().v4,
                ipv6_subnet: parse_subnet_key(key).unwrap().v6,
                attrs,
                expiration: None,
            }
        })
        .collect()
}

/// flannel's lease value, written by hand.
fn flannel_value(public_ip: Ipv4Addr, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Waits until every running node's `weft_peers` is `want`; the slowest time.
fn converge(c: &mut Cluster, want: usize, secs: u64) -> Duration {
    let t = Instant::now();
    for n in c.nodes.iter_mut() {
        if !n.running() {
            continue;
        }
        let ok = wait_until(secs, || n.metric("weft_peers") == want as f64);
        assert!(
            ok,
            "{} has {} peers after {secs} s, want {want}:\n{}",
            n.ns,
            n.metric("weft_peers"),
            n.log()
        );
    }
    t.elapsed()
}

/// A UDP sequence stream from one node's `.0` to another's, a datagram every
/// 10 ms, counting what arrives.
struct Flow {
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sender: JoinHandle<u64>,
    receiver: JoinHandle<(BTreeSet<u64>, Duration)>,
}

/// What a [`Flow`] measured.
#[derive(Debug)]
struct Loss {
    sent: u64,
    lost: u64,
    /// The longest time between two datagrams arriving.
    longest_gap: Duration,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} datagrams lost ({:.2} %), longest gap {} ms",
            self.lost,
            self.sent,
            self.lost as f64 * 100.0 / self.sent.max(1) as f64,
            self.longest_gap.as_millis()
        )
    }
}

const FLOW_INTERVAL: Duration = Duration::from_millis(10);

impl Flow {
    fn start(from: &Node, to: &Node, port: u16) -> Flow {
        let (src, dst) = (from.addr(), to.addr());
        let stop_send = Arc::new(AtomicBool::new(false));
        let stop_recv = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receiver = {
            let (ns, stop) = (to.ns.clone(), stop_recv.clone());
            std::thread::spawn(move || {
                netns::in_netns(&ns, || {
                    let s = UdpSocket::bind((dst, port)).expect("bind the flow's receiver");
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    ready_tx.send(()).unwrap();
                    let mut got = BTreeSet::new();
                    let mut last: Option<Instant> = None;
                    let mut gap = Duration::ZERO;
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((8, _)) = s.recv_from(&mut buf) {
                            got.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                            let now = Instant::now();
                            if let Some(l) = last {
                                gap = gap.max(now - l);
                            }
                            last = Some(now);
                        }
                    }
                    (got, gap)
                })
                .unwrap()
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("flow receiver ready");
        let sender = {
            let (ns, stop) = (from.ns.clone(), stop_send.clone());
            std::thread::spawn(move || {
                netns::in_netns(&ns, || {
                    let s = UdpSocket::bind((src, 0)).expect("bind the flow's sender");
                    let mut seq = 0u64;
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let _ = s.send_to(&seq.to_be_bytes(), SocketAddrV4::new(dst, port));
                        seq += 1;
                        // Paced by the clock, so a slow loop does not thin the stream.
                        let next = start + FLOW_INTERVAL * seq as u32;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    seq
                })
                .unwrap()
            })
        };
        Flow {
            stop_send,
            stop_recv,
            sender,
            receiver,
        }
    }

    /// Stops the flow and counts, after a grace period for datagrams in flight.
    fn stop(self) -> Loss {
        self.stop_send.store(true, Ordering::Relaxed);
        let sent = self.sender.join().expect("flow sender");
        std::thread::sleep(Duration::from_millis(300));
        self.stop_recv.store(true, Ordering::Relaxed);
        let (got, longest_gap) = self.receiver.join().expect("flow receiver");
        let received = got.range(..sent).count() as u64;
        Loss {
            sent,
            lost: sent - received,
            longest_gap,
        }
    }
}

/// Three weft nodes over one etcd: every `.0` reaches every other, both ways,
/// and etcd holds one lease per node in flannel's format.
#[test]
fn etcd_three_nodes_reach_each_other() {
    if !runnable("etcd_three_nodes_reach_each_other") {
        return;
    }
    let (c, etcd) = etcd_cluster("e3", 3, 3, "60s");
    for a in &c.nodes {
        for b in &c.nodes {
            if a.ns != b.ns {
                assert!(
                    a.ping(b.addr()),
                    "{} cannot reach {} ({})",
                    a.ns,
                    b.ns,
                    b.addr()
                );
            }
        }
        assert!(
            a.log().contains("lease acquired:")
                && a.log().contains("store etcd http://192.0.2.254"),
            "{}: {}",
            a.ns,
            a.log()
        );
    }
    let want: BTreeSet<Ipv4Net> = c.nodes.iter().map(|n| n.subnet()).collect();
    assert_eq!(etcd_subnets(&etcd), want, "one lease per node in etcd");
    for l in etcd_leases(&etcd) {
        let n = c
            .nodes
            .iter()
            .find(|n| Some(n.subnet()) == l.subnet)
            .unwrap();
        assert_eq!(l.attrs.public_ip, n.ip, "{}: PublicIP", l.id());
        assert_eq!(l.attrs.vxlan_data().unwrap().vni, 1);
    }
}

/// A kernel VXLAN node (configured as flannel does) published by hand with
/// `etcdctl put` on an etcd lease: weft nodes route to it, and it routes to
/// them from the leases it reads back with `etcdctl get --prefix`.
#[test]
fn etcd_kernel_vxlan_node_written_with_etcdctl() {
    if !runnable("etcd_kernel_vxlan_node_written_with_etcdctl") {
        return;
    }
    let (mut c, etcd) = etcd_cluster("ekvx", 2, 0, "60s");
    let k = KernelNode::configure(c.add_bare_node(), "10.244.250.0/24".parse().unwrap());
    let granted = etcd.etcdctl(&["lease", "grant", "600"]);
    // "lease 694d7b2d5c6d2c0b granted with TTL(600s)"
    let id = granted.split_whitespace().nth(1).expect("a lease id");
    etcd.etcdctl(&[
        "put",
        &format!("--lease={id}"),
        &lease_key("10.244.250.0/24"),
        &flannel_value(k.ip, &k.mac.to_string()),
    ]);
    for i in 0..2 {
        c.start(i);
    }
    c.wait_peers(2);
    let leases = etcd_leases(&etcd);
    assert_eq!(leases.len(), 3, "{leases:?}");
    for l in leases.iter().filter(|l| l.subnet != Some(k.subnet)) {
        k.add_peer(l);
    }
    for n in &c.nodes {
        assert!(
            n.log()
                .contains("peer added: 10.244.250.0/24 via 192.0.2.3"),
            "{}: {}",
            n.ns,
            n.log()
        );
    }
    k.assert_interop(&c.nodes, 5102, 4 << 20);
    // The operator takes the kernel node out: its etcd lease is revoked, the key
    // goes with it, and every weft node drops the route.
    etcd.etcdctl(&["lease", "revoke", id]);
    converge(&mut c, 1, 10);
    for n in &c.nodes {
        assert!(
            n.log().contains("peer removed: 10.244.250.0/24"),
            "{}",
            n.log()
        );
        assert!(!n.ping(k.subnet.network()));
    }
}

/// etcd down for 20 s: traffic between nodes keeps flowing, weftd stays up
/// (same PIDs), and once etcd is back every node re-lists and picks up a node
/// that joined right after the outage.
#[test]
fn etcd_outage_20s_traffic_flows_nodes_reconnect() {
    if !runnable("etcd_outage_20s_traffic_flows_nodes_reconnect") {
        return;
    }
    let (mut c, mut etcd) = etcd_cluster("eout", 4, 3, "60s");
    let pids: Vec<_> = c.nodes[..3].iter().map(|n| n.pid().unwrap()).collect();
    let flow = Flow::start(&c.nodes[0], &c.nodes[1], 7001);
    std::thread::sleep(Duration::from_millis(500));
    etcd.stop();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(20) {
        for n in &mut c.nodes[..3] {
            assert!(
                n.running(),
                "{} exited while etcd was down:\n{}",
                n.ns,
                n.log()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        c.nodes[2].ping(c.nodes[0].addr()),
        "established routes must survive the outage"
    );
    etcd.resume();
    let back = Instant::now();
    // A node that joins right after the outage: the others learn of it only
    // through their reconnected watches.
    c.start(3);
    let seen = converge(&mut c, 3, 20);
    let loss = flow.stop();
    eprintln!(
        "etcd outage 20 s: {loss}; every node saw the new node {:.1} s after etcd returned",
        (back.elapsed().max(seen)).as_secs_f64()
    );
    for (n, pid) in c.nodes[..3].iter().zip(&pids) {
        assert_eq!(n.pid(), Some(*pid), "{} was restarted", n.ns);
        let log = n.log();
        assert!(
            log.contains("retrying with backoff, routes are kept meanwhile")
                && log.contains("reachable again"),
            "{} did not report the outage and the reconnect:\n{log}",
            n.ns
        );
        assert!(
            log.contains(&format!("peer added: {}", c.nodes[3].subnet())),
            "{log}"
        );
        assert!(
            n.ping(c.nodes[3].addr()),
            "{} cannot reach the new node",
            n.ns
        );
    }
    assert!(c.nodes[3].ping(c.nodes[0].addr()));
    assert!(
        loss.lost <= 5,
        "traffic between established nodes lost more than a few datagrams: {loss}"
    );
}

/// Writes `value` to `key` `n` times (each write is a revision and a watch
/// event), 32 writes in flight at once, from the etcd server's namespace.
fn rewrite_many(etcd: &EtcdServer, key: &str, value: &str, n: usize) {
    use futures::StreamExt;
    let ns = etcd.netns.clone().expect("etcd in a namespace");
    let ep = etcd.endpoint();
    netns::in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = etcd_client::Client::connect([ep], None)
                .await
                .expect("connect to etcd");
            futures::stream::iter(0..n)
                .map(|_| {
                    let mut c = client.clone();
                    async move { c.put(key, value, None).await.expect("put") }
                })
                .buffer_unordered(32)
                .count()
                .await
        })
    })
    .unwrap();
}

/// A node whose watch falls behind (weftd stopped with SIGSTOP while thousands
/// of lease writes pile up, then the history is compacted) re-lists when it
/// runs again and converges to what etcd holds.
#[test]
fn etcd_compaction_while_a_watch_is_behind() {
    if !runnable("etcd_compaction_while_a_watch_is_behind") {
        return;
    }
    let (mut c, etcd) = etcd_cluster("ecmp", 3, 3, "60s");
    let gone = "10.244.251.0/24";
    let new = "10.244.252.0/24";
    etcd.put(
        &lease_key(gone),
        &flannel_value(Ipv4Addr::new(192, 0, 2, 51), "02:00:00:00:00:51"),
    );
    converge(&mut c, 3, 10);
    let flow = Flow::start(&c.nodes[0], &c.nodes[1], 7002);
    let pid = nix::unistd::Pid::from_raw(c.nodes[2].pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    etcd.del(&lease_key(gone));
    // Enough bytes of events to fill the stopped node's HTTP/2 windows (2 MiB
    // per stream, 5 MiB per connection), both ends' TCP buffers (several MiB
    // each, autotuned) and etcd's send buffer (128 responses): etcd then parks
    // the watcher as a slow one, to catch up later from a revision that the
    // compaction removes. 16 MiB was at the edge of that (the test missed its
    // precondition one run in three); 48 MiB is well past it.
    // The value is a valid lease (unknown fields are ignored, as flannel does)
    // and the same each time, so running nodes see no change.
    let padded = format!(
        r#"{{"PublicIP":"192.0.2.52","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:52","Padding":"{}"}}}}"#,
        "x".repeat(16 << 10)
    );
    rewrite_many(&etcd, &lease_key(new), &padded, 3000);
    let compacted = etcd.compact();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let t = Instant::now();
    let want = etcd_subnets(&etcd);
    assert_eq!(want.len(), 4, "{want:?}");
    let n2 = &c.nodes[2];
    assert!(
        wait_until(20, || n2.log().contains("peer removed: 10.244.251.0/24")
            && n2.log().contains("peer added: 10.244.252.0/24")
            && n2.metric("weft_peers") == (want.len() - 1) as f64),
        "the node did not converge to etcd's {want:?} (compacted at {compacted}):\n{}",
        n2.log()
    );
    let took = t.elapsed();
    let loss = flow.stop();
    eprintln!(
        "compaction while a watch is behind: {loss}; the stopped node converged {:.1} s after SIGCONT",
        took.as_secs_f64()
    );
    assert!(
        n2.log().contains("fell behind a compaction"),
        "the node never saw the compaction, so this test did not test it:\n{}",
        n2.log()
    );
    converge(&mut c, 3, 5);
    assert!(loss.lost <= 5, "{loss}");
}

/// etcd restored from a snapshot taken before a kernel-VXLAN node joined: its
/// revision goes back, and every weft node replaces its table with what etcd
/// holds now, so the route to the node that etcd no longer knows goes.
#[test]
fn etcd_restored_from_an_earlier_snapshot() {
    if !runnable("etcd_restored_from_an_earlier_snapshot") {
        return;
    }
    let (mut c, mut etcd) = etcd_cluster("erst", 3, 3, "60s");
    let snap = etcd.snapshot_save("before.db");
    let rev_snap = etcd.revision();
    // A subnet no weft node drew (they draw at random): writing over one's
    // lease would be another test.
    let held = etcd_subnets(&etcd);
    let ks = (250..=255u8)
        .map(|i| Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).unwrap())
        .find(|s| !held.contains(s))
        .unwrap();
    let k = KernelNode::configure(c.add_bare_node(), ks);
    etcd.put(
        &lease_key(&ks.to_string()),
        &flannel_value(k.ip, &k.mac.to_string()),
    );
    converge(&mut c, 3, 10);
    for l in etcd_leases(&etcd)
        .iter()
        .filter(|l| l.subnet != Some(k.subnet))
    {
        k.add_peer(l);
    }
    for n in &c.nodes {
        assert!(
            n.ping(k.subnet.network()),
            "{} cannot reach the kernel node",
            n.ns
        );
    }
    let rev_before = etcd.revision();
    let flow = Flow::start(&c.nodes[0], &c.nodes[1], 7003);
    etcd.restore(&snap);
    let t = Instant::now();
    let rev_after = etcd.revision();
    assert!(
        rev_after < rev_before,
        "the restore must take the revision back ({rev_before} → {rev_after})"
    );
    assert!(!etcd_subnets(&etcd).contains(&k.subnet));
    let took = converge(&mut c, 2, 20);
    let loss = flow.stop();
    eprintln!(
        "etcd restored from a snapshot (revision {rev_before} → {rev_after}, snapshot at {rev_snap}): {loss}; every node dropped the vanished lease {:.1} s after etcd was back",
        t.elapsed().max(took).as_secs_f64()
    );
    for n in &c.nodes {
        let log = n.log();
        assert!(
            log.contains("revision went backwards") && log.contains(&format!("peer removed: {ks}")),
            "{}:\n{log}",
            n.ns
        );
        assert!(
            !n.ping(k.subnet.network()),
            "{} still routes to the lease that vanished",
            n.ns
        );
    }
    // `weftd doctor` and `weftd status` say so afterwards.
    let (_, report) = c.doctor(0, &[]);
    let l = report
        .lines()
        .find(|l| l.starts_with("– etcd revision"))
        .unwrap_or_else(|| panic!("no etcd revision line in:\n{report}"));
    eprintln!("{l}");
    assert!(
        l.contains("went back from")
            && l.contains("older backup")
            && l.contains("etcdctl get --prefix"),
        "{l}"
    );
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.nodes[0].ns,
            &crate::harness::weftd_bin(),
            "status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the revision went BACK from"), "{text}");
    for a in &c.nodes {
        for b in &c.nodes {
            if a.ns != b.ns {
                assert!(a.ping(b.addr()), "{} cannot reach {}", a.ns, b.ns);
            }
        }
    }
    assert!(loss.lost <= 5, "{loss}");
}

/// A node killed with SIGKILL releases nothing; its etcd lease runs out after
/// the TTL (5 s here), etcd deletes the key, and the others drop its route
/// while their own traffic keeps flowing.
#[test]
fn etcd_killed_node_expires_after_its_ttl() {
    if !runnable("etcd_killed_node_expires_after_its_ttl") {
        return;
    }
    let (mut c, etcd) = etcd_cluster("ekill", 3, 3, "5s");
    // Renewals keep every live lease across several TTLs.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        etcd_subnets(&etcd).len(),
        3,
        "renewed leases must not expire"
    );
    converge(&mut c, 2, 1);
    let dead = c.nodes[2].subnet();
    let dead_addr = c.nodes[2].addr();
    let flow = Flow::start(&c.nodes[0], &c.nodes[1], 7004);
    c.nodes[2].kill();
    let t = Instant::now();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    assert!(
        wait_until(12, || n0.metric("weft_peers") == 1.0
            && n1.metric("weft_peers") == 1.0),
        "the dead node's route is still there 12 s after the kill (TTL 5 s)"
    );
    let took = t.elapsed();
    let loss = flow.stop();
    eprintln!(
        "node killed (TTL 5 s): its route went {:.1} s after the kill; between the live nodes {loss}",
        took.as_secs_f64()
    );
    // The last renewal was at most ttl/3 (plus its own duration) before the kill.
    assert!(
        took >= Duration::from_millis(2500),
        "removed before its TTL ran out: {took:?}"
    );
    assert!(
        !etcd_subnets(&etcd).contains(&dead),
        "etcd still holds {dead}"
    );
    for n in [n0, n1] {
        assert!(
            n.log().contains(&format!("peer removed: {dead}")),
            "{}",
            n.log()
        );
        assert!(!n.ping(dead_addr));
    }
    assert!(n0.ping(n1.addr()), "the live peer is still reachable");
    assert!(loss.lost <= 5, "{loss}");
}

/// etcd with client-certificate auth: weftd connects with the right CA,
/// certificate and key; with a CA that did not sign etcd's certificate it
/// exits non-zero, naming the endpoint and the CA file.
#[test]
fn etcd_tls_client_certs_and_a_wrong_ca() {
    if !runnable("etcd_tls_client_certs_and_a_wrong_ca") {
        return;
    }
    let mut c = Cluster::build(
        "etls",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let tls = crate::etcd_support::TlsFiles::generate(dir.path(), "IP:192.0.2.254");
    let etcd = EtcdServer::start_tls_in_netns(dir, tls.clone(), c.underlay_ns(), UNDERLAY_GW);
    etcd.put(&format!("{PREFIX}/config"), NET_CONF);
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://192.0.2.254:"), "{ep}");
    c.etcd = Some(ep.clone());
    let flags = |ca: &std::path::Path| -> Vec<String> {
        vec![
            "--etcd-cafile".into(),
            ca.display().to_string(),
            "--etcd-certfile".into(),
            tls.client_cert.display().to_string(),
            "--etcd-keyfile".into(),
            tls.client_key.display().to_string(),
        ]
    };
    for i in 0..2 {
        c.nodes[i].extra = flags(&tls.ca);
        c.start(i);
    }
    c.wait_peers(1);
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    assert!(c.nodes[1].ping(c.nodes[0].addr()));
    assert_eq!(etcd_subnets(&etcd).len(), 2);

    c.nodes[1].stop();
    c.nodes[1].extra = flags(&tls.wrong_ca);
    let out = c
        .command(1)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("weftd runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weftd accepted a wrong CA:\n{err}");
    assert!(
        err.contains(&ep) && err.contains(&tls.wrong_ca.display().to_string()),
        "the error must name the endpoint {ep} and the CA file:\n{err}"
    );
    eprintln!("wrong CA: {}", err.trim());
}

/// An operator deletes a running node's lease key (`etcdctl del`; a restore
/// from a backup older than the node does the same). With flannel's long TTL
/// the next renewal is far off, so the node must not wait for it: it notices
/// through its watch, acquires the same subnet again at once, and the others
/// route to it again.
#[test]
fn etcd_deleted_lease_key_is_reacquired_at_once() {
    if !runnable("etcd_deleted_lease_key_is_reacquired_at_once") {
        return;
    }
    // Renewal every 200 s: only the watch can bring the key back in time.
    let (mut c, etcd) = etcd_cluster("edel", 3, 3, "10m");
    let own = c.nodes[0].subnet();
    let flow = Flow::start(&c.nodes[1], &c.nodes[0], 7005);
    std::thread::sleep(Duration::from_millis(300));
    etcd.del(&lease_key(&own.to_string()));
    let t = Instant::now();
    let n0 = &c.nodes[0];
    assert!(
        wait_until(10, || etcd_subnets(&etcd).contains(&own)),
        "the deleted key of {own} is still gone 10 s later:\n{}",
        n0.log()
    );
    let back = t.elapsed();
    converge(&mut c, 2, 10);
    let loss = flow.stop();
    eprintln!(
        "lease key deleted by an operator: back in etcd {:.1} s later; {loss}",
        back.as_secs_f64()
    );
    let n0 = &c.nodes[0];
    assert_eq!(n0.subnet(), own, "the node kept its subnet");
    assert!(
        n0.log()
            .contains(&format!("lease for {own} acquired again")),
        "{}",
        n0.log()
    );
    assert!(c.nodes[1].ping(own.network()) && c.nodes[2].ping(own.network()));
}

/// etcd does not answer when weftd starts (a node booting before its etcd):
/// weftd says so, retries with backoff, and comes up once etcd does.
#[test]
fn etcd_down_at_boot_is_waited_for() {
    if !runnable("etcd_down_at_boot_is_waited_for") {
        return;
    }
    let (mut c, mut etcd) = etcd_cluster("eboot", 1, 0, "60s");
    etcd.stop();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        etcd.resume();
        etcd
    });
    // While weftd waits, /healthz says it lives and /readyz that it is
    // not ready, as flanneld's do (a liveness probe must not restart it).
    let ns = c.nodes[0].ns.clone();
    let probes = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let get = |p| netns::http_get(&ns, crate::harness::METRICS_PORT, p).unwrap_or_default();
        (get("/healthz"), get("/readyz"))
    });
    let t = Instant::now();
    c.start(0);
    let up = t.elapsed();
    let etcd = back.join().unwrap();
    assert!(up >= Duration::from_secs(3), "ready before etcd was back?");
    assert_eq!(
        probes.join().unwrap(),
        ("ok (starting)\n".to_string(), "not ready\n".to_string()),
        "the probes while etcd was down"
    );
    let log = c.nodes[0].log();
    assert!(
        log.contains("retrying in 1s") && log.contains("retrying in 2s"),
        "{log}"
    );
    assert_eq!(etcd_subnets(&etcd).len(), 1, "its lease is in etcd");
    eprintln!("etcd down at boot: weftd ready {up:?} after its start, etcd back after 3 s");
}
