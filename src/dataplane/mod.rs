//! The packet path: the no-I/O [`core`] and [`offload`] (segmentation and
//! coalescing), the lock-free [`table`] they read, the [`counters`], a
//! worker's [`batch`] decisions (no I/O either), and the [`worker`] loops
//! that do the I/O they name through a [`queue`]: the syscalls in
//! [`crate::sys`], or the in-memory [`memqueue`] of tests.

pub mod batch;
pub mod core;
pub mod counters;
pub mod memqueue;
pub mod offload;
pub mod queue;
pub mod slot;
pub mod table;
#[cfg(test)]
pub(crate) mod testkit;
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
