//! weft-cni conformance and behaviour, against real network namespaces (the
//! pods and a "node" netns standing for the host) and the real reference
//! plugins of containernetworking-plugins in /usr/lib/cni. The plugin binary
//! is called as a runtime calls it: `CNI_*` variables and stdin.
//!
//! The two-node end-to-end test (pods pinging across weft nodes) needs the
//! netns harness of `netns-tests/` and lives there.

mod cni_support;

use cni_support::*;
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn pod_addr(pod: &Netns, ifname: &str) -> Vec<String> {
    let v = pod.ip_json(&["-4", "addr", "show", "dev", ifname]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

fn pod_mtu(pod: &Netns, ifname: &str) -> Option<u64> {
    pod.ip_json(&["link", "show", "dev", ifname])[0]["mtu"].as_u64()
}

fn pod_routes(pod: &Netns) -> Vec<(String, String)> {
    pod.ip_json(&["-4", "route", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The whole conformance sequence for one version and one mode.
fn conformance(mode: Mode, version: &str) {
    let node = Node::new(mode);
    let pod = Netns::new("pod");
    let conf = node.conf(version);
    let cid = format!("conf-{version}");
    let add = node.call("ADD", &cid, Some(&pod.path()), "eth0", &conf);
    assert_eq!(
        add.code, 0,
        "{mode:?} {version} ADD: {}{}",
        add.stdout, add.stderr
    );
    let r = &add.json;

    // Result shape, per version.
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r}");
    let ip = &ips[0];
    let idx = ip["interface"].as_u64().expect("ips[0].interface") as usize;
    assert_eq!(ifaces[idx]["name"], "eth0", "{r}");
    assert_eq!(ifaces[idx]["sandbox"], pod.path(), "{r}");
    assert!(ifaces.iter().any(|i| i["name"] == "cni0"), "{r}");
    if version.starts_with('0') {
        assert_eq!(ip["version"], "4", "{version} ips carry version: {r}");
    } else {
        assert!(
            ip.get("version").is_none(),
            "{version} ips carry no version: {r}"
        );
    }
    assert_eq!(ip["gateway"], GATEWAY, "{r}");
    let address = ip["address"].as_str().expect("address").to_string();
    assert!(
        address.starts_with("10.77.5.") && address.ends_with("/24"),
        "{address}"
    );
    let routes = r["routes"].as_array().expect("routes");
    assert!(
        routes.iter().any(|rt| rt["dst"] == NETWORK),
        "route to the network: {r}"
    );

    // The pod really has it.
    assert_eq!(pod_addr(&pod, "eth0"), vec![address.clone()]);
    assert_eq!(pod_mtu(&pod, "eth0"), Some(u64::from(MTU)));
    let prs = pod_routes(&pod);
    assert!(
        prs.contains(&(NETWORK.to_string(), GATEWAY.to_string())),
        "{prs:?}"
    );
    assert!(
        prs.contains(&("default".to_string(), GATEWAY.to_string())),
        "{prs:?}"
    );
    assert!(node.ns.has_link("cni0"));
    assert_eq!(node.allocations().len(), 1);

    // CHECK: from 0.4.0 on, passes now and fails once eth0 is gone.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r.clone();
    let check = node.call("CHECK", &cid, Some(&pod.path()), "eth0", &check_conf);
    if version.starts_with("0.3") {
        assert_eq!(
            check.cni_code(),
            Some(1),
            "{version} has no CHECK: {}",
            check.stdout
        );
        assert_ne!(check.code, 0);
    } else {
        assert_eq!(
            check.code, 0,
            "{mode:?} {version} CHECK: {}{}",
            check.stdout, check.stderr
        );
    }
    assert!(pod.ip(&["link", "del", "eth0"]), "remove eth0 by hand");
    let check = node.call("CHECK", &cid, Some(&pod.path()), "eth0", &check_conf);
    assert_ne!(
        check.code, 0,
        "{mode:?} {version} CHECK after removal must fail"
    );
    assert!(check.cni_code().is_some(), "{}", check.stdout);

    // DEL twice.
    for i in 0..2 {
        let del = node.call("DEL", &cid, Some(&pod.path()), "eth0", &conf);
        assert_eq!(
            del.code, 0,
            "{mode:?} {version} DEL #{i}: {}{}",
            del.stdout, del.stderr
        );
        assert!(
            del.stdout.trim().is_empty(),
            "DEL prints nothing: {}",
            del.stdout
        );
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());

    // DEL after the netns is gone.
    let pod2 = Netns::new("pod");
    let cid2 = format!("gone-{version}");
    let add = node.call("ADD", &cid2, Some(&pod2.path()), "eth0", &conf);
    assert_eq!(add.code, 0, "{}{}", add.stdout, add.stderr);
    let path2 = pod2.path();
    pod2.delete();
    let del = node.call("DEL", &cid2, Some(&path2), "eth0", &conf);
    assert_eq!(
        del.code, 0,
        "{mode:?} {version} DEL with gone netns: {}{}",
        del.stdout, del.stderr
    );
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    let saved = node.data_dir().join("delegate");
    assert!(
        std::fs::read_dir(&saved).map_or(true, |mut d| d.next().is_none()),
        "saved delegate configurations left in {}",
        saved.display()
    );
}

#[test]
fn conformance_builtin_every_version() {
    if !root_or_skip("conformance_builtin_every_version") {
        return;
    }
    for v in VERSIONS {
        conformance(Mode::Builtin, v);
    }
}

#[test]
fn conformance_delegate_bridge_host_local_every_version() {
    if !root_or_skip("conformance_delegate_bridge_host_local_every_version") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "install containernetworking-plugins (scripts/deps.sh)"
    );
    for v in VERSIONS {
        conformance(Mode::Delegate, v);
    }
}

#[test]
fn version_answers_every_version() {
    for v in VERSIONS {
        let out = call_raw(
            &[("CNI_COMMAND", "VERSION")],
            json!({"cniVersion": v}).to_string().as_bytes(),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.json["cniVersion"], v);
        let sup: Vec<&str> = out.json["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(sup, VERSIONS);
    }
}

#[test]
fn bad_stdin_and_env_give_spec_codes_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let conf = |extra: Value| {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "weft",
            "subnetFile": dir.path().join("subnet.env"), "dataDir": data,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.to_string()
    };
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "bad"),
        ("CNI_NETNS", "/run/netns/none-such"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];
    let no_netns: Vec<(&str, &str)> = full
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    /// (what, environment, stdin, expected CNI code, words the message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not JSON",
            full.to_vec(),
            "{this is not json".into(),
            6,
            "not valid JSON",
        ),
        (
            "missing type",
            full.to_vec(),
            conf(json!({"type": null})),
            7,
            "type is missing",
        ),
        (
            "unknown cniVersion",
            full.to_vec(),
            conf(json!({"cniVersion": "0.9.9"})),
            1,
            "0.9.9",
        ),
        (
            "missing CNI_NETNS",
            no_netns,
            conf(json!({})),
            4,
            "CNI_NETNS",
        ),
        (
            "subnet.env not written yet",
            full.to_vec(),
            conf(json!({})),
            11,
            "subnet.env",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let out = call_raw(&env, stdin.as_bytes());
        assert_ne!(out.code, 0, "{what}: exit status");
        assert_eq!(out.cni_code(), Some(code), "{what}: {}", out.stdout);
        assert!(
            out.msg().contains(needle),
            "{what}: {:?} should name {needle:?}",
            out.msg()
        );
        assert!(!out.stderr.is_empty(), "{what}: logged on stderr");
        assert!(!data.exists(), "{what}: nothing written under dataDir");
    }
}

#[test]
fn status_reports_missing_subnet_env_as_50() {
    let node_dir = tempfile::tempdir().unwrap();
    let mut c = json!({"cniVersion": "1.1.0", "name": "cbr0", "type": "weft",
        "subnetFile": node_dir.path().join("subnet.env")});
    let out = call_raw(&[("CNI_COMMAND", "STATUS")], c.to_string().as_bytes());
    assert_eq!(out.cni_code(), Some(50), "{}", out.stdout);
    assert!(out.msg().contains("subnet.env"), "{}", out.msg());
    std::fs::write(
        node_dir.path().join("subnet.env"),
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let out = call_raw(&[("CNI_COMMAND", "STATUS")], c.to_string().as_bytes());
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    c["cniVersion"] = json!("1.0.0");
    let out = call_raw(&[("CNI_COMMAND", "STATUS")], c.to_string().as_bytes());
    assert_eq!(
        out.cni_code(),
        Some(1),
        "STATUS needs 1.1.0: {}",
        out.stdout
    );
}

#[test]
fn add_on_existing_interface_fails_clearly() {
    if !root_or_skip("add_on_existing_interface_fails_clearly") {
        return;
    }
    for mode in [Mode::Builtin, Mode::Delegate] {
        let node = Node::new(mode);
        let pod = Netns::new("pod");
        let conf = node.conf("1.0.0");
        let first = node.call("ADD", "first", Some(&pod.path()), "eth0", &conf);
        assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
        let second = node.call("ADD", "second", Some(&pod.path()), "eth0", &conf);
        assert_ne!(second.code, 0, "{mode:?}: second ADD on eth0 must fail");
        assert!(
            second.msg().contains("eth0") && second.msg().contains("exist"),
            "{mode:?}: {}",
            second.stdout
        );
        assert_eq!(
            node.allocations().len(),
            1,
            "{mode:?}: the failed ADD kept no address"
        );
        assert_eq!(
            pod_addr(&pod, "eth0").len(),
            1,
            "{mode:?}: the first pod is untouched"
        );
        for cid in ["first", "second"] {
            assert_eq!(
                node.call("DEL", cid, Some(&pod.path()), "eth0", &conf).code,
                0
            );
        }
        assert!(node.allocations().is_empty());
    }
}

#[test]
fn failed_builtin_add_undoes_its_work() {
    if !root_or_skip("failed_builtin_add_undoes_its_work") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    // A veth named cni0: the pod's veth cannot be enslaved to it, which fails
    // the ADD after the address is allocated and the veth pair created.
    assert!(node.ns.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p"
    ]));
    let pod = Netns::new("pod");
    let conf = node.conf("1.0.0");
    let out = node.call("ADD", "undo", Some(&pod.path()), "eth0", &conf);
    assert_ne!(out.code, 0, "ADD must fail: {}", out.stdout);
    assert!(out.msg().contains("cni0"), "{}", out.msg());
    assert!(!pod.has_link("eth0"), "pod interface removed");
    let links = node.ns.ip_json(&["link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("veth"))),
        // (cni0/cni0p are the test's own pair)
        "host veth removed: {links}"
    );
    assert!(node.builtin_allocations().is_empty(), "address released");
}

#[test]
fn fifty_parallel_adds_get_distinct_addresses_builtin() {
    if !root_or_skip("fifty_parallel_adds_get_distinct_addresses_builtin") {
        return;
    }
    parallel(Mode::Builtin);
}

#[test]
fn fifty_parallel_adds_get_distinct_addresses_delegate() {
    if !root_or_skip("fifty_parallel_adds_get_distinct_addresses_delegate") {
        return;
    }
    parallel(Mode::Delegate);
}

fn parallel(mode: Mode) {
    const N: usize = 50;
    let node = Node::new(mode);
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("par")).collect();
    let conf = node.conf("1.0.0");
    let adds: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.call("ADD", &format!("par{i}"), Some(&p.path()), "eth0", conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = adds
        .iter()
        .map(|o| {
            assert_eq!(o.code, 0, "{mode:?}: {}{}", o.stdout, o.stderr);
            o.json["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    for (p, a) in pods.iter().zip(&addrs) {
        assert_eq!(pod_addr(p, "eth0"), vec![a.clone()]);
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "{mode:?}: distinct addresses");
    assert_eq!(node.allocations().len(), N);
    let dels: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.call("DEL", &format!("par{i}"), Some(&p.path()), "eth0", conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for d in &dels {
        assert_eq!(d.code, 0, "{mode:?}: {}{}", d.stdout, d.stderr);
    }
    assert!(
        node.allocations().is_empty(),
        "{mode:?}: IPAM state empty: {:?}",
        node.allocations()
    );
}

#[test]
fn gc_releases_attachments_not_listed() {
    if !root_or_skip("gc_releases_attachments_not_listed") {
        return;
    }
    for (mode, key) in [
        (Mode::Builtin, "cni.dev/valid-attachments"),
        (Mode::Builtin, "cni.dev/attachments"),
        (Mode::Delegate, "cni.dev/valid-attachments"),
    ] {
        let node = Node::new(mode);
        let conf = node.conf("1.1.0");
        let pods: Vec<Netns> = (0..3).map(|_| Netns::new("gc")).collect();
        for (i, p) in pods.iter().enumerate() {
            let o = node.call("ADD", &format!("gc{i}"), Some(&p.path()), "eth0", &conf);
            assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        }
        let mut gc = conf.clone();
        gc[key] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &node.ns.name, BIN])
            .env_clear()
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", node.cni_path());
        let o = run(cmd, gc.to_string().as_bytes());
        assert_eq!(o.code, 0, "{mode:?} {key}: {}{}", o.stdout, o.stderr);
        let left = node.allocations();
        assert_eq!(left.len(), 1, "{mode:?} {key}: {left:?}");
        let kept = pod_addr(&pods[1], "eth0");
        assert_eq!(kept[0].split('/').next().unwrap(), left[0]);
        assert_eq!(
            node.call("DEL", "gc1", Some(&pods[1].path()), "eth0", &conf)
                .code,
            0
        );
        assert!(node.allocations().is_empty());
    }
}

#[test]
fn install_copies_binary_and_conflist() {
    let d = tempfile::tempdir().unwrap();
    let (bin, conf) = (d.path().join("bin"), d.path().join("net.d"));
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["install", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf);
    let out = run(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-weft.conflist")).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["type"], "weft");
    // The installed copy is the plugin: it answers VERSION.
    let mut cmd = std::process::Command::new(bin.join("weft"));
    cmd.env_clear().env("CNI_COMMAND", "VERSION");
    let v = run(cmd, br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(v.json["cniVersion"], "1.0.0", "{}", v.stdout);
    // A custom conflist that is not valid is refused, and nothing is replaced.
    std::fs::write(d.path().join("bad"), "{").unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["install", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--conflist")
        .arg(d.path().join("bad"));
    let out = run(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("bad"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 1);
}

#[test]
fn failed_delegate_add_undoes_its_work() {
    if !root_or_skip("failed_delegate_add_undoes_its_work") {
        return;
    }
    let node = Node::new(Mode::Delegate);
    // A /30: host-local has one address (.2) besides the gateway, so the
    // second ADD fails inside the delegate, after bridge created the veth.
    std::fs::write(
        node.subnet_env(),
        format!("FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.77.5.1/30\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"),
    )
    .unwrap();
    let conf = node.conf("1.0.0");
    let (p1, p2) = (Netns::new("pod"), Netns::new("pod"));
    let ok = node.call("ADD", "one", Some(&p1.path()), "eth0", &conf);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let fail = node.call("ADD", "two", Some(&p2.path()), "eth0", &conf);
    assert_ne!(fail.code, 0, "second ADD must fail: {}", fail.stdout);
    assert!(fail.msg().contains("delegate bridge ADD"), "{}", fail.msg());
    assert!(!p2.has_link("eth0"), "the failed pod has no interface");
    assert!(
        !node.data_dir().join("delegate/two").exists(),
        "no saved configuration kept"
    );
    assert_eq!(node.host_local_allocations(), vec!["10.77.5.2".to_string()]);
    assert_eq!(pod_addr(&p1, "eth0"), vec!["10.77.5.2/30".to_string()]);
    assert_eq!(
        node.call("DEL", "one", Some(&p1.path()), "eth0", &conf)
            .code,
        0
    );
    assert!(node.host_local_allocations().is_empty());
}

/// A pod flannel's plugin added before the node moved to weft: its delegate
/// configuration is in flannel's data dir (`<dir>/<containerID>`, as flannel
/// saves it). weft-cni's DEL finds it there and runs the real bridge and
/// host-local DEL: the address is released and the interface is gone.
#[test]
fn pods_added_by_flannel_are_deleted_through_its_saved_config() {
    if !root_or_skip("pods_added_by_flannel_are_deleted_through_its_saved_config") {
        return;
    }
    let node = Node::new(Mode::Delegate);
    let flannel_dir = node.dir.path().join("flannel-data");
    std::fs::create_dir_all(&flannel_dir).unwrap();
    // What flannel's plugin hands the bridge plugin (and saves).
    let delegate = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "isDefaultGateway": true,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "dataDir": node.host_local_dir(),
            "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": NETWORK}],
        },
    });
    let pod = Netns::new("pod");
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &node.ns.name,
        &format!("{REFERENCE_PLUGINS}/bridge"),
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("CNI_COMMAND", "ADD")
    .env("CNI_CONTAINERID", "underflannel")
    .env("CNI_NETNS", pod.path())
    .env("CNI_IFNAME", "eth0")
    .env("CNI_PATH", REFERENCE_PLUGINS);
    let added = cni_support::run(cmd, delegate.to_string().as_bytes());
    assert_eq!(added.code, 0, "{}{}", added.stdout, added.stderr);
    std::fs::write(flannel_dir.join("underflannel"), delegate.to_string()).unwrap();
    assert_eq!(node.host_local_allocations(), vec!["10.77.5.2".to_string()]);

    let mut conf = node.conf("1.0.0");
    conf["flannelDataDir"] = serde_json::json!(flannel_dir);
    let del = node.call("DEL", "underflannel", Some(&pod.path()), "eth0", &conf);
    assert_eq!(del.code, 0, "{}{}", del.stdout, del.stderr);
    assert!(
        node.host_local_allocations().is_empty(),
        "flannel's address released"
    );
    assert!(!pod.has_link("eth0"), "the pod's interface is gone");
    assert!(
        !flannel_dir.join("underflannel").exists(),
        "flannel's copy removed"
    );
}

fn link_mac(ns: &Netns, dev: &str) -> String {
    ns.ip_json(&["link", "show", "dev", dev])[0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// podman found the bridge's MAC following its lowest port, so a pod that
/// stayed lost its gateway for ~20 s when another went. Built-in mode sets
/// the bridge's MAC once (`0a:58` + the gateway address); it never moves,
/// and the pod that stays keeps reaching the gateway.
#[test]
fn builtin_bridge_mac_is_fixed_as_pods_come_and_go() {
    if !root_or_skip("builtin_bridge_mac_is_fixed_as_pods_come_and_go") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    let conf = node.conf("1.0.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pod")).collect();
    for (i, p) in pods.iter().enumerate() {
        let out = node.call("ADD", &format!("c{i}"), Some(&p.path()), "eth0", &conf);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let want = "0a:58:0a:4d:05:01"; // 10.77.5.1
        assert_eq!(link_mac(&node.ns, "cni0"), want, "after ADD {i}");
        assert_eq!(out.json["interfaces"][0]["mac"], want, "the result says so");
    }
    for i in [0, 1] {
        let out = node.call(
            "DEL",
            &format!("c{i}"),
            Some(&pods[i].path()),
            "eth0",
            &conf,
        );
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert_eq!(
            link_mac(&node.ns, "cni0"),
            "0a:58:0a:4d:05:01",
            "after DEL {i}"
        );
    }
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods[2].name,
            "ping",
            "-c1",
            "-W1",
            GATEWAY,
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "the pod that stayed reaches its gateway"
    );
}

/// `podman run --mac-address`: runtimeConfig.mac is the pod's MAC in
/// built-in mode; a MAC that is not unicast is refused, never ignored.
#[test]
fn builtin_runtime_config_mac_is_honoured() {
    if !root_or_skip("builtin_runtime_config_mac_is_honoured") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = json!({"mac": "02:42:ac:11:00:07"});
    let pod = Netns::new("pod");
    let out = node.call("ADD", "withmac", Some(&pod.path()), "eth0", &conf);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(link_mac(&pod, "eth0"), "02:42:ac:11:00:07");
    let pod_if = out.json["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .cloned()
        .unwrap();
    assert_eq!(pod_if["mac"], "02:42:ac:11:00:07");
    conf["runtimeConfig"] = json!({"mac": "01:00:5e:00:00:01"});
    let pod2 = Netns::new("pod");
    let out = node.call("ADD", "badmac", Some(&pod2.path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
    assert!(out.msg().contains("runtimeConfig.mac"), "{}", out.msg());
    assert!(!pod2.has_link("eth0"));
}

/// hostPort as kubelet asks for it: the default conflist's chain (weft,
/// then the real portmap plugin with `runtimeConfig.portMappings` and weft's
/// result as `prevResult`), in both modes. A connection to the node's
/// address on the host port reaches the pod's server; DEL removes it.
#[test]
fn host_port_through_the_real_portmap_plugin() {
    if !root_or_skip("host_port_through_the_real_portmap_plugin") {
        return;
    }
    for mode in [Mode::Delegate, Mode::Builtin] {
        let node = Node::new(mode);
        let pod = Netns::new("pod");
        let conf = node.conf("1.0.0");
        let add = node.call("ADD", "hostport", Some(&pod.path()), "eth0", &conf);
        assert_eq!(add.code, 0, "{mode:?}: {}{}", add.stdout, add.stderr);
        let pod_ip: std::net::Ipv4Addr = add.json["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let portmap = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}
            ]},
            "prevResult": add.json,
        });
        let run_portmap = |command: &str| {
            let mut cmd = std::process::Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                &node.ns.name,
                &format!("{REFERENCE_PLUGINS}/portmap"),
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "hostport")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_PLUGINS);
            cni_support::run(cmd, portmap.to_string().as_bytes())
        };
        let pm = run_portmap("ADD");
        assert_eq!(
            pm.code, 0,
            "{mode:?} portmap ADD: {}{}",
            pm.stdout, pm.stderr
        );
        let server = weft::netns::in_netns(&pod.name, || {
            std::net::TcpListener::bind((pod_ip, 80)).unwrap()
        })
        .unwrap();
        let accept = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = server.accept().unwrap();
            s.write_all(b"from the pod").unwrap();
        });
        let got = weft::netns::in_netns(&node.ns.name, || {
            use std::io::Read;
            let gw: std::net::Ipv4Addr = GATEWAY.parse().unwrap();
            let mut s = std::net::TcpStream::connect_timeout(
                &(gw, 18080).into(),
                std::time::Duration::from_secs(3),
            )
            .expect("connect to the host port");
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            buf
        })
        .unwrap();
        accept.join().unwrap();
        assert_eq!(got, "from the pod", "{mode:?}");
        assert_eq!(run_portmap("DEL").code, 0);
        assert_eq!(
            node.call("DEL", "hostport", Some(&pod.path()), "eth0", &conf)
                .code,
            0
        );
    }
}

