//! Built-in mode, for nodes with no other CNI plugin: a veth pair (pod end
//! `CNI_IFNAME` created directly in the pod's netns, host end on a bridge
//! whose address is the node subnet's gateway), an address from weft's own
//! IPAM, a route to the cluster network (and a default route when
//! `delegate.isDefaultGateway` is true), and the MTU of subnet.env. The
//! bridge port is in hairpin mode, so a pod reaches itself through a Service.
//! It never masquerades: weftd's `--ip-masq` rules do that for every mode.
//!
//! Every step of ADD after the address is allocated is undone when a later
//! one fails. DEL removes what exists and ignores what does not.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use serde_json::json;

use super::conf::NetConf;
use super::env::CniEnv;
use super::error::{CniError, code};
use super::ipam::{Ipam, IpamError};
use super::log;
use super::result::{CniResult, Interface, IpConfig, Route};
use crate::netlink::{Link, Netlink, has_route, is_exists};
use crate::subnet_env::SubnetEnv;

/// The IPAM store of node subnet `subnet`, shared by every network that
/// allocates from it (`<dataDir>/ipam/10.244.3.0-24`).
pub fn ipam(conf: &NetConf, subnet: Ipv4Net) -> Ipam {
    Ipam::new(
        conf.data_dir
            .join("ipam")
            .join(crate::lease::subnet_key(&subnet)),
        &conf.name,
    )
}

/// Every IPAM store under `<dataDir>/ipam` (each subnet's, and the
/// per-network ones of older releases), for DEL, CHECK and GC, which may
/// run without subnet.env.
fn ipam_stores(conf: &NetConf) -> Vec<Ipam> {
    let Ok(rd) = std::fs::read_dir(conf.data_dir.join("ipam")) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| Ipam::new(e.path(), &conf.name))
        .collect()
}

/// The address `runtimeConfig.ips` asks for (`podman run --ip`), if any.
///
/// # Errors
/// Code 7 when it is not one IPv4 address (with or without a prefix).
pub fn requested_ip(conf: &NetConf) -> Result<Option<Ipv4Addr>, CniError> {
    let Some(v) = conf.runtime_config.as_ref().and_then(|r| r.get("ips")) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("runtimeConfig.ips {v}: {why}"),
        )
    };
    let list = v
        .as_array()
        .ok_or_else(|| bad("must be a list of addresses"))?;
    let mut v4 = vec![];
    for item in list {
        let text = item
            .as_str()
            .ok_or_else(|| bad("each entry must be a string"))?;
        let addr = text.split('/').next().unwrap_or_default();
        match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => v4.push(a),
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(bad("weft's network is IPv4 only; drop the IPv6 address"));
            }
            Err(_) => return Err(bad(&format!("{text:?} is not an IP address"))),
        }
    }
    match v4[..] {
        [] => Ok(None),
        [a] => Ok(Some(a)),
        _ => Err(bad("one IPv4 address per interface")),
    }
}

/// The host end's name: stable for a `(containerID, ifname)` pair, so DEL and
/// GC find it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 32 bits: short enough for IFNAMSIZ, spread enough per node.
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

/// The gateway of the node subnet: its first host address (flannel's `.1`).
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    // subnet.env with no room for one is refused before this is reached.
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

fn nl_err(what: String) -> impl FnOnce(io::Error) -> CniError {
    move |e| CniError::new(code::NETLINK, format!("{what}: {e}"))
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::IPAM_EXHAUSTED, e.to_string()),
        IpamError::NotInSubnet { .. } => CniError::new(code::INVALID_CONFIG, e.to_string()),
        IpamError::Taken { .. } => CniError::new(code::IP_IN_USE, e.to_string()),
        IpamError::Io { .. } => CniError::new(code::STATE, e.to_string()),
    }
}

fn open_ns(path: &Path) -> Result<std::fs::File, CniError> {
    Netlink::open_netns(path).map_err(|e| {
        CniError::new(
            code::NETNS,
            format!(
                "cannot open the pod's network namespace {}: {e}",
                path.display()
            ),
        )
    })
}

