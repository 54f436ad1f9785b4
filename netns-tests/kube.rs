//! Kubernetes mode end to end: the test API server listens on the underlay
//! (192.0.2.254, inside the underlay namespace, reachable from every node), weft
//! nodes take their subnets from their node objects' pod CIDRs and find each
//! other through flannel's annotations, also a kernel-VXLAN node that only has
//! flannel-style annotations; a node without a pod CIDR refuses to start.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use weft::lease::{Lease, LeaseAttrs};
use weft::netns;
use weft::types::{Vni, VtepMac};

use crate::harness::{Cluster, KernelNode, Opts, require_root, wait_until};
use crate::kube_support::{ApiServer, Shared, flannel_annotations, new_state, node_json};

/// The API server on 192.0.2.254 inside the underlay namespace.
fn api_server(c: &Cluster, st: Shared) -> ApiServer {
    let l = netns::in_netns(c.underlay_ns(), || {
        std::net::TcpListener::bind("192.0.2.254:0")
    })
    .expect("enter the underlay namespace")
    .expect("bind 192.0.2.254");
    ApiServer::start(l, st, None)
}

fn kube_args(c: &mut Cluster, i: usize, url: &str, conf: &std::path::Path, node: &str) {
    let args = [
        "--kube-subnet-mgr".to_string(),
        "--kube-api-url".into(),
        url.to_string(),
        "--net-config-path".into(),
        conf.display().to_string(),
    ];
    c.set_node_args(i, &args, &[("NODE_NAME", node)]);
}

#[test]
fn kube_nodes_reach_each_other_and_a_flannel_kernel_node() {
    if !require_root("kube_nodes_reach_each_other_and_a_flannel_kernel_node") {
        return;
    }
    let mut c = Cluster::build(
        "kube",
        &Opts {
            nodes: 4,
            ..Opts::default()
        },
    );
    let conf = c.store_dir.with_file_name("kube-net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let st = new_state();
    {
        let mut s = st.lock().unwrap();
        for i in 0..3 {
            s.put_node(node_json(
                &format!("node{i}"),
                Some(&format!("10.244.{}.0/24", i + 1)),
                &c.nodes[i].ip.to_string(),
                json!({}),
            ));
        }
        s.put_node(node_json(
            "nocidr",
            None,
            &c.nodes[3].ip.to_string(),
            json!({}),
        ));
    }
    let srv = api_server(&c, st.clone());
    for i in 0..4 {
        let name = if i < 3 {
            format!("node{i}")
        } else {
            "nocidr".into()
        };
        kube_args(&mut c, i, &srv.url, &conf, &name);
    }

    // A node without a pod CIDR refuses, naming the flags that assign them.
    let out = c
        .command(3)
        .stdin(Stdio::null())
        .output()
        .expect("run weftd");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weftd without a pod CIDR must fail");
    assert!(
        text.contains("node nocidr has no pod CIDR") && text.contains("--allocate-node-cidrs=true"),
        "{text}"
    );

    for i in 0..3 {
        c.start(i);
    }
    c.nodes.truncate(3);
    c.wait_peers(2);
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(
            n.subnet().to_string(),
            format!("10.244.{}.0/24", i + 1),
            "lease from the pod CIDR"
        );
    }
    for a in &c.nodes {
        for b in &c.nodes {
            if a.ns != b.ns {
                assert!(a.ping(b.addr()), "{} cannot reach {}", a.ns, b.ns);
            }
        }
    }
    // NetworkUnavailable=False once the dataplane is up.
    assert!(wait_until(10, || {
        let n = st.lock().unwrap().node("node0");
        n["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
        })
    }));

    // A kernel VXLAN node that flannel would run: only its annotations tell weft about it.
    let bare = c.add_bare_node();
    let kernel_ip = bare.ip;
    let k = KernelNode::new(bare, "10.244.9.0/24".parse().unwrap(), &c.store());
    st.lock().unwrap().put_node(node_json(
        "flannel-node",
        Some("10.244.9.0/24"),
        &kernel_ip.to_string(),
        flannel_annotations(&kernel_ip.to_string(), &k.mac.to_string()),
    ));
    for (i, n) in c.nodes.iter().enumerate() {
        let node = st.lock().unwrap().node(&format!("node{i}"));
        let data = node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"]
            .as_str()
            .expect("backend-data annotation written by weftd")
            .to_string();
        let mac: VtepMac = serde_json::from_str::<serde_json::Value>(&data).unwrap()["VtepMAC"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        k.add_peer(&Lease {
            subnet: Some(n.subnet()),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(n.ip, Vni::new(1).unwrap(), mac),
            expiration: None,
        });
    }
    c.wait_peers(3);
    for n in &c.nodes {
        assert!(
            wait_until(10, || n.ping(k.subnet.network())),
            "{} cannot reach the kernel node",
            n.ns
        );
        assert!(k.ping(n.addr()), "the kernel node cannot reach {}", n.ns);
    }

    // A restarted node keeps its VtepMAC (read back from its annotation).
    let before = st.lock().unwrap().node("node1")["metadata"]["annotations"]
        ["flannel.alpha.coreos.com/backend-data"]
        .clone();
    c.nodes[1].stop();
    std::thread::sleep(Duration::from_millis(200));
    c.start(1);
    let after = st.lock().unwrap().node("node1")["metadata"]["annotations"]
        ["flannel.alpha.coreos.com/backend-data"]
        .clone();
    assert_eq!(before, after);
    assert!(wait_until(10, || c.nodes[0].ping(c.nodes[1].addr())));
    drop(srv);
}

