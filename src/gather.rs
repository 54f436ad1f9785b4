//! Descriptors of gathered I/O, shared by the packet core (which builds
//! them, with no I/O) and [`crate::sys`] (which hands them to the kernel as
//! iovecs): the pieces of a datagram or TUN write, where they point, and one
//! datagram to send, and the size of one gathered write. Plain data, importing nothing of the crate, so the
//! syscall layer needs nothing from the layers above it.

use std::net::SocketAddr;
use std::ops::Range;

/// Most segments one coalesced TUN write carries (one iovec each): the
/// coalescer's limit, and with its header the most parts of one `writev`.
pub const MAX_COALESCE: usize = 62;

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

/// One VXLAN datagram to send: `parts[parts]` gathered, `len` bytes in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub to: SocketAddr,
    pub parts: Range<usize>,
    pub len: usize,
}
