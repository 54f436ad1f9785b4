//! The node's set-up once it holds a lease: the TUN device's addresses and
//! the routes into it, forwarding, the node's published facts, the packet
//! core, and after the first view of the peers the packet threads, the rules,
//! subnet.env and the CNI config.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::devices::Devices;
use super::run::{Running, start_watch};
use super::{DaemonError, Start, rules};
use crate::backend::Backend;
use crate::config::NetConfig;
use crate::dataplane::core::{Core, SourceChecks};
use crate::dataplane::worker::Dataplane;
use crate::lease::Lease;
use crate::netlink;
use crate::state::NodeInfo;
use crate::subnet_env::{Ipv4Env, Ipv6Env, SubnetEnv};
use crate::types::{Family, VtepMac};

/// The steps after the lease: TUN address and route, the watch, packet
/// threads, rules, subnet.env; ready once the first snapshot is applied.
pub(super) async fn bring_up(
    start: &Start<'_>,
    nl: &mut netlink::Netlink,
    devices: Devices,
    lease: Lease,
    mtu: u32,
    previous: Option<&SubnetEnv>,
) -> Result<Running, DaemonError> {
    let Start {
        opts,
        config,
        store,
        state,
        ..
    } = *start;
    tracing::info!(
        "lease acquired: {} (key {}, store {})",
        lease.id(),
        lease.key(),
        store.describe()
    );
    let vteps = Vteps::of(&lease);
    let subnets = Subnets::of(config, &lease, &store.describe())?;
    route_into_tun(nl, &opts.tun_name, config, subnets, mtu, vteps.mac)?;
    ensure_forwarding(subnets.families());
    publish_node(start, subnets, &lease, vteps, mtu);
    let core = build_core(config, subnets, vteps, opts.source_checks);
    log_source_checks(opts.source_checks);
    let queues = devices.into_queues();
    // Peers first, then the packet threads: a worker with an empty table
    // would refuse every datagram as from an unknown peer and answer every
    // packet with ICMP unreachable. Until then the kernel queues what
    // arrives (TUN queue, socket buffer); after a restart the previous
    // weftd forwards meanwhile, and its rules and subnet.env stay in place.
    let watch = start_watch(store, state, &lease, config).await?;
    let dataplane =
        match Dataplane::start(queues, core, state.table.clone(), state.counters.clone()) {
            Ok(d) => d,
            Err(e) => {
                watch.watcher.abort();
                return Err(DaemonError::Threads(e));
            }
        };
    let rules = match rules_and_subnet_env(start, subnets, mtu, previous).await {
        Ok(rules) => rules,
        Err(e) => {
            watch.watcher.abort();
            tokio::task::spawn_blocking(move || dataplane.stop())
                .await
                .ok();
            return Err(e);
        }
    };
    state
        .ready
        .store(watch.first, std::sync::atomic::Ordering::Relaxed);
    if watch.first {
        announce_ready(start, &lease).await;
    }
    Ok(Running {
        lease,
        dataplane,
        rules,
        watcher: watch.watcher,
        own_gone: watch.own_gone,
    })
}

/// The node's subnets from its lease, one for each family the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subnets {
    V4(Ipv4Net),
    Dual(Ipv4Net, Ipv6Net),
    V6(Ipv6Net),
}

impl Subnets {
    /// The lease's subnet of each family `config` carries;
    /// [`DaemonError::NoLease4`] or [`DaemonError::NoLease6`] when the
    /// lease (from `store`) lacks one.
    fn of(config: &NetConfig, lease: &Lease, store: &str) -> Result<Subnets, DaemonError> {
        let missing = |family| {
            let (store, lease) = (store.to_string(), lease.key());
            match family {
                Family::V4 => DaemonError::NoLease4 { store, lease },
                Family::V6 => DaemonError::NoLease6 { store, lease },
            }
        };
        let v4 = match (config.ipv4, lease.subnet) {
            (Some(_), None) => return Err(missing(Family::V4)),
            (c, s) => c.and(s),
        };
        let v6 = match (config.ipv6, lease.ipv6_subnet) {
            (Some(_), None) => return Err(missing(Family::V6)),
            (c, s) => c.and(s),
        };
        match (v4, v6) {
            (Some(s), None) => Ok(Subnets::V4(s)),
            (Some(s), Some(s6)) => Ok(Subnets::Dual(s, s6)),
            (None, Some(s6)) => Ok(Subnets::V6(s6)),
            // The config carries a family (else no VXLAN socket was opened).
            (None, None) => Err(missing(Family::V4)),
        }
    }

    fn v4(self) -> Option<Ipv4Net> {
        match self {
            Subnets::V4(s) | Subnets::Dual(s, _) => Some(s),
            Subnets::V6(_) => None,
        }
    }

