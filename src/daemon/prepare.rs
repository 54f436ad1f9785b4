//! The steps before the lease is taken: the network config, the interface,
//! the MTU, the places weftd writes, and what it asks the store for. Whatever
//! can be checked is checked here, so a start that would fail takes no lease.

use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{DaemonError, Options};
use crate::config::{DEFAULT_NET_CONF, NetConfig};
use crate::iface::{self, ExtIface};
use crate::netlink;
use crate::store::local::LocalStore;
use crate::store::{AcquireRequest, LeaseStore, StoreError};
use crate::subnet_env::SubnetEnv;

/// Reads the network config: `--net-config-path`, else the store's (the
/// embedded default stored first when `seed_default` is given and the
/// store has none).
pub(super) async fn load_config(
    opts: &Options,
    store: &dyn LeaseStore,
    seed_default: Option<&LocalStore>,
) -> Result<NetConfig, DaemonError> {
    if let Some(p) = &opts.net_config_path {
        return Ok(NetConfig::from_file(p)?);
    }
    if let Some(local) = seed_default {
        if local.put_config_if_absent(DEFAULT_NET_CONF)? {
            tracing::info!(
                "no network config given: stored the embedded default {DEFAULT_NET_CONF}"
            );
        }
    }
    match store.network_config().await? {
        Some(text) => Ok(NetConfig::parse(
            &text,
            &format!("{} (network config)", store.describe()),
        )?),
        None => Err(StoreError::Config {
            store: store.describe(),
            key: "config".into(),
            problem: "not found; pass --net-config-path or store a net-conf.json".into(),
        }
        .into()),
    }
}

/// Chooses the underlay interface for the families `config` carries (the
/// config first: the interface needs an IPv6 address in a dual-stack
/// network), and logs it with the network.
pub(super) fn choose_interface(
    opts: &Options,
    config: &NetConfig,
) -> Result<ExtIface, DaemonError> {
    if let (None, Some(ip6)) = (config.ipv6, opts.iface.public_ipv6) {
        tracing::warn!(
            "--public-ipv6 {ip6} has no effect: the network config does not enable IPv6 (set \"EnableIPv6\": true and \"IPv6Network\" in net-conf.json for a dual-stack network)"
        );
    }
    let ext = iface::select_for(&opts.iface, config.ipv4.is_some(), config.ipv6.is_some())?;
    if config.ipv4.is_some() {
        tracing::info!(
            "using interface {} ({}), public IP {}",
            ext.name,
            ext.addr,
            ext.public_ip
        );
    } else {
        tracing::info!("using interface {} (an IPv6-only network)", ext.name);
    }
    if let Some(ip6) = ext.public_ipv6 {
        tracing::info!(
            "IPv6: interface address {}, public IPv6 {ip6}",
            ext.addr6
                .map_or_else(|| "none".to_string(), |a| a.to_string())
        );
    }
    if let Some(c4) = config.ipv4 {
        tracing::info!(
            "network {} (subnets /{} from {} to {})",
            c4.network,
            c4.subnet_len,
            c4.subnet_min,
            c4.subnet_max,
        );
    }
    if let Some(c6) = config.ipv6 {
        tracing::info!(
            "IPv6 network {} (subnets /{} from {} to {})",
            c6.network,
            c6.subnet_len,
            c6.subnet_min,
            c6.subnet_max,
        );
    }
    Ok(ext)
}

/// The pod network's MTU: what subnet.env and the logs say, and the TUN
/// device's (the same, checked to fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mtu {
    pub overlay: u32,
    pub tun: u16,
}

/// Reads the MTU of interface `iface` and checks the pod network's ([`tun_mtu`]).
pub(super) fn read_mtu(
    nl: &mut netlink::Netlink,
    config: &NetConfig,
    iface: &str,
) -> Result<Mtu, DaemonError> {
    let (_, underlay_mtu) = netlink::link(nl, iface)?;
    tun_mtu(config, underlay_mtu, iface)
}

/// The pod network's MTU over an underlay of `underlay_mtu`: big enough for
/// IPv4 (576 bytes), or for IPv6 (1280; the kernel turns IPv6 off below it)
/// when the same device carries it in a dual-stack network, else
/// [`DaemonError::Mtu`] naming `iface`.
fn tun_mtu(config: &NetConfig, underlay_mtu: u32, iface: &str) -> Result<Mtu, DaemonError> {
    let overlay = config.overlay_mtu(underlay_mtu);
    let ipv6 = config.ipv6.is_some();
    let (family, min) = if ipv6 { ("IPv6", 1280) } else { ("IPv4", 576) };
    let tun = u16::try_from(overlay)
        .ok()
        .filter(|m| *m >= min)
        .ok_or(DaemonError::Mtu {
            mtu: overlay,
            underlay: config.backend.mtu().unwrap_or(underlay_mtu),
            overhead: config.backend.overhead(ipv6),
            family,
            min,
            iface: iface.to_string(),
        })?;
    Ok(Mtu { overlay, tun })
}

