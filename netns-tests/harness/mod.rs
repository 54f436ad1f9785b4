//! The netns harness: N weft nodes as network namespaces on one underlay bridge
//! (in a namespace of its own), weftd started in each on a shared embedded
//! store (or on etcd, when [`Cluster::etcd`] names an endpoint), and helpers to
//! reach into them. Everything is torn down on drop, also
//! when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft::lease::{Lease, LeaseAttrs};
use weft::netns::{self, NodeNs, Underlay};
use weft::store::local::LocalStore;
use weft::subnet_env::SubnetEnv;
use weft::types::{Vni, VtepMac};

pub const METRICS_PORT: u16 = 9100;

/// The weftd binary the tests run: `WEFT_TEST_WEFTD` (the rootless tier
/// runs a copy an unprivileged user may execute), else cargo's.
pub fn weftd_bin() -> String {
    std::env::var("WEFT_TEST_WEFTD").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weftd").to_string())
}

/// Drop reasons that never occur in a healthy overlay.
pub const WRONG_DROPS: [&str; 11] = [
    "wrong_vni",
    "unknown_peer",
    "spoofed_source",
    "wrong_mac",
    "vxlan_truncated",
    "inner_malformed",
    "not_our_subnet",
    "udp_send_error",
    "tun_write_error",
    "tun_not_ipv4",
    "tun_bad_offload",
];

/// `ping -c1 -W1` from namespace `ns` to `to`.
pub fn ping_from(ns: &str, to: impl Into<std::net::IpAddr>) -> bool {
    let to: std::net::IpAddr = to.into();
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c1",
            "-W1",
            &to.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the test may run; otherwise says loudly that it was skipped.
/// Under CI (`CI=true`) a skip is a failure: privileged tests must run there.
pub fn require_root(test: &str) -> bool {
    if netns::is_root() {
        return true;
    }
    let msg = format!("SKIPPED (needs root): netns test `{test}` did not run");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}, and CI=true requires it"
    );
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    false
}

/// Makes a TUN device node (char 10:200) at `path` with `mode` ("666": one
/// an unprivileged user may open, whatever the host's /dev/net/tun is).
pub fn tun_node(path: &std::path::Path, mode: &str) {
    netns::run(
        Command::new("mknod")
            .args(["-m", mode])
            .arg(path)
            .args(["c", "10", "200"]),
    )
    .unwrap();
}

/// `sh -c script` as the unprivileged user 65534 inside a user, network and
/// mount namespace of its own, where it is root (the rootless path).
pub fn unprivileged_in_userns(script: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "--net", "--mount"])
        .args(["sh", "-c", script])
        .current_dir("/");
    c
}

