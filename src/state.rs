//! The node's live state ([`NodeState`]): what weftd publishes as it runs
//! for `/metrics`, `/readyz` and `weftd status` (and so the doctor) to read.
//!
//! It exists from the start of weftd (so `/healthz` answers while weftd
//! waits for its store). The daemon writes it: the node and its subnets
//! once leased, the store's health, `ready` once the dataplane forwards, the
//! [`Control`] state as it renews; the lease watcher publishes each new
//! forwarding table into it; the packet workers flush their counters into
//! it. [`crate::metrics`] renders it as Prometheus text and
//! [`crate::status`] as `weftd status`'s view; neither writes it.

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::Ipv4Net;

use crate::clock::now_ms;
use crate::dataplane::counters::Counters;
use crate::dataplane::table::SharedTable;
use crate::store::WatchHealth;
use crate::types::VtepMac;

/// The node's live state: `node` and the subnet are set once leased,
/// `ready` once the dataplane forwards, `control` by the main loop as it
/// renews.
pub struct NodeState {
    pub counters: Arc<Counters>,
    pub table: SharedTable,
    pub subnet: OnceLock<Ipv4Net>,
    /// The node's IPv6 subnet, in a dual-stack network.
    pub subnet6: OnceLock<ipnet::Ipv6Net>,
    pub ready: AtomicBool,
    /// Unix ms of weftd's start.
    pub started_ms: u64,
    pub node: OnceLock<NodeInfo>,
    pub store_health: OnceLock<Arc<WatchHealth>>,
    pub control: Mutex<Control>,
}

impl Default for NodeState {
    fn default() -> NodeState {
        NodeState {
            counters: Arc::default(),
            table: SharedTable::default(),
            subnet: OnceLock::new(),
            subnet6: OnceLock::new(),
            ready: AtomicBool::new(false),
            started_ms: now_ms(),
            node: OnceLock::new(),
            store_health: OnceLock::new(),
            control: Mutex::default(),
        }
    }
}

/// The node as it runs: fixed once the lease is taken.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub tun: String,
    pub mtu: u32,
    pub interface: String,
    /// The public IP; `None` on an IPv6-only network.
    pub public_ip: Option<Ipv4Addr>,
    /// The public IPv6 of a dual-stack or IPv6-only node.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The VtepMAC of the IPv4 VTEP, or of the IPv6 one on an IPv6-only node.
    pub vtep_mac: VtepMac,
    /// The IPv4 Network; `None` on an IPv6-only network.
    pub network: Option<Ipv4Net>,
    pub vni: u32,
    pub port: u16,
    /// The store, as [`crate::store::LeaseStore::describe`] says.
    pub store: String,
}

/// The control plane's moving parts, set by the main loop (never the packet path).
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// The lease's expiry (unix ms; None: it does not expire).
    pub lease_expires_ms: Option<u64>,
    /// When the next renewal is due (unix ms).
    pub renew_at_ms: Option<u64>,
    /// The last renewal: when (unix ms), and its error if it failed.
    pub last_renewal: Option<(u64, Option<String>)>,
    /// When the watch last changed the table (unix ms).
    pub last_event_ms: Option<u64>,
}

impl NodeState {
    /// Changes the control plane's state (a poisoned lock is taken as it is:
    /// the state is plain data).
    pub fn update(&self, f: impl FnOnce(&mut Control)) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c);
    }

    /// A copy of the control plane's state.
    pub fn control(&self) -> Control {
        self.control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
