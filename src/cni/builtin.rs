//! Built-in mode, for nodes with no other CNI plugin: a veth pair (pod end
//! `CNI_IFNAME` created directly in the pod's netns, host end on a bridge
//! whose address is the node subnet's gateway), an address from weft's own
//! IPAM, a route to the cluster network (and a default route when
//! `delegate.isDefaultGateway` is true), and the MTU of subnet.env. The
//! bridge port is in hairpin mode, so a pod reaches itself through a Service.
//! It never masquerades: weftd's `--ip-masq` rules do that for every mode.
//!
//! With `FLANNEL_IPV6_SUBNET` in subnet.env (dual-stack), the pod also gets
//! an IPv6 address of the node's IPv6 subnet (its own store, `nodad` so it is
//! usable at once), the bridge the IPv6 gateway (`::1`), and routes to
//! `FLANNEL_IPV6_NETWORK` (and `::/0`) via it; the result lists both.
//!
//! On an IPv6-only node (subnet.env without `FLANNEL_NETWORK` and
//! `FLANNEL_SUBNET`) the pod gets the IPv6 half alone: the bridge holds only
//! the IPv6 gateway (its MAC from [`bridge_mac`] of it), the pod one IPv6 address
//! and the IPv6 routes, and the result lists only those.
//!
//! Every step of ADD after the address is allocated is undone when a later
//! one fails. DEL removes what exists and ignores what does not.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use serde_json::json;

use super::conf::NetConf;
use super::env::CniEnv;
use super::error::{CniError, code};
use super::ipam::{Ipam, IpamError};
use super::log;
use super::result::{CniResult, Interface, IpConfig, Route};
use crate::netlink::{Link, Netlink, has_route, is_exists};
use crate::subnet_env::SubnetEnv;
use crate::types::Family;

/// The IPAM store of node subnet `subnet`, shared by every network that
/// allocates from it (`<dataDir>/ipam/10.244.3.0-24`, and for the IPv6
/// subnet of a dual-stack node `<dataDir>/ipam/fc00:0:0:3::-64`).
pub fn ipam(conf: &NetConf, subnet: IpNet) -> Ipam {
    let key = match subnet.trunc() {
        IpNet::V4(s) => crate::lease::subnet_key(&s),
        IpNet::V6(s) => format!("{}-{}", s.addr(), s.prefix_len()),
    };
    Ipam::new(conf.data_dir.join("ipam").join(key), &conf.name)
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

/// The addresses `runtimeConfig.ips` asks for (`podman run --ip`), at
/// most one per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// The address families a node has: the halves of its subnet.env (IPv4
/// only, dual-stack, or IPv6 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub fn of(senv: &SubnetEnv) -> Families {
        Families {
            ipv4: senv.ipv4.is_some(),
            ipv6: senv.ipv6.is_some(),
        }
    }
}

/// One family's half of a node, from subnet.env: the cluster network, the
/// node's subnet and its gateway (the bridge's address, the pod's next hop).
struct Half {
    network: IpNet,
    subnet: IpNet,
    gateway: IpAddr,
}

impl Half {
    /// The halves the node has, IPv4 first: both on a dual-stack node, only
    /// IPv6 on an IPv6-only one.
    fn of(senv: &SubnetEnv) -> Vec<Half> {
        let v4 = senv.ipv4.map(|e| (e.network.into(), e.subnet.into()));
        let v6 = senv.ipv6.map(|e| (e.network.into(), e.subnet.into()));
        [v4, v6]
            .into_iter()
            .flatten()
            .map(|(network, subnet): (IpNet, IpNet)| {
                let subnet = subnet.trunc();
                Half {
                    network,
                    subnet,
                    gateway: gateway(subnet),
                }
            })
            .collect()
    }
}

