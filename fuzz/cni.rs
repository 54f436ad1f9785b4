//! weft-cni's entry points: the network configuration on stdin (and the
//! conflists `install` checks), the `CNI_*` environment, results and
//! `prevResult` in every CNI version, and the built-in IPAM's choice of
//! address. Seeds are the conflists and results of docs/cni.md.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::Value;

use weft::cni::conf::{self, NetConf};
use weft::cni::env::{CniEnv, Command, valid_container_id, valid_ifname};
use weft::cni::error::CniError;
use weft::cni::result::CniResult;
use weft::cni::version::Version;
use weft::cni::{builtin, delegate, install, ipam};
use weft::subnet_env::SubnetEnv;

use crate::{Entry, Label, Outcome, Rng, accepted, mutate, refused, shape};

pub fn entries() -> Vec<Entry> {
    vec![
        Entry {
            name: "cni-conf",
            about: "the CNI config on stdin: parse_json, version_of, NetConf::from_map and every accessor, delegate_config, GC attachments, VERSION, conflists",
            seeds: conf_seeds,
            mutate: conf_mutate,
            run: conf_run,
        },
        Entry {
            name: "cni-env",
            about: "the CNI_* environment: Command::from_env, CniEnv::from_env for every command",
            seeds: env_seeds,
            mutate: env_mutate,
            run: env_run,
        },
        Entry {
            name: "cni-result",
            about: "CniResult::from_json (prevResult, a delegate's answer), to_json in every version, the delegate CHECK's prevResult",
            seeds: result_seeds,
            mutate: result_mutate,
            run: result_run,
        },
        Entry {
            name: "ipam",
            about: "the built-in IPAM's candidates (subnet, last_reserved), gateway, host veth name",
            seeds: ipam_seeds,
            mutate: ipam_mutate,
            run: ipam_run,
        },
    ]
}

const DICT: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "mode",
    "delegate",
    "ipam",
    "routes",
    "dst",
    "gw",
    "subnetFile",
    "dataDir",
    "runtimeConfig",
    "prevResult",
    "plugins",
    "capabilities",
    "hairpinMode",
    "isDefaultGateway",
    "isGateway",
    "ipMasq",
    "bridge",
    "mtu",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "interfaces",
    "ips",
    "address",
    "gateway",
    "interface",
    "sandbox",
    "mac",
    "dns",
    "version",
    "weft",
    "bridge",
    "host-local",
    "builtin",
    "auto",
    "0.3.0",
    "0.4.0",
    "1.0.0",
    "1.1.0",
];

const MAX_TEXT: usize = 16 * 1024;

fn code(e: &CniError) -> Label {
    Label::Owned(format!("code {}", e.code))
}

fn senv() -> SubnetEnv {
    SubnetEnv::parse(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        Path::new("/run/flannel/subnet.env"),
    )
    .expect("a valid subnet.env")
}

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:01","sandbox":"/run/netns/pod1"}],"ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1","interface":1}],"routes":[{"dst":"10.244.0.0/16"}],"dns":{}}"#;