/// The bridge's MAC: `0a:58` and the gateway's IPv4 address (the CNI
/// plugins' convention), set when the bridge is created, so pods' ARP
/// entries for the gateway stay right as other pods come and go.
pub fn bridge_mac(gw: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gw.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// The pod's MAC from `runtimeConfig.mac` (`podman run --mac-address`), if
/// asked for.
///
/// # Errors
/// Code 7 when it is not a unicast MAC address.
pub fn requested_mac(conf: &NetConf) -> Result<Option<[u8; 6]>, CniError> {
    let Some(v) = conf.runtime_config.as_ref().and_then(|r| r.get("mac")) else {
        return Ok(None);
    };
    let bad = || {
        CniError::new(
            code::INVALID_CONFIG,
            format!("runtimeConfig.mac {v} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    };
    let text = v.as_str().ok_or_else(bad)?;
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(Some(mac))
}

fn ensure_bridge(host: &mut Netlink, name: &str, gw: Ipv4Net) -> Result<Link, CniError> {
    host.create_bridge(name, Some(bridge_mac(gw.addr())))
        .map_err(nl_err(format!("cannot create bridge {name}")))?;
    let br = host
        .link(name)
        .map_err(nl_err(format!("cannot read bridge {name}")))?
        .ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                format!("bridge {name} vanished after creation"),
            )
        })?;
    host.add_address(br.index, gw).map_err(nl_err(format!(
        "cannot add gateway address {gw} to bridge {name}"
    )))?;
    host.set_up(br.index, None)
        .map_err(nl_err(format!("cannot set bridge {name} up")))?;
    Ok(br)
}

/// Fails with code 103 when `CNI_IFNAME` already exists in the pod's netns
/// (106 when the netns cannot be opened).
///
/// # Errors
/// As above; 102 when netlink fails.
pub fn refuse_existing(env: &CniEnv) -> Result<(), CniError> {
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    let ns = open_ns(netns)?;
    let mut pod = Netlink::in_netns(&ns).map_err(nl_err(format!(
        "cannot open netlink in netns {}",
        netns.display()
    )))?;
    refuse_in(&mut pod, &env.ifname, netns)
}

fn refuse_in(pod: &mut Netlink, ifname: &str, netns: &Path) -> Result<(), CniError> {
    if pod
        .link(ifname)
        .map_err(nl_err(format!(
            "cannot look up {ifname} in netns {}",
            netns.display()
        )))?
        .is_some()
    {
        return Err(CniError::new(
            code::IFACE_EXISTS,
            format!(
                "interface {ifname} already exists in netns {}; DEL it first or use another CNI_IFNAME",
                netns.display()
            ),
        ));
    }
    Ok(())
}

/// ADD in built-in mode.
///
/// # Errors
/// 103 when `CNI_IFNAME` exists in the pod's netns, 104 when the subnet is
/// full, 106 when the netns cannot be opened, 102 for netlink failures.
pub fn add(conf: &NetConf, env: &CniEnv, senv: &SubnetEnv) -> Result<CniResult, CniError> {
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    let ifname = env.ifname.as_str();
    let bridge_name = conf.bridge_name()?;
    let mtu = conf.mtu(senv)?;
    let default_route = conf.default_route()?;
    let hairpin = conf.hairpin()?;
    let mac = requested_mac(conf)?;
    let wanted = requested_ip(conf)?;
    let subnet = senv.subnet.trunc();
    let gw = gateway(subnet);
    let ns = open_ns(netns)?;
    let mut pod = Netlink::in_netns(&ns).map_err(nl_err(format!(
        "cannot open netlink in netns {}",
        netns.display()
    )))?;
    refuse_in(&mut pod, ifname, netns)?;
    let mut host = Netlink::new().map_err(nl_err("cannot open netlink".into()))?;
    let gw_net = Ipv4Net::new(gw, subnet.prefix_len()).unwrap_or(subnet);
    let bridge = ensure_bridge(&mut host, &bridge_name, gw_net)?;
    let ipam = ipam(conf, subnet);
    let ip = ipam
        .allocate(subnet, gw, &env.container_id, ifname, wanted)
        .map_err(ipam_err)?;
    let host_name = host_veth_name(&env.container_id, ifname);
    let mut created = false;
    let wired = (|| -> Result<CniResult, CniError> {
        let mk = |host: &mut Netlink| host.create_veth(&host_name, ifname, &ns, mtu);
        match mk(&mut host) {
            Ok(()) => {}
            Err(e) if is_exists(&e) && host.link(&host_name).ok().flatten().is_some() => {
                // A leftover of an earlier ADD of this very pair that died
                // half-way: its pod end is not there (checked above).
                log(&format!("removing leftover {host_name} of an earlier ADD"));
                let _ = host.delete_link(&host_name);
                mk(&mut host).map_err(nl_err(format!("cannot create veth {host_name}")))?;
            }
            Err(e) if is_exists(&e) => {
                return Err(CniError::new(
                    code::IFACE_EXISTS,
                    format!(
                        "interface {ifname} already exists in netns {}",
                        netns.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(nl_err(format!(
                    "cannot create veth {host_name} <-> {ifname} (netns {})",
                    netns.display()
                ))(e));
            }
        }
        created = true;
        let hv = host
            .link(&host_name)
            .map_err(nl_err(format!("cannot read {host_name}")))?
            .ok_or_else(|| CniError::new(code::NETLINK, format!("{host_name} vanished")))?;
        host.set_up(hv.index, Some(bridge.index))
            .map_err(nl_err(format!(
                "cannot attach {host_name} to {bridge_name}"
            )))?;
        if hairpin {
            host.set_hairpin(hv.index).map_err(nl_err(format!(
                "cannot turn on hairpin mode on {host_name} (port of {bridge_name})"
            )))?;
        }
        let pl = pod
            .link(ifname)
            .map_err(nl_err(format!(
                "cannot read {ifname} in netns {}",
                netns.display()
            )))?
            .ok_or_else(|| {
                CniError::new(
                    code::NETLINK,
                    format!("{ifname} vanished from netns {}", netns.display()),
                )
            })?;
        let addr = Ipv4Net::new(ip, subnet.prefix_len()).unwrap_or(subnet);
        let in_pod = |what: &str| format!("{what} on {ifname} in netns {}", netns.display());
        let pl = match mac {
            Some(m) => {
                pod.set_mac(pl.index, m)
                    .map_err(nl_err(in_pod("cannot set runtimeConfig.mac")))?;
                Link {
                    mac: Some(crate::types::VtepMac(m).to_string()),
                    ..pl
                }
            }
            None => pl,
        };
        pod.add_address(pl.index, addr)
            .map_err(nl_err(in_pod(&format!("cannot add address {addr}"))))?;
        pod.set_up(pl.index, None)
            .map_err(nl_err(in_pod("cannot set link up")))?;
        let mut routes = vec![(senv.network, gw)];
        if default_route {
            routes.push((Ipv4Net::default(), gw));
        }
        for (dst, via) in &routes {
            pod.add_route(*dst, Some(*via), pl.index)
                .map_err(nl_err(in_pod(&format!("cannot add route {dst} via {via}"))))?;
        }
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: bridge_name.clone(),
                    mac: bridge.mac.clone(),
                    mtu: None,
                    sandbox: None,
                },
                Interface {
                    name: host_name.clone(),
                    mac: hv.mac,
                    mtu: Some(mtu),
                    sandbox: None,
                },
                Interface {
                    name: ifname.to_string(),
                    mac: pl.mac,
                    mtu: Some(mtu),
                    sandbox: Some(netns.display().to_string()),
                },
            ],
            ips: vec![IpConfig {
                address: IpNet::V4(addr),
                gateway: Some(IpAddr::V4(gw)),
                interface: Some(2),
            }],
            routes: routes
                .iter()
                .map(|(dst, via)| Route {
                    dst: IpNet::V4(*dst),
                    gw: Some(IpAddr::V4(*via)),
                })
                .collect(),
            dns: json!({}),
        })
    })();
    wired.inspect_err(|e| {
        log(&format!("ADD failed ({e}); undoing"));
        if created {
            // Deleting the host end deletes the pod end with it.
            if let Err(e) = host.delete_link(&host_name) {
                log(&format!("undo: cannot delete {host_name}: {e}"));
            }
        }
        if let Err(e) = ipam.release(&env.container_id, ifname) {
            log(&format!("undo: cannot release {ip}: {e}"));
        }
    })
}

