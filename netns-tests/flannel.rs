//! Real flanneld beside weftd on one etcd network, as the seeds run them:
//! flanneld v0.28.11 and flannel's CNI plugin built from their modules
//! (`scripts/cluster.sh build-flannel`), the network config written once
//! with `etcdctl`, the same unit command line for both agents, and pods
//! wired by each node's own CNI plugin (flannel's on flannel nodes, weft-cni
//! on weft nodes). Every pod reaches every other with its own address, over
//! IPv4, dual-stack and IPv6-only networks; each agent reads the other's
//! leases, renewals and deletions; a node moves from flannel to weft and
//! back while its neighbours' connections keep running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cni::{Pod, add_pod};
use crate::etcd_support::{EtcdServer, etcd_available};
use crate::harness::{Cluster, Node, Opts, ping_from, require_root, tcp_transfer, wait_until};
use crate::lifecycle::{Probe, Stream};
use crate::podnet::{sa, tcp_seen, udp_seen};
use weft::netns::{self, UNDERLAY_GW};

/// flannel's nftables mode (`EnableNFTables`, flannel v0.25 and later).
const NFT_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
/// iptables for both, said outright (without the key weft takes nftables
/// where `nft` works and flannel takes iptables).
const IPT_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;
/// The seeds' prefix (notes 001 and 003), not flannel's default.
const PREFIX: &str = "/kubernetes/network";
/// The network config as seed 001 writes it with `etcdctl set`.
const NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

/// Where `scripts/cluster.sh build-flannel` leaves flanneld and flannel's
/// CNI plugin: `WEFT_FLANNEL_BIN`, else the cluster cache's bin/.
fn flannel_dir() -> PathBuf {
    std::env::var_os("WEFT_FLANNEL_BIN").map_or_else(
        || {
            let cache = std::env::var_os("WEFT_CLUSTER_CACHE")
                .unwrap_or_else(|| "/var/cache/weft-cluster".into());
            Path::new(&cache).join("bin")
        },
        PathBuf::from,
    )
}

/// Root, etcd and the flannel build are all here; else a loud skip (a
/// failure under CI=true, where `scripts/test.sh` builds flannel first).
fn runnable(test: &str) -> bool {
    if !(require_root(test) && etcd_available(test)) {
        return false;
    }
    let dir = flannel_dir();
    if dir.join("flanneld").is_file() && dir.join("flannel").is_file() {
        return true;
    }
    let msg = format!(
        "SKIPPED (no flanneld in {}): netns test `{test}`; run scripts/cluster.sh build-flannel",
        dir.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}, and CI=true requires it"
    );
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    false
}

/// The seeds' unit command line (`-etcd-endpoints=… -etcd-prefix=…
/// -iface=… --ip-masq`), which both agents are started with, and the
/// subnet file in the node's own directory.
fn unit_line(n: &Node, endpoint: &str) -> Vec<String> {
    vec![
        format!("-etcd-endpoints={endpoint}"),
        format!("-etcd-prefix={PREFIX}"),
        "-iface=eth0".into(),
        "--ip-masq".into(),
        format!("-subnet-file={}", n.dir.join("subnet.env").display()),
    ]
}

