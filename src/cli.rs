//! `weftd`'s command line: flannel's flag names where flannel has one, with
//! `WEFT_*` environment variables (and flannel's `FLANNELD_*` where it has them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::daemon::Options;
use crate::dataplane::core::SourceChecks;
use crate::iface::IfaceSpec;
use crate::store::etcd::EtcdOptions;
use crate::store::kube::KubeSettings;
use crate::store::{KubeError, StoreError};

/// The first line of `weftd --help`: what weftd is, for someone meeting it there.
const ABOUT: &str =
    "weftd: weft's node agent, a userspace VXLAN pod network that stands in for flanneld";

const LONG_ABOUT: &str = "\
weftd: weft's node agent, a userspace VXLAN pod network that stands in for flanneld.

Run on every node, weftd leases the node a pod subnet, writes flannel's subnet.env for \
the CNI plugin, and carries pod traffic to the other nodes in VXLAN through a TUN device, \
without the kernel's VXLAN device. Leases live in the embedded store (one host, the \
default), in etcd (--etcd-endpoints) or in Kubernetes (--kube-subnet-mgr).

flanneld's command lines work unchanged: its flag names, Go's -flag=value, -v=N and \
its FLANNELD_* variables. Each flag below can also be set by the WEFT_* variable it names.";

#[derive(Debug, Parser)]
#[command(
    name = "weftd",
    version,
    // As Go's flag package (flanneld): a flag given twice takes the last value.
    args_override_self = true,
    about = ABOUT,
    long_about = LONG_ABOUT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run weft on this machine: N nodes in network namespaces and a live reachability matrix
    ///
    /// The nodes share an underlay bridge in a namespace of its own (the
    /// host's network is never touched) and the embedded store. The lab
    /// prints their leases, then which node reaches which, until Ctrl-C,
    /// which removes everything. Run it as root, or as root of a user
    /// namespace.
    Lab(LabArgs),
    /// Remove the rules and the TUN device weftd leaves in place when it stops
    ///
    /// weftd keeps its nftables table or iptables chains and its TUN device
    /// with its route when it stops, so that a restart keeps pods'
    /// connections. Run this in the node's network namespace when weft is
    /// to go.
    Uninstall(UninstallArgs),
    /// Check this node end to end and say what to fix, changing nothing
    ///
    /// Give it weftd's own flags and environment (the unit's or the
    /// DaemonSet's). Each line is ✓, ✗ with the cause and the fix, or –;
    /// the exit status is 0 only when nothing failed.
    Doctor(Box<DoctorArgs>),
    /// Show the running weftd of this network namespace: its lease, its store and its peers
    ///
    /// Its lease and when it renews, its store and the store's state, its
    /// peers with packets, bytes, drops and when each last sent and
    /// received, and the dataplane's counters.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// `text` for people, `json` for machines.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// The VXLAN port of the weftd to ask (Backend.Port); default: every
    /// weftd running here.
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// `text` for people, `json` for machines.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    #[command(flatten)]
    pub run: RunArgs,
}

