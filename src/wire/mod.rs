//! Zero-copy views over the headers weft reads and writes, in smoltcp's style:
//! `Packet::new_checked` validates the length once, after which no accessor panics.

pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod vxlan;

/// A byte range inside a header.
pub(crate) type Field = std::ops::Range<usize>;

/// A buffer too short for the header it is viewed as, or a header field that
/// contradicts the buffer (an IPv4 total length past its end, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer too short for the header")]
    Truncated,
    #[error("header field is malformed")]
    Malformed,
}

/// The Internet checksum (RFC 1071) of `data`, folded, not yet complemented.
pub fn checksum_sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a 32-bit sum and complements it into a final checksum.
pub fn checksum_finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}