fn conf_seeds() -> Vec<Vec<u8>> {
    let prev: Value = serde_json::from_str(PREV).expect("JSON");
    let seeds = [
        serde_json::json!({"cniVersion":"1.0.0","name":"cbr0","type":"weft"}),
        serde_json::json!({"cniVersion":"1.0.0","name":"cbr0","type":"weft",
            "delegate":{"hairpinMode":true,"isDefaultGateway":true}}),
        serde_json::json!({"cniVersion":"1.1.0","name":"cbr0","type":"weft","mode":"builtin",
            "delegate":{"isDefaultGateway":true,"bridge":"cni0","mtu":1450}}),
        serde_json::json!({"cniVersion":"0.3.1","name":"cbr0","type":"weft",
            "delegate":{"hairpinMode":true,"isDefaultGateway":true},
            "ipam":{"routes":[{"dst":"192.168.0.0/24"}]}}),
        serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"weft","mode":"delegate",
            "subnetFile":"/run/flannel/subnet.env","dataDir":"/var/lib/cni/weft",
            "delegate":{"mtu":1400,"ipMasq":true,"isGateway":false},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}),
        serde_json::json!({"cniVersion":"0.4.0","name":"cbr0","type":"weft","prevResult": prev}),
        serde_json::json!({"cniVersion":"1.1.0","name":"cbr0","type":"weft",
            "cni.dev/valid-attachments":[{"containerID":"abc123","ifname":"eth0"}]}),
        // Conflists, as `weft-cni install` checks them.
        serde_json::json!({"name":"cbr0","cniVersion":"1.0.0","plugins":[
            {"type":"weft","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}),
    ];
    seeds
        .iter()
        .map(|v| serde_json::to_vec(v).expect("JSON"))
        .collect()
}

fn conf_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::json(rng, v, seeds, DICT, MAX_TEXT);
}

fn conf_run(input: &[u8]) -> Outcome {
    let _ = install::validate_conflist(
        &String::from_utf8_lossy(input),
        Path::new("/etc/cni/net.d/10-weft.conflist"),
        "weft",
    );
    // VERSION reads nothing but stdin.
    let version_env = |k: &str| (k == "CNI_COMMAND").then(|| "VERSION".to_string());
    let out = weft::cni::run(&version_env, &mut &input[..]);
    let answer: Result<Value, _> = serde_json::from_str(&out.stdout);
    ensure!(
        out.exit == 0 && answer.is_ok_and(|a| a["supportedVersions"].is_array()),
        "VERSION answered {out:?}"
    );
    let m = match conf::parse_json(input) {
        Ok(m) => m,
        Err(e) => return refused(code(&e)),
    };
    let _ = conf::valid_attachments(&m);
    let version = match conf::version_of(&m) {
        Ok(v) => v,
        Err(e) => return refused(code(&e)),
    };
    let c = match NetConf::from_map(&m, version) {
        Ok(c) => c,
        Err(e) => return refused(code(&e)),
    };
    ensure!(
        !c.name.is_empty() && !c.plugin_type.is_empty(),
        "empty name or type accepted"
    );
    let _ = (
        valid_container_id(&c.name),
        c.delegate_type(),
        c.ipam_type(),
    );
    let s = senv();
    if let Ok(b) = c.bridge_name() {
        ensure!(valid_ifname(&b), "bridge name {b:?} accepted");
    }
    if let Ok(mtu) = c.mtu(&s) {
        ensure!(
            mtu == s.mtu || (68..=65535).contains(&mtu),
            "MTU {mtu} accepted"
        );
    }
    let _ = (c.default_route(), c.hairpin());
    for v in [version, Version::LATEST] {
        if let Ok(d) = c.delegate_config(&s, v) {
            ensure!(
                d["name"] == c.name.as_str() && d["cniVersion"] == v.as_str(),
                "delegate config names {} {}",
                d["name"],
                d["cniVersion"]
            );
            ensure!(
                d["ipam"]["ranges"][0][0]["subnet"] == "10.244.3.0/24",
                "delegate IPAM ranges {}",
                d["ipam"]["ranges"]
            );
            let routes = d["ipam"]["routes"].as_array();
            ensure!(
                routes
                    .and_then(|r| r.last())
                    .is_some_and(|r| r["dst"] == "10.244.0.0/16"),
                "delegate routes {:?}",
                routes
            );
            ensure!(
                serde_json::to_vec(&d).is_ok(),
                "a delegate config that does not serialize"
            );
        }
    }
    let veth = builtin::host_veth_name(&c.name, "eth0");
    ensure!(valid_ifname(&veth), "host veth name {veth:?}");
    accepted(version.as_str())
}

fn env_seeds() -> Vec<Vec<u8>> {
    [
        "CNI_COMMAND=ADD\nCNI_CONTAINERID=abc123\nCNI_NETNS=/run/netns/pod1\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin",
        "CNI_COMMAND=DEL\nCNI_CONTAINERID=abc123\nCNI_IFNAME=eth0\nCNI_PATH=/opt/cni/bin:/usr/libexec/cni",
        "CNI_COMMAND=CHECK\nCNI_CONTAINERID=0123456789abcdef_x.y-z\nCNI_NETNS=/var/run/netns/cni-1234\nCNI_IFNAME=net1\nCNI_PATH=/opt/cni/bin\nCNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p",
        "CNI_COMMAND=VERSION",
        "CNI_COMMAND=STATUS\nCNI_PATH=/opt/cni/bin",
        "CNI_COMMAND=GC\nCNI_PATH=::/opt/cni/bin::",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

const ENV_DICT: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_PATH",
    "CNI_ARGS",
    "ADD",
    "DEL",
    "CHECK",
    "VERSION",
    "STATUS",
    "GC",
    "add",
    "eth0",
    "123456789012345",
    "1234567890123456",
    "-abc",
    "a b",
    "/",
    ":",
];

fn env_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::lines(rng, v, seeds, ENV_DICT, 4096);
}

fn env_run(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    // An environment: the last of a name wins.
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| vars.get(k).cloned();
    let all = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Version,
        Command::Status,
        Command::Gc,
    ];
    for cmd in all {
        if let Ok(env) = CniEnv::from_env(&get, cmd) {
            ensure!(
                env.container_id.is_empty() || valid_container_id(&env.container_id),
                "container ID {:?} accepted",
                env.container_id
            );
            ensure!(
                env.ifname.is_empty() || valid_ifname(&env.ifname),
                "ifname {:?} accepted",
                env.ifname
            );
            ensure!(
                env.path.iter().all(|p| !p.as_os_str().is_empty()),
                "an empty CNI_PATH entry"
            );
            let need: &[&str] = match cmd {
                Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
                Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
                _ => &[],
            };
            for k in need {
                ensure!(
                    vars.get(*k).is_some_and(|v| !v.is_empty()),
                    "{} accepted without {k}",
                    cmd.as_str()
                );
            }
        }
    }
    match Command::from_env(&get) {
        Ok(cmd) => match CniEnv::from_env(&get, cmd) {
            Ok(_) => accepted(cmd.as_str()),
            Err(e) => refused(code(&e)),
        },
        Err(e) => refused(code(&e)),
    }
}