    fn v6(self) -> Option<Ipv6Net> {
        match self {
            Subnets::Dual(_, s6) | Subnets::V6(s6) => Some(s6),
            Subnets::V4(_) => None,
        }
    }

    /// The node's families, IPv4 first.
    fn families(self) -> Vec<Family> {
        let v4 = self.v4().map(|_| Family::V4);
        v4.into_iter()
            .chain(self.v6().map(|_| Family::V6))
            .collect()
    }

    /// Each family's Network (from `config`) and this node's subnet of it, IPv4 first.
    fn halves(self, config: &NetConfig) -> Vec<(IpNet, IpNet)> {
        let v4 = config.network().zip(self.v4());
        let v6 = config.network6().zip(self.v6());
        let v4 = v4.map(|(n, s)| (IpNet::from(n), IpNet::from(s)));
        let v6 = v6.map(|(n, s)| (IpNet::from(n), IpNet::from(s)));
        v4.into_iter().chain(v6).collect()
    }
}

/// The node's VTEP MACs: the store may hand back the ones this node
/// announced before (kube mode reads them from the node's annotations), and
/// the dataplane must answer to those; else each derived from its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vteps {
    mac: VtepMac,
    /// The IPv6 VTEP's MAC as the lease announces it (or as derived for it).
    mac6: VtepMac,
}

impl Vteps {
    fn of(lease: &Lease) -> Vteps {
        let mac = lease
            .attrs
            .vxlan_data()
            .map(|d| d.vtep_mac)
            .unwrap_or_else(|_| VtepMac::derive(&lease.attrs.public_ip.octets()));
        let mac6 = match (lease.attrs.vxlan_v6_data(), lease.attrs.public_ipv6) {
            (Ok(Some(d)), _) => d.vtep_mac,
            (_, Some(ip6)) => VtepMac::derive(&ip6.octets()),
            _ => mac,
        };
        Vteps { mac, mac6 }
    }
}

/// For each family: the subnet's first address as the TUN device's only
/// one (`.0/32` for IPv4; for IPv6 a /128, as flannel configures
/// flannel-v6.1), and the Network routed into the device.
fn route_into_tun(
    nl: &mut netlink::Netlink,
    tun: &str,
    config: &NetConfig,
    subnets: Subnets,
    mtu: u32,
    vtep_mac: VtepMac,
) -> Result<(), DaemonError> {
    let (index, _) = netlink::link(nl, tun)?;
    for (network, subnet) in subnets.halves(config) {
        let router = subnet.network();
        netlink::set_only_address(nl, index, tun, router)?;
        netlink::replace_route(nl, network, index, tun, router)?;
        match router {
            IpAddr::V4(_) => tracing::info!(
                "{tun} up: {router}/32, MTU {mtu}, VtepMAC {vtep_mac}, route {network} dev {tun}"
            ),
            IpAddr::V6(_) => {
                tracing::info!("{tun} IPv6: {router}/128, route {network} dev {tun}")
            }
        }
    }
    Ok(())
}

/// Pods' traffic crosses the node: forwarding must be on for each family
/// the node carries. Turn it on if it is off (as kubelet and Docker do), and
/// say so.
fn ensure_forwarding(families: Vec<Family>) {
    for family in families {
        ensure_sysctl(family);
    }
}

/// Turns the `family`'s forwarding switch on, or says why it cannot and
/// where to set it.
fn ensure_sysctl(family: Family) {
    let ((p, name), family) = (family.forwarding_sysctl(), family.name());
    match std::fs::read_to_string(p) {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write(p, "1") {
            Ok(()) => {
                tracing::info!("enabled {family} forwarding ({p} = 1): pods on this node need it")
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                tracing::warn!(
                    "{family} forwarding is off, and {p} is read-only here ({e}; a rootless or unprivileged container): \
                     pods will not reach other nodes until it is on. Set it where the namespace is made: \
                     docker/podman run --sysctl {name}=1, a pod's securityContext.sysctls, \
                     or sysctl -w {name}=1 in the namespace"
                )
            }
            Err(e) => tracing::warn!(
                "{family} forwarding is off and cannot be enabled ({p}: {e}); pods will not reach other nodes until it is on"
            ),
        },
    }
}

