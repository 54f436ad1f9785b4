//! A thin TCP header view and the IPv4 pseudo-header sum: what segmentation
//! and coalescing of TCP super-packets need, nothing more.

use std::net::Ipv4Addr;

use super::{Field, WireError, checksum_sum};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Field = 16..18;
}

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Where the checksum sits inside the header (`csum_offset` for offload).
pub const CHECKSUM_OFFSET: usize = 16;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_SYN: u8 = 0x02;
pub const FLAG_RST: u8 = 0x04;
pub const FLAG_PSH: u8 = 0x08;
pub const FLAG_ACK: u8 = 0x10;
pub const FLAG_URG: u8 = 0x20;
pub const FLAG_ECE: u8 = 0x40;
pub const FLAG_CWR: u8 = 0x80;

/// A TCP segment over a byte buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking that the header, options included, fits.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Packet { buffer };
        let hl = p.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if hl > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    fn u16_at(&self, f: Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    pub fn seq(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::SEQ];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// The IPv4 pseudo-header sum for a TCP or UDP segment of `len` bytes (header
/// plus payload), added to `acc`; not folded or complemented.
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16, acc: u32) -> u32 {
    let (s, d) = (src.octets(), dst.octets());
    let acc = checksum_sum(&s, acc);
    let acc = checksum_sum(&d, acc);
    acc + u32::from(protocol) + u32::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum_finish;

    // A SYN from 10.0.0.1:1234 to 10.0.0.2:80: once its checksum is filled
    // in, the sum over pseudo-header and header verifies (folds to all ones).
    #[test]
    fn fields_and_checksum() {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&1234u16.to_be_bytes());
        h[2..4].copy_from_slice(&80u16.to_be_bytes());
        h[4..8].copy_from_slice(&7u32.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = FLAG_SYN;
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let c = checksum_finish(checksum_sum(
            &h,
            pseudo_header_sum(src, dst, PROTO_TCP, 20, 0),
        ));
        let mut p = Packet::new_checked(&mut h[..]).unwrap();
        p.set_checksum(c);
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq(), 7);
        assert_eq!(p.flags(), FLAG_SYN);
        assert_eq!(p.header_len(), 20);
        // Verifying: the sum over everything, checksum included, is all ones.
        assert_eq!(
            checksum_finish(checksum_sum(
                &h,
                pseudo_header_sum(src, dst, PROTO_TCP, 20, 0)
            )),
            0
        );
    }

    #[test]
    fn truncated_and_malformed() {
        let mut h = [0u8; 40];
        h[12] = 10 << 4; // 40-byte header
        for n in 0..40 {
            assert!(Packet::new_checked(&h[..n]).is_err(), "{n}");
        }
        assert!(Packet::new_checked(&h[..]).is_ok());
        h[12] = 4 << 4;
        assert_eq!(
            Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