/// The addresses `runtimeConfig.ips` asks for, if any: one IPv4 address
/// when the node has an IPv4 subnet, and one IPv6 address when it has an
/// IPv6 subnet (`has`). `subnet_file` names where that would be set. Pure.
///
/// # Errors
/// Code 7 when an entry is not an address (with or without a prefix), a
/// family has two, or an address is asked of a family the node lacks (IPv6
/// of an IPv4-only node, IPv4 of an IPv6-only one).
pub fn requested_ips(
    conf: &NetConf,
    has: Families,
    subnet_file: &Path,
) -> Result<Requested, CniError> {
    let Some(v) = conf.runtime_config.as_ref().and_then(|r| r.get("ips")) else {
        return Ok(Requested::default());
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
    let (mut v4, mut v6) = (vec![], vec![]);
    for item in list {
        let text = item
            .as_str()
            .ok_or_else(|| bad("each entry must be a string"))?;
        let addr = text.split('/').next().unwrap_or_default();
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if has.ipv4 => v4.push(a),
            Ok(IpAddr::V4(_)) => {
                return Err(bad(&format!(
                    "{text:?} is an IPv4 address but this node has no IPv4 subnet \
                     (an IPv6-only network: FLANNEL_SUBNET is not in {}); drop it, or ask \
                     for an IPv6 address of FLANNEL_IPV6_SUBNET instead",
                    subnet_file.display()
                )));
            }
            Ok(IpAddr::V6(a)) if has.ipv6 => v6.push(a),
            Ok(IpAddr::V6(_)) => {
                return Err(bad(&format!(
                    "{text:?} is an IPv6 address but this node has no IPv6 subnet \
                     (FLANNEL_IPV6_SUBNET is not in {}); drop it, or enable IPv6 in \
                     weftd's net-conf.json (EnableIPv6, IPv6Network)",
                    subnet_file.display()
                )));
            }
            Err(_) => return Err(bad(&format!("{text:?} is not an IP address"))),
        }
    }
    let one = |n: usize, family: &str| {
        if n > 1 {
            Err(bad(&format!("one {family} address per interface")))
        } else {
            Ok(())
        }
    };
    one(v4.len(), "IPv4")?;
    one(v6.len(), "IPv6")?;
    Ok(Requested {
        v4: v4.first().copied(),
        v6: v6.first().copied(),
    })
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

/// The gateway of a node subnet: its first host address (flannel's `.1`,
/// and `::1` as subnet.env writes the IPv6 subnet).
pub fn gateway(subnet: IpNet) -> IpAddr {
    // subnet.env with no room for one is refused before this is reached.
    match subnet.network() {
        IpAddr::V4(n) => Ipv4Addr::from(u32::from(n).saturating_add(1)).into(),
        IpAddr::V6(n) => Ipv6Addr::from(u128::from(n).saturating_add(1)).into(),
    }
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

/// The bridge's MAC: `0a:58` and the last four bytes of the gateway's
/// address, set when the bridge is created, so pods' ARP and neighbour
/// entries for the gateway stay right as other pods come and go. With an
/// IPv4 gateway that is the whole address (the CNI plugins' convention); an
/// IPv6-only node, which has none, takes its IPv6 gateway's (`fc00:0:0:3::1`
/// gives `0a:58:00:00:00:01`), so every such node's bridge may get the same
/// one: a bridge's MAC is seen only by the pods on it.
pub fn bridge_mac(gw: IpAddr) -> [u8; 6] {
    let low = match gw {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => u128::from(a) as u32,
    };
    let [a, b, c, d] = low.to_be_bytes();
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

/// The bridge `name` with the gateway address of each family the node has
/// (`gws`, IPv4 first), created when missing with the MAC of [`bridge_mac`]
/// of the first.
fn ensure_bridge(host: &mut Netlink, name: &str, gws: &[IpNet]) -> Result<Link, CniError> {
    let mac = gws.first().map(|g| bridge_mac(g.addr()));
    host.create_bridge(name, mac)
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
    for gw in gws {
        let what = match gw {
            IpNet::V4(_) => format!("cannot add gateway address {gw} to bridge {name}"),
            IpNet::V6(_) => format!(
                "cannot add IPv6 gateway address {gw} to bridge {name} (is IPv6 disabled on the node? net.ipv6.conf.{name}.disable_ipv6)"
            ),
        };
        host.add_address(br.index, *gw).map_err(nl_err(what))?;
    }
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
    let wanted = requested_ips(conf, Families::of(senv), &conf.subnet_file)?;
    let halves = Half::of(senv);
    if halves.is_empty() {
        // SubnetEnv::parse refuses such a file; a caller building one by hand
        // gets an error, not a pod without an address.
        return Err(CniError::new(
            code::SUBNET_ENV,
            format!(
                "{} holds neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET; is it weftd's (subnetFile must match its --subnet-file)?",
                conf.subnet_file.display()
            ),
        ));
    }
    if senv.ipv6.is_some() {
        refuse_mtu_below_ipv6_minimum(conf, mtu, senv.ipv4.is_none())?;
    }
    let ns = open_ns(netns)?;
    let mut pod = Netlink::in_netns(&ns).map_err(nl_err(format!(
        "cannot open netlink in netns {}",
        netns.display()
    )))?;
    refuse_in(&mut pod, ifname, netns)?;
    let mut host = Netlink::new().map_err(nl_err("cannot open netlink".into()))?;
    let gw_nets: Vec<IpNet> = halves
        .iter()
        .map(|h| IpNet::new(h.gateway, h.subnet.prefix_len()).unwrap_or(h.subnet))
        .collect();
    let bridge = ensure_bridge(&mut host, &bridge_name, &gw_nets)?;
    let release = |store: &Ipam, addr: IpAddr| {
        if let Err(e) = store.release(&env.container_id, ifname) {
            log(&format!("undo: cannot release {addr}: {e}"));
        }
    };
    // Each half's store and the pod's address in it, IPv4 first; a failure
    // releases those taken before it.
    let mut taken: Vec<(Ipam, IpNet)> = vec![];
    for h in &halves {
        let store = ipam(conf, h.subnet);
        let want = match h.subnet {
            IpNet::V4(_) => wanted.v4.map(IpAddr::V4),
            IpNet::V6(_) => wanted.v6.map(IpAddr::V6),
        };
        match store.allocate(h.subnet, h.gateway, &env.container_id, ifname, want) {
            Ok(a) => {
                let addr = IpNet::new(a, h.subnet.prefix_len()).unwrap_or(h.subnet);
                taken.push((store, addr));
            }
            Err(e) => {
                for (store, a) in &taken {
                    release(store, a.addr());
                }
                return Err(ipam_err(e));
            }
        }
    }
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
        for (_, addr) in &taken {
            let what = match addr {
                IpNet::V4(_) => format!("cannot add address {addr}"),
                IpNet::V6(_) => format!(
                    "cannot add IPv6 address {addr} (is IPv6 disabled in the pod? net.ipv6.conf.{ifname}.disable_ipv6)"
                ),
            };
            pod.add_address(pl.index, *addr)
                .map_err(nl_err(in_pod(&what)))?;
        }
        pod.set_up(pl.index, None)
            .map_err(nl_err(in_pod("cannot set link up")))?;
        let routes = pod_routes(halves.iter().map(|h| (h.network, h.gateway)), default_route);
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
            ips: halves
                .iter()
                .zip(&taken)
                .map(|(h, (_, addr))| IpConfig {
                    address: *addr,
                    gateway: Some(h.gateway),
                    interface: Some(2),
                })
                .collect(),
            routes: routes
                .iter()
                .map(|(dst, via)| Route {
                    dst: *dst,
                    gw: Some(*via),
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
        for (store, a) in &taken {
            release(store, a.addr());
        }
    })
}

/// IPv6 needs an MTU of at least 1280: below it the kernel turns IPv6 off
/// on the link, and the pod's IPv6 address could not be added. `ipv6_only`:
/// the node has no IPv4 subnet (the message says which kind of node it is).
///
/// # Errors
/// Code 7 naming where the MTU comes from.
fn refuse_mtu_below_ipv6_minimum(
    conf: &NetConf,
    mtu: u32,
    ipv6_only: bool,
) -> Result<(), CniError> {
    if mtu >= 1280 {
        return Ok(());
    }
    let from = if conf.delegate.get("mtu").is_some_and(|v| !v.is_null()) {
        "delegate.mtu in the network configuration".to_string()
    } else {
        format!("FLANNEL_MTU in {}", conf.subnet_file.display())
    };
    let kind = if ipv6_only { "IPv6-only" } else { "dual-stack" };
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!(
            "MTU {mtu} ({from}) is below IPv6's minimum of 1280 and this node is {kind} \
             (FLANNEL_IPV6_SUBNET); raise it to 1280 or more"
        ),
    ))
}

/// The pod's routes, in the result's order: for each half of the node
/// (`(network, gateway)`, IPv4 first), the network via the gateway (and
/// `0.0.0.0/0` or `::/0` with `default_route`). An IPv6-only node has no
/// IPv4 half. Pure.
pub fn pod_routes(
    halves: impl IntoIterator<Item = (IpNet, IpAddr)>,
    default_route: bool,
) -> Vec<(IpNet, IpAddr)> {
    let mut out = vec![];
    for (net, gw) in halves {
        out.push((net, gw));
        if default_route {
            out.push((Family::of(gw).default_route(), gw));
        }
    }
    out
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
        .addresses(link.index, Family::V4)
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
    let mut have6 = None;
    for ip in prev.ips.iter().filter(|ip| ours(&ip.interface)) {
        let a = ip.address;
        let listed = match a {
            IpNet::V4(_) => &have,
            IpNet::V6(_) => match &mut have6 {
                Some(h) => h,
                None => have6.insert(
                    pod.addresses(link.index, Family::V6)
                        .map_err(nl_err(format!("cannot list IPv6 addresses of {ifname}")))?,
                ),
            },
        };
        if !listed.contains(&a) {
            return Err(check_failed(format!(
                "address {a} of prevResult is not on {ifname} (it has {listed:?})"
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
    let routes = pod
        .routes(Family::V4)
        .map_err(nl_err("cannot list routes".into()))?;
    let routes6 = if prev.routes.iter().any(|r| r.dst.addr().is_ipv6()) {
        pod.routes(Family::V6)
            .map_err(nl_err("cannot list IPv6 routes".into()))?
    } else {
        vec![]
    };
    for r in &prev.routes {
        let listed = match r.dst {
            IpNet::V4(_) => &routes,
            IpNet::V6(_) => &routes6,
        };
        if !has_route(listed, r.dst, r.gw) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_with_ips(ips: serde_json::Value) -> NetConf {
        let m = super::super::conf::parse_json(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
                   "runtimeConfig": {"ips": ips}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        NetConf::from_map(&m, super::super::version::Version::V1_0_0).unwrap()
    }

    #[test]
    fn requested_ips_one_per_family_and_only_families_the_node_has() {
        let f = Path::new("/run/flannel/subnet.env");
        let both = Families {
            ipv4: true,
            ipv6: true,
        };
        let v4_only = Families {
            ipv4: true,
            ipv6: false,
        };
        let r = requested_ips(
            &conf_with_ips(json!(["10.1.2.3/24", "fc00::7/64"])),
            both,
            f,
        )
        .unwrap();
        assert_eq!(
            r,
            Requested {
                v4: Some(Ipv4Addr::new(10, 1, 2, 3)),
                v6: Some("fc00::7".parse().unwrap())
            }
        );
        let r = requested_ips(&conf_with_ips(json!(["fc00::7"])), both, f).unwrap();
        assert_eq!((r.v4, r.v6.is_some()), (None, true));
        let e = requested_ips(&conf_with_ips(json!(["fc00::7"])), v4_only, f).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(
            e.msg.contains("FLANNEL_IPV6_SUBNET")
                && e.msg.contains("/run/flannel/subnet.env")
                && e.msg.contains("EnableIPv6"),
            "{}",
            e.msg
        );
        for (bad, why) in [
            (json!(["fc00::7", "fc00::8"]), "one IPv6"),
            (json!(["10.1.2.3", "10.1.2.4"]), "one IPv4"),
            (json!(["fc00::zz"]), "not an IP"),
            (json!([7]), "string"),
            (json!("fc00::7"), "list"),
        ] {
            let e = requested_ips(&conf_with_ips(bad.clone()), both, f).unwrap_err();
            assert!(
                e.code == code::INVALID_CONFIG && e.msg.contains(why),
                "{bad}: {}",
                e.msg
            );
        }
    }

    #[test]
    fn dual_stack_mtu_below_1280_is_refused_naming_its_source() {
        let c = conf_with_ips(json!([]));
        assert!(refuse_mtu_below_ipv6_minimum(&c, 1280, false).is_ok());
        let e = refuse_mtu_below_ipv6_minimum(&c, 1200, false).unwrap_err();
        assert!(
            e.code == code::INVALID_CONFIG && e.msg.contains("FLANNEL_MTU"),
            "{}",
            e.msg
        );
        let mut c = c;
        c.delegate.insert("mtu".into(), json!(1000));
        let e = refuse_mtu_below_ipv6_minimum(&c, 1000, false).unwrap_err();
        assert!(
            e.msg.contains("delegate.mtu") && e.msg.contains("1280"),
            "{}",
            e.msg
        );
        assert!(e.msg.contains("dual-stack"), "{}", e.msg);
    }

    #[test]
    fn routes_and_gateways_per_family() {
        let v4 = ("10.1.0.0/16".parse().unwrap(), "10.1.17.1".parse().unwrap());
        let s6: IpNet = "fc00:0:0:3::/64".parse().unwrap();
        let g6 = gateway(s6);
        assert_eq!(g6, "fc00:0:0:3::1".parse::<IpAddr>().unwrap());
        let v6 = ("fc00::/48".parse().unwrap(), g6);
        let text = |r: Vec<(IpNet, IpAddr)>| -> Vec<String> {
            r.iter().map(|(d, g)| format!("{d} via {g}")).collect()
        };
        assert_eq!(text(pod_routes([v4], false)), ["10.1.0.0/16 via 10.1.17.1"]);
        assert_eq!(
            text(pod_routes([v4], true)),
            ["10.1.0.0/16 via 10.1.17.1", "0.0.0.0/0 via 10.1.17.1"]
        );
        assert_eq!(
            text(pod_routes([v4, v6], true)),
            [
                "10.1.0.0/16 via 10.1.17.1",
                "0.0.0.0/0 via 10.1.17.1",
                "fc00::/48 via fc00:0:0:3::1",
                "::/0 via fc00:0:0:3::1"
            ]
        );
        assert_eq!(
            text(pod_routes([v4, v6], false)),
            ["10.1.0.0/16 via 10.1.17.1", "fc00::/48 via fc00:0:0:3::1"]
        );
        // The top of the address space: no overflow.
        let top: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
            .parse()
            .unwrap();
        assert_eq!(
            gateway(top),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse::<IpAddr>()
                .unwrap()
        );
        let all: IpNet = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
            .parse()
            .unwrap();
        assert_eq!(gateway(all), IpAddr::from(Ipv6Addr::from(u128::MAX)));
    }

    #[test]
    fn ipv6_only_routes_have_no_ipv4_half() {
        let g6: IpAddr = "fc00:0:0:3::1".parse().unwrap();
        let v6 = ("fc00::/48".parse().unwrap(), g6);
        let text = |r: Vec<(IpNet, IpAddr)>| -> Vec<String> {
            r.iter().map(|(d, g)| format!("{d} via {g}")).collect()
        };
        assert_eq!(
            text(pod_routes([v6], true)),
            ["fc00::/48 via fc00:0:0:3::1", "::/0 via fc00:0:0:3::1"]
        );
        assert_eq!(
            text(pod_routes([v6], false)),
            ["fc00::/48 via fc00:0:0:3::1"]
        );
        assert!(pod_routes([], true).is_empty());
    }

    #[test]
    fn ipv6_only_bridge_mac_is_fixed_unicast_and_local() {
        let mac = bridge_mac("fc00:0:0:3::1".parse().unwrap());
        assert_eq!(mac, [0x0a, 0x58, 0, 0, 0, 1]);
        assert_eq!(
            bridge_mac("fd77:0:0:5::a0b:c0d".parse().unwrap()),
            [0x0a, 0x58, 0x0a, 0x0b, 0x0c, 0x0d]
        );
        // Unicast (bit 0 clear), locally administered (bit 1 set), as the
        // IPv4 one; the extremes of the address space included.
        for gw in [Ipv6Addr::UNSPECIFIED, Ipv6Addr::from(u128::MAX)] {
            let m = bridge_mac(gw.into());
            assert_eq!(m[0] & 0b11, 0b10, "{gw}: {m:02x?}");
        }
        assert_eq!(
            bridge_mac(Ipv4Addr::new(10, 1, 17, 1).into())[..2],
            mac[..2]
        );
    }

    #[test]
    fn requested_ips_on_an_ipv6_only_node() {
        let f = Path::new("/run/flannel/subnet.env");
        let v6_only = Families {
            ipv4: false,
            ipv6: true,
        };
        let r = requested_ips(&conf_with_ips(json!(["fc00::7/64"])), v6_only, f).unwrap();
        assert_eq!(
            r,
            Requested {
                v4: None,
                v6: Some("fc00::7".parse().unwrap())
            }
        );
        for ips in [json!(["10.1.2.3"]), json!(["fc00::7", "10.1.2.3/24"])] {
            let e = requested_ips(&conf_with_ips(ips.clone()), v6_only, f).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{ips}");
            assert!(
                e.msg.contains("10.1.2.3")
                    && e.msg.contains("IPv6-only")
                    && e.msg.contains("FLANNEL_SUBNET")
                    && e.msg.contains("/run/flannel/subnet.env")
                    && e.msg.contains("FLANNEL_IPV6_SUBNET"),
                "{}",
                e.msg
            );
        }
        let e =
            requested_ips(&conf_with_ips(json!(["fc00::7", "fc00::8"])), v6_only, f).unwrap_err();
        assert!(e.msg.contains("one IPv6"), "{}", e.msg);
        assert_eq!(
            Families::of(&SubnetEnv {
                ipv4: None,
                ipv6: Some(crate::subnet_env::Ipv6Env {
                    network: "fc00::/48".parse().unwrap(),
                    subnet: "fc00:0:0:3::/64".parse().unwrap(),
                }),
                mtu: 1450,
                ipmasq: true,
            }),
            v6_only
        );
    }

    #[test]
    fn ipv6_only_mtu_below_1280_is_refused_saying_so() {
        let c = conf_with_ips(json!([]));
        assert!(refuse_mtu_below_ipv6_minimum(&c, 1280, true).is_ok());
        let e = refuse_mtu_below_ipv6_minimum(&c, 1279, true).unwrap_err();
        assert!(
            e.code == code::INVALID_CONFIG
                && e.msg.contains("IPv6-only")
                && !e.msg.contains("dual-stack")
                && e.msg.contains("FLANNEL_MTU")
                && e.msg.contains("1280"),
            "{}",
            e.msg
        );
    }

    /// ADD with an IPv6-only subnet.env goes past the old refusal: with a
    /// netns that does not exist it fails opening it (106), having set
    /// nothing up.
    #[test]
    fn ipv6_only_add_is_no_longer_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = super::super::conf::parse_json(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
                   "subnetFile": dir.path().join("subnet.env"),
                   "dataDir": dir.path().join("data")})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let conf = NetConf::from_map(&m, super::super::version::Version::V1_0_0).unwrap();
        let senv = SubnetEnv::parse(
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            &dir.path().join("subnet.env"),
        )
        .unwrap();
        let env = CniEnv {
            container_id: "c1".into(),
            netns: Some(dir.path().join("no-such-netns")),
            ifname: "eth0".into(),
            args: None,
            path: vec![],
        };
        let e = add(&conf, &env, &senv).unwrap_err();
        assert_eq!(e.code, code::NETNS, "{}", e.msg);
        assert!(!dir.path().join("data").exists());
    }
}
