//! A node's life cycle as a user sees it: weftd restarted (SIGTERM then a
//! new start, a new one started before the old one exits, SIGKILL then a
//! start) while a UDP probe runs every 5 ms through it, from a weft peer and
//! from a kernel-VXLAN peer, and a TCP connection stays open; the longest gap
//! is measured and bounded, and the connection survives. A start that fails
//! after taking its lease releases it; an etcd that does not answer at boot
//! is waited for.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, KernelNode, Opts, require_root, wait_until};
use weft::netns;

/// Probes every 5 ms from `from_ns` to an echo server on `to:port` in
/// `to_ns`; returns when each reply came back.
pub(crate) struct Probe {
    stop: Arc<AtomicBool>,
    prober: JoinHandle<Vec<Instant>>,
    echo: JoinHandle<()>,
}

impl Probe {
    pub(crate) fn start(from_ns: &str, to_ns: &str, to: impl Into<IpAddr>, port: u16) -> Probe {
        let to: IpAddr = to.into();
        let stop = Arc::new(AtomicBool::new(false));
        let server = netns::in_netns(to_ns, || UdpSocket::bind((to, port)))
            .unwrap()
            .expect("echo bind");
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let s2 = stop.clone();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        });
        let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let client = netns::in_netns(from_ns, || UdpSocket::bind(any))
            .unwrap()
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let s3 = stop.clone();
        let prober = std::thread::spawn(move || {
            let mut got = vec![];
            let mut buf = [0u8; 64];
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !s3.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    seq += 1;
                    let _ = client.send_to(&seq.to_be_bytes(), SocketAddr::new(to, port));
                    next += Duration::from_millis(5);
                }
                while client.recv(&mut buf).is_ok() {
                    got.push(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            got
        });
        Probe { stop, prober, echo }
    }

    /// Stops and returns the longest time without a reply, and the replies.
    pub(crate) fn finish(self) -> (Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let got = self.prober.join().unwrap();
        self.echo.join().unwrap();
        let gap = got
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(Duration::MAX);
        (gap, got.len())
    }
}

/// A TCP connection from `from_ns` to `to:port` writing 64 bytes every 5 ms;
/// `finish` closes it and checks that every byte arrived, in order.
pub(crate) struct Stream {
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Result<u64, String>>,
    reader: JoinHandle<Result<u64, String>>,
}

impl Stream {
    pub(crate) fn open(from_ns: &str, to_ns: &str, to: impl Into<IpAddr>, port: u16) -> Stream {
        let to: IpAddr = to.into();
        let l = netns::in_netns(to_ns, || TcpListener::bind((to, port)))
            .unwrap()
            .unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut n = 0u64;
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(n),
                    Ok(k) => {
                        for (i, b) in buf[..k].iter().enumerate() {
                            if *b != ((n + i as u64) % 251) as u8 {
                                return Err(format!("byte {} differs", n + i as u64));
                            }
                        }
                        n += k as u64;
                    }
                    Err(e) => return Err(format!("read after {n} bytes: {e}")),
                }
            }
        });
        let mut c = netns::in_netns(from_ns, || {
            TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(5))
        })
        .unwrap()
        .expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (0..64).map(|i| ((n + i) % 251) as u8).collect();
                c.write_all(&chunk)
                    .map_err(|e| format!("write after {n} bytes: {e}"))?;
                n += 64;
                std::thread::sleep(Duration::from_millis(5));
            }
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            Ok(n)
        });
        Stream {
            stop,
            writer,
            reader,
        }
    }

    pub(crate) fn finish(self) {
        if let Err(e) = self.outcome() {
            panic!("{e}");
        }
    }

    /// Closes the connection: the bytes that arrived, every one in order,
    /// or how it broke.
    pub(crate) fn outcome(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.writer.join().unwrap();
        let got = self.reader.join().unwrap();
        let (sent, got) = (
            sent.map_err(|e| format!("the TCP connection broke: {e}"))?,
            got.map_err(|e| format!("the TCP connection broke: {e}"))?,
        );
        if sent != got {
            return Err(format!("{sent} bytes sent, {got} received"));
        }
        Ok(got)
    }
}

/// Runs `action` on node 0 while both probes run; returns their longest gaps.
fn gaps(
    c: &mut Cluster,
    k: &KernelNode,
    port: u16,
    action: impl FnOnce(&mut Cluster) -> Duration,
) -> (Duration, Duration, Duration) {
    let to = c.nodes[0].addr();
    let (n0, n1) = (c.nodes[0].ns.clone(), c.nodes[1].ns.clone());
    let weft = Probe::start(&n1, &n0, to, port);
    let kern = Probe::start(&k.ns, &n0, to, port + 1);
    std::thread::sleep(Duration::from_millis(300));
    let took = action(c);
    std::thread::sleep(Duration::from_millis(700));
    let (wg, wn) = weft.finish();
    let (kg, kn) = kern.finish();
    assert!(wn > 100 && kn > 100, "too few replies: {wn}, {kn}");
    (wg, kg, took)
}

