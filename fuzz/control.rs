//! The control plane's entry points: net-conf.json, lease JSON and subnet
//! keys, etcd keys and values as the etcd store reads them, kube Node objects
//! (annotations, podCIDR/podCIDRs), local-store lease files, subnet.env, and
//! the forwarding table built from store data. Seeds are the formats of
//! docs/formats.md, docs/etcd.md and docs/kubernetes.md.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use rand::{Rng as _, SeedableRng};

use weft::backend::vxlan::{VxlanData, VxlanError};
use weft::backend::{Backend, PeerRoute, Vxlan};
use weft::config::{ConfigError, DEFAULT_NET_CONF, NetConfig};
use weft::dataplane::table::Table;
use weft::lease::{
    Lease, LeaseAttrs, LeaseError, lease_key, node_subnet_problem, node_subnet6_problem,
    parse_subnet_key,
};
use weft::node::Admission;
use weft::store::{AcquireRequest, StoreError, choose_subnet, etcd, kube, local};
use weft::subnet_env::{SubnetEnv, SubnetEnvError};
use weft::types::{Vni, VtepMac};

use crate::{Entry, Outcome, Rng, accepted, mutate, refused, same_json, shape};

pub fn entries() -> Vec<Entry> {
    vec![
        Entry {
            name: "net-conf",
            about: "NetConfig::parse (net-conf.json, etcd's config key), subnet_count/nth_subnet/choose_subnet",
            seeds: netconf_seeds,
            mutate: netconf_mutate,
            run: netconf_run,
        },
        Entry {
            name: "lease",
            about: "parse_subnet_key, LeaseAttrs JSON, vxlan_data; key and JSON round trips",
            seeds: lease_seeds,
            mutate: key_value_mutate,
            run: lease_run,
        },
        Entry {
            name: "etcd",
            about: "etcd keys and values as the etcd store reads them (lease keys, the config key)",
            seeds: etcd_seeds,
            mutate: key_value_mutate,
            run: etcd_run,
        },
        Entry {
            name: "kube",
            about: "kube Node JSON: flannel annotations, podCIDR/podCIDRs, as peer and as this node",
            seeds: kube_seeds,
            mutate: kube_mutate,
            run: kube_run,
        },
        Entry {
            name: "local",
            about: "local-store lease files (name + flannel Lease JSON), render/parse round trip",
            seeds: local_seeds,
            mutate: key_value_mutate,
            run: local_run,
        },
        Entry {
            name: "subnet-env",
            about: "SubnetEnv::parse, render -> parse round trip",
            seeds: subnet_env_seeds,
            mutate: subnet_env_mutate,
            run: subnet_env_run,
        },
        Entry {
            name: "table",
            about: "Admission::table from store leases (the reconciler's admission), index_dense, lookup (longest prefix, dense == hashed)",
            seeds: table_seeds,
            mutate: table_mutate,
            run: table_run,
        },
    ]
}

/// Keys and values of the control plane's formats, for the mutators.
const DICT: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "Type",
    "VNI",
    "Port",
    "MTU",
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "DirectRouting",
    "GBP",
    "Learning",
    "PublicIP",
    "BackendType",
    "BackendData",
    "VtepMAC",
    "Subnet",
    "Attrs",
    "Expiration",
    "2026-11-24T12:00:00.123Z",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "2026-02-30T25:61:61Z",
    "vxlan",
    "62:fc:03:83:1b:2b",
];

const MAX_TEXT: usize = 16 * 1024;

/// The input's first line and the rest.
fn head_body(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[]),
    }
}

fn join(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    v.push(b'\n');
    v.extend_from_slice(body);
    v
}

/// `KEY\nJSON` inputs: the key replaced by an edge case or mutated as text,
/// or the JSON mutated as JSON.
fn key_value_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let (head, body) = head_body(v);
    let (mut head, mut body) = (head.to_vec(), body.to_vec());
    match rng.random_range(0..8) {
        0 => {
            let (prefix, _) =
                head.split_at(head.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1));
            let mut h = prefix.to_vec();
            h.extend_from_slice(mutate::any_string(rng, mutate::STRS).as_bytes());
            head = h;
        }
        1 => mutate::bytes(rng, &mut head, &[], 512),
        2 => {
            let s = String::from_utf8_lossy(&head).into_owned();
            let mut t = s.into_bytes();
            mutate::lines(rng, &mut t, &[], mutate::NUMS, 512);
            head = t;
        }
        _ => mutate::json(rng, &mut body, seeds, DICT, MAX_TEXT),
    }
    *v = join(&head, &body);
}

// ---- net-conf.json ----