/// Every datagram `recv` yields as text, until it fails (its socket's read
/// timeout, set by the caller, ends the wait).
pub fn drain(mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> Vec<String> {
    let mut got = vec![];
    let mut buf = [0u8; 2048];
    while let Ok(n) = recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

/// Polls `f` every 100 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Node {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    child: Option<Child>,
    /// Extra weftd arguments, appended to [`Cluster::command`]'s.
    pub extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    pub fn subnet(&self) -> Ipv4Net {
        SubnetEnv::read(&self.dir.join("subnet.env"))
            .unwrap_or_else(|e| panic!("{}: no subnet.env: {e}\n{}", self.ns, self.log()))
            .ipv4
            .unwrap_or_else(|| panic!("{}: subnet.env has no IPv4 subnet", self.ns))
            .subnet
    }

    /// The node's `.0` address, on its TUN device.
    pub fn addr(&self) -> Ipv4Addr {
        self.subnet().network()
    }

    /// The node's IPv6 subnet (a dual-stack network), from its subnet.env.
    pub fn subnet6(&self) -> ipnet::Ipv6Net {
        SubnetEnv::read(&self.dir.join("subnet.env"))
            .ok()
            .and_then(|e| e.ipv6)
            .unwrap_or_else(|| panic!("{}: no IPv6 subnet in subnet.env\n{}", self.ns, self.log()))
            .subnet
    }

    /// The node's IPv6 subnet's first address, on its TUN device (as
    /// flannel puts it on flannel-v6.1).
    pub fn addr6(&self) -> std::net::Ipv6Addr {
        self.subnet6().network()
    }

    /// `ping -6 -c1` from this node to `to`.
    pub fn ping6(&self, to: std::net::Ipv6Addr) -> bool {
        ping_from(&self.ns, to)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weftd.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> BTreeMap<String, f64> {
        netns::http_get(&self.ns, METRICS_PORT, "/metrics")
            .map(|m| weft::metrics::parse(&m))
            .unwrap_or_default()
    }

    pub fn metric(&self, k: &str) -> f64 {
        self.metrics().get(k).copied().unwrap_or(-1.0)
    }

    pub fn drops(&self, reason: &str) -> f64 {
        self.metric(&format!("weft_drops_total{{reason=\"{reason}\"}}"))
    }

    /// `ping -c1` from this node to `to`.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        ping_from(&self.ns, to)
    }

    /// Asserts that none of the drop reasons that mean "something is wrong"
    /// (as opposed to "no route yet") were counted.
    pub fn assert_nothing_wrong(&self) {
        let m = self.metrics();
        for r in WRONG_DROPS {
            let v = m
                .get(&format!("weft_drops_total{{reason=\"{r}\"}}"))
                .copied();
            assert_eq!(v, Some(0.0), "{}: {r} drops counted: {m:?}", self.ns);
        }
    }

    /// weftd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &mut self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
        self.child = None;
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// SIGKILL: the node vanishes without a word to the store.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub store_dir: PathBuf,
    underlay: Underlay,
    _tmp: tempfile::TempDir,
    ttl: String,
    /// etcd mode: weftd gets `--etcd-endpoints` with this instead of `--state-dir`.
    pub etcd: Option<String>,
}

/// Cluster options.
pub struct Opts {
    pub nodes: usize,
    pub ttl: &'static str,
    /// net-conf.json for every node (else the embedded default).
    pub net_conf: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 3,
            ttl: "60s",
            net_conf: None,
        }
    }
}