#[test]
fn restarts_without_an_outage() {
    if !require_root("restarts_without_an_outage") {
        return;
    }
    let mut c = Cluster::build(
        "life",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let k = c.up_with_kernel_peer("10.244.250.0/24");
    let to = c.nodes[0].addr();
    let stream = Stream::open(&c.nodes[1].ns.clone(), &c.nodes[0].ns.clone(), to, 7300);

    // SIGTERM, then a new start once the old one is gone (systemctl restart).
    let (w, kv, took) = gaps(&mut c, &k, 7301, |c| {
        let t = Instant::now();
        c.nodes[0].stop();
        let exit = t.elapsed();
        c.start(0);
        eprintln!("SIGTERM: the old weftd exited in {exit:?}");
        exit
    });
    eprintln!(
        "SIGTERM + start: longest gap {w:?} from a weft peer, {kv:?} from a kernel-VXLAN peer"
    );
    assert!(
        took <= Duration::from_millis(50),
        "SIGTERM → exit took {took:?}"
    );
    assert!(
        w <= Duration::from_millis(100),
        "gap {w:?} from the weft peer"
    );
    assert!(
        kv <= Duration::from_millis(100),
        "gap {kv:?} from the kernel peer"
    );

    // A new weftd started while the old one runs (a rollout with maxSurge).
    let (w, kv, took) = gaps(&mut c, &k, 7303, |c| c.start_beside(0));
    eprintln!(
        "overlapping start: longest gap {w:?} (weft peer), {kv:?} (kernel peer); the old one was gone {took:?} after the new one started"
    );
    assert!(
        w <= Duration::from_millis(100),
        "gap {w:?} from the weft peer"
    );
    assert!(
        kv <= Duration::from_millis(100),
        "gap {kv:?} from the kernel peer"
    );
    assert!(
        c.nodes[0]
            .log()
            .contains("took over from the previous weftd")
    );

    // SIGKILL, then a start: the gap is the new one's start time, and no more.
    let mut start_took = Duration::ZERO;
    let (w, kv, _) = gaps(&mut c, &k, 7305, |c| {
        c.nodes[0].kill();
        let t = Instant::now();
        c.start(0);
        start_took = t.elapsed();
        start_took
    });
    eprintln!(
        "SIGKILL + start: longest gap {w:?} (weft peer), {kv:?} (kernel peer); start took {start_took:?}"
    );
    let bound = start_took + Duration::from_millis(100);
    assert!(
        w <= bound,
        "gap {w:?} from the weft peer, start {start_took:?}"
    );
    assert!(
        kv <= bound,
        "gap {kv:?} from the kernel peer, start {start_took:?}"
    );

    stream.finish();
    c.nodes[0].assert_nothing_wrong();
    // The device outlives weftd; `weftd uninstall` removes it.
    c.nodes[0].stop();
    let ns = c.nodes[0].ns.clone();
    assert!(netns::ip(&["-n", &ns, "link", "show", "weft0"]).is_ok());
    let out =
        netns::run(netns::exec_in(&ns, env!("CARGO_BIN_EXE_weftd")).arg("uninstall")).unwrap();
    assert!(out.contains("removed TUN device weft0"), "{out}");
    assert!(netns::ip(&["-n", &ns, "link", "show", "weft0"]).is_err());
}

/// In a pod (`POD_NAME` set, as weft's DaemonSet sets it) the weftd that
/// handed over does not exit: kubelet would restart the container, and the
/// restarted weftd would take the node back (the real cluster's rollout
/// found it). It lets go, the new one forwards alone and holds the name, and
/// it idles until SIGTERM, then exits cleanly.
#[test]
fn in_a_pod_the_previous_weftd_idles_until_sigterm() {
    if !require_root("in_a_pod_the_previous_weftd_idles_until_sigterm") {
        return;
    }
    let mut c = Cluster::build(
        "podidle",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    c.set_node_args(0, &[], &[("POD_NAME", "weft-x7k2p")]);
    c.start(0);
    c.start(1);
    c.wait_peers(1);
    let mut old = c.start_beside_keeping_old(0);
    let handed = wait_until(20, || {
        c.nodes[0]
            .log()
            .contains("pod weft-x7k2p idles until it is deleted")
    });
    assert!(handed, "no hand-over:\n{}", c.nodes[0].log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        old.try_wait().unwrap().is_none(),
        "the previous weftd exited after handing over:\n{}",
        c.nodes[0].log()
    );
    // The new one holds the name and forwards alone.
    let new_pid = c.nodes[0].pid().expect("the new weftd runs");
    let ns = c.nodes[0].ns.clone();
    let st = netns::run(
        netns::exec_in(&ns, env!("CARGO_BIN_EXE_weftd")).args(["status", "--output", "json"]),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["pid"], new_pid, "{st}");
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    assert!(c.nodes[1].ping(c.nodes[0].addr()));
    // SIGTERM (the old pod deleted) ends the wait.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let gone = wait_until(5, || old.try_wait().ok().flatten().is_some());
    assert!(gone, "the idle weftd did not exit on SIGTERM");
    assert!(old.wait().unwrap().success());
    assert!(c.nodes[0].running(), "{}", c.nodes[0].log());
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    c.nodes[0].assert_nothing_wrong();
}

/// Dual-stack: restarted by SIGTERM and by an overlapping start, weftd keeps
/// a UDP probe over IPv6 going with gaps of at most 100 ms and a TCP
/// connection over IPv6 open, bytes intact, on the same two subnets.
#[test]
fn dual_stack_restarts_without_an_outage() {
    if !require_root("dual_stack_restarts_without_an_outage") {
        return;
    }
    let mut c = Cluster::up(
        "life6",
        &Opts {
            nodes: 2,
            net_conf: Some(crate::dualstack::DUAL_STACK),
            ..Opts::default()
        },
    );
    let before = (c.nodes[0].subnet(), c.nodes[0].subnet6());
    ipv6_restarts(&mut c, "dual-stack", 7400);
    assert_eq!((c.nodes[0].subnet(), c.nodes[0].subnet6()), before);
}

/// IPv6-only, on an underlay without IPv4: the same restarts keep the IPv6
/// probe's gaps within 100 ms and the TCP connection open, on the same subnet.
#[test]
fn ipv6_only_restarts_without_an_outage() {
    if !require_root("ipv6_only_restarts_without_an_outage") {
        return;
    }
    let mut c = crate::ipv6only::ipv6_only_cluster("lifev6o", 2);
    let before = c.nodes[0].subnet6();
    ipv6_restarts(&mut c, "IPv6-only", 7410);
    assert_eq!(c.nodes[0].subnet6(), before);
}

/// Restarts node 0 by SIGTERM and by an overlapping start while node 1
/// probes it over IPv6 (UDP, gaps at most 100 ms) and holds a TCP
/// connection to it open.
fn ipv6_restarts(c: &mut Cluster, what: &str, port: u16) {
    let (n0, n1) = (c.nodes[0].ns.clone(), c.nodes[1].ns.clone());
    let to = c.nodes[0].addr6();
    let stream = Stream::open(&n1, &n0, to, port);
    for (port, how) in [
        (port + 1, "SIGTERM + start"),
        (port + 2, "overlapping start"),
    ] {
        let probe = Probe::start(&n1, &n0, to, port);
        std::thread::sleep(Duration::from_millis(300));
        if how == "SIGTERM + start" {
            c.nodes[0].stop();
            c.start(0);
        } else {
            c.start_beside(0);
        }
        std::thread::sleep(Duration::from_millis(700));
        let (gap, n) = probe.finish();
        eprintln!("{what} {how}: longest IPv6 gap {gap:?} ({n} replies)");
        assert!(n > 100, "too few IPv6 replies: {n}");
        assert!(gap <= Duration::from_millis(100), "{how}: IPv6 gap {gap:?}");
    }
    stream.finish();
    c.nodes[0].assert_nothing_wrong();
}

/// A start that fails after its lease was taken gives the lease back.
#[test]
fn a_failed_start_releases_its_lease() {
    if !require_root("a_failed_start_releases_its_lease") {
        return;
    }
    let c = Cluster::build(
        "frel",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    // /healthz's port is taken (by a socket without SO_REUSEPORT): refused
    // before anything else, the lease never taken.
    let ns = c.nodes[0].ns.clone();
    let squatter = netns::in_netns(&ns, || {
        std::net::TcpListener::bind(("0.0.0.0", crate::harness::METRICS_PORT))
    })
    .unwrap()
    .unwrap();
    let out = c.command(0).output().expect("weftd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot serve /healthz"), "{err}");
    assert!(!err.contains("lease acquired"), "{err}");
    assert!(c.store().leases().unwrap().is_empty());
    drop(squatter);
    // subnet.env cannot be written (its path is a directory): that shows
    // only after the lease is taken.
    let blocked = c.nodes[0].dir.join("subnet.env");
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    let out = c.command(0).output().expect("weftd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("lease acquired"),
        "it got as far as the lease: {err}"
    );
    assert!(err.contains("subnet.env"), "{err}");
    assert!(err.contains("released it"), "{err}");
    assert!(
        c.store().leases().unwrap().is_empty(),
        "no lease left behind: {:?}",
        c.store().leases()
    );
}