fn pod_ip(out: &cni_support::Out) -> String {
    out.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// podman found two weft networks on one node handing out one address
/// twice. Built-in mode keeps one store per subnet: two networks (two
/// bridges) on the node's subnet get distinct addresses, and one
/// network's GC leaves the other's alone.
#[test]
fn two_builtin_networks_on_one_subnet_never_share_an_address() {
    if !root_or_skip("two_builtin_networks_on_one_subnet_never_share_an_address") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    let mut a = node.conf("1.0.0");
    a["name"] = json!("net-a");
    a["delegate"]["bridge"] = json!("cni0");
    let mut b = node.conf("1.0.0");
    b["name"] = json!("net-b");
    b["delegate"]["bridge"] = json!("cni1");
    let (pa, pb) = (Netns::new("pod"), Netns::new("pod"));
    let ra = node.call("ADD", "ca", Some(&pa.path()), "eth0", &a);
    assert_eq!(ra.code, 0, "{}{}", ra.stdout, ra.stderr);
    let rb = node.call("ADD", "cb", Some(&pb.path()), "eth0", &b);
    assert_eq!(rb.code, 0, "{}{}", rb.stdout, rb.stderr);
    assert_ne!(pod_ip(&ra), pod_ip(&rb));
    // net-a's GC with no valid attachment keeps net-b's.
    let mut gc = a.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = node.call("GC", "", None, "eth0", &gc);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        node.builtin_allocations().len(),
        1,
        "net-b's allocation stays"
    );
}