fn netconf_seeds() -> Vec<Vec<u8>> {
    [
        DEFAULT_NET_CONF,
        r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.255.0",
 "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "MTU": 1500}}"#,
        r#"{"network":"172.30.0.0/16","subnetlen":26,"backend":{"type":"VXLAN","vni":4096,"port":4789,"mtu":9000}}"#,
        r#"{"Network":"10.1.0.0/23","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.1.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan","VNI":16777215,"Port":65535}}"#,
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"EnableNFTables":true,"EnableIPv4":true,"EnableIPv6":false,"Backend":{"Type":"vxlan","DirectRouting":false,"GBP":false}}"#,
        r#"{"Network":"192.168.0.0/16","SubnetLen":20,"SubnetMin":"192.168.16.0","SubnetMax":"192.168.32.0","Backend":{"Type":"vxlan","MTU":null,"Port":0}}"#,
        r#"{"Network":"128.0.0.0/1","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fc00:0:0:100::","IPv6SubnetMax":"fc00:0:0:ff00::","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.244.0.0/16","enableipv6":true,"ipv6network":"fd00::/120","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/32","IPv6SubnetLen":126,"Backend":{"Type":"vxlan"}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn netconf_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::json(rng, v, seeds, DICT, MAX_TEXT);
}

fn vxlan_attrs(n: u8) -> LeaseAttrs {
    let ip = [192, 0, 2, n];
    LeaseAttrs::vxlan(ip.into(), Vni::new(1).expect("fits"), VtepMac::derive(&ip))
}

fn netconf_run(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let c_full = match NetConfig::parse(&text, "/etc/kube-flannel/net-conf.json") {
        Ok(c) => c,
        Err(ConfigError::Field { field, .. }) => return refused(field),
        Err(ConfigError::Json { .. }) => return refused("json"),
        Err(ConfigError::Read { .. }) => return refused("read"),
    };
    let Backend::Vxlan(vx) = c_full.backend;
    let v = vx.vni.get();
    ensure!((1..=Vni::MAX).contains(&v), "VNI {v}");
    ensure!(vx.port != 0, "port 0");
    ensure!(
        vx.mtu.is_none_or(|m| (626..=65535).contains(&m)),
        "MTU {:?}",
        vx.mtu
    );
    let _ = (c_full.overlay_mtu(0), c_full.overlay_mtu(u32::MAX));
    if let Some(v6) = &c_full.ipv6 {
        check_ipv6(v6, input)?;
    }
    let Some(c) = c_full.ipv4 else {
        ensure!(
            c_full.ipv6.is_some(),
            "accepted a network of neither family"
        );
        return accepted("ipv6-only");
    };
    let full = c_full.clone();
    let plen = c.network.prefix_len();
    ensure!(plen != 0, "accepted a /0 Network {}", c.network);
    ensure!(
        c.network.network() == c.network.addr(),
        "accepted host bits in {}",
        c.network
    );
    ensure!(
        c.subnet_len <= 30 && c.subnet_len >= plen + 2,
        "SubnetLen /{} in {}",
        c.subnet_len,
        c.network
    );
    let mask = u32::MAX << (32 - u32::from(c.subnet_len));
    for (n, a) in [("SubnetMin", c.subnet_min), ("SubnetMax", c.subnet_max)] {
        ensure!(
            c.network.contains(&a) && u32::from(a) & mask == u32::from(a),
            "{n} {a} outside {} or off /{}",
            c.network,
            c.subnet_len
        );
    }
    ensure!(c.subnet_min <= c.subnet_max, "SubnetMin above SubnetMax");
    let count = c.subnet_count();
    ensure!(count >= 1, "no subnets");
    let first = c.nth_subnet(0);
    let last = c.nth_subnet(count - 1);
    ensure!(
        first.is_some_and(|s| s.addr() == c.subnet_min && c.is_leasable(&s)),
        "nth_subnet(0) = {first:?}, SubnetMin {}",
        c.subnet_min
    );
    ensure!(
        last.is_some_and(|s| s.addr() == c.subnet_max && c.is_leasable(&s)),
        "nth_subnet({}) = {last:?}, SubnetMax {}",
        count - 1,
        c.subnet_max
    );
    ensure!(c.nth_subnet(count).is_none(), "nth_subnet past the count");
    // A node joining, one subnet taken by another node.
    let taken = first.expect("checked");
    let leases = [Lease {
        subnet: Some(taken),
        ipv6_subnet: None,
        attrs: vxlan_attrs(1),
        expiration: None,
    }];
    let req = AcquireRequest {
        config: full.clone(),
        attrs: vxlan_attrs(2),
        previous: c.nth_subnet(count / 2),
        previous6: None,
        ttl: Duration::from_secs(60),
    };
    let mut rng = Rng::seed_from_u64(crate::fnv(input));
    match choose_subnet("fuzz", &req, &leases, &mut rng) {
        Ok(Ok(own)) => ensure!(false, "node 2 given node 1's lease {}", own.id()),
        Ok(Err(s)) => ensure!(
            s.is_some_and(|s| c.is_leasable(&s) && s != taken),
            "choose_subnet chose {s:?} (taken {taken})"
        ),
        Err(StoreError::NoFreeSubnet { .. }) => {
            ensure!(count == 1, "no free subnet among {count}");
        }
        Err(e) => ensure!(false, "choose_subnet: {e}"),
    }
    accepted("ok")
}

