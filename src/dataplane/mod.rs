//! The packet path: the no-I/O [`core`] and [`offload`] (segmentation and
//! coalescing), the lock-free [`table`] they read, the [`counters`], and the
//! [`worker`] loops that feed them from the syscalls in [`crate::sys`].

pub mod core;
pub mod counters;
pub mod offload;
pub mod slot;
pub mod table;
pub mod worker;

/// Bytes reserved in front of every packet so encapsulation writes its header
/// in place instead of copying the packet.
pub const HEADROOM: usize = 64;
/// Bytes weft itself writes in front of an inner IP packet: VXLAN + inner Ethernet.
/// (The kernel adds the outer IPv4 and UDP headers: 28 more, 50 in all.)
pub const ENCAP_LEN: usize = crate::wire::vxlan::HEADER_LEN + crate::wire::ethernet::HEADER_LEN;
/// Size of one packet slot: headroom plus the largest datagram weft accepts.
pub const SLOT: usize = HEADROOM + 65536;

pub use crate::gather::{Gather, Part};