fn result_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![PREV.as_bytes().to_vec()];
    v.push(
        br#"{"cniVersion":"0.3.1","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},{"name":"veth1234","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","address":"10.244.3.7/24","gateway":"10.244.3.1","interface":2}],"routes":[{"dst":"0.0.0.0/0","gw":"10.244.3.1"},{"dst":"10.244.0.0/16"}],"dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#
            .to_vec(),
    );
    v.push(
        br#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:01","mtu":1450,"sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1","interface":0},{"address":"fd00::2/64","gateway":"fd00::1","interface":0}],"routes":[{"dst":"::/0"},{"dst":"10.244.0.0/16"}]}"#
            .to_vec(),
    );
    v.push(br#"{"cniVersion":"0.4.0","ips":[],"dns":{}}"#.to_vec());
    v
}

fn result_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::json(rng, v, seeds, DICT, MAX_TEXT);
}

fn result_run(input: &[u8]) -> Outcome {
    let v: Value = match serde_json::from_slice(input) {
        Ok(v) => v,
        Err(_) => return refused("json"),
    };
    let r = match CniResult::from_json(&v) {
        Ok(r) => r,
        Err(e) => {
            let j: Result<Value, _> = serde_json::from_str(&e.to_json(Version::LATEST));
            ensure!(
                j.is_ok_and(|j| j["code"] == e.code),
                "an error object that does not parse"
            );
            return refused(shape(&e.msg));
        }
    };
    for ver in Version::ALL {
        let j = r.to_json(ver);
        ensure!(
            serde_json::to_string_pretty(&j).is_ok(),
            "a {ver} result that does not serialize"
        );
        let back = CniResult::from_json(&j);
        ensure!(back.is_ok(), "its own {ver} JSON does not parse: {back:?}");
        let back = back.expect("checked");
        ensure!(
            back.ips == r.ips && back.routes == r.routes,
            "ips or routes change through {ver}"
        );
        ensure!(
            back.interfaces.len() == r.interfaces.len()
                && back.interfaces.iter().zip(&r.interfaces).all(|(a, b)| {
                    a.name == b.name
                        && a.mac == b.mac
                        && a.sandbox == b.sandbox
                        && a.mtu == if ver >= Version::V1_1_0 { b.mtu } else { None }
                }),
            "interfaces change through {ver}"
        );
        match delegate::prev_result_for_check(&v, ver) {
            Ok(p) => {
                let p = CniResult::from_json(&p);
                ensure!(p.is_ok(), "the delegate's prevResult does not parse");
                let p = p.expect("checked");
                for rt in &p.routes {
                    let has_gw = r.ips.iter().any(|i| {
                        i.gateway
                            .is_some_and(|g| g.is_ipv4() == rt.dst.addr().is_ipv4())
                    });
                    ensure!(
                        rt.gw.is_some() || !has_gw,
                        "route {} left without the gateway of its family",
                        rt.dst
                    );
                }
            }
            Err(e) => ensure!(
                false,
                "prev_result_for_check refused what from_json took: {e}"
            ),
        }
    }
    accepted("result")
}

