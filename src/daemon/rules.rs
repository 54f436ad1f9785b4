//! weft's masquerade and forward rules as the daemon runs them: installed
//! once the node forwards (with what they mean for pods in the log), then
//! rechecked on a timer and restored when someone changed or flushed them.

use ipnet::{Ipv4Net, Ipv6Net};

use super::DaemonError;
use crate::config::NetConfig;
use crate::netfilter::{self, Netfilter};
use crate::subnet_env::SubnetEnv;

/// Installs the masquerade and forward rules (replacing weft's own from an
/// earlier run) and says in the log what they mean for pods. None when
/// neither is wanted.
pub(super) async fn setup_netfilter(
    settings: netfilter::Settings,
    config: &NetConfig,
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
    previous: Option<&SubnetEnv>,
) -> Result<Option<Netfilter>, DaemonError> {
    let rules4 = config
        .ipv4
        .zip(subnet)
        .map(|(c, subnet)| netfilter::Rules4 {
            network: c.network,
            subnet,
        });
    let rules6 = config
        .ipv6
        .zip(subnet6)
        .map(|(c, subnet)| netfilter::Rules6 {
            network: c.network,
            subnet,
        });
    let network = match (rules4, rules6) {
        (Some(r), _) => r.network.to_string(),
        (None, Some(r6)) => r6.network.to_string(),
        (None, None) => "the Network".to_string(),
    };
    if !settings.masquerade {
        tracing::warn!(
            "IP masquerade is off (no --ip-masq): pods reach pods on every node with their own addresses, \
             but their traffic to anything outside {network} leaves with the pod's address, so replies come back \
             only where the network routes {network} to this node. A delegated CNI bridge masquerades itself \
             (FLANNEL_IPMASQ=false gives it ipMasq: true), NATing pod-to-pod traffic too. Pass --ip-masq, as kube-flannel.yml does"
        );
    }
    if !settings.masquerade && !settings.forward {
        return Ok(None);
    }
    let what = match (settings.masquerade, settings.forward) {
        (true, true) => "masquerade and forward rules",
        (true, false) => "masquerade rules",
        _ => "forward rules",
    };
    let enable = config.enable_nftables;
    let chosen = tokio::task::spawn_blocking(move || netfilter::choose(enable, what))
        .await
        .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
    let (backend, why) = match chosen {
        Ok(b) => b,
        // Forward accepts are a convenience for hosts that drop forwarding;
        // masquerade is what the operator asked for.
        Err(source) if !settings.masquerade => {
            tracing::warn!("forward accept rules not installed: {source}");
            return Ok(None);
        }
        Err(source) => return Err(DaemonError::Netfilter { what, source }),
    };
    if let (Some(p), Some(r4)) = (previous.and_then(|p| p.ipv4), rules4) {
        if p.network != r4.network || p.subnet != r4.subnet {
            tracing::info!(
                "the network or subnet ({}, {}) differs from the previous run's ({}, {}): replacing weft's rules",
                r4.network,
                r4.subnet,
                p.network,
                p.subnet
            );
        }
    }
    let rules = netfilter::Rules {
        ipv4: rules4,
        masquerade: settings.masquerade,
        random_fully: settings.random_fully,
        forward: settings.forward,
        ipv6: rules6,
    };
    let mut nf = Netfilter::new(backend, rules);
    let (nf, applied) = tokio::task::spawn_blocking(move || {
        let r = nf.apply();
        (nf, r)
    })
    .await
    .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
    let applied = applied.map_err(|source| DaemonError::Netfilter { what, source })?;
    log_applied(&nf, &applied);
    tracing::info!(
        "{what} installed with {backend} ({why}); rechecked every {}s",
        settings.resync.as_secs()
    );
    Ok(Some(nf))
}

/// Logs what applying the rules met: a refused `--random-fully`, and the
/// iptables FORWARD chain that needed weft's accepts too.
fn log_applied(nf: &Netfilter, applied: &netfilter::Applied) {
    if applied.random_fully_refused {
        tracing::warn!("MASQUERADE --random-fully was refused here; masquerading without it");
    }
    if applied.iptables_forward {
        tracing::info!(
            "iptables' FORWARD chain drops what it does not accept (policy DROP, as Docker, ufw and firewalld set it), \
             which an nftables accept cannot override: the forward accepts for {} are in iptables chain {} too",
            nf.rules
                .ipv4
                .map_or_else(|| "the Network".to_string(), |r| r.network.to_string()),
            netfilter::plan::IPT_FORWARD_CHAIN
        );
    }
}

/// One resync: checks the rules and restores what someone changed or flushed.
pub(super) async fn resync_netfilter(nf: Option<Netfilter>) -> Option<Netfilter> {
    let mut nf = nf?;
    let (nf, r) = tokio::task::spawn_blocking(move || {
        let r = nf.resync();
        (nf, r)
    })
    .await
    .ok()?;
    match r {
        Ok(None) => {}
        Ok(Some(applied)) => {
            tracing::warn!(
                "weft's {} rules were out of step ({}); restored",
                nf.backend,
                applied.repaired.join("; ")
            );
            log_applied(&nf, &applied);
        }
        Err(e) => tracing::warn!("checking weft's {} rules failed: {e}", nf.backend),
    }
    Some(nf)
}