/// Publishes the node's subnets and facts (for /metrics, `weftd status`)
/// and its store's health.
fn publish_node(start: &Start<'_>, subnets: Subnets, lease: &Lease, vteps: Vteps, mtu: u32) {
    let Start {
        opts,
        config,
        store,
        state,
        interface,
    } = *start;
    if let Some(s) = subnets.v4() {
        let _ = state.subnet.set(s);
    }
    if let Some(s6) = subnets.v6() {
        let _ = state.subnet6.set(s6);
    }
    let Backend::Vxlan(vx) = config.backend;
    let _ = state.node.set(NodeInfo {
        tun: opts.tun_name.clone(),
        mtu,
        interface: interface.to_string(),
        public_ip: subnets.v4().map(|_| lease.attrs.public_ip),
        public_ipv6: subnets.v6().and(lease.attrs.public_ipv6),
        vtep_mac: if subnets.v4().is_some() {
            vteps.mac
        } else {
            vteps.mac6
        },
        network: config.network(),
        vni: vx.vni.get(),
        port: vx.port,
        store: store.describe(),
    });
    if let Some(h) = store.health() {
        let _ = state.store_health.set(h);
    }
}

/// The packet core for the node's subnets and VTEPs, with its source checks.
fn build_core(config: &NetConfig, subnets: Subnets, vteps: Vteps, checks: SourceChecks) -> Core {
    let Backend::Vxlan(vx) = config.backend;
    let mut core = match subnets {
        Subnets::V4(s) => Core::new(vx.vni, vteps.mac, s),
        Subnets::Dual(s, s6) => Core::new(vx.vni, vteps.mac, s).with_ipv6(s6, vteps.mac6),
        Subnets::V6(s6) => Core::ipv6_only(vx.vni, vteps.mac6, s6),
    };
    core.checks = checks;
    if subnets.v6().is_some() {
        tracing::info!("IPv6 VTEP: VtepMAC {}", vteps.mac6);
    }
    core
}

/// Warns when `--accept-unknown-peers` or `--accept-foreign-sources` relax
/// whom the receive path believes.
fn log_source_checks(checks: SourceChecks) {
    if checks.known_peers && checks.own_sources {
        return;
    }
    tracing::warn!(
        "source checks relaxed: VXLAN accepted from {} with inner sources {}",
        if checks.known_peers {
            "leased nodes only"
        } else {
            "any address"
        },
        if checks.own_sources {
            "inside a peer's subnet"
        } else {
            "from anywhere"
        }
    );
}

/// Once the packet threads run: the masquerade and forward rules, then
/// subnet.env (which tells the CNI plugin the node is ready for pods).
async fn rules_and_subnet_env(
    start: &Start<'_>,
    subnets: Subnets,
    mtu: u32,
    previous: Option<&SubnetEnv>,
) -> Result<Option<crate::netfilter::Netfilter>, DaemonError> {
    let (opts, config) = (start.opts, start.config);
    let rules =
        rules::setup_netfilter(opts.netfilter, config, subnets.v4(), subnets.v6(), previous)
            .await?;
    subnet_env(config, subnets, mtu, opts.netfilter.masquerade).write(&opts.subnet_file)?;
    tracing::info!("wrote {}", opts.subnet_file.display());
    Ok(rules)
}

/// subnet.env for the node: each family's Network and subnet, the MTU, and
/// whether weftd masquerades.
fn subnet_env(config: &NetConfig, subnets: Subnets, mtu: u32, ipmasq: bool) -> SubnetEnv {
    SubnetEnv {
        ipv4: config
            .network()
            .zip(subnets.v4())
            .map(|(network, subnet)| Ipv4Env { network, subnet }),
        ipv6: config
            .network6()
            .zip(subnets.v6())
            .map(|(network, subnet)| Ipv6Env { network, subnet }),
        mtu,
        ipmasq,
    }
}

/// The node forwards and knows its peers: tell the store (kube mode clears
/// NetworkUnavailable), then put the CNI config in place.
async fn announce_ready(start: &Start<'_>, lease: &Lease) {
    tracing::info!("watching for subnet leases");
    if let Err(e) = start.store.network_ready(lease).await {
        tracing::warn!("the dataplane is up but the store was not told: {e}");
    }
    if let Some(cni) = start.opts.cni.clone() {
        install_cni_config(cni).await;
    }
}