/// `podman run --ip`: runtimeConfig.ips is the pod's address in built-in
/// mode; one outside the node's subnet (code 7) or already held (108) is
/// refused, never ignored.
#[test]
fn builtin_runtime_config_ips_is_honoured_or_refused() {
    if !root_or_skip("builtin_runtime_config_ips_is_honoured_or_refused") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["10.77.5.77/24"]});
    let pod = Netns::new("pod");
    let out = node.call("ADD", "fixed", Some(&pod.path()), "eth0", &conf);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(pod_ip(&out), "10.77.5.77/24");
    assert_eq!(pod_addr(&pod, "eth0"), vec!["10.77.5.77/24".to_string()]);
    let again = Netns::new("pod");
    let out = node.call("ADD", "second", Some(&again.path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(108), "{}", out.stdout);
    assert!(
        out.msg().contains("10.77.5.77") && out.msg().contains("fixed/eth0"),
        "{}",
        out.msg()
    );
    assert!(!again.has_link("eth0"), "nothing left of the refused ADD");
    conf["runtimeConfig"] = json!({"ips": ["10.99.0.5"]});
    let out = node.call("ADD", "outside", Some(&again.path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
    assert!(out.msg().contains("10.77.5.0/24"), "{}", out.msg());
    conf["runtimeConfig"] = json!({"ips": ["fd00::5"]});
    let out = node.call("ADD", "v6", Some(&again.path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
}

/// The pod's global IPv6 addresses (`addr/prefix`), link-local ones left out.
fn pod_addr6(pod: &Netns, ifname: &str) -> Vec<String> {
    let v = pod.ip_json(&["-6", "addr", "show", "dev", ifname, "scope", "global"]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// The global IPv6 addresses of `ifname` still in duplicate address
/// detection (which neither answer nor forward yet).
fn tentative6(ns: &Netns, ifname: &str) -> Vec<String> {
    let v = ns.ip_json(&[
        "-6",
        "addr",
        "show",
        "dev",
        ifname,
        "scope",
        "global",
        "tentative",
    ]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(a["local"].as_str()?.to_string()))
        .collect()
}

fn pod_routes6(pod: &Netns) -> Vec<(String, String)> {
    pod.ip_json(&["-6", "route", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `ping -6` from `pod` to `dst`, a few tries (the reference bridge
/// plugin's gateway address may still be finishing DAD).
fn ping6(pod: &Netns, dst: &str) -> bool {
    (0..5).any(|_| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &pod.name, "ping", "-6", "-c1", "-W1", dst])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn host_veths(node: &Node) -> usize {
    node.ns
        .ip_json(&["link", "show", "type", "veth"])
        .as_array()
        .map_or(0, Vec::len)
}

/// The pod's (IPv4, IPv6) entries of an ADD result, checked: one per
/// family, in the node's subnets, with their gateways, on the pod's `eth0`.
fn dual_ips(mode: Mode, pod: &Netns, r: &Value) -> (String, String) {
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{mode:?}: one address per family: {r}");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    for ip in ips {
        let idx = ip["interface"].as_u64().expect("interface") as usize;
        assert_eq!(ifaces[idx]["name"], "eth0", "{mode:?}: {r}");
        assert_eq!(ifaces[idx]["sandbox"], pod.path(), "{mode:?}: {r}");
    }
    let (v4, v6) = (&ips[0], &ips[1]);
    let a4 = v4["address"].as_str().unwrap().to_string();
    let a6 = v6["address"].as_str().unwrap().to_string();
    assert!(
        a4.starts_with("10.77.5.") && a4.ends_with("/24"),
        "{mode:?}: {a4}"
    );
    assert_eq!(v4["gateway"], GATEWAY, "{mode:?}: {r}");
    let (addr6, len6) = a6.split_once('/').expect("prefix");
    let addr6: std::net::Ipv6Addr = addr6.parse().expect("IPv6 address");
    let subnet6: ipnet::Ipv6Net = SUBNET6.parse().unwrap();
    assert!(subnet6.contains(&addr6) && len6 == "64", "{mode:?}: {a6}");
    assert_ne!(addr6.to_string(), GATEWAY6, "{mode:?}");
    assert_eq!(v6["gateway"], GATEWAY6, "{mode:?}: {r}");
    let routes = r["routes"].as_array().expect("routes");
    for dst in [NETWORK, NETWORK6] {
        assert!(
            routes.iter().any(|rt| rt["dst"] == dst),
            "{mode:?}: a route to {dst}: {r}"
        );
    }
    (a4, a6)
}

/// Dual-stack subnet.env, in both modes: each pod gets an IPv4 and an IPv6
/// address of the node's subnets (the result lists both, with their
/// gateways), its routes for both families, reaches the other pod and the
/// gateway over IPv6; CHECK passes, and fails once the IPv6 address is
/// removed; DEL releases both addresses (a new ADD asking for them gets
/// them) and removes the pod's links; GC releases both.
fn dual_stack_pods(mode: Mode) {
    let node = Node::dual(mode);
    let conf = node.conf("1.0.0");
    let (p1, p2) = (Netns::new("ds6"), Netns::new("ds6"));
    let r1 = node.call("ADD", "ds6-one", Some(&p1.path()), "eth0", &conf);
    assert_eq!(r1.code, 0, "{mode:?}: {}{}", r1.stdout, r1.stderr);
    // The first pod of a fresh bridge can use its IPv6 gateway at once.
    assert_eq!(
        tentative6(&node.ns, "cni0"),
        Vec::<String>::new(),
        "{mode:?}"
    );
    let r2 = node.call("ADD", "ds6-two", Some(&p2.path()), "eth0", &conf);
    assert_eq!(r2.code, 0, "{mode:?}: {}{}", r2.stdout, r2.stderr);
    let (a4, a6) = dual_ips(mode, &p1, &r1.json);
    let (b4, b6) = dual_ips(mode, &p2, &r2.json);
    assert!(a4 != b4 && a6 != b6, "{mode:?}: distinct addresses");
    assert_eq!(
        node.allocations().len(),
        4,
        "{mode:?}: {:?}",
        node.allocations()
    );

    // The pods really have them, and their routes.
    assert_eq!(pod_addr(&p1, "eth0"), vec![a4.clone()], "{mode:?}");
    assert_eq!(pod_addr6(&p1, "eth0"), vec![a6.clone()], "{mode:?}");
    let rs = pod_routes6(&p1);
    for want in [NETWORK6, "default"] {
        assert!(
            rs.contains(&(want.to_string(), GATEWAY6.to_string())),
            "{mode:?}: {want} via {GATEWAY6} in {rs:?}"
        );
    }
    let b6_addr = b6.split('/').next().unwrap();
    assert!(ping6(&p1, b6_addr), "{mode:?}: pod to pod over IPv6");
    assert!(ping6(&p2, GATEWAY6), "{mode:?}: the IPv6 gateway answers");

    // CHECK: passes, then fails once the IPv6 address is gone.
    let mut check = conf.clone();
    check["prevResult"] = r2.json.clone();
    let ok = node.call("CHECK", "ds6-two", Some(&p2.path()), "eth0", &check);
    assert_eq!(ok.code, 0, "{mode:?} CHECK: {}{}", ok.stdout, ok.stderr);
    assert!(p2.ip(&["-6", "addr", "del", &b6, "dev", "eth0"]));
    let bad = node.call("CHECK", "ds6-two", Some(&p2.path()), "eth0", &check);
    assert_ne!(bad.code, 0, "{mode:?}: CHECK without the IPv6 address");
    assert!(bad.cni_code().is_some(), "{mode:?}: {}", bad.stdout);
    if mode == Mode::Builtin {
        assert_eq!(bad.cni_code(), Some(107), "{}", bad.stdout);
        assert!(bad.msg().contains(&b6), "{}", bad.msg());
    }

    // While pod one holds its addresses, asking for them is refused.
    let mut want = conf.clone();
    want["runtimeConfig"] = json!({"ips": [a4, a6]});
    let p3 = Netns::new("ds6");
    let taken = node.call("ADD", "ds6-three", Some(&p3.path()), "eth0", &want);
    assert_ne!(taken.code, 0, "{mode:?}: {a4} and {a6} are held");
    assert!(!p3.has_link("eth0"), "{mode:?}");
    assert_eq!(
        node.allocations().len(),
        4,
        "{mode:?}: {:?}",
        node.allocations()
    );

    // DEL releases both and removes pod one's links.
    let veths = host_veths(&node);
    let del = node.call("DEL", "ds6-one", Some(&p1.path()), "eth0", &conf);
    assert_eq!(del.code, 0, "{mode:?} DEL: {}{}", del.stdout, del.stderr);
    assert!(
        !p1.has_link("eth0"),
        "{mode:?}: the pod's interface is gone"
    );
    assert_eq!(host_veths(&node), veths - 1, "{mode:?}: its host end too");
    let left = node.allocations();
    assert_eq!(left.len(), 2, "{mode:?}: {left:?}");
    for a in [&a4, &a6] {
        let ip = a.split('/').next().unwrap();
        assert!(
            !left.iter().any(|l| l == ip),
            "{mode:?}: {ip} released: {left:?}"
        );
    }
    // ... and a new ADD gets them.
    let reuse = node.call("ADD", "ds6-three", Some(&p3.path()), "eth0", &want);
    assert_eq!(reuse.code, 0, "{mode:?}: {}{}", reuse.stdout, reuse.stderr);
    assert_eq!(dual_ips(mode, &p3, &reuse.json), (a4.clone(), a6.clone()));
    assert_eq!(pod_addr6(&p3, "eth0"), vec![a6.clone()], "{mode:?}");

    // GC with only pod three valid releases pod two's two addresses.
    let left = gc_then_del_all(&node, mode, &conf, [("ds6-two", &p2), ("ds6-three", &p3)]);
    assert_eq!(left.len(), 2, "{mode:?}: {left:?}");
}

/// GC with only the last of `pods` (container id, netns) valid, then DEL of
/// each; afterwards no allocation and no host veth is left. Returns the
/// allocations the GC left.
fn gc_then_del_all(
    node: &Node,
    mode: Mode,
    conf: &Value,
    pods: [(&str, &Netns); 2],
) -> Vec<String> {
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": pods[1].0, "ifname": "eth0"}]);
    let o = node.call("GC", "", None, "eth0", &gc);
    assert_eq!(o.code, 0, "{mode:?} GC: {}{}", o.stdout, o.stderr);
    let left = node.allocations();
    for (cid, p) in pods {
        let del = node.call("DEL", cid, Some(&p.path()), "eth0", conf);
        assert_eq!(
            del.code, 0,
            "{mode:?} DEL {cid}: {}{}",
            del.stdout, del.stderr
        );
    }
    assert!(
        node.allocations().is_empty(),
        "{mode:?}: {:?}",
        node.allocations()
    );
    assert_eq!(host_veths(node), 0, "{mode:?}");
    left
}

#[test]
fn dual_stack_pods_builtin() {
    if !root_or_skip("dual_stack_pods_builtin") {
        return;
    }
    dual_stack_pods(Mode::Builtin);
}

#[test]
fn dual_stack_pods_delegate_bridge_host_local() {
    if !root_or_skip("dual_stack_pods_delegate_bridge_host_local") {
        return;
    }
    dual_stack_pods(Mode::Delegate);
}

/// Dual-stack input weft-cni refuses, naming what to fix: an IPv6 address
/// asked of an IPv4-only node, and a full IPv6 subnet (the IPv4 address
/// allocated before it is given back).
#[test]
fn dual_stack_refusals_name_the_fix() {
    if !root_or_skip("dual_stack_refusals_name_the_fix") {
        return;
    }
    let node = Node::new(Mode::Builtin);
    let mut conf = node.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["10.77.5.9", "fd77:0:0:5::9"]});
    let pod = Netns::new("ds6");
    let out = node.call("ADD", "v4only", Some(&pod.path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
    assert!(
        out.msg().contains("FLANNEL_IPV6_SUBNET") && out.msg().contains("subnet.env"),
        "{}",
        out.msg()
    );
    assert!(!pod.has_link("eth0") && node.builtin_allocations().is_empty());

    // An IPv6 /126: ::1 is the gateway, ::2 and ::3 the pods'.
    let node = Node::new(Mode::Builtin);
    std::fs::write(
        node.subnet_env(),
        format!("FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET=fd77:0:0:5::1/126\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"),
    )
    .unwrap();
    let conf = node.conf("1.0.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("ds6")).collect();
    for (i, p) in pods[..2].iter().enumerate() {
        let out = node.call("ADD", &format!("full{i}"), Some(&p.path()), "eth0", &conf);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }
    let out = node.call("ADD", "full2", Some(&pods[2].path()), "eth0", &conf);
    assert_eq!(out.cni_code(), Some(104), "{}", out.stdout);
    assert!(
        out.msg().contains("fd77:0:0:5::/126") && out.msg().contains("FLANNEL_IPV6_SUBNET"),
        "{}",
        out.msg()
    );
    assert!(!pods[2].has_link("eth0"));
    assert_eq!(
        node.builtin_allocations().len(),
        4,
        "{:?}",
        node.builtin_allocations()
    );
}

/// The pod's one entry of an IPv6-only ADD result, checked: an IPv6
/// address of the node's IPv6 subnet with its gateway, on the pod's `eth0`,
/// and nothing of IPv4 in the addresses or the routes.
fn ipv6_only_ip(mode: Mode, pod: &Netns, r: &Value) -> String {
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{mode:?}: only an IPv6 address: {r}");
    let ip = &ips[0];
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    let idx = ip["interface"].as_u64().expect("interface") as usize;
    assert_eq!(ifaces[idx]["name"], "eth0", "{mode:?}: {r}");
    assert_eq!(ifaces[idx]["sandbox"], pod.path(), "{mode:?}: {r}");
    let a6 = ip["address"].as_str().expect("address").to_string();
    let (addr6, len6) = a6.split_once('/').expect("prefix");
    let addr6: std::net::Ipv6Addr = addr6.parse().expect("an IPv6 address");
    let subnet6: ipnet::Ipv6Net = SUBNET6.parse().unwrap();
    assert!(subnet6.contains(&addr6) && len6 == "64", "{mode:?}: {a6}");
    assert_ne!(addr6.to_string(), GATEWAY6, "{mode:?}");
    assert_eq!(ip["gateway"], GATEWAY6, "{mode:?}: {r}");
    let routes = r["routes"].as_array().expect("routes");
    assert!(
        routes.iter().any(|rt| rt["dst"] == NETWORK6),
        "{mode:?}: a route to {NETWORK6}: {r}"
    );
    assert!(
        routes
            .iter()
            .all(|rt| rt["dst"].as_str().is_some_and(|d| d.contains(':'))),
        "{mode:?}: IPv6 routes only: {r}"
    );
    a6
}

/// IPv6-only subnet.env (`EnableIPv4: false`), in both modes: two pods get
/// distinct IPv6 addresses of the node's IPv6 subnet and no IPv4 address,
/// the IPv6 network and default routes via the IPv6 gateway, and reach each
/// other and the gateway with `ping -6`; the bridge holds only the IPv6
/// gateway (built-in: its MAC `0a:58` + the gateway's last four bytes);
/// CHECK passes, and fails once the address is removed; an IPv6
/// `runtimeConfig.ips` is honoured (built-in: an IPv4 one, or an MTU under
/// 1280, is refused leaving nothing); DEL removes the interface, the host
/// veth and the allocation; GC releases what is not listed.
fn ipv6_only_pods(mode: Mode) {
    let node = Node::ipv6_only(mode);
    let conf = node.conf("1.0.0");
    let (p1, p2) = (Netns::new("v6o"), Netns::new("v6o"));
    let r1 = node.call("ADD", "v6o-one", Some(&p1.path()), "eth0", &conf);
    assert_eq!(r1.code, 0, "{mode:?}: {}{}", r1.stdout, r1.stderr);
    assert_eq!(
        tentative6(&node.ns, "cni0"),
        Vec::<String>::new(),
        "{mode:?}"
    );
    let r2 = node.call("ADD", "v6o-two", Some(&p2.path()), "eth0", &conf);
    assert_eq!(r2.code, 0, "{mode:?}: {}{}", r2.stdout, r2.stderr);
    let a6 = ipv6_only_ip(mode, &p1, &r1.json);
    let b6 = ipv6_only_ip(mode, &p2, &r2.json);
    assert_ne!(a6, b6, "{mode:?}: distinct addresses");
    assert_eq!(
        node.allocations().len(),
        2,
        "{mode:?}: {:?}",
        node.allocations()
    );

    // The pods and the bridge really have them, and nothing of IPv4.
    for (p, a) in [(&p1, &a6), (&p2, &b6)] {
        assert_eq!(pod_addr6(p, "eth0"), vec![a.clone()], "{mode:?}");
        assert!(pod_addr(p, "eth0").is_empty(), "{mode:?}: no IPv4 address");
        assert!(pod_routes(p).is_empty(), "{mode:?}: {:?}", pod_routes(p));
        assert_eq!(pod_mtu(p, "eth0"), Some(u64::from(MTU)), "{mode:?}");
        let rs = pod_routes6(p);
        for want in [NETWORK6, "default"] {
            assert!(
                rs.contains(&(want.to_string(), GATEWAY6.to_string())),
                "{mode:?}: {want} via {GATEWAY6} in {rs:?}"
            );
        }
    }
    assert!(pod_addr(&node.ns, "cni0").is_empty(), "{mode:?}");
    assert_eq!(
        pod_addr6(&node.ns, "cni0"),
        vec![format!("{GATEWAY6}/64")],
        "{mode:?}"
    );
    if mode == Mode::Builtin {
        let want = "0a:58:00:00:00:01"; // fd77:0:0:5::1
        assert_eq!(link_mac(&node.ns, "cni0"), want);
        assert_eq!(r2.json["interfaces"][0]["mac"], want, "{}", r2.json);
    }
    let b6_addr = b6.split('/').next().unwrap();
    assert!(ping6(&p1, b6_addr), "{mode:?}: pod to pod over IPv6");
    assert!(ping6(&p2, GATEWAY6), "{mode:?}: the IPv6 gateway answers");

    // CHECK: passes, then fails once the address is gone.
    let mut check = conf.clone();
    check["prevResult"] = r2.json.clone();
    let ok = node.call("CHECK", "v6o-two", Some(&p2.path()), "eth0", &check);
    assert_eq!(ok.code, 0, "{mode:?} CHECK: {}{}", ok.stdout, ok.stderr);
    assert!(p2.ip(&["-6", "addr", "del", &b6, "dev", "eth0"]));
    let bad = node.call("CHECK", "v6o-two", Some(&p2.path()), "eth0", &check);
    assert_ne!(bad.code, 0, "{mode:?}: CHECK without the address");
    assert!(bad.cni_code().is_some(), "{mode:?}: {}", bad.stdout);
    if mode == Mode::Builtin {
        assert_eq!(bad.cni_code(), Some(107), "{}", bad.stdout);
        assert!(bad.msg().contains(&b6), "{}", bad.msg());
    }

    // Built-in refuses what an IPv6-only node cannot give, leaving nothing.
    let p3 = Netns::new("v6o");
    if mode == Mode::Builtin {
        let mut v4 = conf.clone();
        v4["runtimeConfig"] = json!({"ips": ["10.77.5.9"]});
        let out = node.call("ADD", "v6o-three", Some(&p3.path()), "eth0", &v4);
        assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
        assert!(
            out.msg().contains("10.77.5.9")
                && out.msg().contains("IPv6-only")
                && out.msg().contains("subnet.env"),
            "{}",
            out.msg()
        );
        let mut low = conf.clone();
        low["delegate"]["mtu"] = json!(1200);
        let out = node.call("ADD", "v6o-three", Some(&p3.path()), "eth0", &low);
        assert_eq!(out.cni_code(), Some(7), "{}", out.stdout);
        assert!(
            out.msg().contains("IPv6-only") && out.msg().contains("delegate.mtu"),
            "{}",
            out.msg()
        );
        assert!(!p3.has_link("eth0"));
        assert_eq!(node.allocations().len(), 2, "{:?}", node.allocations());
    }
    // ... and gives the IPv6 address asked for.
    let mut want = conf.clone();
    want["runtimeConfig"] = json!({"ips": ["fd77:0:0:5::77/64"]});
    let r3 = node.call("ADD", "v6o-three", Some(&p3.path()), "eth0", &want);
    assert_eq!(r3.code, 0, "{mode:?}: {}{}", r3.stdout, r3.stderr);
    assert_eq!(ipv6_only_ip(mode, &p3, &r3.json), "fd77:0:0:5::77/64");
    assert_eq!(
        pod_addr6(&p3, "eth0"),
        vec!["fd77:0:0:5::77/64".to_string()]
    );

    // DEL removes pod one's interface, host end and address.
    let veths = host_veths(&node);
    let del = node.call("DEL", "v6o-one", Some(&p1.path()), "eth0", &conf);
    assert_eq!(del.code, 0, "{mode:?} DEL: {}{}", del.stdout, del.stderr);
    assert!(
        !p1.has_link("eth0"),
        "{mode:?}: the pod's interface is gone"
    );
    assert_eq!(host_veths(&node), veths - 1, "{mode:?}: its host end too");
    let a6_ip = a6.split('/').next().unwrap();
    let left = node.allocations();
    assert_eq!(left.len(), 2, "{mode:?}: {left:?}");
    assert!(!left.iter().any(|l| l == a6_ip), "{mode:?}: {left:?}");

    // GC with only pod three valid releases pod two's address.
    let left = gc_then_del_all(&node, mode, &conf, [("v6o-two", &p2), ("v6o-three", &p3)]);
    assert_eq!(left, vec!["fd77:0:0:5::77".to_string()], "{mode:?}");
}

#[test]
fn ipv6_only_pods_builtin() {
    if !root_or_skip("ipv6_only_pods_builtin") {
        return;
    }
    ipv6_only_pods(Mode::Builtin);
}

#[test]
fn ipv6_only_pods_delegate_bridge_host_local() {
    if !root_or_skip("ipv6_only_pods_delegate_bridge_host_local") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "install containernetworking-plugins (scripts/deps.sh)"
    );
    ipv6_only_pods(Mode::Delegate);
}