impl Cluster {
    /// Builds the underlay and `opts.nodes` namespaces; starts no weftd yet.
    pub fn build(name: &str, opts: &Opts) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let prefix = format!("wt{}-{name}", std::process::id() % 100_000);
        let mut underlay = Underlay::new(&prefix).expect("underlay");
        let store_dir = tmp.path().join("store");
        if let Some(c) = opts.net_conf {
            std::fs::create_dir_all(&store_dir).unwrap();
            std::fs::write(store_dir.join("net-conf.json"), c).unwrap();
        }
        let mut nodes = vec![];
        for i in 0..opts.nodes {
            let NodeNs { ns, ip } = underlay.add_node(true).expect("node");
            let dir = tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            nodes.push(Node {
                ns,
                ip,
                dir,
                child: None,
                extra: vec![],
                env: vec![],
            });
        }
        Cluster {
            nodes,
            store_dir,
            underlay,
            _tmp: tmp,
            ttl: opts.ttl.to_string(),
            etcd: None,
        }
    }

    /// Builds, starts every node, and waits until every node sees every other.
    pub fn up(name: &str, opts: &Opts) -> Cluster {
        let mut c = Cluster::build(name, opts);
        for i in 0..c.nodes.len() {
            c.start(i);
        }
        c.wait_peers(c.nodes.len() - 1);
        c
    }

    /// A kernel-VXLAN node for `subnet` whose lease goes in first (as an
    /// operator, or flannel, would write it); then weftd starts on every node,
    /// and the kernel node learns every weft node's lease as flannel would.
    pub fn up_with_kernel_peer(&mut self, subnet: &str) -> KernelNode {
        let kn = self.add_bare_node();
        let store = self.store();
        let k = KernelNode::new(kn, subnet.parse().unwrap(), &store);
        for i in 0..self.nodes.len() {
            self.start(i);
        }
        self.wait_peers(self.nodes.len());
        for l in store
            .leases()
            .unwrap()
            .iter()
            .filter(|l| l.subnet != Some(k.subnet))
        {
            k.add_peer(l);
        }
        k
    }

    /// A node namespace without weftd (for a kernel-VXLAN peer).
    pub fn add_bare_node(&mut self) -> NodeNs {
        self.underlay.add_node(true).expect("node")
    }

    pub fn store(&self) -> LocalStore {
        LocalStore::new(&self.store_dir, Duration::from_millis(100))
    }

    /// weftd's command line for node `i`.
    pub fn command(&self, i: usize) -> Command {
        self.command_of(i, &[])
    }

    /// `weftd doctor` with node `i`'s own flags (and `extra`): whether it
    /// passed, and its report. Its CNI dirs are the node's own (absent),
    /// so that the host's /etc/cni/net.d cannot change the report.
    pub fn doctor(&self, i: usize, extra: &[&str]) -> (bool, String) {
        let dir = &self.nodes[i].dir;
        let out = self
            .command_of(i, &["doctor"])
            .arg("--cni-conf-dir")
            .arg(dir.join("cni-net.d"))
            .arg("--cni-bin-dir")
            .arg(dir.join("cni-bin"))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("weftd doctor runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// weftd on node `i` (with `env` added) run to its end, which must be a
    /// refusal; its stderr, where the error is.
    pub fn refused(&self, i: usize, env: &[(&str, &str)]) -> String {
        let out = self
            .command(i)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("weftd runs");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "weftd on {} was not refused:\n{err}",
            self.nodes[i].ns
        );
        err
    }

    /// weftd's command line for node `i`, with `sub` (a subcommand) first.
    fn command_of(&self, i: usize, sub: &[&str]) -> Command {
        let n = &self.nodes[i];
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &n.ns, &weftd_bin()]).args(sub);
        match &self.etcd {
            Some(ep) => c.args(["--etcd-endpoints", ep]),
            None => c.arg("--state-dir").arg(&self.store_dir),
        };
        c.arg("--subnet-file")
            .arg(n.dir.join("subnet.env"))
            .args(["--healthz-port", &METRICS_PORT.to_string()])
            .args([
                "--subnet-lease-ttl",
                &self.ttl,
                "--store-poll",
                "200ms",
                "--log-level",
                "info",
            ])
            .args(&n.extra)
            .envs(n.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Extra weftd arguments and environment for node `i` (e.g. Kubernetes mode).
    pub fn set_node_args(&mut self, i: usize, args: &[String], env: &[(&str, &str)]) {
        self.nodes[i].extra = args.to_vec();
        self.nodes[i].env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Spawns weftd on node `i`, logging to its weftd.log.
    fn spawn(&self, i: usize) -> Child {
        self.spawn_command(i, self.command(i))
    }

    /// Spawns `cmd` as node `i`'s weftd, logging to its weftd.log.
    fn spawn_command(&self, i: usize, mut cmd: Command) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nodes[i].dir.join("weftd.log"))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn weftd")
    }

    /// Starts weftd on node `i` (logging to its weftd.log) and waits for its lease.
    pub fn start(&mut self, i: usize) {
        self.start_command(i, self.command(i));
    }

    /// Starts `cmd` (a whole command line of the test's own, run in node
    /// `i`'s namespace) as node `i`'s weftd and waits until /readyz answers.
    pub fn start_command(&mut self, i: usize, cmd: Command) {
        let child = self.spawn_command(i, cmd);
        self.nodes[i].child = Some(child);
        let node = &mut self.nodes[i];
        let ok = wait_until(20, || {
            assert!(
                node.running(),
                "weftd on {} exited:\n{}",
                node.ns,
                node.log()
            );
            netns::http_get(&node.ns, METRICS_PORT, "/readyz").is_ok_and(|b| b.starts_with("ok"))
        });
        assert!(
            ok,
            "weftd on {} not ready in 20 s:\n{}",
            node.ns,
            node.log()
        );
    }

    /// Starts a second weftd on node `i` while the first still runs and
    /// keeps it as the node's weftd, without waiting for the first: returns
    /// the first one's process, for the test to watch.
    pub fn start_beside_keeping_old(&mut self, i: usize) -> Child {
        let child = self.spawn(i);
        self.nodes[i].child.replace(child).expect("a weftd runs")
    }

    /// Starts a second weftd on node `i` while the first still runs (a
    /// rollout with maxSurge), waits until the first has exited (the new
    /// one asks it to), and keeps the new one as the node's weftd. Returns
    /// how long the old one took to go after the new one was spawned.
    pub fn start_beside(&mut self, i: usize) -> Duration {
        let t = Instant::now();
        let child = self.spawn(i);
        let node = &mut self.nodes[i];
        let mut old = node.child.replace(child).expect("a weftd runs");
        let gone = wait_until(20, || old.try_wait().ok().flatten().is_some());
        assert!(
            gone,
            "the old weftd on {} did not exit:\n{}",
            node.ns,
            node.log()
        );
        let took = t.elapsed();
        assert!(
            node.running(),
            "the new weftd on {} exited:\n{}",
            node.ns,
            node.log()
        );
        took
    }

    /// Waits until every running node's table holds `want` peers.
    pub fn wait_peers(&mut self, want: usize) {
        for n in &mut self.nodes {
            if !n.running() {
                continue;
            }
            let ok = wait_until(15, || n.metric("weft_peers") == want as f64);
            assert!(
                ok,
                "{} has {} peers, want {want}:\n{}",
                n.ns,
                n.metric("weft_peers"),
                n.log()
            );
        }
    }

    pub fn underlay_ns(&self) -> &str {
        &self.underlay.ns
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("---- weftd log of {} ----\n{}", n.ns, n.log());
            }
        }
    }
}