/// flanneld running in a node's namespace, logging to its flanneld.log.
struct Flanneld {
    ns: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Flanneld {
    /// Starts flanneld on `n` with the unit line (and `extra`) and waits
    /// until it has written subnet.env.
    fn start(n: &Node, endpoint: &str, extra: &[&str]) -> Flanneld {
        let log = n.dir.join("flanneld.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let _ = std::fs::remove_file(n.dir.join("subnet.env"));
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(flannel_dir().join("flanneld"))
            .args(unit_line(n, endpoint))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn flanneld");
        let mut f = Flanneld {
            ns: n.ns.clone(),
            log,
            child: Some(child),
        };
        let env = n.dir.join("subnet.env");
        let ok = wait_until(30, || {
            let running = f
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_none());
            assert!(running, "flanneld on {} exited:\n{}", f.ns, f.log());
            env.is_file()
        });
        assert!(
            ok,
            "flanneld on {}: no subnet.env in 30 s:\n{}",
            f.ns,
            f.log()
        );
        f
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `systemctl stop flanneld` sends, and waits for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Flanneld {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- flanneld log of {} ----\n{}", self.ns, self.log());
        }
    }
}

/// A CNI plugin of `kind` (`flannel`, or `weft` for weft-cni) run on node
/// `n` for pod namespace `pod_ns` as a runtime runs it, on kube-flannel.yml's
/// conflist entry (`hairpinMode`, `isDefaultGateway`) with only `type`
/// changed between the two, as an operator switching a node changes it; the
/// node's own subnet file, plugin data dir and host-local store are in the
/// node's directory. The result as JSON.
fn node_cni(n: &Node, kind: &str, command: &str, pod_ns: &str) -> serde_json::Value {
    let conf = serde_json::json!({
        "cniVersion": "0.3.1",
        "name": "cbr0",
        "type": kind,
        "subnetFile": n.dir.join("subnet.env"),
        "dataDir": n.dir.join("flannel-data"),
        "ipam": {"dataDir": n.dir.join("networks")},
        "delegate": {"hairpinMode": true, "isDefaultGateway": true}
    });
    let bin = if kind == "flannel" {
        flannel_dir().join("flannel")
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_weft-cni"))
    };
    crate::cni::run_plugin(&n.ns, &bin, command, pod_ns, "/usr/lib/cni", &conf)
}

/// A pod on a flannel node: its namespace, attached by flannel's plugin.
fn flannel_pod(n: &Node, pod_ns: &str) -> Pod {
    conf_pod(n, "flannel", pod_ns)
}

/// A pod attached by the plugin of `kind` with [`node_cni`]'s configuration.
fn conf_pod(n: &Node, kind: &str, pod_ns: &str) -> Pod {
    crate::cni::pod_netns(pod_ns);
    let ips = crate::cni::result_ips(&node_cni(n, kind, "ADD", pod_ns));
    let ip = ips.iter().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let ip6 = ips.iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    Pod {
        ns: pod_ns.to_string(),
        ip: ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        ip6,
    }
}

/// A pod on a weft node, attached by weft-cni in delegate mode (bridge and
/// host-local, as on a node that was flannel's).
fn weft_pod(n: &Node, pod_ns: &str, ipv6_only: bool) -> Pod {
    if ipv6_only {
        let (ns, ip6) = crate::cni::add_pod6(n, pod_ns, "delegate", "/usr/lib/cni");
        return Pod {
            ns,
            ip: Ipv4Addr::UNSPECIFIED,
            ip6: Some(ip6),
        };
    }
    add_pod(n, pod_ns, "delegate", "/usr/lib/cni")
}

/// Every pod reaches every other by ICMP, TCP and UDP, over each family
/// both have, and the receiver sees the sender's own address.
fn assert_every_pair(pods: &[(&str, Pod)], port: u16) {
    let mut port = port;
    for (ka, a) in pods {
        for (kb, b) in pods {
            if a.ns == b.ns {
                continue;
            }
            let mut pairs: Vec<(IpAddr, IpAddr)> = vec![];
            if !a.ip.is_unspecified() && !b.ip.is_unspecified() {
                pairs.push((a.ip.into(), b.ip.into()));
            }
            if let (Some(x), Some(y)) = (a.ip6, b.ip6) {
                pairs.push((x.into(), y.into()));
            }
            assert!(!pairs.is_empty(), "{ka} pod and {kb} pod share no family");
            for (from, to) in pairs {
                let what = format!("{ka} pod {from} ({}) → {kb} pod {to} ({})", a.ns, b.ns);
                assert!(wait_until(5, || ping_from(&a.ns, to)), "ping {what} fails");
                assert_eq!(
                    tcp_seen(&b.ns, sa(to, port), &a.ns, sa(to, port)),
                    Some(from),
                    "TCP {what}: the receiver saw another source (or nothing)"
                );
                assert_eq!(
                    udp_seen(&b.ns, sa(to, port + 1), &a.ns),
                    Some(from),
                    "UDP {what}: the receiver saw another source (or nothing)"
                );
                port += 2;
            }
        }
    }
}

/// `ip route` of a node's namespace (both families).
fn routes(ns: &str) -> String {
    let v4 = netns::ip(&["-n", ns, "route", "show"]).unwrap_or_default();
    let v6 = netns::ip(&["-n", ns, "-6", "route", "show"]).unwrap_or_default();
    format!("{v4}{v6}")
}

/// Waits until the flannel node `ns` routes `subnet` through flannel.1
/// (`want`), or no longer does (`!want`).
fn wait_flannel_route(ns: &str, subnet: &str, want: bool) {
    let ok = wait_until(15, || {
        routes(ns)
            .lines()
            .any(|l| l.starts_with(subnet) && l.contains("flannel"))
            == want
    });
    assert!(
        ok,
        "flannel node {ns}: route to {subnet} via flannel.1/flannel-v6.1 {}:\n{}",
        if want { "missing" } else { "still there" },
        routes(ns)
    );
}

/// Every lease under the prefix: key → value as JSON.
fn leases(etcd: &EtcdServer) -> BTreeMap<String, serde_json::Value> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|kv| kv.len() == 2)
        .map(|kv| {
            let v = serde_json::from_str(kv[1]).unwrap_or_else(|e| panic!("{}: {e}", kv[1]));
            (kv[0].to_string(), v)
        })
        .collect()
}