/// The IPv6 half of an accepted config: what flannel's checks promise, and
/// `choose_subnet6` picking a leasable, free subnet for a second node.
fn check_ipv6(v6: &weft::config::Ipv6Config, input: &[u8]) -> Result<(), crate::Violation> {
    let plen = v6.network.prefix_len();
    ensure!(
        plen != 0 && v6.network.network() == v6.network.addr(),
        "accepted IPv6Network {}",
        v6.network
    );
    ensure!(
        v6.subnet_len <= 126 && v6.subnet_len >= plen + 2,
        "IPv6SubnetLen /{} in {}",
        v6.subnet_len,
        v6.network
    );
    let mask = u128::MAX << (128 - u32::from(v6.subnet_len));
    for (n, a) in [
        ("IPv6SubnetMin", v6.subnet_min),
        ("IPv6SubnetMax", v6.subnet_max),
    ] {
        ensure!(
            v6.network.contains(&a) && u128::from(a) & mask == u128::from(a),
            "{n} {a} outside {} or off /{}",
            v6.network,
            v6.subnet_len
        );
    }
    ensure!(
        v6.subnet_min <= v6.subnet_max,
        "IPv6SubnetMin above IPv6SubnetMax"
    );
    let count = v6.subnet_count();
    ensure!(count >= 1, "no IPv6 subnets");
    let first = v6.nth_subnet(0);
    let last = v6.nth_subnet(count - 1);
    ensure!(
        first.is_some_and(|s| s.addr() == v6.subnet_min && v6.is_leasable(&s))
            && last.is_some_and(|s| s.addr() == v6.subnet_max && v6.is_leasable(&s))
            && v6.nth_subnet(count).is_none(),
        "nth_subnet over {count}: first {first:?}, last {last:?}"
    );
    let taken = first.expect("checked");
    let mut c =
        weft::config::NetConfig::parse(weft::config::DEFAULT_NET_CONF, "x").expect("default");
    c.ipv6 = Some(*v6);
    let leases = [Lease {
        subnet: "10.244.1.0/24".parse().ok(),
        ipv6_subnet: Some(taken),
        attrs: vxlan_attrs(1),
        expiration: None,
    }];
    let req = AcquireRequest {
        config: c,
        attrs: vxlan_attrs(2),
        previous: None,
        previous6: v6.nth_subnet(count / 2),
        ttl: Duration::from_secs(60),
    };
    let mut rng = Rng::seed_from_u64(crate::fnv(input));
    match weft::store::choose_subnet6("fuzz", &req, None, &leases, &mut rng) {
        Ok(Some(s)) => ensure!(
            v6.is_leasable(&s) && s != taken,
            "choose_subnet6 chose {s} (taken {taken})"
        ),
        Ok(None) => ensure!(
            false,
            "choose_subnet6 chose nothing in a dual-stack network"
        ),
        Err(StoreError::NoFreeSubnet6 { .. }) => {
            ensure!(count == 1, "no free IPv6 subnet among {count}");
        }
        Err(e) => ensure!(false, "choose_subnet6: {e}"),
    }
    Ok(())
}

// ---- leases ----

const ATTRS: &str = r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"1e:00:e9:a1:2f:82"}}"#;

fn lease_seeds() -> Vec<Vec<u8>> {
    [
        ("10.244.3.0-24", ATTRS),
        (
            "10.244.1.0-24",
            r#"{"PublicIP":"192.168.1.137","BackendType":"vxlan","BackendData":{"VtepMAC":"62:fc:03:83:1b:2b"}}"#,
        ),
        (
            "172.30.64.0-26",
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":4096,"VtepMAC":"02:00:00:00:00:01"}}"#,
        ),
        ("10.244.9.0-24", r#"{"PublicIP":"10.0.0.1","BackendType":"udp"}"#),
        (
            "10.244.7.0-24",
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":null}"#,
        ),
        (
            "10.244.3.0-24&fc00:0:0:3::-64",
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"1e:00:e9:a1:2f:82"},"BackendV6Data":{"VNI":1,"VtepMAC":"22:6d:ba:65:aa:6c"}}"#,
        ),
        (
            "10.244.4.0-24&fd00::-120",
            r#"{"PublicIP":"192.0.2.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VtepMAC":"1e:00:e9:a1:2f:83"},"BackendV6Data":null}"#,
        ),
    ]
    .iter()
    .map(|(k, v)| join(k.as_bytes(), v.as_bytes()))
    .collect()
}