/// A kernel VXLAN node configured exactly as flannel's vxlan backend does it.
pub struct KernelNode {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub mac: VtepMac,
}

impl KernelNode {
    /// Creates `flannel.1` (VNI 1, dstport 8472, nolearning, MTU 1450) holding
    /// `subnet`'s `.0/32`, and stores its lease in flannel's shape.
    pub fn new(n: NodeNs, subnet: Ipv4Net, store: &LocalStore) -> KernelNode {
        let k = KernelNode::configure(n, subnet);
        store
            .put_lease(&Lease {
                subnet: Some(subnet),
                ipv6_subnet: None,
                attrs: LeaseAttrs::vxlan(k.ip, Vni::new(1).unwrap(), k.mac),
                expiration: Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
            })
            .unwrap();
        k
    }

    /// As [`KernelNode::new`] but stores no lease: the caller publishes it
    /// (with `etcdctl`, as an operator of a flannel node would).
    pub fn configure(n: NodeNs, subnet: Ipv4Net) -> KernelNode {
        let ns = n.ns.as_str();
        let ip = n.ip.to_string();
        netns::ip(&[
            "-n",
            ns,
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &ip,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])
        .expect("kernel vxlan device (is the vxlan module available?)");
        netns::ip(&["-n", ns, "link", "set", "flannel.1", "mtu", "1450"]).unwrap();
        netns::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", subnet.network()),
            "dev",
            "flannel.1",
        ])
        .unwrap();
        netns::ip(&["-n", ns, "link", "set", "flannel.1", "up"]).unwrap();
        // Offloads stay on, as flanneld leaves them: across veth no NIC
        // finishes what they leave (partial inner checksums, whole TSO
        // super-packets), and weft must take both as the kernel would.
        let out = netns::ip(&["-n", ns, "-br", "link", "show", "flannel.1"]).unwrap();
        let mac: VtepMac = out
            .split_whitespace()
            .nth(2)
            .expect("MAC in `ip -br link`")
            .parse()
            .unwrap();
        KernelNode {
            ns: n.ns,
            ip: n.ip,
            subnet,
            mac,
        }
    }

    /// What flannel does for each peer lease: route via `.0` onlink, a permanent
    /// neighbour `.0` → VtepMAC, an FDB entry VtepMAC → public IP.
    pub fn add_peer(&self, lease: &Lease) {
        let d = lease.attrs.vxlan_data().unwrap();
        let gw = lease
            .subnet
            .expect("a kernel node's peer has an IPv4 subnet")
            .network()
            .to_string();
        let mac = d.vtep_mac.to_string();
        let ns = self.ns.as_str();
        netns::ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &lease.id().to_string(),
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ])
        .unwrap();
        netns::ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac,
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])
        .unwrap();
        netns::run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "bridge",
            "fdb",
            "append",
            &mac,
            "dev",
            "flannel.1",
            "dst",
            &lease.attrs.public_ip.to_string(),
        ]))
        .unwrap();
    }

    pub fn ping(&self, to: Ipv4Addr) -> bool {
        ping_from(&self.ns, to)
    }

    /// Interop with every weft node in `nodes`, both ways: ping, then `size`
    /// bytes of TCP from the first weft node to this node (on `port`) and from
    /// this node to the last weft node (on `port + 1`), byte-identical.
    pub fn assert_interop(&self, nodes: &[Node], port: u16, size: usize) {
        for n in nodes {
            assert!(
                n.ping(self.subnet.network()),
                "weft {} cannot reach the kernel node",
                n.ns
            );
            assert!(
                self.ping(n.addr()),
                "the kernel node cannot reach weft {}",
                n.ns
            );
        }
        let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
        let (s, g, n) = tcp_transfer(&first.ns, &self.ns, self.subnet.network(), port, size);
        assert_eq!((n, s), (size, g), "weft → kernel TCP stream differs");
        let (s, g, n) = tcp_transfer(&self.ns, &last.ns, last.addr(), port + 1, size);
        assert_eq!((n, s), (size, g), "kernel → weft TCP stream differs");
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can be compared.
pub fn fill(buf: &mut [u8], seed: &mut u64) {
    for b in buf {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = *seed as u8;
    }
}

/// Sends `total` bytes over TCP from namespace `from` to `to:port` (listening in
/// `to_ns`) and returns (sent hash, received hash, bytes received).
pub fn tcp_transfer(
    from: &str,
    to_ns: &str,
    to: impl Into<std::net::IpAddr>,
    port: u16,
    total: usize,
) -> ([u8; 32], [u8; 32], usize) {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let to: std::net::IpAddr = to.into();
    let (tx, rx) = std::sync::mpsc::channel();
    let to_ns2 = to_ns.to_string();
    let server = std::thread::spawn(move || {
        netns::in_netns(&to_ns2, || {
            let l = std::net::TcpListener::bind((to, port)).expect("bind server");
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut h = Sha256::new();
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        h.update(&buf[..k]);
                        n += k;
                    }
                    Err(e) => panic!("server read after {n} bytes: {e}"),
                }
            }
            (<[u8; 32]>::from(h.finalize()), n)
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server listening");
    let sent = netns::in_netns(from, || {
        let mut s =
            std::net::TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(5))
                .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = total;
        while left > 0 {
            let k = left.min(buf.len());
            fill(&mut buf[..k], &mut seed);
            s.write_all(&buf[..k]).expect("client write");
            h.update(&buf[..k]);
            left -= k;
        }
        <[u8; 32]>::from(h.finalize())
    })
    .unwrap();
    let (got, n) = server.join().expect("server thread");
    (sent, got, n)
}

/// Sends a datagram of each of `sizes` from `a_addr` (in `a_ns`) to an echo
/// server on `b_addr:6000` (in `b_ns`), up to five tries each, and returns
/// the sizes that never came back. A datagram that comes back altered fails
/// the test at once.
pub fn udp_echo_failures(
    a_ns: &str,
    a_addr: impl Into<std::net::IpAddr>,
    b_ns: &str,
    b_addr: impl Into<std::net::IpAddr>,
    sizes: &[usize],
) -> Vec<usize> {
    use std::net::UdpSocket;
    let (a_addr, b_addr): (std::net::IpAddr, std::net::IpAddr) = (a_addr.into(), b_addr.into());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = {
        let (ns, stop) = (b_ns.to_string(), stop.clone());
        std::thread::spawn(move || {
            netns::in_netns(&ns, || {
                let s = UdpSocket::bind((b_addr, 6000)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
            .unwrap()
        })
    };
    ready_rx.recv().unwrap();
    let failures = netns::in_netns(a_ns, || {
        let s = UdpSocket::bind((a_addr, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut bad = vec![];
        let mut buf = vec![0u8; 65536];
        for &size in sizes {
            let msg: Vec<u8> = (0..size).map(|i| (i as u8) ^ (size as u8)).collect();
            let mut ok = false;
            for _attempt in 0..5 {
                s.send_to(&msg, std::net::SocketAddr::new(b_addr, 6000))
                    .unwrap();
                match s.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == msg[..] => {
                        ok = true;
                        break;
                    }
                    Ok((n, _)) => {
                        panic!("datagram of {size} bytes came back corrupted ({n} bytes)")
                    }
                    Err(_) => continue,
                }
            }
            if !ok {
                bad.push(size);
            }
        }
        bad
    })
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    failures
}