/// `--cni-conflist`, once the node forwards: the conflist goes into the
/// runtime's conf dir, and with it the runtime reports the node's network
/// ready (kubelet: the node becomes Ready) only when pods can use it. It
/// stays when weftd stops, so a restart keeps the node Ready.
async fn install_cni_config(cni: crate::cni::install::InstallArgs) {
    let dir = cni.conf_dir.clone();
    match tokio::task::spawn_blocking(move || crate::cni::install::install_conflist(&cni)).await {
        Ok(Ok((path, notes))) => {
            tracing::info!(
                "CNI config {} in place: pods on this node get the network",
                path.display()
            );
            for n in notes {
                tracing::warn!("{n}");
            }
        }
        Ok(Err(e)) => tracing::error!(
            "{e}: the runtime in {} finds no CNI config of weft's, and pods here get no network until it does",
            dir.display()
        ),
        Err(e) => tracing::error!("installing the CNI config failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::types::Vni;

    const V4: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
    const V6: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
    const MAC: VtepMac = VtepMac([0x0a, 0x58, 1, 2, 3, 4]);
    const MAC6: VtepMac = VtepMac([0x0a, 0x58, 6, 6, 6, 6]);

    fn config(text: &str) -> NetConfig {
        NetConfig::parse(text, "test").unwrap()
    }

    fn s4() -> Ipv4Net {
        "10.244.3.0/24".parse().unwrap()
    }

    fn s6() -> Ipv6Net {
        "fc00:0:0:3::/64".parse().unwrap()
    }

    fn ip6() -> Ipv6Addr {
        "2001:db8::3".parse().unwrap()
    }

    fn lease(subnet: Option<Ipv4Net>, ipv6_subnet: Option<Ipv6Net>) -> Lease {
        let vni = Vni::new(1).unwrap();
        let attrs = match subnet {
            Some(_) => LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 3), vni, MAC),
            None => LeaseAttrs::vxlan6_only(ip6(), vni, MAC6),
        };
        let attrs = match (subnet, ipv6_subnet) {
            (Some(_), Some(_)) => attrs.with_ipv6(ip6(), vni, MAC6),
            _ => attrs,
        };
        Lease {
            subnet,
            ipv6_subnet,
            attrs,
            expiration: None,
        }
    }

    #[test]
    fn the_subnets_are_the_lease_s_halves_the_network_carries() {
        let dual = lease(Some(s4()), Some(s6()));
        let of = |c: &str, l: &Lease| Subnets::of(&config(c), l, "store");
        assert_eq!(of(V4, &dual).unwrap(), Subnets::V4(s4()));
        assert_eq!(of(DUAL, &dual).unwrap(), Subnets::Dual(s4(), s6()));
        assert_eq!(of(V6, &lease(None, Some(s6()))).unwrap(), Subnets::V6(s6()));
        let e = of(DUAL, &lease(Some(s4()), None)).unwrap_err();
        assert!(matches!(&e, DaemonError::NoLease6 { store, .. } if store == "store"));
        assert!(e.to_string().contains("has no IPv6 subnet"), "{e}");
        let e = of(DUAL, &lease(None, Some(s6()))).unwrap_err();
        assert!(matches!(e, DaemonError::NoLease4 { .. }));
    }

    #[test]
    fn the_halves_pair_each_network_with_its_subnet_ipv4_first() {
        let halves = Subnets::Dual(s4(), s6()).halves(&config(DUAL));
        assert_eq!(
            halves,
            vec![
                ("10.244.0.0/16".parse().unwrap(), IpNet::from(s4())),
                ("fc00::/48".parse().unwrap(), IpNet::from(s6())),
            ]
        );
        assert_eq!(
            Subnets::Dual(s4(), s6()).families(),
            [Family::V4, Family::V6]
        );
        assert_eq!(Subnets::V6(s6()).families(), [Family::V6]);
    }

    #[test]
    fn the_vtep_macs_are_the_announced_ones_else_derived() {
        let dual = Vteps::of(&lease(Some(s4()), Some(s6())));
        assert_eq!((dual.mac, dual.mac6), (MAC, MAC6));
        // IPv4 only: the IPv6 VTEP is the IPv4 one (unused).
        let v4 = Vteps::of(&lease(Some(s4()), None));
        assert_eq!((v4.mac, v4.mac6), (MAC, MAC));
        // An IPv6-only lease has no BackendData: its IPv4 MAC is derived.
        let v6 = Vteps::of(&lease(None, Some(s6())));
        assert_eq!(v6.mac6, MAC6);
        assert_eq!(v6.mac, VtepMac::derive(&[0, 0, 0, 0]));
    }

    #[test]
    fn subnet_env_carries_each_half_of_the_node() {
        let env = subnet_env(&config(DUAL), Subnets::Dual(s4(), s6()), 1430, true);
        assert_eq!(
            env,
            SubnetEnv {
                ipv4: Some(Ipv4Env {
                    network: "10.244.0.0/16".parse().unwrap(),
                    subnet: s4()
                }),
                ipv6: Some(Ipv6Env {
                    network: "fc00::/48".parse().unwrap(),
                    subnet: s6()
                }),
                mtu: 1430,
                ipmasq: true,
            }
        );
        let env = subnet_env(&config(V6), Subnets::V6(s6()), 1430, false);
        assert_eq!((env.ipv4, env.ipv6.map(|e| e.subnet)), (None, Some(s6())));
    }
}
