//! `weftd doctor` on real nodes: a healthy node passes; each failure of the
//! operators' notes gets its own line with the address, port or key and the
//! fix; and the doctor changes nothing on the node.

use std::process::Command;

use crate::harness::{Cluster, Opts, require_root};
use weft::netns;

/// The node's links, addresses, routes and rules, to compare before and after.
fn state_of(ns: &str) -> String {
    let mut out = String::new();
    for args in [
        vec!["-n", ns, "-o", "link"],
        vec!["-n", ns, "-o", "addr"],
        vec!["-n", ns, "route"],
    ] {
        out.push_str(&netns::ip(&args).unwrap_or_default());
    }
    for (prog, args) in [("nft", vec!["list", "ruleset"]), ("iptables-save", vec![])] {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, prog])
            .args(&args)
            .output()
            .unwrap();
        // iptables-save stamps the time: leave its comments out.
        for l in String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn line<'a>(report: &'a str, starts: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting {starts:?} in:\n{report}"))
}

#[test]
fn doctor_passes_a_healthy_node_and_changes_nothing() {
    if !require_root("doctor_passes_a_healthy_node_and_changes_nothing") {
        return;
    }
    let c = Cluster::up(
        "doc",
        &Opts {
            nodes: 3,
            ..Opts::default()
        },
    );
    let ns = c.nodes[0].ns.clone();
    let before = (state_of(&ns), c.store().leases().unwrap());
    let (ok, report) = c.doctor(0, &[]);
    eprintln!("{report}");
    assert!(ok, "{report}");
    assert!(report.ends_with("all checks passed\n"), "{report}");
    for n in &c.nodes[1..] {
        let l = line(&report, &format!("✓ peer {} ({})", n.subnet(), n.ip));
        assert!(l.contains("RTT") && l.contains("1450-byte packets"), "{l}");
    }
    assert!(line(&report, "✓ UDP port 8472").contains("a weftd runs here"));
    assert!(line(&report, "✓ UDP offloads").contains("GSO and GRO"));
    let mut after_leases = c.store().leases().unwrap();
    let mut before_leases = before.1.clone();
    after_leases.sort_by_key(|l| l.subnet);
    before_leases.sort_by_key(|l| l.subnet);
    assert_eq!(state_of(&ns), before.0, "the doctor changed the node");
    assert_eq!(
        after_leases
            .iter()
            .map(|l| (l.subnet, l.attrs.public_ip))
            .collect::<Vec<_>>(),
        before_leases
            .iter()
            .map(|l| (l.subnet, l.attrs.public_ip))
            .collect::<Vec<_>>(),
        "the doctor changed the store"
    );
}

/// A firewall that drops UDP 8472 at one peer, a peer whose weftd is down,
/// and a peer whose underlay MTU is too small: each named with its address,
/// the port and the fix; exit status non-zero.
#[test]
fn doctor_tells_a_dropped_port_from_a_down_peer_and_a_small_mtu() {
    if !require_root("doctor_tells_a_dropped_port_from_a_down_peer_and_a_small_mtu") {
        return;
    }
    let mut c = Cluster::up(
        "docbad",
        &Opts {
            nodes: 4,
            ..Opts::default()
        },
    );
    let firewalled = c.nodes[1].ip;
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.nodes[1].ns,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            "8472",
            "-j",
            "DROP",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    c.nodes[2].kill();
    let small = c.nodes[3].ip;
    netns::ip(&["-n", &c.nodes[3].ns, "link", "set", "eth0", "mtu", "1400"]).unwrap();
    let (ok, report) = c.doctor(0, &[]);
    eprintln!("{report}");
    assert!(!ok, "{report}");
    let l = line(
        &report,
        &format!("✗ peer {} ({firewalled})", c.nodes[1].subnet()),
    );
    assert!(
        l.contains(&format!(
            "{firewalled} answers ping, but VXLAN to it on UDP 8472 gets no answer"
        )) && l.contains("firewall"),
        "{l}"
    );
    let l = line(
        &report,
        &format!("✗ peer {} ({})", c.nodes[2].subnet(), c.nodes[2].ip),
    );
    assert!(
        l.contains(&format!("nothing listens on {}:8472", c.nodes[2].ip)),
        "{l}"
    );
    let l = line(
        &report,
        &format!("✗ peer {} ({small})", c.nodes[3].subnet()),
    );
    assert!(l.contains("1450-byte ones (the overlay MTU) do not"), "{l}");
    assert!(
        report.contains("fix: allow UDP 8472 between the nodes"),
        "{report}"
    );
    assert!(report.contains("fix: lower the overlay MTU"), "{report}");
    // JSON says the same, for machines.
    let (ok, json) = c.doctor(0, &["--output", "json"]);
    assert!(!ok);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["healthy"], false);
    let fails: Vec<&serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(fails.len(), 3, "{json}");
    assert!(fails.iter().all(|c| c["fix"].is_string()), "{json}");
}

/// No default route (and no --iface): the interface line says so, with the
/// flags that name one.
#[test]
fn doctor_names_a_missing_default_route() {
    if !require_root("doctor_names_a_missing_default_route") {
        return;
    }
    let c = Cluster::build(
        "docroute",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    netns::ip(&["-n", &c.nodes[0].ns, "route", "del", "default"]).unwrap();
    let (ok, report) = c.doctor(0, &[]);
    assert!(!ok, "{report}");
    let l = line(&report, "✗ interface:");
    assert!(
        l.contains("default route") && report.contains("--iface"),
        "{report}"
    );
}

/// A wrong --etcd-prefix on a real etcd: the config key is not there, and
/// the fix is the exact `etcdctl put` that writes it.
#[test]
fn doctor_gives_the_etcdctl_put_for_a_missing_config_key() {
    use crate::etcd_support::{EtcdServer, etcd_available};
    if !require_root("doctor_gives_the_etcdctl_put_for_a_missing_config_key")
        || !etcd_available("doctor_gives_the_etcdctl_put_for_a_missing_config_key")
    {
        return;
    }
    let mut c = Cluster::build(
        "docetcd",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    let etcd = EtcdServer::start_in_netns(c.underlay_ns(), netns::UNDERLAY_GW);
    etcd.put(
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    c.etcd = Some(etcd.endpoint());
    c.nodes[0].extra = vec!["--etcd-prefix".into(), "/kubernetes/network".into()];
    let (ok, report) = c.doctor(0, &[]);
    assert!(!ok, "{report}");
    assert!(
        line(&report, "✓ store:").contains(&etcd.endpoint()),
        "{report}"
    );
    let l = line(&report, "✗ network config:");
    assert!(
        l.contains("/kubernetes/network/config not found (wrong --etcd-prefix")
            && l.contains(&format!(
                "ETCDCTL_API=3 etcdctl --endpoints={} put /kubernetes/network/config",
                etcd.endpoint()
            )),
        "{report}"
    );
}