/// The lease key of a node whose subnet.env is in `dir`, as flannel names it.
fn key_of(n: &Node) -> String {
    let env = weft::subnet_env::SubnetEnv::read(&n.dir.join("subnet.env")).unwrap();
    let v4 = env.ipv4.as_ref().map(|h| h.subnet);
    let v6 = env.ipv6.as_ref().map(|h| h.subnet);
    let head = match v4 {
        Some(s) => weft::lease::subnet_key(&s),
        None => "0.0.0.0-0".to_string(),
    };
    match v6 {
        Some(s6) => format!("{PREFIX}/subnets/{head}&{}-{}", s6.addr(), s6.prefix_len()),
        None => format!("{PREFIX}/subnets/{head}"),
    }
}

/// The KEY=value lines of a node's subnet.env.
fn subnet_env(n: &Node) -> BTreeMap<String, String> {
    std::fs::read_to_string(n.dir.join("subnet.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The top-level fields of a lease value, with those of its backend data.
fn shape(v: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, x) in v.as_object().into_iter().flatten() {
        out.insert(k.clone());
        for (k2, _) in x.as_object().into_iter().flatten() {
            out.insert(format!("{k}.{k2}"));
        }
    }
    out
}

/// One lease per node, and weft node `w`'s of flanneld node `f`'s shape
/// field for field, the same backend, subnet.env with the same keys: the
/// two subnet.env files, for the caller's closer look.
fn assert_alike(
    c: &Cluster,
    etcd: &EtcdServer,
    w: usize,
    f: usize,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let all = leases(etcd);
    assert_eq!(all.len(), c.nodes.len(), "{all:#?}");
    for node in &c.nodes {
        assert!(
            all.contains_key(&key_of(node)),
            "{}: {all:#?}",
            key_of(node)
        );
    }
    let (wl, fl) = (&all[&key_of(&c.nodes[w])], &all[&key_of(&c.nodes[f])]);
    assert_eq!(shape(wl), shape(fl), "weft's lease {wl} and flannel's {fl}");
    assert_eq!(wl["BackendType"], fl["BackendType"]);
    let (we, fe) = (subnet_env(&c.nodes[w]), subnet_env(&c.nodes[f]));
    assert_eq!(
        we.keys().collect::<Vec<_>>(),
        fe.keys().collect::<Vec<_>>(),
        "weft's subnet.env {we:?}, flannel's {fe:?}"
    );
    (we, fe)
}

/// Which family set a mixed network carries.
#[derive(Clone, Copy, PartialEq)]
enum Family {
    V4,
    /// IPv4 with `"EnableNFTables": true`: both agents' rules in nftables.
    V4Nft,
    /// IPv4 with `"EnableNFTables": false`: both agents' rules in iptables.
    V4Ipt,
    Dual,
    V6Only,
}

/// A mixed network on one etcd, its nodes started in the order of `roles`
/// (`w`: weftd, `f`: flanneld, `.`: none yet), all with the unit line,
/// each waiting for the one before; the flanneld handles by node.
fn mixed(name: &str, family: Family, roles: &str) -> (Cluster, EtcdServer, Vec<Option<Flanneld>>) {
    let nodes = roles.len();
    let (mut c, etcd, conf) = match family {
        Family::V6Only => {
            let c = crate::ipv6only::ipv6_only_nodes(name, nodes);
            let etcd = EtcdServer::start_in_netns6(c.underlay_ns(), netns::UNDERLAY6_GW);
            (c, etcd, crate::ipv6only::IPV6_ONLY)
        }
        _ => {
            let c = Cluster::build(
                name,
                &Opts {
                    nodes,
                    ..Opts::default()
                },
            );
            let etcd = EtcdServer::start_in_netns(c.underlay_ns(), UNDERLAY_GW);
            let conf = match family {
                Family::Dual => crate::dualstack::DUAL_STACK,
                Family::V4Nft => NFT_CONF,
                Family::V4Ipt => IPT_CONF,
                _ => NET_CONF,
            };
            (c, etcd, conf)
        }
    };
    // Written once, by the operator, as in the seeds.
    etcd.put(&format!("{PREFIX}/config"), conf);
    let ep = etcd.endpoint();
    // weftd's harness line carries --etcd-endpoints and -subnet-file from
    // here; the rest of the unit line is the node's own.
    c.etcd = Some(ep.clone());
    let mut fl = vec![];
    for (i, role) in roles.chars().enumerate() {
        if role == '.' {
            fl.push(None);
        } else if role == 'w' {
            let line = unit_line(&c.nodes[i], &ep);
            c.nodes[i].extra = line[1..4].to_vec();
            c.start(i);
            fl.push(None);
        } else {
            fl.push(Some(Flanneld::start(&c.nodes[i], &ep, &[])));
        }
    }
    c.wait_peers(roles.matches(['w', 'f']).count() - 1);
    (c, etcd, fl)
}

/// The subnets of a node, as `ip route` prints them (each family it has).
fn subnets(n: &Node) -> Vec<String> {
    let env = weft::subnet_env::SubnetEnv::read(&n.dir.join("subnet.env")).unwrap();
    let mut out = vec![];
    if let Some(h) = env.ipv4 {
        out.push(h.subnet.to_string());
    }
    if let Some(h) = env.ipv6 {
        out.push(h.subnet.to_string());
    }
    out
}

/// The whole mixed network for one family, its nodes started in the order
/// of `roles` ([`mixed`]): leases of one shape, subnet.env alike, routes on
/// both kinds of node, every pod pair; then the last flannel node (when
/// there are two) and the last weft node decommissioned, their leases
/// deleted with etcdctl and their routes gone on both kinds of node.
/// Returns the network, still up, for more.
fn mixed_network(
    name: &str,
    family: Family,
    roles: &str,
    port: u16,
) -> (Cluster, EtcdServer, Vec<Option<Flanneld>>) {
    let (mut c, etcd, mut fl) = mixed(name, family, roles);
    let v6only = family == Family::V6Only;
    let w: Vec<usize> = roles.match_indices('w').map(|(i, _)| i).collect();
    let f: Vec<usize> = roles.match_indices('f').map(|(i, _)| i).collect();
    let n = roles.len();
    // subnet.env's network agrees; the MTU differs on an IPv6 underlay
    // (docs/migrating.md, "Known differences").
    let (we, fe) = assert_alike(&c, &etcd, w[0], f[0]);
    for k in ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPMASQ"] {
        assert_eq!(
            we.get(k),
            fe.get(k),
            "{k} in weft's and flannel's subnet.env"
        );
    }
    let mtus = (we["FLANNEL_MTU"].as_str(), fe["FLANNEL_MTU"].as_str());
    // Over an IPv6 underlay weft leaves room for its 70-byte header;
    // flanneld takes 50 off whatever the underlay (its kernel then
    // fragments the outer IPv6 packets of full-size inner ones).
    let want = if matches!(family, Family::V4 | Family::V4Nft | Family::V4Ipt) {
        ("1450", "1450")
    } else {
        ("1430", "1450")
    };
    assert_eq!(mtus, want, "FLANNEL_MTU of weft and of flannel");
    // Each kind routes to the other.
    for &i in &f {
        for j in (0..n).filter(|j| *j != i) {
            for s in subnets(&c.nodes[j]) {
                wait_flannel_route(&c.nodes[i].ns, &s, true);
            }
        }
    }
    for &i in &w {
        let log = c.nodes[i].log();
        for &j in &f {
            // A peer is named by its lease: its IPv4 subnet, when it has one.
            let s = &subnets(&c.nodes[j])[0];
            assert!(log.contains(&format!("peer added: {s}")), "{log}");
        }
    }
    // Pods, one per node, each wired by its node's own plugin.
    let mut pods = vec![];
    for (i, node) in c.nodes.iter().enumerate() {
        let ns = format!("{}-pod", node.ns);
        if fl[i].is_none() {
            pods.push(("weft", weft_pod(node, &ns, v6only)));
        } else {
            pods.push(("flannel", flannel_pod(node, &ns)));
        }
    }
    assert_every_pair(&pods, port);
    // Bulk TCP both ways between a weft pod and a flannel pod, byte for
    // byte: the segmentation and coalescing paths, and flannel.1's
    // offloaded checksums, under load.
    let (wp, fp) = (&pods[w[0]].1, &pods[f[0]].1);
    let addr = |p: &Pod| -> IpAddr {
        if v6only {
            p.ip6.unwrap().into()
        } else {
            p.ip.into()
        }
    };
    for (from, to, what) in [
        (wp, fp, "weft pod → flannel pod"),
        (fp, wp, "flannel pod → weft pod"),
    ] {
        let size = 8 << 20;
        let (sent, got, bytes) = tcp_transfer(&from.ns, &to.ns, addr(to), port - 1, size);
        assert_eq!(
            (bytes, sent),
            (size, got),
            "{what}: 8 MiB of TCP arrive intact"
        );
    }
    let mut peers = n - 1;
    // A flannel node decommissioned: flanneld stopped, its lease deleted
    // with etcdctl. The weft nodes and the other flannel node drop it.
    if let [first_f, .., last_f] = f[..] {
        fl[last_f].as_mut().unwrap().stop();
        let gone = subnets(&c.nodes[last_f]);
        etcd.del(&key_of(&c.nodes[last_f]));
        peers -= 1;
        c.wait_peers(peers);
        let log = c.nodes[w[0]].log();
        assert!(log.contains(&format!("peer removed: {}", gone[0])), "{log}");
        for s in &gone {
            wait_flannel_route(&c.nodes[first_f].ns, s, false);
        }
    }
    // A weft node decommissioned the same way: the flannel node drops it.
    let last_w = w[w.len() - 1];
    c.nodes[last_w].stop();
    let gone = subnets(&c.nodes[last_w]);
    etcd.del(&key_of(&c.nodes[last_w]));
    peers -= 1;
    c.wait_peers(peers);
    for s in &gone {
        wait_flannel_route(&c.nodes[f[0]].ns, s, false);
    }
    let (wp, fp) = (&pods[w[0]].1, &pods[f[0]].1);
    assert!(
        wait_until(5, || {
            wp.ip6.is_none_or(|a| ping_from(&fp.ns, a)) && (v6only || ping_from(&fp.ns, wp.ip))
        }),
        "the remaining weft and flannel pods lost each other"
    );
    c.nodes[w[0]].assert_nothing_wrong();
    (c, etcd, fl)
}

/// IPv4 (the seeds' network): two weft and two flannel nodes.
#[test]
fn flannel_and_weft_share_an_etcd_network() {
    if !runnable("flannel_and_weft_share_an_etcd_network") {
        return;
    }
    mixed_network("fl4", Family::V4, "wfwf", 7200);
}

/// Both agents' masquerade and forward rules in nftables (flannel's
/// `EnableNFTables`): each its own table, neither in the other's way.
#[test]
fn flannel_and_weft_share_an_nftables_etcd_network() {
    if !runnable("flannel_and_weft_share_an_nftables_etcd_network") {
        return;
    }
    let (c, _etcd, _fl) = mixed_network("fln", Family::V4Nft, "fwwf", 7250);
    let tables =
        netns::run(netns::exec_in(&c.nodes[0].ns, "nft").args(["list", "tables"])).unwrap();
    assert!(
        tables.contains("flannel"),
        "flanneld's nftables table: {tables}"
    );
    let tables =
        netns::run(netns::exec_in(&c.nodes[1].ns, "nft").args(["list", "tables"])).unwrap();
    assert!(tables.contains("weft"), "weftd's nftables table: {tables}");
}

/// Both agents' rules in iptables (`"EnableNFTables": false`): flannel's
/// FLANNEL-POSTRTG and FLANNEL-FWD chains beside weft's.
#[test]
fn flannel_and_weft_share_an_iptables_etcd_network() {
    if !runnable("flannel_and_weft_share_an_iptables_etcd_network") {
        return;
    }
    let (c, _etcd, _fl) = mixed_network("fli", Family::V4Ipt, "wffw", 7270);
    let save = |i: usize| {
        netns::run(netns::exec_in(&c.nodes[i].ns, "iptables-save").args(["-t", "nat"])).unwrap()
    };
    assert!(
        save(1).contains("FLANNEL-POSTRTG"),
        "flanneld's chain: {}",
        save(1)
    );
    assert!(save(0).contains("weft masq"), "weftd's rules: {}", save(0));
}

/// Dual-stack: every pod pair over IPv4 and over IPv6.
#[test]
fn flannel_and_weft_share_a_dual_stack_etcd_network() {
    if !runnable("flannel_and_weft_share_a_dual_stack_etcd_network") {
        return;
    }
    mixed_network("fl6", Family::Dual, "fwfw", 7300);
}

/// IPv6-only, on an underlay with no IPv4 at all, as far as flannel
/// supports it, which in etcd mode v0.28.11 does not: its etcd registry
/// marks every lease IPv4-enabled, and its vxlan backend, meeting the first
/// peer lease, calls its IPv4 device, which an IPv6-only node does not
/// have, and handles no lease after it; and it finds its own lease by
/// PublicIP, which is 0.0.0.0 for every node of such a network, so it takes
/// over the first lease it finds. What weft can do, it does: the leases are
/// of one shape, the weft nodes route to the flannel node, and a weftd
/// whose key flanneld takes over says so at once, naming it.
#[test]
fn ipv6_only_etcd_network_beside_flanneld_as_far_as_flannel_goes() {
    if !runnable("ipv6_only_etcd_network_beside_flanneld_as_far_as_flannel_goes") {
        return;
    }
    let (c, etcd, mut fl) = mixed("fl6o", Family::V6Only, "fww");
    assert_alike(&c, &etcd, 1, 0);
    let f6 = subnets(&c.nodes[0])[0].clone();
    for n in &c.nodes[1..] {
        assert!(
            n.log()
                .contains(&format!("peer added: {f6} via 2001:db8::1")),
            "{}",
            n.log()
        );
    }
    // flanneld's side: stuck at the first peer lease, no route to any.
    std::thread::sleep(Duration::from_secs(3));
    let flannel = fl[0].as_mut().unwrap();
    assert!(
        !routes(&c.nodes[0].ns)
            .lines()
            .any(|l| l.contains("via") && l.contains("flannel")),
        "flanneld v0.28.11 routes an IPv6-only etcd network now: test the pods, and update docs/migrating.md\n{}",
        routes(&c.nodes[0].ns)
    );
    // Restarted once its own key is gone (an operator cleaning up),
    // flanneld takes the first 0.0.0.0 lease: a weft node's.
    flannel.stop();
    etcd.del(&key_of(&c.nodes[0]));
    let before: BTreeSet<String> = leases(&etcd).into_keys().collect();
    *flannel = Flanneld::start(&c.nodes[0], &etcd.endpoint(), &[]);
    assert!(
        flannel.log().contains("for current IP (0.0.0.0), reusing"),
        "{}",
        flannel.log()
    );
    let taken = key_of(&c.nodes[0]);
    assert!(
        before.contains(&taken),
        "flanneld took {taken}, not one of {before:?}"
    );
    let victim = c.nodes[1..]
        .iter()
        .find(|n| key_of(n) == taken)
        .unwrap_or_else(|| panic!("{taken} is no weft node's"));
    let said = format!(
        "was taken over by {}: the agent there wrote its own address",
        netns::underlay6_addr(0)
    );
    assert!(
        wait_until(10, || victim.log().contains(&said)),
        "{}",
        victim.log()
    );
}

/// Renewals on both sides cost nothing: flanneld renews its lease (its
/// renew margin pulled in to one minute before its 24 h expiry, so the
/// first renewal comes after a minute) and weftd renews its own (60 s TTL)
/// several times meanwhile, while pods on the two nodes ping each other
/// five times a second: no ping is lost, weft never drops or changes the
/// flannel peer, and flanneld keeps its route to weft's subnet.
#[test]
fn renewals_on_either_side_cost_nothing() {
    if !runnable("renewals_on_either_side_cost_nothing") {
        return;
    }
    let (mut c, etcd, _) = mixed("flren", Family::V4, "w.");
    let ep = etcd.endpoint();
    let mut flannel = Flanneld::start(&c.nodes[1], &ep, &["-subnet-lease-renew-margin=1439"]);
    c.wait_peers(1);
    let (wk, fk) = (key_of(&c.nodes[0]), key_of(&c.nodes[1]));
    let revision = |key: &str| -> i64 {
        let out = etcd.etcdctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0)
    };
    let (w0, f0) = (revision(&wk), revision(&fk));
    let wp = weft_pod(&c.nodes[0], &format!("{}-pod", c.nodes[0].ns), false);
    let fp = flannel_pod(&c.nodes[1], &format!("{}-pod", c.nodes[1].ns));
    let ping = |from: &Pod, to: Ipv4Addr| {
        Command::new("ip")
            .args([
                "netns", "exec", &from.ns, "ping", "-n", "-q", "-i", "0.2", "-w", "75",
            ])
            .arg(to.to_string())
            .output()
            .expect("ping")
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ping(&wp, fp.ip));
        let b = s.spawn(|| ping(&fp, wp.ip));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (what, out) in [("weft pod → flannel pod", a), ("flannel pod → weft pod", b)] {
        let text = String::from_utf8_lossy(&out.stdout);
        println!(
            "{what}: {}",
            text.lines()
                .find(|l| l.contains("packet loss"))
                .unwrap_or("")
        );
        assert!(text.contains(" 0% packet loss"), "{what}: {text}");
    }
    assert!(
        revision(&fk) > f0,
        "flanneld did not renew {fk}:\n{}",
        flannel.log()
    );
    assert!(revision(&wk) > w0, "weftd did not renew {wk}");
    let log = c.nodes[0].log();
    let fsub = &subnets(&c.nodes[1])[0];
    assert!(
        !log.contains(&format!("peer removed: {fsub}"))
            && !log.contains(&format!("peer changed: {fsub}")),
        "{log}"
    );
    wait_flannel_route(&c.nodes[1].ns, &subnets(&c.nodes[0])[0], true);
    flannel.stop();
}