/// Node `i` leased `fc00:0:0:<i+1>::/64` from its podCIDRs and announced
/// its IPv6 VTEP in flannel's annotations (`public-ipv6` its underlay
/// address, `backend-v6-data` a VtepMAC); returns its annotations.
fn ipv6_annotations(c: &Cluster, st: &Shared, i: usize) -> serde_json::Value {
    let n = &c.nodes[i];
    assert_eq!(n.subnet6().to_string(), format!("fc00:0:0:{}::/64", i + 1));
    let node = st.lock().unwrap().node(&format!("node{i}"));
    let a = node["metadata"]["annotations"].clone();
    assert_eq!(
        a["flannel.alpha.coreos.com/public-ipv6"],
        netns::underlay6_addr(i).to_string(),
        "{a}"
    );
    let v6: serde_json::Value = serde_json::from_str(
        a["flannel.alpha.coreos.com/backend-v6-data"]
            .as_str()
            .expect("backend-v6-data written"),
    )
    .unwrap();
    assert!(
        v6["VtepMAC"]
            .as_str()
            .is_some_and(|m| m.parse::<VtepMac>().is_ok()),
        "{v6}"
    );
    a
}

/// Kubernetes mode, dual-stack: nodes whose `spec.podCIDRs` hold an IPv4 and
/// an IPv6 CIDR lease both, announce flannel's IPv6 annotations
/// (`backend-v6-data`, `public-ipv6`), and reach each other over IPv6.
#[test]
fn kube_dual_stack_nodes_reach_each_other_over_ipv6() {
    if !require_root("kube_dual_stack_nodes_reach_each_other_over_ipv6") {
        return;
    }
    let mut c = Cluster::build(
        "kube6",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let conf = c.store_dir.with_file_name("kube-net-conf.json");
    std::fs::write(&conf, crate::dualstack::DUAL_STACK).unwrap();
    let st = new_state();
    {
        let mut s = st.lock().unwrap();
        for i in 0..2 {
            let mut n = node_json(
                &format!("node{i}"),
                Some(&format!("10.244.{}.0/24", i + 1)),
                &c.nodes[i].ip.to_string(),
                json!({}),
            );
            n["spec"]["podCIDRs"] = json!([
                format!("10.244.{}.0/24", i + 1),
                format!("fc00:0:0:{}::/64", i + 1)
            ]);
            s.put_node(n);
        }
    }
    let srv = api_server(&c, st.clone());
    for i in 0..2 {
        kube_args(&mut c, i, &srv.url, &conf, &format!("node{i}"));
        c.start(i);
    }
    c.wait_peers(1);
    for i in 0..2 {
        ipv6_annotations(&c, &st, i);
    }
    assert!(c.nodes[0].ping6(c.nodes[1].addr6()));
    assert!(c.nodes[1].ping6(c.nodes[0].addr6()));
    drop(srv);
}

/// Kubernetes mode, IPv6-only: the API server is reached over the IPv6
/// underlay (the nodes have no IPv4 address), each node's `spec.podCIDRs`
/// holds one IPv6 CIDR, weftd leases it, announces only flannel's IPv6
/// annotations (`backend-v6-data`, `public-ipv6`; no `backend-data` or
/// `public-ip`, as flannel writes none there), and the nodes reach each
/// other over IPv6.
#[test]
fn kube_ipv6_only_nodes_reach_each_other() {
    if !require_root("kube_ipv6_only_nodes_reach_each_other") {
        return;
    }
    let mut c = crate::ipv6only::ipv6_only_nodes("kube6o", 2);
    let conf = c.store_dir.with_file_name("kube-net-conf.json");
    std::fs::write(&conf, crate::ipv6only::IPV6_ONLY).unwrap();
    let st = new_state();
    for i in 0..2 {
        let cidr = format!("fc00:0:0:{}::/64", i + 1);
        let n = node_json(
            &format!("node{i}"),
            Some(&cidr),
            &netns::underlay6_addr(i).to_string(),
            json!({}),
        );
        st.lock().unwrap().put_node(n);
    }
    let gw6 = std::net::SocketAddr::from((netns::UNDERLAY6_GW, 0));
    let l = netns::in_netns(c.underlay_ns(), || std::net::TcpListener::bind(gw6))
        .expect("enter the underlay namespace")
        .expect("bind [2001:db8::fe]");
    let srv = ApiServer::start(l, st.clone(), None);
    assert!(srv.url.contains("[2001:db8::fe]"), "{}", srv.url);
    for i in 0..2 {
        let extra = std::mem::take(&mut c.nodes[i].extra);
        kube_args(&mut c, i, &srv.url, &conf, &format!("node{i}"));
        c.nodes[i].extra.extend(extra);
        c.start(i);
    }
    c.wait_peers(1);
    for i in 0..2 {
        let a = ipv6_annotations(&c, &st, i);
        assert!(
            a.get("flannel.alpha.coreos.com/backend-data").is_none()
                && a.get("flannel.alpha.coreos.com/public-ip").is_none(),
            "{a}"
        );
    }
    assert!(c.nodes[0].ping6(c.nodes[1].addr6()));
    assert!(c.nodes[1].ping6(c.nodes[0].addr6()));
    // NetworkUnavailable=False once the dataplane is up, as on IPv4.
    assert!(wait_until(10, || {
        let n = st.lock().unwrap().node("node0");
        n["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
        })
    }));
    // `weftd doctor` with the node's own flags: the node object, its
    // annotations and the peer over IPv6 all pass (with weft-cni installed,
    // as the DaemonSet's init container does, beside the reference plugins).
    let dir = c.nodes[0].dir.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-cni"))
        .arg("install")
        .arg("--bin-dir")
        .arg(dir.join("cni-bin"))
        .arg("--conf-dir")
        .arg(dir.join("cni-net.d"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for p in ["bridge", "host-local", "portmap"] {
        std::fs::copy(format!("/usr/lib/cni/{p}"), dir.join("cni-bin").join(p)).unwrap();
    }
    // The conflist reads this node's subnet.env (the default is flannel's path).
    let list = dir.join("cni-net.d").join("10-weft.conflist");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    v["plugins"][0]["subnetFile"] = json!(dir.join("subnet.env"));
    std::fs::write(&list, v.to_string()).unwrap();
    let (ok, report) = c.doctor(0, &[]);
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "✓ peer {} ({}): reached through VXLAN",
            c.nodes[1].subnet6(),
            netns::underlay6_addr(1)
        )),
        "{report}"
    );
    for n in &c.nodes {
        n.assert_nothing_wrong();
    }
    drop(srv);
}
