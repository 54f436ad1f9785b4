//! weftd end to end on one host: reachability, byte-exact transfers, restarts,
//! lease expiry, bad packets, kernel-VXLAN interop, and start-up refusals.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, Opts, require_root, tcp_transfer, udp_echo_failures, wait_until};
use weft::netns;

/// Every node reaches every other node's subnet address, both directions.
#[test]
fn three_nodes_reach_each_other() {
    if !require_root("three_nodes_reach_each_other") {
        return;
    }
    let c = Cluster::up("mesh", &Opts::default());
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
    }
    // Distinct subnets, each inside the default Network.
    let mut subnets: Vec<_> = c.nodes.iter().map(|n| n.subnet()).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3);
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
}

/// 64 MiB of TCP across nodes arrives byte-identical (SHA-256 at both ends).
#[test]
fn tcp_64mib_arrives_byte_identical() {
    if !require_root("tcp_64mib_arrives_byte_identical") {
        return;
    }
    let c = Cluster::up(
        "tcp",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let total = 64 << 20;
    let t = Instant::now();
    let (sent, got, n) = tcp_transfer(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        c.nodes[1].addr(),
        5001,
        total,
    );
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, total, "bytes received");
    assert_eq!(sent, got, "SHA-256 of the stream differs");
    eprintln!(
        "64 MiB across the overlay in {secs:.2} s ({:.0} Mbit/s, debug build)",
        total as f64 * 8.0 / secs / 1e6
    );
}

