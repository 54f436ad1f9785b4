//! Zero-copy views over the headers weft reads and writes, in smoltcp's style:
//! `Packet::new_checked` validates the length once, after which no accessor panics.

pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod virtio;
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

/// The Internet checksum (RFC 1071) of `data` added to `acc`: a one's
/// complement sum of big-endian 16-bit words, not yet complemented. The result
/// stays below 3 * 2^16 + `acc`, so sums of several pieces, all but the last
/// of even length, can be chained.
///
/// Native-endian 32-bit words are summed into 64 bits (the loop the compiler
/// vectorizes) and the folded result byte-swapped back, which RFC 1071 §2(B)
/// allows: the one's complement sum is independent of byte order.
#[inline]
pub fn checksum_sum(data: &[u8], acc: u32) -> u32 {
    // Four independent 64-bit lanes over 32-byte blocks, each adding the two
    // 32-bit halves of a word: no carries to track, and the lanes pipeline.
    let mut blocks = data.chunks_exact(32);
    let mut lanes = [0u64; 4];
    for b in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_ne_bytes([
                b[8 * i],
                b[8 * i + 1],
                b[8 * i + 2],
                b[8 * i + 3],
                b[8 * i + 4],
                b[8 * i + 5],
                b[8 * i + 6],
                b[8 * i + 7],
            ]);
            *lane += (w & 0xffff_ffff) + (w >> 32);
        }
    }
    let mut wide: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    // Fold 64 -> 16 bits, still in native byte order.
    let mut f = (wide & 0xffff_ffff) + (wide >> 32);
    f = (f & 0xffff) + (f >> 16);
    f = (f & 0xffff) + (f >> 16);
    f = (f & 0xffff) + (f >> 16);
    let folded = f as u16;
    let mut acc = acc
        + u32::from(if cfg!(target_endian = "little") {
            folded.swap_bytes()
        } else {
            folded
        });
    // The tail starts at a multiple of 4, so its 16-bit words line up.
    let mut tail = words.remainder().chunks_exact(2);
    for c in &mut tail {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = tail.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a sum from [`checksum_sum`] to 16 bits without complementing it: the
/// form a partial (pseudo-header) checksum is stored in for offload.
#[inline]
pub fn checksum_fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Folds a 32-bit sum and complements it into a final checksum.
pub fn checksum_finish(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}
