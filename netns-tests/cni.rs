//! weft-cni end to end: two weft nodes, two pods on each (delegate mode with
//! the reference bridge + host-local on one node, built-in mode on the other);
//! every pod reaches every other, and TCP between pods on different nodes is
//! byte-identical.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use crate::harness::{Cluster, Node, Opts, require_root, tcp_transfer};
use weft::netns;

pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack node.
    pub ip6: Option<std::net::Ipv6Addr>,
}

/// Creates namespace `ns` and attaches it to `node` with weft-cni ADD in `mode`.
pub fn add_pod(node: &Node, ns: &str, mode: &str, cni_path: &str) -> Pod {
    pod_netns(ns);
    let r = cni(node, "ADD", ns, mode, cni_path);
    let addr = r["ips"][0]["address"]
        .as_str()
        .expect("an address in the ADD result");
    let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    assert!(
        node.subnet().contains(&ip),
        "{ip} is not in {}'s subnet {}",
        node.ns,
        node.subnet()
    );
    let ip6 = result_ips(&r).into_iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    Pod {
        ns: ns.to_string(),
        ip,
        ip6,
    }
}

/// A pod on a node of an IPv6-only network: its namespace and its one
/// address, which must be IPv6 and in the node's IPv6 subnet.
pub fn add_pod6(node: &Node, ns: &str, mode: &str, cni_path: &str) -> (String, std::net::Ipv6Addr) {
    pod_netns(ns);
    let r = cni(node, "ADD", ns, mode, cni_path);
    let ips = result_ips(&r);
    let [IpAddr::V6(ip6)] = ips[..] else {
        panic!(
            "{mode} on IPv6-only {}: want one IPv6 address, got {r}",
            node.ns
        );
    };
    assert!(
        node.subnet6().contains(&ip6),
        "{ip6} not in {}",
        node.subnet6()
    );
    (ns.to_string(), ip6)
}

/// A pod's network namespace, its loopback up.
pub fn pod_netns(ns: &str) {
    netns::ip(&["netns", "add", ns]).unwrap();
    netns::ip(&["-n", ns, "link", "set", "lo", "up"]).unwrap();
}

/// The addresses of a CNI ADD result's `ips`.
pub fn result_ips(r: &serde_json::Value) -> Vec<IpAddr> {
    r["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

pub fn cni(
    node: &Node,
    command: &str,
    pod_ns: &str,
    mode: &str,
    cni_path: &str,
) -> serde_json::Value {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "weft",
        "mode": mode,
        "subnetFile": node.dir.join("subnet.env"),
        "dataDir": node.dir.join("cni"),
        "delegate": {"isDefaultGateway": true}
    });
    run_plugin(
        &node.ns,
        std::path::Path::new(env!("CARGO_BIN_EXE_weft-cni")),
        command,
        pod_ns,
        cni_path,
        &conf,
    )
}

/// Runs the CNI plugin `bin` in namespace `ns` as a runtime does: `command`
/// for pod namespace `pod_ns` (its container ID too) on `eth0`, `cni_path`
/// for its delegates, `conf` on stdin. The call must succeed; its result.
pub fn run_plugin(
    ns: &str,
    bin: &std::path::Path,
    command: &str,
    pod_ns: &str,
    cni_path: &str,
    conf: &serde_json::Value,
) -> serde_json::Value {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod_ns)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {command} for {pod_ns} in {ns}: {}\n{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn pods_on_two_nodes_reach_each_other() {
    if !require_root("pods_on_two_nodes_reach_each_other") {
        return;
    }
    let c = Cluster::up(
        "cni",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let empty = tempfile::tempdir().unwrap();
    let empty_path = empty.path().to_str().unwrap().to_string();
    let modes = [
        ("delegate", "/usr/lib/cni"),
        ("builtin", empty_path.as_str()),
    ];
    let mut pods = vec![];
    for (i, node) in c.nodes.iter().enumerate() {
        let (mode, path) = modes[i];
        for j in 0..2 {
            let ns = format!("{}-p{j}", node.ns);
            pods.push((i, mode, path, add_pod(node, &ns, mode, path)));
        }
    }
    for (_, _, _, a) in &pods {
        for (_, _, _, b) in &pods {
            if a.ns != b.ns {
                let ok = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &a.ns,
                        "ping",
                        "-n",
                        "-q",
                        "-c1",
                        "-W2",
                        &b.ip.to_string(),
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success();
                assert!(
                    ok,
                    "pod {} ({}) cannot reach pod {} ({})",
                    a.ns, a.ip, b.ns, b.ip
                );
            }
        }
    }
    let (from, to) = (&pods[0].3, &pods[3].3);
    let size = 16 << 20;
    let (sent, got, n) = tcp_transfer(&from.ns, &to.ns, to.ip, 5100, size);
    assert_eq!(
        (n, sent),
        (size, got),
        "pod-to-pod TCP across nodes differs"
    );
    for (i, mode, path, p) in &pods {
        cni(&c.nodes[*i], "DEL", &p.ns, mode, path);
    }
}