/// UDP datagrams of every size from 1 byte to the full MTU arrive intact; larger
/// ones are fragmented by the kernel and reassembled intact.
#[test]
fn udp_every_size_arrives_intact() {
    if !require_root("udp_every_size_arrives_intact") {
        return;
    }
    let c = Cluster::up(
        "udp",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let mtu_payload = 1450 - 20 - 8;
    let sizes: Vec<usize> = (1..=mtu_payload)
        .chain([mtu_payload + 1, 2000, 8000, 30000])
        .collect();
    let failures = udp_echo_failures(&a.ns, a_addr, &b.ns, b_addr, &sizes);
    assert!(
        failures.is_empty(),
        "no echo for datagram sizes {failures:?}"
    );
}

/// A restarted weftd gets the same subnet and VtepMAC; peers reach it again quickly.
#[test]
fn restart_keeps_subnet_and_reconnects() {
    if !require_root("restart_keeps_subnet_and_reconnects") {
        return;
    }
    let mut c = Cluster::up(
        "restart",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let before = c.nodes[1].subnet();
    let lease_before = c
        .store()
        .leases()
        .unwrap()
        .into_iter()
        .find(|l| l.subnet == Some(before))
        .unwrap();
    c.nodes[1].stop();
    assert!(
        !c.nodes[0].ping(before.network()),
        "a stopped node must not answer"
    );
    let t = Instant::now();
    c.start(1);
    assert_eq!(c.nodes[1].subnet(), before, "same subnet after restart");
    let lease_after = c
        .store()
        .leases()
        .unwrap()
        .into_iter()
        .find(|l| l.subnet == Some(before))
        .unwrap();
    assert_eq!(
        lease_after.attrs, lease_before.attrs,
        "same PublicIP and VtepMAC after restart"
    );
    let (n0, addr) = (&c.nodes[0], before.network());
    assert!(
        wait_until(5, || n0.ping(addr)),
        "peer not reachable within 5 s of the restart"
    );
    eprintln!(
        "reachable again {:.2} s after the restart began",
        t.elapsed().as_secs_f64()
    );
    assert!(
        c.nodes[1]
            .log()
            .contains(&format!("lease acquired: {before}"))
    );
}

/// A node that disappears for good: once its lease expires, every other node
/// drops its route, and nothing else is counted as wrong.
#[test]
fn expired_lease_removes_the_route() {
    if !require_root("expired_lease_removes_the_route") {
        return;
    }
    let mut c = Cluster::up(
        "expire",
        &Opts {
            nodes: 3,
            ttl: "3s",
            ..Opts::default()
        },
    );
    let gone = c.nodes[2].addr();
    assert!(c.nodes[0].ping(gone));
    // Short TTL: renewals must keep the live nodes' leases across several TTLs.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        c.nodes[0].ping(c.nodes[1].addr()),
        "renewed leases must not expire"
    );
    c.nodes[2].kill();
    let t = Instant::now();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    assert!(
        wait_until(8, || n0.metric("weft_peers") == 1.0
            && n1.metric("weft_peers") == 1.0),
        "the dead node's route is still there after 8 s"
    );
    eprintln!(
        "route removed {:.1} s after the kill (TTL 3 s)",
        t.elapsed().as_secs_f64()
    );
    assert!(
        n0.log()
            .contains(&format!("peer removed: {}", c.nodes[2].subnet()))
    );
    // Its subnet is now unroutable: weft answers with ICMP net unreachable.
    let icmp_before = n0.metric("weft_icmp_unreachable_sent_total");
    assert!(!n0.ping(gone));
    assert!(n0.metric("weft_icmp_unreachable_sent_total") > icmp_before);
    assert!(n0.ping(n1.addr()), "the live peer is still reachable");
    for n in [n0, n1] {
        n.assert_nothing_wrong();
    }
}

/// Garbage at the VXLAN port is dropped and counted by reason; weftd stays up
/// and keeps forwarding good traffic.
#[test]
fn bad_packets_are_counted_and_dropped() {
    if !require_root("bad_packets_are_counted_and_dropped") {
        return;
    }
    let mut c = Cluster::up(
        "bad",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let target = SocketAddrV4::new(c.nodes[1].ip, 8472);
    let victim_mac = {
        let l = c.store().leases().unwrap();
        l.iter()
            .find(|l| l.attrs.public_ip == c.nodes[1].ip)
            .unwrap()
            .attrs
            .vxlan_data()
            .unwrap()
            .vtep_mac
    };
    let victim_subnet = c.nodes[1].subnet();
    netns::in_netns(&c.nodes[0].ns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        // A valid frame for the victim, to mutate.
        let mut good = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        good.extend_from_slice(&victim_mac.octets());
        good.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0u8; 28];
        weft::wire::ipv4::emit_header(
            &mut ip,
            28,
            64,
            17,
            Ipv4Addr::new(10, 244, 200, 1),
            victim_subnet.network(),
        );
        good.extend_from_slice(&ip);
        let send = |d: &[u8]| {
            for _ in 0..10 {
                s.send_to(d, target).unwrap();
            }
        };
        let mut wrong_vni = good.clone();
        wrong_vni[6] = 9;
        send(&wrong_vni);
        send(&good[..12]);
        let mut wrong_mac = good.clone();
        wrong_mac[8] ^= 0xff;
        send(&wrong_mac);
        let mut no_flag = good.clone();
        no_flag[0] = 0;
        send(&no_flag);
        let mut seed = 42u64;
        for len in [1usize, 7, 50, 100, 1400] {
            let mut junk = vec![0u8; len];
            crate::harness::fill(&mut junk, &mut seed);
            junk[0] = 0; // never accidentally a valid frame
            send(&junk);
        }
    })
    .unwrap();
    let n1 = &mut c.nodes[1];
    // All 90 datagrams sent must be accounted for before the counts are read:
    // they arrive over several worker turns, and each turn flushes its own.
    let reasons = ["wrong_vni", "vxlan_truncated", "wrong_mac", "vxlan_flags"];
    assert!(
        wait_until(5, || reasons.iter().map(|r| n1.drops(r)).sum::<f64>()
            >= 90.0),
        "not all 90 bad datagrams counted: {:?}",
        n1.metrics()
    );
    assert_eq!(n1.drops("wrong_vni"), 10.0, "{:?}", n1.metrics());
    let m = n1.metrics();
    let drops = |r: &str| {
        m.get(&format!("weft_drops_total{{reason=\"{r}\"}}"))
            .copied()
            .unwrap_or(-1.0)
    };
    // 12-byte header stubs, and junk of 1 and 7 bytes: too short for any frame.
    assert_eq!(drops("vxlan_truncated"), 30.0, "{m:?}");
    assert_eq!(drops("wrong_mac"), 10.0, "{m:?}");
    // No I flag: the 10 mutated frames and the junk of 50, 100 and 1400 bytes.
    assert_eq!(drops("vxlan_flags"), 40.0, "{m:?}");
    assert_eq!(
        m.get("weft_rx_packets_total"),
        Some(&0.0),
        "nothing bad was delivered: {m:?}"
    );
    assert!(n1.running(), "weftd must survive bad input");
    let addr = c.nodes[1].addr();
    assert!(c.nodes[0].ping(addr), "good traffic still flows");
}