/// Checks the places weftd writes after the lease: the subnet file's
/// directory and, with `--cni-conflist`, the conflist and its directory.
pub(super) fn check_writable_places(opts: &Options) -> Result<(), DaemonError> {
    if let Some(dir) = opts.subnet_file.parent() {
        check_writable_dir(dir, "--subnet-file")?;
    }
    if let Some(cni) = &opts.cni {
        crate::cni::install::read_conflist(cni)?;
        check_writable_dir(&cni.conf_dir, "--cni-conf-dir")?;
    }
    Ok(())
}

/// Checks before the lease is taken that `dir` exists (or can be made) and
/// takes files; `flag` is the one that moves it.
pub(super) fn check_writable_dir(dir: &Path, flag: &'static str) -> Result<(), DaemonError> {
    let probe = dir.join(format!(".weftd-probe.{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| DaemonError::Unwritable {
            path: dir.to_owned(),
            flag,
            source,
        })
}

/// What to ask the store for: the subnets of the previous run (from its
/// subnet.env) when they lie in the same networks, this node's attributes
/// (public addresses, VTEP) for the families the network carries, the TTL.
pub(super) fn acquire_request(
    opts: &Options,
    config: &NetConfig,
    ext: &ExtIface,
    previous: Option<&SubnetEnv>,
) -> AcquireRequest {
    let (previous, previous6) = previous_subnets(config, previous);
    AcquireRequest {
        config: config.clone(),
        attrs: config.backend.own_attrs(
            config.ipv4.map(|_| ext.public_ip),
            config.ipv6.and(ext.public_ipv6),
        ),
        previous,
        previous6,
        ttl: opts.lease_ttl,
    }
}

/// The previous run's subnets (IPv4, IPv6) from its subnet.env, each only
/// when its network is still the config's.
fn previous_subnets(
    config: &NetConfig,
    env: Option<&SubnetEnv>,
) -> (Option<Ipv4Net>, Option<Ipv6Net>) {
    let v4 = env
        .and_then(|e| e.ipv4.as_ref())
        .filter(|e4| config.network() == Some(e4.network))
        .map(|e4| e4.subnet);
    let v6 = env
        .and_then(|e| e.ipv6.as_ref())
        .filter(|e6| config.network6() == Some(e6.network))
        .map(|e6| e6.subnet);
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet_env::{Ipv4Env, Ipv6Env};

    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

    fn config(text: &str) -> NetConfig {
        NetConfig::parse(text, "test").unwrap()
    }

    fn env(network: &str, subnet: &str, network6: &str, subnet6: &str) -> SubnetEnv {
        SubnetEnv {
            ipv4: Some(Ipv4Env {
                network: network.parse().unwrap(),
                subnet: subnet.parse().unwrap(),
            }),
            ipv6: Some(Ipv6Env {
                network: network6.parse().unwrap(),
                subnet: subnet6.parse().unwrap(),
            }),
            mtu: 1450,
            ipmasq: true,
        }
    }

    #[test]
    fn previous_subnets_are_kept_in_the_same_networks_only() {
        let c = config(DUAL);
        let same = env(
            "10.244.0.0/16",
            "10.244.7.0/24",
            "fc00::/48",
            "fc00:0:0:7::/64",
        );
        assert_eq!(
            previous_subnets(&c, Some(&same)),
            (
                Some("10.244.7.0/24".parse().unwrap()),
                Some("fc00:0:0:7::/64".parse().unwrap())
            )
        );
        let moved = env(
            "10.96.0.0/16",
            "10.96.7.0/24",
            "fc01::/48",
            "fc01:0:0:7::/64",
        );
        assert_eq!(previous_subnets(&c, Some(&moved)), (None, None));
        assert_eq!(previous_subnets(&c, None), (None, None));
        // An IPv4-only network keeps no IPv6 subnet.
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(
            previous_subnets(&v4, Some(&same)),
            (Some("10.244.7.0/24".parse().unwrap()), None)
        );
    }

    #[test]
    fn the_tun_mtu_is_the_underlay_less_the_overhead() {
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(
            tun_mtu(&v4, 1500, "eth0").unwrap(),
            Mtu {
                overlay: 1450,
                tun: 1450
            }
        );
        assert_eq!(tun_mtu(&config(DUAL), 1500, "eth0").unwrap().tun, 1430);
    }

    #[test]
    fn a_tun_mtu_too_small_for_the_family_is_refused_with_its_fix() {
        let e = tun_mtu(&config(DUAL), 1340, "eth0").unwrap_err();
        assert!(matches!(
            e,
            DaemonError::Mtu {
                mtu: 1270,
                underlay: 1340,
                overhead: 70,
                family: "IPv6",
                min: 1280,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "the TUN MTU would be 1270 (underlay 1340 − 70): too small to carry IPv6 (at least 1280); raise the MTU of eth0 or Backend.MTU"
        );
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert!(tun_mtu(&v4, 626, "eth0").is_ok());
        assert!(matches!(
            tun_mtu(&v4, 625, "eth0"),
            Err(DaemonError::Mtu {
                family: "IPv4",
                min: 576,
                ..
            })
        ));
        // Past u16: no TUN device takes it.
        assert!(tun_mtu(&v4, 70_000, "eth0").is_err());
    }
}