impl DoctorArgs {
    /// Where the doctor looks for the runtime's CNI files.
    pub fn cni_dirs(&self) -> crate::doctor::cni::CniDirs {
        crate::doctor::cni::CniDirs {
            conf_dir: self.run.cni_conf_dir.clone(),
            bin_dir: self.run.cni_bin_dir.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The TUN device to remove.
    #[arg(long, env = "WEFT_TUN_NAME", default_value = "weft0")]
    pub tun_name: String,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// How many nodes (2 to 20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=20))]
    pub nodes: u8,
    /// Time between reachability checks (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Check once, print, clean up and exit (status 0 when every node reaches every other).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Interface (name, IPv4 or IPv6 address) for traffic between nodes; repeat to try several in order.
    #[arg(long, env = "WEFT_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regular expression matched against interface names and addresses; repeatable.
    #[arg(long, env = "WEFT_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// Use the interface that routes to this address (IPv4 or IPv6).
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,
    /// The IP other nodes use to reach this one (default: the interface's address).
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Dual-stack: the IPv6 address other nodes use to reach this one
    /// (default: the interface's global IPv6 address).
    #[arg(long, env = "WEFT_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// flannel's net-conf.json; without it the store's config (or the embedded default) is used.
    #[arg(long, env = "WEFT_NET_CONFIG_PATH")]
    pub net_config_path: Option<PathBuf>,
    /// Where to write subnet.env (flannel's path by default, so flannel's CNI config works).
    #[arg(long, env = "WEFT_SUBNET_FILE", default_value = crate::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,
    /// The embedded lease store's directory, shared by every weftd on the host.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/run/weft")]
    pub state_dir: PathBuf,
    /// How long a lease lives unless renewed (e.g. 24h, 30s).
    #[arg(long, env = "WEFT_SUBNET_LEASE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub subnet_lease_ttl: Duration,
    /// Renew this many minutes before the lease expires (flannel's flag).
    #[arg(long, env = "WEFT_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// How often the embedded store is checked for lease changes.
    #[arg(long, env = "WEFT_STORE_POLL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub store_poll: Duration,
    /// Name of the TUN device.
    #[arg(long, env = "WEFT_TUN_NAME", default_value = "weft0")]
    pub tun_name: String,
    /// Install this CNI conflist into --cni-conf-dir once the node forwards
    /// (weft's DaemonSet: the runtime then reports the node's network ready
    /// only when pods can use it); unset, weftd writes no CNI config.
    #[arg(long, env = "WEFT_CNI_CONFLIST")]
    pub cni_conflist: Option<PathBuf>,
    /// The CNI conf dir the container runtime reads (its first file by name is the one it uses).
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = crate::doctor::cni::DEFAULT_CONF_DIR)]
    pub cni_conf_dir: PathBuf,
    /// The CNI bin dir the container runtime runs plugins from (its CNI_PATH).
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = crate::doctor::cni::DEFAULT_BIN_DIR)]
    pub cni_bin_dir: PathBuf,
    /// Address of the /healthz and /metrics endpoint.
    #[arg(long, env = "WEFT_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port of the /healthz and /metrics endpoint (0 = disabled).
    #[arg(long, env = "WEFT_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// TUN offloads: read 64 KiB TCP super-packets and write coalesced ones
    /// (virtio-net headers, TSO/GRO); `false` moves one packet per syscall.
    #[arg(long, env = "WEFT_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub offload: bool,
    /// Packet worker threads, each with its own TUN queue (multi-queue TUN)
    /// and UDP sockets; flows are spread over them by hash.
    #[arg(long, env = "WEFT_QUEUES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// etcd mode: set --etcd-endpoints (or WEFT_ETCD_ENDPOINTS / FLANNELD_ETCD_ENDPOINTS)
    /// to keep leases in etcd, in flannel's key layout, instead of the embedded store.
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// Kubernetes mode: this node's subnet is its spec.podCIDR, peers come from node
    /// annotations (flannel's); needs NODE_NAME (or POD_NAME and POD_NAMESPACE).
    #[arg(long, env = "WEFT_KUBE_SUBNET_MGR", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub kube_subnet_mgr: bool,
    /// kubeconfig for the API server (the deadlock-free way: it names the real
    /// server address, not the Service ClusterIP that needs kube-proxy).
    #[arg(long, env = "WEFT_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// The API server's URL; overrides the address of the kubeconfig or in-cluster config.
    #[arg(long, env = "WEFT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// Prefix of the node annotations (flannel's by default, so flannel nodes are peers).
    #[arg(long, env = "WEFT_KUBE_ANNOTATION_PREFIX", default_value = crate::store::kube::DEFAULT_ANNOTATION_PREFIX)]
    pub kube_annotation_prefix: String,
    /// Kubernetes mode: set the node's NetworkUnavailable condition to False
    /// once the dataplane is up (flannel's flag).
    #[arg(long, env = "WEFT_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub set_node_network_unavailable: bool,
    /// Masquerade pods' traffic to destinations outside the Network, and
    /// write FLANNEL_IPMASQ=true so the CNI bridge does not NAT (flannel's flag).
    #[arg(long, env = "WEFT_IP_MASQ", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// MASQUERADE without --random-fully.
    #[arg(long, env = "WEFT_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub ip_masq_fully_random_disable: bool,
    /// Seconds between checks of weft's masquerade and forward rules; rules
    /// found changed or flushed are restored.
    #[arg(long, env = "WEFT_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub iptables_resync: u64,
    /// Accept forwarded traffic from and to the Network (for hosts whose
    /// FORWARD policy is DROP: Docker, ufw, firewalld).
    #[arg(long, env = "WEFT_IPTABLES_FORWARD_RULES", num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub iptables_forward_rules: bool,
    /// Accept VXLAN from addresses that are no lease's PublicIP (for
    /// underlays that rewrite source addresses: nodes behind NAT). Inner
    /// sources must then still lie in some peer's subnet.
    #[arg(long, env = "WEFT_ACCEPT_UNKNOWN_PEERS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub accept_unknown_peers: bool,
    /// Accept inner packets whose source is outside the sending node's
    /// subnet (for peers that route other networks' traffic unmasqueraded).
    #[arg(long, env = "WEFT_ACCEPT_FOREIGN_SOURCES", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub accept_foreign_sources: bool,
    /// Delete a kernel VXLAN device (flanneld's flannel.1) that holds this
    /// network's UDP port, so weftd can take the node over from flanneld.
    #[arg(long, env = "WEFT_REPLACE_KERNEL_VXLAN", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub replace_kernel_vxlan: bool,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,
}