fn ipam_seeds() -> Vec<Vec<u8>> {
    [
        "10.244.3.0/24\n10.244.3.7\nabc123\neth0",
        "10.244.3.1/24\n\nabc123\neth0",
        "10.9.3.0/29\n10.9.3.6\nc0\neth0",
        "10.0.0.0/8\n10.255.255.254\nx\nnet1",
        "10.244.3.0/30\n10.244.3.2\nabc\neth0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn ipam_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::lines(rng, v, seeds, mutate::STRS, 1024);
}

fn ipam_run(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.lines();
    let subnet: Ipv4Net = match lines.next().and_then(|l| l.trim().parse::<Ipv4Net>().ok()) {
        Some(s) => s.trunc(),
        None => return refused("not a CIDR"),
    };
    let last = lines.next();
    let cid = lines.next().unwrap_or("");
    let ifname = lines.next().unwrap_or("");
    let veth = builtin::host_veth_name(cid, ifname);
    ensure!(
        veth.len() == 12 && valid_ifname(&veth),
        "host veth name {veth:?}"
    );
    let (net, bcast) = (subnet.network(), subnet.broadcast());
    if subnet.prefix_len() <= 30 {
        let gw = builtin::gateway(ipnet::IpNet::V4(subnet));
        ensure!(
            ipnet::IpNet::V4(subnet).contains(&gw) && gw != net && gw != bcast,
            "gateway {gw} of {subnet}"
        );
    }
    let Some(order) = ipam::candidates(subnet, last) else {
        ensure!(subnet.prefix_len() >= 31, "no candidates in {subnet}");
        return refused("no host address");
    };
    let span = u32::from(bcast) - u32::from(net) - 1;
    let small = span <= 1024;
    let mut seen: Vec<Ipv4Addr> = vec![];
    for (k, a) in order.enumerate() {
        if !small && k >= 64 {
            break;
        }
        ensure!(
            subnet.contains(&a) && a != net && a != bcast,
            "candidate {a} of {subnet}"
        );
        if k == 0 {
            if let Some(l) = last.and_then(|l| l.trim().parse::<Ipv4Addr>().ok()) {
                let (l, lo, hi) = (u32::from(l), u32::from(net) + 1, u32::from(bcast) - 1);
                let want = if (lo..hi).contains(&l) { l + 1 } else { lo };
                ensure!(u32::from(a) == want, "first candidate {a} after {l}");
            }
        }
        seen.push(a);
    }
    if small {
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        ensure!(
            n == seen.len() && u32::try_from(n).is_ok_and(|n| n == span),
            "{n} candidates ({} distinct) for {span} host addresses of {subnet}",
            seen.len()
        );
    }
    accepted("candidates")
}
