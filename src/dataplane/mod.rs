//! The packet path: the no-I/O [`core`] and [`offload`] (segmentation and
//! coalescing), the lock-free [`table`] they read, the [`counters`], and the
//! [`worker`] loops that feed them from the syscalls in [`crate::sys`].

use std::ops::Range;

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

/// One piece of an outgoing datagram or TUN write, gathered by the kernel from
/// where it lies (an iovec): bytes of a batch's header arena, or of one of its
/// packet buffers. Built by the no-I/O code, resolved by [`crate::sys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Arena(Range<usize>),
    Buf(usize, Range<usize>),
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Arena(r) | Part::Buf(_, r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes this part names.
    ///
    /// # Panics
    /// When the part lies outside `arena` or `bufs` (a bug in the code that
    /// built it, never packet input: parts are built from checked ranges).
    pub fn resolve<'a, S: AsRef<[u8]>>(&self, arena: &'a [u8], bufs: &'a [S]) -> &'a [u8] {
        match self {
            Part::Arena(r) => &arena[r.clone()],
            Part::Buf(i, r) => &bufs[*i].as_ref()[r.clone()],
        }
    }
}

/// Where a batch's [`Part`]s point: its header arena and its packet buffers.
#[derive(Debug)]
pub struct Gather<'a, S> {
    pub arena: &'a [u8],
    pub bufs: &'a [S],
    pub parts: &'a [Part],
}

// By hand: a derive would require `S: Copy`, but only references are copied.
impl<S> Clone for Gather<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Gather<'_, S> {}

impl<'a, S: AsRef<[u8]>> Gather<'a, S> {
    /// The bytes of `parts[range]`, in order.
    pub fn slices(&self, range: Range<usize>) -> impl Iterator<Item = &'a [u8]> + use<'a, S> {
        let (arena, bufs) = (self.arena, self.bufs);
        self.parts[range]
            .iter()
            .map(move |p| p.resolve(arena, bufs))
    }
}
