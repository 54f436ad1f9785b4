//! weft: a userspace VXLAN overlay for Kubernetes that speaks flannel's formats.
//!
//! Layers, from the bytes up:
//! - [`wire`]: zero-copy views over VXLAN, Ethernet, IPv4 and ICMP headers;
//! - [`dataplane`]: the packet core (no I/O), the forwarding table and counters;
//! - [`sys`]: every syscall of the packet path (TUN, batched UDP), the only
//!   module allowed `unsafe`;
//! - [`config`], [`lease`], [`store`], [`subnet_env`], [`iface`]: flannel's
//!   formats and the lease stores (which report leases as stored);
//! - [`backend`]: the backend seam (flannel's `pkg/backend`): each backend
//!   type's keys, lease data, overhead, device and peer routes; `vxlan`;
//! - [`netfilter`]: the masquerade and forward rules (nftables or iptables);
//! - [`node`]: the control plane's core (no I/O): what a lease means to this
//!   node (`node::Admission`, the one place), the store's view and the
//!   renewal policy;
//! - [`state`]: the node's live state, which the daemon publishes; [`metrics`]
//!   serves it as Prometheus text (and `/healthz`, `/readyz`), [`status`] as
//!   `weftd status` (over the [`handover`] socket);
//! - [`daemon`]: wires it all into `weftd`; [`lab`] builds a local lab of nodes in
//!   network namespaces;
//! - [`cni`]: the `weft-cni` plugin (delegate and built-in modes);
//! - `fsutil`: atomic file writes and lock files, for the stores and the plugin;
//!   `clock`: wall-clock time in unix ms; `gojson`: Go's case-insensitive
//!   JSON keys.
#![deny(unsafe_code)]

pub mod backend;
pub mod cli;
pub(crate) mod clock;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod doctor;
pub(crate) mod fsutil;
pub mod gather;
pub mod goflags;
pub(crate) mod gojson;
pub mod handover;
pub mod iface;
pub mod lab;
pub mod lease;
pub mod metrics;
pub mod netfilter;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod state;
pub mod status;
pub mod store;
pub mod subnet_env;
pub mod sys;
pub mod types;
pub mod wire;