fn same_attrs(a: &LeaseAttrs, b: &LeaseAttrs) -> bool {
    a.public_ip == b.public_ip
        && a.public_ipv6 == b.public_ipv6
        && a.backend_type == b.backend_type
        && same_json(&a.backend_data, &b.backend_data)
        && match (&a.backend_v6_data, &b.backend_v6_data) {
            (Some(x), Some(y)) => same_json(x, y),
            (x, y) => x.is_none() == y.is_none(),
        }
}

fn lease_error(e: &LeaseError) -> &'static str {
    match e {
        LeaseError::BadKey(_) => "bad key",
    }
}

fn vxlan_error(e: &VxlanError) -> &'static str {
    match e {
        VxlanError::NotVxlan(_) => "not vxlan",
        VxlanError::BadBackendData(_) => "bad backend data",
        VxlanError::BadVni(_) => "bad VNI",
        VxlanError::BadBackendV6Data(_) => "bad v6 backend data",
    }
}

fn lease_run(input: &[u8]) -> Outcome {
    let (key, body) = head_body(input);
    let key = String::from_utf8_lossy(key);
    let subnet = parse_subnet_key(&key);
    if let Ok(id) = &subnet {
        ensure!(
            id.v4.is_some() || id.v6.is_some(),
            "key {key:?} read as no subnet"
        );
        if let Some(n) = &id.v4 {
            ensure!(n.network() == n.addr(), "key {key:?} with host bits: {n}");
            let _ = node_subnet_problem(n);
        }
        if let Some(n6) = &id.v6 {
            ensure!(
                n6.network() == n6.addr(),
                "key {key:?} with IPv6 host bits: {n6}"
            );
            let _ = node_subnet6_problem(n6);
        }
        let again = parse_subnet_key(&lease_key(id.v4.as_ref(), id.v6.as_ref()));
        ensure!(
            again.as_ref() == Ok(id),
            "lease_key({id:?}) parses to {again:?}"
        );
    }
    let attrs: LeaseAttrs = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) => return refused("json"),
    };
    let text = serde_json::to_string(&attrs);
    ensure!(text.is_ok(), "attributes that do not serialize");
    let back: Result<LeaseAttrs, _> = serde_json::from_str(&text.expect("checked"));
    ensure!(
        back.as_ref().is_ok_and(|b| same_attrs(b, &attrs)),
        "attributes do not round-trip: {back:?}"
    );
    let d = match attrs.vxlan_data() {
        Ok(d) => d,
        Err(e) => return refused(vxlan_error(&e)),
    };
    ensure!(Vni::new(d.vni).is_some(), "VNI {} accepted", d.vni);
    if let Ok(Some(d6)) = attrs.vxlan_v6_data() {
        ensure!(Vni::new(d6.vni).is_some(), "IPv6 VNI {} accepted", d6.vni);
    }
    let dv = serde_json::to_value(d).map(serde_json::from_value::<VxlanData>);
    ensure!(
        matches!(dv, Ok(Ok(x)) if x == d),
        "VxlanData does not round-trip"
    );
    match subnet {
        Ok(_) => accepted("vxlan lease"),
        Err(e) => refused(lease_error(&e)),
    }
}

// ---- etcd ----

const ETCD_PREFIX: &str = "/coreos.com/network";

fn etcd_seeds() -> Vec<Vec<u8>> {
    let sub = format!("{ETCD_PREFIX}/subnets/");
    let mut v: Vec<Vec<u8>> = lease_seeds()
        .into_iter()
        .map(|s| {
            let mut k = sub.clone().into_bytes();
            k.extend_from_slice(&s);
            k
        })
        .collect();
    for c in netconf_seeds().into_iter().take(4) {
        v.push(join(format!("{ETCD_PREFIX}/config").as_bytes(), &c));
    }
    v.push(join(
        b"/coreos.com/network/subnets/10.244.3.0-24/extra",
        ATTRS.as_bytes(),
    ));
    v
}

fn etcd_run(input: &[u8]) -> Outcome {
    let (key, value) = head_body(input);
    if key == format!("{ETCD_PREFIX}/config").as_bytes() {
        // What the daemon does with the config key's value.
        let text = String::from_utf8_lossy(value);
        return match NetConfig::parse(&text, "etcd /coreos.com/network/config") {
            Ok(c) => {
                ensure!(
                    c.network().is_none_or(|n| n.prefix_len() != 0),
                    "a /0 Network from etcd"
                );
                accepted("config")
            }
            Err(_) => refused("config"),
        };
    }
    let prefix = format!("{ETCD_PREFIX}/subnets/");
    let (subnet, parsed) = etcd::parse_lease_kv(&prefix, key, value);
    let key = String::from_utf8_lossy(key);
    if let Some(s) = subnet {
        let k = key.strip_prefix(&prefix).map(parse_subnet_key);
        ensure!(
            matches!(k, Some(Ok(x)) if x == s),
            "key {key:?} read as subnets {s:?}"
        );
    }
    match parsed {
        Ok(l) => {
            ensure!(
                // The lease as stored: the key's subnets, both halves.
                subnet.is_some_and(|k| k.v4 == l.subnet
                    && l.ipv6_subnet == k.v6
                    && (l.subnet.is_some() || l.ipv6_subnet.is_some())),
                "lease {} from key {key:?}",
                l.id()
            );
            admitted(&l)?;
            ensure!(l.expiration.is_none(), "an etcd peer with an expiration");
            accepted("lease")
        }
        Err(why) => refused(shape(&why)),
    }
}

