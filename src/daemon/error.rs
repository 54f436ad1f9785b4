//! [`DaemonError`]: why `weftd` stopped or could not start, each variant
//! worded for the operator with what failed and how to fix it.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::handover::HandoverError;
use crate::iface::IfaceError;
use crate::lease::LeaseId;
use crate::netfilter::NetfilterError;
use crate::netlink::NetlinkError;
use crate::store::StoreError;
use crate::subnet_env::SubnetEnvError;
use crate::sys::SysError;

/// Why weftd stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    SubnetEnv(#[from] SubnetEnvError),
    #[error("cannot install the {what}: {source}")]
    Netfilter {
        what: &'static str,
        source: NetfilterError,
    },
    #[error(
        "the TUN MTU would be {mtu} (underlay {underlay} − {overhead}): too small to carry {family} (at least {min}); raise the MTU of {iface} or Backend.MTU"
    )]
    Mtu {
        mtu: u32,
        underlay: u32,
        /// The VXLAN overhead: 50, or 70 in a dual-stack network.
        overhead: u32,
        /// "IPv4", or "IPv6" in a dual-stack network, which needs 1280.
        family: &'static str,
        min: u16,
        iface: String,
    },
    #[error(
        "the network carries IPv6 (EnableIPv6) but the lease {lease} from {store} has no IPv6 subnet"
    )]
    NoLease6 { store: String, lease: String },
    #[error(
        "the network carries IPv4 (EnableIPv4, the default) but the lease {lease} from {store} has no IPv4 subnet"
    )]
    NoLease4 { store: String, lease: String },
    #[error("the network config enables neither IPv4 nor IPv6: no VXLAN socket to open")]
    NoUnderlay,
    #[error("cannot serve /healthz on {addr}: {source}")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the packet threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot write in {path}: {source} (set {flag} to a writable place)")]
    Unwritable {
        path: PathBuf,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("--cni-conflist: {0}")]
    Cni(#[from] crate::cni::install::InstallError),
    #[error(
        "this node's lease for {old} was deleted and {old} was taken by another node; it now holds {new}. Exiting so that weftd restarts on {new} (its pods need new addresses)"
    )]
    SubnetChanged { old: LeaseId, new: LeaseId },
    #[error("lease store {0}: the lease watch ended; the store is gone")]
    WatchEnded(String),
    #[error(
        "the kernel VXLAN device {device} (VNI {vni}) holds UDP port {port}, which weftd needs: flanneld made it, and may still run. Stop flanneld, then delete the device (ip link del {device}) or start weftd with --replace-kernel-vxlan, which deletes it. The node keeps its lease, so pods keep their addresses"
    )]
    KernelVxlanHoldsPort {
        device: String,
        vni: String,
        port: u16,
    },
}