/// docs/migrating.md's etcd path, for real: a flannel node with pods on it
/// is switched to weft (flanneld stopped, weftd started with the same unit
/// line and --replace-kernel-vxlan) while a TCP connection runs between
/// pods on the two other nodes; then one of those is switched back to
/// flannel (weftd stopped, `weftd uninstall`, flanneld started). Each
/// switch keeps the node's subnet; what a pod on the switched node loses
/// (the longest gap in a 5 ms UDP probe, and whether its own TCP
/// connection survived) is printed; pods flannel added are deleted by
/// weft-cni with their addresses released, and what weft added and
/// flannel cannot delete is as the guide says.
#[test]
fn a_node_moves_from_flannel_to_weft_and_another_back() {
    if !runnable("a_node_moves_from_flannel_to_weft_and_another_back") {
        return;
    }
    let (mut c, etcd, mut fl) = mixed("flmig", Family::V4, "wfw");
    let ep = etcd.endpoint();
    let names: Vec<String> = c.nodes.iter().map(|n| n.ns.clone()).collect();
    let ns = |i: usize, p: &str| format!("{}-{p}", names[i]);
    let p0 = conf_pod(&c.nodes[0], "weft", &ns(0, "p0"));
    let p2 = conf_pod(&c.nodes[2], "weft", &ns(2, "p2"));
    let p1a = flannel_pod(&c.nodes[1], &ns(1, "p1a"));
    let p1b = flannel_pod(&c.nodes[1], &ns(1, "p1b"));
    let (key1, sub1) = (key_of(&c.nodes[1]), c.nodes[1].subnet());

    // flannel → weft on node 1.
    let others = Stream::open(&p0.ns, &p2.ns, p2.ip, 7501);
    let own = Stream::open(&p1a.ns, &p2.ns, p2.ip, 7502);
    let probe = Probe::start(&p1a.ns, &p0.ns, p0.ip, 7503);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    fl[1].as_mut().unwrap().stop();
    let line = unit_line(&c.nodes[1], &ep);
    c.nodes[1].extra = line[1..4].to_vec();
    c.nodes[1].extra.push("--replace-kernel-vxlan".into());
    c.start(1);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (gap, replies) = probe.finish();
    let own_kept = own.outcome();
    let others_kept = others.outcome();
    println!(
        "flannel → weft on {}: switch {took:?}; the node's pod: longest UDP gap {gap:?} ({replies} replies), its TCP connection: {own_kept:?}; pods on other nodes: TCP {others_kept:?}",
        c.nodes[1].ns
    );
    assert!(replies > 100, "too few replies: {replies}");
    others_kept.expect("the TCP connection between pods on two other nodes");
    own_kept.expect("the switched node's pod's TCP connection");
    assert!(
        gap < Duration::from_secs(2),
        "the switched node's pod lost {gap:?}"
    );
    assert_eq!(
        (key_of(&c.nodes[1]), c.nodes[1].subnet()),
        (key1, sub1),
        "the subnet stays"
    );
    assert!(
        c.nodes[1].log().contains("flannel.1"),
        "{}",
        c.nodes[1].log()
    );
    c.wait_peers(2);
    for (from, to) in [(&p1a, &p0), (&p0, &p1a), (&p1a, &p2)] {
        assert_eq!(
            tcp_seen(&to.ns, sa(to.ip, 7510), &from.ns, sa(to.ip, 7510)),
            Some(from.ip.into()),
            "TCP {} → {} after the switch",
            from.ip,
            to.ip
        );
    }
    // A new pod under weft: the next free address, not one flannel gave.
    let p1c = conf_pod(&c.nodes[1], "weft", &ns(1, "p1c"));
    assert!(
        sub1.contains(&p1c.ip) && ![p1a.ip, p1b.ip].contains(&p1c.ip),
        "{}",
        p1c.ip
    );
    // A pod flannel added, deleted under weft: its address released,
    // flannel's saved configuration gone, its veth gone.
    let held = |ip: Ipv4Addr| {
        c.nodes[1]
            .dir
            .join("networks/cbr0")
            .join(ip.to_string())
            .exists()
    };
    let saved = c.nodes[1].dir.join("flannel-data").join(&p1b.ns);
    assert!(
        held(p1b.ip) && saved.is_file(),
        "flannel's state for {}",
        p1b.ns
    );
    node_cni(&c.nodes[1], "weft", "DEL", &p1b.ns);
    assert!(!held(p1b.ip), "{} still allocated in host-local", p1b.ip);
    assert!(!saved.exists(), "{} left behind", saved.display());
    assert!(
        netns::ip(&["-n", &p1b.ns, "link", "show", "eth0"]).is_err(),
        "{}'s eth0 is still there",
        p1b.ns
    );

    // weft → flannel on node 2 (docs/migrating.md, "Back to flannel").
    let sub2 = c.nodes[2].subnet();
    let others = Stream::open(&p0.ns, &p1a.ns, p1a.ip, 7521);
    let probe = Probe::start(&p2.ns, &p0.ns, p0.ip, 7522);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    c.nodes[2].stop();
    netns::run(netns::exec_in(&c.nodes[2].ns, &crate::harness::weftd_bin()).arg("uninstall"))
        .unwrap();
    fl[2] = Some(Flanneld::start(&c.nodes[2], &ep, &[]));
    let took = t.elapsed();
    wait_flannel_route(&c.nodes[2].ns, &sub1.to_string(), true);
    std::thread::sleep(Duration::from_secs(1));
    let (gap, replies) = probe.finish();
    let others_kept = others.outcome();
    println!(
        "weft → flannel on {}: switch {took:?}; the node's pod: longest UDP gap {gap:?} ({replies} replies); pods on other nodes: TCP {others_kept:?}",
        c.nodes[2].ns
    );
    others_kept.expect("the TCP connection between pods on two other nodes");
    assert!(replies > 100, "too few replies: {replies}");
    assert_eq!(
        c.nodes[2].subnet(),
        sub2,
        "flanneld took the node's lease back"
    );
    c.wait_peers(2);
    for (from, to) in [(&p2, &p0), (&p0, &p2), (&p2, &p1a)] {
        assert_eq!(
            tcp_seen(&to.ns, sa(to.ip, 7530), &from.ns, sa(to.ip, 7530)),
            Some(from.ip.into()),
            "TCP {} → {} after the switch back",
            from.ip,
            to.ip
        );
    }
    // What weft added, flannel's plugin cannot delete: DEL succeeds (it
    // finds no saved configuration) and the address stays allocated until
    // the operator cleans host-local's store, as the guide says.
    node_cni(&c.nodes[2], "flannel", "DEL", &p2.ns);
    assert!(
        c.nodes[2]
            .dir
            .join("networks/cbr0")
            .join(p2.ip.to_string())
            .exists(),
        "flannel's plugin released {}: update docs/migrating.md",
        p2.ip
    );
    c.nodes[0].assert_nothing_wrong();
    c.nodes[1].assert_nothing_wrong();
}