/// What the reconciler's admission makes of a lease a store reported (in a
/// vxlan network of VNI 1 holding every subnet): each half it routes has
/// that half's vxlan data and subnet, and each half it leaves out comes
/// with a reason.
fn admitted(l: &Lease) -> Result<(), crate::Violation> {
    let admission = Admission {
        network: Some(Ipv4Net::default()),
        network6: Some(ipnet::Ipv6Net::default()),
        backend: Backend::Vxlan(Vxlan {
            vni: Vni::new(1).expect("fits"),
            port: 8472,
            mtu: None,
        }),
    };
    let (routes, skipped) = admission.routes([l], None);
    for r in &routes {
        let ok = match r {
            PeerRoute::V4(p) => {
                l.subnet == Some(p.subnet)
                    && l.attrs
                        .vxlan_data()
                        .is_ok_and(|d| d.vtep_mac == p.vtep_mac && d.vni == 1)
            }
            PeerRoute::V6(p) => {
                l.ipv6_subnet == Some(p.subnet)
                    && p.v4 == l.subnet
                    && l.attrs.public_ipv6 == Some(p.public_ip)
                    && matches!(l.attrs.vxlan_v6_data(), Ok(Some(d)) if d.vtep_mac == p.vtep_mac && d.vni == 1)
            }
        };
        ensure!(ok, "lease {} admitted as {r:?}", l.id());
    }
    for s in &skipped {
        ensure!(!s.why.is_empty(), "lease {} left out for no reason", l.id());
    }
    ensure!(
        routes.len() + skipped.len() >= 1,
        "lease {} neither routed nor left out",
        l.id()
    );
    Ok(())
}

// ---- kube ----

const KUBE_PREFIX: &str = "flannel.alpha.coreos.com";

fn kube_seeds() -> Vec<Vec<u8>> {
    let node = |name: &str, spec: serde_json::Value, ann: serde_json::Value| {
        serde_json::to_vec_pretty(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": ann, "resourceVersion": "12345"},
            "spec": spec,
        }))
        .expect("JSON")
    };
    let ann = |ip: &str, mac: &str| {
        serde_json::json!({
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": ip,
        })
    };
    let mut dual = ann("192.0.2.6", "02:00:00:00:00:06");
    dual["flannel.alpha.coreos.com/backend-v6-data"] =
        r#"{"VNI":1,"VtepMAC":"02:00:00:00:06:06"}"#.into();
    dual["flannel.alpha.coreos.com/public-ipv6"] = "2001:db8::6".into();
    dual["flannel.alpha.coreos.com/public-ipv6-overwrite"] = "2001:db8:ff::6".into();
    let mut over = ann("192.0.2.4", "02:00:00:00:00:04");
    over["flannel.alpha.coreos.com/public-ip-overwrite"] = "198.51.100.4".into();
    vec![
        node(
            "node-a",
            serde_json::json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}),
            ann("192.0.2.1", "62:fc:03:83:1b:2b"),
        ),
        node(
            "node-b",
            serde_json::json!({"podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.2.0/24"]}),
            ann("192.0.2.2", "1e:00:e9:a1:2f:82"),
        ),
        node(
            "node-c",
            serde_json::json!({"podCIDR": "10.244.3.0/24"}),
            over,
        ),
        node(
            "node-d",
            serde_json::json!({}),
            ann("192.0.2.5", "02:00:00:00:00:05"),
        ),
        node(
            "node-e",
            serde_json::json!({"podCIDR": "10.244.5.0/24"}),
            serde_json::json!({"node.alpha.kubernetes.io/ttl": "0"}),
        ),
        node(
            "node-a",
            serde_json::json!({"podCIDR": "10.244.6.0/24", "podCIDRs": ["10.244.6.0/24", "fc00:0:0:6::/64"]}),
            dual,
        ),
    ]
}

const KUBE_DICT: &[&str] = &[
    "metadata",
    "spec",
    "annotations",
    "name",
    "podCIDR",
    "podCIDRs",
    "flannel.alpha.coreos.com/backend-type",
    "flannel.alpha.coreos.com/backend-data",
    "flannel.alpha.coreos.com/kube-subnet-manager",
    "flannel.alpha.coreos.com/public-ip",
    "flannel.alpha.coreos.com/public-ip-overwrite",
    "flannel.alpha.coreos.com/backend-v6-data",
    "flannel.alpha.coreos.com/public-ipv6",
    "flannel.alpha.coreos.com/public-ipv6-overwrite",
    "fc00:0:0:7::/64",
    "2001:db8::7",
    r#"{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}"#,
    r#"{"VNI":16777216,"VtepMAC":"62:fc:03:83:1b:2b"}"#,
    r#"{"VtepMAC":"62:fc:03:83:1b"}"#,
    "true",
    "vxlan",
];