/// DEL in built-in mode: removes the interface (when the netns still
/// exists), the host end, and the address. Succeeds when all are gone.
///
/// # Errors
/// 102 for netlink failures other than "not there", 105 for IPAM state.
pub fn del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let ifname = env.ifname.as_str();
    if let Some(netns) = env.netns.as_deref() {
        match Netlink::open_netns(netns) {
            Ok(ns) => {
                let mut pod = Netlink::in_netns(&ns).map_err(nl_err(format!(
                    "cannot open netlink in netns {}",
                    netns.display()
                )))?;
                pod.delete_link(ifname).map_err(nl_err(format!(
                    "cannot delete {ifname} in netns {}",
                    netns.display()
                )))?;
            }
            Err(e) => log(&format!(
                "DEL: netns {} is gone ({e}); its interfaces went with it",
                netns.display()
            )),
        }
    }
    let host_name = host_veth_name(&env.container_id, ifname);
    let mut host = Netlink::new().map_err(nl_err("cannot open netlink".into()))?;
    host.delete_link(&host_name)
        .map_err(nl_err(format!("cannot delete {host_name}")))?;
    for store in ipam_stores(conf) {
        store.release(&env.container_id, ifname).map_err(ipam_err)?;
    }
    Ok(())
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

/// CHECK in built-in mode: the pod's interface, addresses, routes and MTU
/// match `prevResult`, and the IPAM still holds the address.
///
/// # Errors
/// 107 naming the first difference; 7 without `prevResult`.
pub fn check(conf: &NetConf, env: &CniEnv, senv: Option<&SubnetEnv>) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult is missing: CHECK needs the ADD result",
        )
    })?;
    let prev = CniResult::from_json(prev)?;
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    let ifname = env.ifname.as_str();
    let ns = open_ns(netns)?;
    let mut pod = Netlink::in_netns(&ns).map_err(nl_err(format!(
        "cannot open netlink in netns {}",
        netns.display()
    )))?;
    let link = pod
        .link(ifname)
        .map_err(nl_err(format!("cannot look up {ifname}")))?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {ifname} not found in netns {}",
                netns.display()
            ))
        })?;
    if !link.up {
        return Err(check_failed(format!(
            "interface {ifname} in netns {} is down",
            netns.display()
        )));
    }
    if let Some(senv) = senv {
        let want = conf.mtu(senv)?;
        if link.mtu != Some(want) {
            return Err(check_failed(format!(
                "interface {ifname} has MTU {:?}, expected {want}",
                link.mtu
            )));
        }
    }
    let have = pod
        .addresses(link.index)
        .map_err(nl_err(format!("cannot list addresses of {ifname}")))?;
    let ours = |i: &Option<usize>| {
        i.and_then(|i| prev.interfaces.get(i))
            .is_none_or(|itf| itf.name == ifname && itf.sandbox.is_some())
    };
    let stores = ipam_stores(conf);
    let mut allocated = vec![];
    for store in &stores {
        allocated.extend(store.allocations().map_err(ipam_err)?);
    }
    for ip in prev.ips.iter().filter(|ip| ours(&ip.interface)) {
        let IpNet::V4(a) = ip.address else { continue };
        if !have.contains(&a) {
            return Err(check_failed(format!(
                "address {a} of prevResult is not on {ifname} (it has {have:?})"
            )));
        }
        if !allocated
            .iter()
            .any(|x| x.ip == a.addr() && x.container_id == env.container_id && x.ifname == ifname)
        {
            return Err(check_failed(format!(
                "address {} is not allocated to {}/{ifname} under {}",
                a.addr(),
                env.container_id,
                conf.data_dir.join("ipam").display()
            )));
        }
    }
    let routes = pod.routes().map_err(nl_err("cannot list routes".into()))?;
    for r in &prev.routes {
        if !has_route(&routes, r.dst, r.gw) {
            return Err(check_failed(format!(
                "route {} via {:?} of prevResult is missing in netns {}",
                r.dst,
                r.gw,
                netns.display()
            )));
        }
    }
    Ok(())
}

/// GC in built-in mode: releases every allocation not in `valid`, and removes
/// a host end left behind.
///
/// # Errors
/// 105 for IPAM state.
pub fn gc(conf: &NetConf, valid: &[(String, String)]) -> Result<(), CniError> {
    let mut stale = vec![];
    for store in ipam_stores(conf) {
        stale.extend(store.gc(valid).map_err(ipam_err)?);
    }
    if stale.is_empty() {
        return Ok(());
    }
    let mut host = Netlink::new().ok();
    for a in &stale {
        log(&format!(
            "GC: released {} of {}/{}",
            a.ip, a.container_id, a.ifname
        ));
        if let Some(h) = host.as_mut() {
            let _ = h.delete_link(&host_veth_name(&a.container_id, &a.ifname));
        }
    }
    Ok(())
}