/// weftd restarted three ways (SIGTERM then a start, a new one started
/// beside the old, SIGKILL then a start) while a pod on a real flannel
/// node probes a pod on the weft node every 5 ms and keeps a TCP
/// connection to it: the longest gap the flannel pod sees is printed and
/// bounded as for weft peers (docs/observing.md), and the connection lives.
#[test]
fn weft_restarts_cost_a_flannel_peer_no_connection() {
    if !runnable("weft_restarts_cost_a_flannel_peer_no_connection") {
        return;
    }
    let (mut c, _etcd, _fl) = mixed("flrst", Family::V4, "wf");
    let wp = weft_pod(&c.nodes[0], &format!("{}-pod", c.nodes[0].ns), false);
    let fp = flannel_pod(&c.nodes[1], &format!("{}-pod", c.nodes[1].ns));
    let stream = Stream::open(&fp.ns, &wp.ns, wp.ip, 7600);
    type Action = Box<dyn Fn(&mut Cluster) -> Duration>;
    let ways: [(&str, Action, u16); 3] = [
        (
            "SIGTERM + start",
            Box::new(|c: &mut Cluster| {
                c.nodes[0].stop();
                c.start(0);
                Duration::ZERO
            }),
            7601,
        ),
        (
            "overlapping start",
            Box::new(|c: &mut Cluster| {
                c.start_beside(0);
                Duration::ZERO
            }),
            7602,
        ),
        (
            "SIGKILL + start",
            Box::new(|c: &mut Cluster| {
                c.nodes[0].kill();
                let t = Instant::now();
                c.start(0);
                t.elapsed()
            }),
            7603,
        ),
    ];
    for (what, action, port) in ways {
        let probe = Probe::start(&fp.ns, &wp.ns, wp.ip, port);
        std::thread::sleep(Duration::from_millis(300));
        let start = action(&mut c);
        std::thread::sleep(Duration::from_millis(700));
        let (gap, replies) = probe.finish();
        println!("{what}: longest gap seen by the flannel node's pod {gap:?} ({replies} replies)");
        assert!(replies > 100, "{what}: too few replies: {replies}");
        assert!(
            gap <= start + Duration::from_millis(100),
            "{what}: the flannel pod lost {gap:?}"
        );
    }
    let bytes = stream.outcome().expect("the flannel pod's TCP connection");
    assert!(bytes > 0);
    c.nodes[0].assert_nothing_wrong();
}