fn kube_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::json(rng, v, seeds, KUBE_DICT, MAX_TEXT);
}

fn kube_run(input: &[u8]) -> Outcome {
    let node: Node = match serde_json::from_slice(input) {
        Ok(n) => n,
        Err(_) => return refused("not a Node"),
    };
    let network: Ipv4Net = "10.244.0.0/16".parse().expect("a CIDR");
    let attrs = vxlan_attrs(9);
    // The prefix as --kube-annotation-prefix gives it, with or without a slash.
    let mut own_ok = false;
    let network6: ipnet::Ipv6Net = "fc00::/48".parse().expect("a CIDR");
    let cases = [
        (KUBE_PREFIX, None),
        ("flannel.alpha.coreos.com/", None),
        (KUBE_PREFIX, Some(network6)),
    ];
    for (prefix, n6) in cases {
        if let Ok(l) = kube::own_lease_from_node(prefix, "node-a", &node, Some(network), n6, &attrs)
        {
            ensure!(
                l.subnet
                    .is_some_and(|s| network.contains(&s) && node_subnet_problem(&s).is_none()),
                "this node's lease {} (Network {network})",
                l.id()
            );
            ensure!(
                l.ipv6_subnet
                    .is_none_or(|s| n6.is_some_and(|n| n.contains(&s))
                        && weft::lease::node_subnet6_problem(&s).is_none()),
                "this node's IPv6 subnet {:?} (IPv6Network {n6:?})",
                l.ipv6_subnet
            );
            ensure!(
                l.attrs.vxlan_data().is_ok(),
                "this node's lease lost its vxlan data"
            );
            own_ok = true;
        }
    }
    match kube::peer_from_node(KUBE_PREFIX, &node) {
        Ok(Some(l)) => {
            ensure!(
                l.subnet
                    .is_none_or(|s| node_subnet_problem(&s).is_none() && s == s.trunc()),
                "a peer with subnet {}",
                l.id()
            );
            ensure!(
                l.subnet.is_some() || l.ipv6_subnet.is_some(),
                "a peer with no subnet"
            );
            admitted(&l)?;
            accepted("peer")
        }
        Ok(None) if own_ok => accepted("own lease only"),
        Ok(None) => refused("not managed"),
        Err(why) => refused(shape(&why)),
    }
}

// ---- local store ----