impl RunArgs {
    /// Whether leases live in etcd: endpoints given by flag or environment.
    pub fn etcd_mode(&self) -> bool {
        self.etcd.endpoints.is_some()
            || std::env::var("FLANNELD_ETCD_ENDPOINTS").is_ok_and(|v| !v.is_empty())
    }

    /// The daemon's options.
    ///
    /// # Errors
    /// [`EtcdError::Options`](crate::store::EtcdError::Options) when the etcd
    /// options contradict each other.
    pub fn options(&self) -> Result<Options, StoreError> {
        if self.kube_subnet_mgr && self.etcd_mode() {
            return Err(KubeError::Config {
                from: "--kube-subnet-mgr with --etcd-endpoints".into(),
                problem: "choose one lease store: Kubernetes node objects or etcd".into(),
            }
            .into());
        }
        Ok(Options {
            iface: IfaceSpec {
                iface: self.iface.clone(),
                iface_regex: self.iface_regex.clone(),
                iface_can_reach: self.iface_can_reach,
                public_ip: self.public_ip,
                public_ipv6: self.public_ipv6,
            },
            net_config_path: self.net_config_path.clone(),
            subnet_file: self.subnet_file.clone(),
            state_dir: self.state_dir.clone(),
            lease_ttl: self.subnet_lease_ttl,
            renew_margin: Duration::from_secs(self.subnet_lease_renew_margin * 60),
            store_poll: self.store_poll,
            tun_name: self.tun_name.clone(),
            offload: self.offload,
            queues: usize::from(self.queues),
            netfilter: crate::netfilter::Settings {
                masquerade: self.ip_masq,
                random_fully: !self.ip_masq_fully_random_disable,
                forward: self.iptables_forward_rules,
                resync: Duration::from_secs(self.iptables_resync),
            },
            replace_kernel_vxlan: self.replace_kernel_vxlan,
            cni: self
                .cni_conflist
                .as_ref()
                .map(|conflist| crate::cni::install::InstallArgs {
                    bin_dir: self.cni_bin_dir.clone(),
                    conf_dir: self.cni_conf_dir.clone(),
                    conflist: Some(conflist.clone()),
                    conf_name: crate::cni::install::CONF_NAME.into(),
                    plugin_name: crate::cni::install::PLUGIN_NAME.into(),
                    source: None,
                    no_conflist: false,
                }),
            source_checks: SourceChecks {
                known_peers: !self.accept_unknown_peers,
                own_sources: !self.accept_foreign_sources,
            },
            healthz: (self.healthz_port != 0)
                .then(|| SocketAddr::new(self.healthz_ip, self.healthz_port)),
            etcd: if self.etcd_mode() {
                Some(self.etcd.resolve()?)
            } else {
                None
            },
            kube: self.kube_subnet_mgr.then(|| KubeSettings {
                set_node_network_unavailable: self.set_node_network_unavailable,
                ..KubeSettings::from_env(
                    self.kubeconfig_file.clone(),
                    self.kube_api_url.clone(),
                    self.kube_annotation_prefix.clone(),
                )
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_interface_flags_parse() {
        let c = Cli::try_parse_from([
            "weftd",
            "--iface",
            "2001:db8::5",
            "--iface-can-reach",
            "2001:db8::1",
            "--public-ipv6",
            "2001:db8:ff::7",
        ])
        .unwrap();
        let o = c.run.options().unwrap();
        assert_eq!(o.iface.iface, vec!["2001:db8::5"]);
        assert_eq!(
            o.iface.iface_can_reach,
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(o.iface.public_ipv6, Some("2001:db8:ff::7".parse().unwrap()));
        assert!(Cli::try_parse_from(["weftd", "--public-ipv6", "192.0.2.1"]).is_err());
    }

    #[test]
    fn flannel_style_flags_parse() {
        let c = Cli::try_parse_from([
            "weftd",
            "--iface",
            "eth1",
            "--iface",
            "10.0.0.5",
            "--public-ip",
            "198.51.100.7",
            "--subnet-lease-ttl",
            "30s",
            "--healthz-port",
            "9100",
        ])
        .unwrap();
        let o = c.run.options().unwrap();
        assert!(o.etcd.is_none(), "the embedded store is the default");
        assert_eq!(o.iface.iface, vec!["eth1", "10.0.0.5"]);
        assert_eq!(o.iface.public_ipv6, None);
        assert_eq!(o.lease_ttl, Duration::from_secs(30));
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.healthz, Some("0.0.0.0:9100".parse().unwrap()));
        assert!(c.command.is_none());
        let c = Cli::try_parse_from(["weftd", "lab", "--nodes", "4", "--once"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Lab(LabArgs {
                nodes: 4,
                once: true,
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["weftd", "--public-ip", "nope"]).is_err());
        let nf = o.netfilter;
        assert!(!nf.masquerade, "no masquerade unless asked, as flannel");
        assert!(nf.forward && nf.random_fully);
        assert_eq!(nf.resync, Duration::from_secs(5));
        let c = Cli::try_parse_from([
            "weftd",
            "--ip-masq",
            "--iptables-resync=2",
            "--iptables-forward-rules=false",
            "--ip-masq-fully-random-disable",
        ])
        .unwrap();
        let nf = c.run.options().unwrap().netfilter;
        assert!(nf.masquerade && !nf.forward && !nf.random_fully);
        assert_eq!(nf.resync, Duration::from_secs(2));
        let c = Cli::try_parse_from(["weftd", "--ip-masq=false"]).unwrap();
        assert!(!c.run.options().unwrap().netfilter.masquerade);
        assert!(Cli::try_parse_from(["weftd", "--iptables-resync", "0"]).is_err());
        let c = Cli::try_parse_from([
            "weftd",
            "--etcd-endpoints",
            "https://10.0.0.5:2379",
            "--etcd-prefix",
            "/kubernetes/network",
        ])
        .unwrap();
        let e = c.run.options().unwrap().etcd.unwrap();
        assert_eq!(e.endpoints, vec!["https://10.0.0.5:2379"]);
        assert_eq!(e.prefix, "/kubernetes/network");
        let c = Cli::try_parse_from([
            "weftd",
            "--kube-subnet-mgr",
            "--kubeconfig-file",
            "/etc/weft/kubeconfig",
            "--kube-api-url",
            "https://10.0.0.100:6443",
        ])
        .unwrap();
        let o = c.run.options().unwrap();
        let k = o.kube.unwrap();
        assert!(o.etcd.is_none());
        assert_eq!(k.annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(k.api_url.as_deref(), Some("https://10.0.0.100:6443"));
        let c = Cli::try_parse_from([
            "weftd",
            "--kube-subnet-mgr",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
        ])
        .unwrap();
        assert!(c.run.options().is_err(), "one store at a time");
    }
}