/// One node is a kernel VXLAN device configured as flannel does; weft nodes
/// (offloads on, one of them with two queues) and the kernel node ping and
/// exchange TCP in both directions.
#[test]
fn interop_with_kernel_vxlan() {
    if !require_root("interop_with_kernel_vxlan") {
        return;
    }
    let mut c = Cluster::build(
        "kvx",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    // Node 1 runs multi-queue: its datagrams leave from flow-hashed source
    // ports, which the kernel must take as well.
    c.nodes[1].extra = vec!["--queues".into(), "2".into()];
    let k = c.up_with_kernel_peer("10.244.250.0/24");
    k.assert_interop(&c.nodes, 5002, 8 << 20);
    for n in &c.nodes {
        assert_eq!(
            n.drops("wrong_mac") + n.drops("wrong_vni") + n.drops("inner_malformed"),
            0.0,
            "{}: {:?}",
            n.ns,
            n.metrics()
        );
    }
}

/// No default route and no interface flag: weftd refuses with flannel's words
/// and names the flags that fix it. A broken net-conf.json names file and field.
#[test]
fn startup_refusals_say_what_to_do() {
    if !require_root("startup_refusals_say_what_to_do") {
        return;
    }
    let mut c = Cluster::build(
        "refuse",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    netns::ip(&["-n", &c.nodes[0].ns, "route", "del", "default"]).unwrap();
    let out = c.command(0).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Unable to find default route")
            && err.contains("--iface")
            && err.contains("--iface-can-reach"),
        "{err}"
    );
    // With --iface it starts.
    let conf = c.nodes[0].dir.join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","SubnetLen":12,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let out = c
        .command(0)
        .args(["--iface", "eth0", "--net-config-path"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&conf.display().to_string())
            && err.contains("SubnetLen")
            && err.contains("/18"),
        "{err}"
    );
    c.nodes[0].kill();
}

/// The fallback path: a node with `--offload false` (one packet per syscall)
/// and a node with TUN offloads (TSO/GRO) exchange TCP both ways, byte-identical,
/// and each says in its log which mode it runs.
#[test]
fn offload_and_plain_nodes_interoperate() {
    if !require_root("offload_and_plain_nodes_interoperate") {
        return;
    }
    let mut c = Cluster::build(
        "mixed",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    c.nodes[1].extra = vec!["--offload".into(), "false".into()];
    c.start(0);
    c.start(1);
    c.wait_peers(1);
    assert!(
        c.nodes[0]
            .log()
            .contains("TUN offloads (TSO/GRO through virtio-net headers): on")
    );
    assert!(
        c.nodes[1]
            .log()
            .contains("TUN offloads (TSO/GRO through virtio-net headers): off")
    );
    let size = 32 << 20;
    let (s, g, n) = tcp_transfer(
        &c.nodes[0].ns,
        &c.nodes[1].ns,
        c.nodes[1].addr(),
        5004,
        size,
    );
    assert_eq!((n, s), (size, g), "offload → plain TCP stream differs");
    let (s, g, n) = tcp_transfer(
        &c.nodes[1].ns,
        &c.nodes[0].ns,
        c.nodes[0].addr(),
        5005,
        size,
    );
    assert_eq!((n, s), (size, g), "plain → offload TCP stream differs");
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
}

/// With offloads on, four TCP streams at once (two each way, so data and ACKs
/// of different flows interleave in every batch) arrive byte-identical, and
/// the offload paths really ran: the senders read super-packets and cut them
/// (many datagrams per TUN read), the receivers coalesced (many segments per
/// TUN write), and nothing was dropped as malformed.
#[test]
fn parallel_flows_with_offloads_segment_and_coalesce() {
    if !require_root("parallel_flows_with_offloads_segment_and_coalesce") {
        return;
    }
    let c = Cluster::up(
        "flows",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let size = 24 << 20;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let flows = [
        (a.ns.clone(), b.ns.clone(), b.addr(), 5011),
        (a.ns.clone(), b.ns.clone(), b.addr(), 5012),
        (b.ns.clone(), a.ns.clone(), a.addr(), 5013),
        (b.ns.clone(), a.ns.clone(), a.addr(), 5014),
    ];
    let handles: Vec<_> = flows
        .into_iter()
        .map(|(from, to_ns, to, port)| {
            std::thread::spawn(move || (port, tcp_transfer(&from, &to_ns, to, port, size)))
        })
        .collect();
    for h in handles {
        let (port, (sent, got, n)) = h.join().expect("transfer thread");
        assert_eq!(n, size, "flow to port {port}: bytes received");
        assert_eq!(sent, got, "flow to port {port}: SHA-256 differs");
    }
    for n in &c.nodes {
        n.assert_nothing_wrong();
        let m = n.metrics();
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let per_read = get("weft_tx_packets_total") / get("weft_tun_reads_total");
        let per_write = get("weft_rx_packets_total") / get("weft_tun_writes_total");
        eprintln!(
            "{}: {per_read:.1} datagrams per TUN read, {per_write:.1} segments per TUN write",
            n.ns
        );
        assert!(
            per_read > 2.0,
            "{}: no segmentation ({per_read:.1} datagrams per read): {m:?}",
            n.ns
        );
        assert!(
            per_write > 2.0,
            "{}: no coalescing ({per_write:.1} segments per write): {m:?}",
            n.ns
        );
    }
}

/// CPU ticks each `weft-dp*` worker thread of process `pid` has used.
fn worker_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let t = t.expect("task entry").path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if !comm.starts_with("weft-dp") {
            continue;
        }
        let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
        // After the parenthesised name come fields 3 (state) onwards; utime
        // and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = field(14) + field(15);
        out.push((comm.trim().to_string(), ticks));
    }
    out.sort();
    out
}

/// With `--queues 2`, sixteen TCP streams at once arrive byte-identical and
/// both workers of both nodes carry them: the sender spreads flows over its
/// sending sockets by flow hash, the receiver's SO_REUSEPORT spreads them
/// over its workers, and the multi-queue TUN keeps each flow on one queue.
#[test]
fn multi_queue_spreads_flows_over_workers() {
    if !require_root("multi_queue_spreads_flows_over_workers") {
        return;
    }
    let mut c = Cluster::build(
        "mq",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    for n in &mut c.nodes {
        n.extra = vec!["--queues".into(), "2".into()];
    }
    c.start(0);
    c.start(1);
    c.wait_peers(1);
    assert!(
        c.nodes[0].log().contains("queues: 2"),
        "{}",
        c.nodes[0].log()
    );
    let size = 4 << 20;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let handles: Vec<_> = (0..16u16)
        .map(|i| {
            let (from, to_ns, to) = (a.ns.clone(), b.ns.clone(), b.addr());
            std::thread::spawn(move || (i, tcp_transfer(&from, &to_ns, to, 5100 + i, size)))
        })
        .collect();
    for h in handles {
        let (i, (sent, got, n)) = h.join().expect("transfer thread");
        assert_eq!((n, sent), (size, got), "stream {i} differs");
    }
    for n in &c.nodes {
        n.assert_nothing_wrong();
        let ticks = worker_ticks(n.pid().expect("weftd runs"));
        eprintln!("{}: worker CPU ticks {ticks:?}", n.ns);
        assert_eq!(ticks.len(), 2, "{}: two workers expected: {ticks:?}", n.ns);
        assert!(
            ticks.iter().all(|(_, t)| *t >= 2),
            "{}: a worker carried (almost) nothing: {ticks:?}",
            n.ns
        );
    }
}

/// A second weftd in a namespace where one already runs is refused with the
/// reason and the fix, also with `--queues 2` (where the kernel would let a
/// second multi-queue open attach to the running device as another queue).
#[test]
fn second_weftd_in_a_namespace_is_refused() {
    if !require_root("second_weftd_in_a_namespace_is_refused") {
        return;
    }
    let mut c = Cluster::build(
        "busy",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    c.nodes[0].extra = vec!["--queues".into(), "2".into()];
    c.start(0);
    // Another device on the same port: refused (the same device takes over,
    // see lifecycle.rs).
    for queues in ["1", "2"] {
        c.nodes[0].extra = vec![
            "--queues".into(),
            queues.into(),
            "--tun-name".into(),
            "weft1".into(),
        ];
        let out = c
            .command(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a second weftd");
        let pid = out.id();
        let waiter = std::thread::spawn(move || out.wait_with_output());
        let done = wait_until(20, || waiter.is_finished());
        if !done {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let out = waiter.join().expect("waiter").expect("second weftd output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            done,
            "--queues {queues}: a second weftd kept running: {err}"
        );
        assert!(
            !out.status.success(),
            "--queues {queues}: exit status {:?}",
            out.status
        );
        assert!(
            err.contains("on TUN device weft0, serves VXLAN port 8472 in this network namespace"),
            "--queues {queues}: {err}"
        );
        assert!(
            !err.contains("lease acquired"),
            "refused before taking a lease: {err}"
        );
    }
    // The first one is untouched.
    assert!(c.nodes[0].running());
    c.nodes[0].assert_nothing_wrong();
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A UDP flood (1400-byte datagrams, as fast as one sender can write them)
/// does not make weftd fall over: what does not fit is dropped, queues and
/// memory stay bounded (a second flood adds no memory over the first), and
/// the nodes answer ping right after.
#[test]
fn udp_flood_is_dropped_not_queued() {
    if !require_root("udp_flood_is_dropped_not_queued") {
        return;
    }
    let c = Cluster::up(
        "flood",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let flood = || {
        netns::in_netns(&a.ns, || {
            let s = UdpSocket::bind((a_addr, 0)).unwrap();
            let buf = [0x5au8; 1400];
            let until = Instant::now() + Duration::from_secs(3);
            let mut sent = 0u64;
            while Instant::now() < until {
                // Nobody listens at B: every datagram crosses the overlay.
                if s.send_to(&buf, (b_addr, 6100)).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap()
    };
    let pids = [a.pid().unwrap(), b.pid().unwrap()];
    let sent1 = flood();
    let after1 = pids.map(rss_kib);
    let sent2 = flood();
    let after2 = pids.map(rss_kib);
    eprintln!(
        "flood: {sent1} + {sent2} datagrams sent; weftd RSS after each flood {after1:?} / {after2:?} KiB"
    );
    assert!(
        sent1 > 10_000 && sent2 > 10_000,
        "the flood did not run: {sent1}, {sent2}"
    );
    for (i, (x, y)) in after1.iter().zip(after2.iter()).enumerate() {
        assert!(*x > 0 && *y > 0, "node {i}: no RSS read");
        assert!(
            y.saturating_sub(*x) < 4 * 1024,
            "node {i}: RSS grew from {x} to {y} KiB"
        );
    }
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
    assert!(
        a.ping(b_addr) && b.ping(a_addr),
        "nodes answer after the flood"
    );
    let rx = b.metric("weft_rx_packets_total");
    assert!(rx > 1000.0, "the flood reached node 1: {rx}");
}