fn local_seeds() -> Vec<Vec<u8>> {
    let rec = |key: &str, subnet: &str, attrs: &str, exp: &str| {
        join(
            key.as_bytes(),
            format!(r#"{{"Subnet":"{subnet}","Attrs":{attrs},"Expiration":"{exp}"}}"#).as_bytes(),
        )
    };
    vec![
        rec(
            "10.244.3.0-24",
            "10.244.3.0/24",
            ATTRS,
            "2026-11-24T12:00:00.123Z",
        ),
        rec(
            "10.244.4.0-24",
            "10.244.4.0/24",
            ATTRS,
            "2026-11-24T12:00:00.123456789Z",
        ),
        rec(
            "10.244.5.0-24",
            "10.244.5.0/24",
            ATTRS,
            "1970-01-01T00:00:00Z",
        ),
        rec(
            "10.244.6.0-24",
            "10.244.6.0/24",
            ATTRS,
            "9999-12-31T23:59:59.999999999Z",
        ),
        rec(
            "10.244.7.0-24",
            "10.244.8.0/24",
            ATTRS,
            "2026-11-24T12:00:00Z",
        ),
    ]
}

fn local_run(input: &[u8]) -> Outcome {
    let (name, bytes) = head_body(input);
    let name = String::from_utf8_lossy(name);
    match local::parse_record(&name, bytes) {
        Ok(l) => {
            ensure!(
                parse_subnet_key(&name) == Ok(l.id()),
                "file {name:?} read as {}",
                l.id()
            );
            ensure!(
                l.expiration.is_some(),
                "a stored lease without an expiration"
            );
            let back = local::parse_record(&name, &local::render_record(&l));
            ensure!(
                back.as_ref().is_ok_and(|b| b.subnet == l.subnet
                    && b.expiration == l.expiration
                    && same_attrs(&b.attrs, &l.attrs)),
                "render -> parse gives {back:?} for {l:?}"
            );
            accepted("lease")
        }
        Err(why) => refused(shape(&why)),
    }
}

// ---- subnet.env ----

fn subnet_env_seeds() -> Vec<Vec<u8>> {
    [
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        "FLANNEL_NETWORK=\"10.0.0.0/8\"\n  FLANNEL_SUBNET = 10.5.0.1/30\nFLANNEL_MTU=8950\n",
        "# written by flanneld\nFLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.64.1/26\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

const ENV_DICT: &[&str] = &[
    "FLANNEL_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
    "10.244.3.1/24",
    "4294967296",
    "-1",
    "true",
];

fn subnet_env_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    mutate::lines(rng, v, seeds, ENV_DICT, 4096);
}

fn subnet_env_run(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let path = Path::new("/run/flannel/subnet.env");
    match SubnetEnv::parse(&text, path) {
        Ok(e) => {
            ensure!(
                e.ipv4
                    .is_none_or(|e4| node_subnet_problem(&e4.subnet).is_none()
                        && e4.subnet == e4.subnet.trunc()),
                "accepted FLANNEL_SUBNET {:?}",
                e.ipv4
            );
            ensure!(
                e.ipv4.is_some() || e.ipv6.is_some(),
                "accepted a subnet.env of neither family"
            );
            let r = e.render();
            let back = SubnetEnv::parse(&r, path);
            ensure!(
                back.as_ref().is_ok_and(|b| *b == e),
                "render -> parse of {e:?} gives {back:?}"
            );
            accepted("ok")
        }
        Err(SubnetEnvError::Parse { what, .. }) => refused(shape(&what)),
        Err(_) => refused("other"),
    }
}

// ---- the forwarding table ----

fn table_seeds() -> Vec<Vec<u8>> {
    let line = |key: &str, ip: &str, mac: &str, vni: u32, ty: &str| {
        format!(
            r#"{key} {{"PublicIP":"{ip}","BackendType":"{ty}","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
        )
    };
    let a = |n: u32| {
        line(
            &format!("10.244.{n}.0-24"),
            &format!("192.0.2.{n}"),
            &format!("02:00:00:00:00:{n:02x}"),
            1,
            "vxlan",
        )
    };
    let mut seeds = vec![];
    let mut v = vec!["10.244.0.0/16 10.244.1.0-24".to_string()];
    v.extend((1..=6).map(a));
    seeds.push(v.join("\n"));
    let mut v = vec!["10.244.0.0/16 -".to_string()];
    v.extend((1..=3).map(a));
    v.push(line(
        "10.244.2.128-25",
        "192.0.2.99",
        "02:00:00:00:00:63",
        1,
        "vxlan",
    ));
    v.push(line(
        "10.244.8.0-24",
        "192.0.2.8",
        "02:00:00:00:00:08",
        7,
        "vxlan",
    ));
    v.push(line(
        "10.244.9.0-24",
        "192.0.2.9",
        "02:00:00:00:00:09",
        1,
        "udp",
    ));
    v.push(line(
        "0.0.0.0-0",
        "192.0.2.10",
        "02:00:00:00:00:0a",
        1,
        "vxlan",
    ));
    v.push(line(
        "10.244.7.1-32",
        "192.0.2.11",
        "02:00:00:00:00:0b",
        1,
        "vxlan",
    ));
    seeds.push(v.join("\n"));
    let mut v = vec!["10.0.0.0/8 10.0.1.0-24".to_string()];
    v.extend((0..40u32).map(|i| {
        line(
            &format!("10.{}.{}.0-24", i * 6, i),
            &format!("198.51.100.{i}"),
            &format!("02:00:00:00:01:{i:02x}"),
            1,
            "vxlan",
        )
    }));
    seeds.push(v.join("\n"));
    let mut v = vec!["172.30.0.0/16 172.30.0.0-26".to_string()];
    v.extend((0..8u32).map(|i| {
        line(
            &format!("172.30.{}.{}-26", i / 4, (i % 4) * 64),
            &format!("203.0.113.{i}"),
            &format!("02:00:00:00:02:{i:02x}"),
            1,
            "vxlan",
        )
    }));
    seeds.push(v.join("\n"));
    seeds.into_iter().map(String::into_bytes).collect()
}

fn table_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let mut dict: Vec<&str> = DICT.to_vec();
    dict.extend([
        "10.244.2.0-25",
        "10.244.0.0-16",
        "0.0.0.0-0",
        "10.244.2.7-32",
        "-",
    ]);
    mutate::lines(rng, v, seeds, &dict, MAX_TEXT);
}

/// The leases a store would report for these lines, as the table is built
/// from them (lines that do not parse are what the store skips).
fn table_run(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let mut words = first.split_whitespace();
    let network: Option<Ipv4Net> = words.next().and_then(|w| w.parse().ok());
    let own = words.next().and_then(|w| parse_subnet_key(w).ok());
    let network6: Option<ipnet::Ipv6Net> = words.next().and_then(|w| w.parse().ok());
    let mut leases = vec![];
    for l in lines {
        let Some((k, v)) = l.split_once(' ') else {
            continue;
        };
        let (Ok(id), Ok(attrs)) = (parse_subnet_key(k), serde_json::from_str::<LeaseAttrs>(v))
        else {
            continue;
        };
        leases.push(Lease {
            subnet: id.v4,
            ipv6_subnet: id.v6,
            attrs,
            expiration: None,
        });
    }
    let vni = Vni::new(1).expect("fits");
    // No Network given: every IPv4 subnet is inside (0.0.0.0/0).
    let admission = Admission {
        network: network.or(Some(Ipv4Net::default())),
        network6,
        backend: Backend::Vxlan(Vxlan {
            vni,
            port: 8472,
            mtu: None,
        }),
    };
    let (mut t, skipped) = admission.table(&leases, own);
    // The node's own lease: its IPv4 subnet, or an IPv6-only one's IPv6 subnet.
    let is_own = |l: &Lease| {
        own.is_some_and(|o| match o.v4 {
            Some(_) => l.subnet == o.v4,
            None => l.subnet.is_none() && l.ipv6_subnet == o.v6,
        })
    };
    let kept = leases.iter().filter(|l| !is_own(l)).count();
    // A lease gives at most an IPv4 route or a reason, and at most an IPv6
    // route or a reason for its IPv6 half.
    ensure!(
        t.len() <= kept && t.peers6().count() <= kept && skipped.len() <= 2 * kept,
        "{} peers, {} IPv6 peers, {} skipped from {kept} leases",
        t.len(),
        t.peers6().count(),
        skipped.len()
    );
    for p in t.peers6() {
        ensure!(
            network6.is_some_and(|n| n.contains(&p.subnet))
                && weft::lease::node_subnet6_problem(&p.subnet).is_none()
                && p.endpoint.ip() == &p.public_ip
                && p.endpoint.port() == 8472,
            "IPv6 peer {p:?} in the table of IPv6Network {network6:?}"
        );
        let got = t.lookup6(p.subnet.network()).map(|q| q.subnet);
        ensure!(
            got.is_some_and(|g| g.contains(&p.subnet.network())),
            "lookup6({}) gave {got:?}",
            p.subnet.network()
        );
    }
    for s in &skipped {
        ensure!(!s.why.is_empty(), "skipped {} for no reason", s.subnet);
    }
    for p in t.peers() {
        ensure!(
            node_subnet_problem(&p.subnet).is_none() && own.is_none_or(|o| o.v4 != Some(p.subnet)),
            "peer subnet {} in the table",
            p.subnet
        );
        ensure!(
            p.endpoint.ip() == &p.public_ip && p.endpoint.port() == 8472,
            "peer endpoint {}",
            p.endpoint
        );
    }
    // Probes: every subnet's edges and middle, and a few of the input's own.
    let mut probes: Vec<Ipv4Addr> = vec![Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST];
    for s in leases.iter().filter_map(|l| l.subnet) {
        let n = u32::from(s.network());
        let b = u32::from(s.broadcast());
        probes.extend(
            [
                n,
                b,
                n.saturating_sub(1),
                b.saturating_add(1),
                n / 2 + b / 2,
            ]
            .map(Ipv4Addr::from),
        );
    }
    let mut rng = Rng::seed_from_u64(crate::fnv(input));
    probes.extend((0..16).map(|_| Ipv4Addr::from(rng.random::<u32>())));
    if let Some(n) = network {
        probes.extend((0..16).map(|_| {
            Ipv4Addr::from(u32::from(n.network()) | (rng.random::<u32>() & !u32::from(n.netmask())))
        }));
    }
    let hashed = lookups(&t, &probes)?;
    let mut dense = false;
    for net in network
        .into_iter()
        .chain(leases.first().and_then(|l| l.subnet?.supernet()))
    {
        if t.index_dense(net) {
            dense = true;
            let d = lookups(&t, &probes)?;
            ensure!(
                d == hashed,
                "the dense index over {net} answers otherwise than the hash"
            );
        }
    }
    if t.is_empty() {
        refused("empty")
    } else if dense {
        accepted("dense")
    } else {
        accepted("hashed")
    }
}

/// Looks every probe up; checks each answer is the longest prefix holding it.
fn lookups(t: &Table, probes: &[Ipv4Addr]) -> Result<Vec<Option<Ipv4Net>>, crate::Violation> {
    let mut out = Vec::with_capacity(probes.len());
    for a in probes {
        let got = t.lookup(*a).map(|p| p.subnet);
        let want = t
            .peers()
            .filter(|p| p.subnet.contains(a))
            .max_by_key(|p| p.subnet.prefix_len())
            .map(|p| p.subnet);
        ensure!(
            got.is_none_or(|s| s.contains(a)),
            "lookup({a}) answered {got:?}, which does not hold it"
        );
        ensure!(
            got.map(|s| s.prefix_len()) == want.map(|s| s.prefix_len()),
            "lookup({a}) answered {got:?}, the longest prefix is {want:?}"
        );
        out.push(got);
    }
    Ok(out)
}
