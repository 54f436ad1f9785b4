//! A thin IPv4 view: just what routing, validation and ICMP errors need.

use std::net::Ipv4Addr;

use super::{Field, WireError, checksum_finish, checksum_sum};

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const IDENT: Field = 4..6;
    pub const TOTAL_LEN: Field = 2..4;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;

/// An IPv4 packet over a byte buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking the version, the header length and that the
    /// total length fits inside the buffer (trailing bytes are allowed: Ethernet pads).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let b = buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Packet { buffer };
        let hl = p.header_len();
        let tl = p.total_len() as usize;
        if p.version() != 4 || hl < MIN_HEADER_LEN || tl < hl {
            return Err(WireError::Malformed);
        }
        if tl > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::TOTAL_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn ident(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::IDENT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG.start] & 0x40 != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG.start] & 0x20 != 0
    }

    /// Whether the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        let hl = self.header_len().min(self.buffer.as_ref().len());
        checksum_finish(checksum_sum(&self.buffer.as_ref()[..hl], 0)) == 0
    }

    /// The fragment offset in 8-byte units (0 for a first or only fragment).
    pub fn frag_offset(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS_FRAG];
        u16::from_be_bytes([b[0], b[1]]) & 0x1fff
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The whole underlying buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::TOTAL_LEN].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_ident(&mut self, id: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&id.to_be_bytes());
    }

    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len().min(self.buffer.as_ref().len());
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let c = checksum_finish(checksum_sum(&b[..hl], 0));
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// The destination address of a raw packet whose first byte says IPv4, read
/// without the full check: the cheapest possible look at a TUN packet.
#[inline]
pub fn peek_dst(b: &[u8]) -> Option<Ipv4Addr> {
    if b.len() < MIN_HEADER_LEN || b[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(b[16], b[17], b[18], b[19]))
}

/// Writes a 20-byte IPv4 header (no options, DF clear) with a valid checksum.
pub fn emit_header(
    buf: &mut [u8],
    total_len: u16,
    ttl: u8,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let h = &mut buf[..MIN_HEADER_LEN];
    h[0] = 0x45;
    h[1] = 0;
    h[field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[field::FLAGS_FRAG].copy_from_slice(&[0, 0]);
    h[field::TTL] = ttl;
    h[field::PROTOCOL] = protocol;
    h[field::CHECKSUM].copy_from_slice(&[0, 0]);
    h[field::SRC].copy_from_slice(&src.octets());
    h[field::DST].copy_from_slice(&dst.octets());
    let c = checksum_finish(checksum_sum(h, 0));
    h[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.244.1.2 -> 10.244.2.3, ICMP, total length 24 (4 bytes of payload).
    static BYTES: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 2, 10,
        244, 2, 3, 0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&BYTES[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_ICMP);
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(peek_dst(&BYTES), Some(Ipv4Addr::new(10, 244, 2, 3)));
    }

    #[test]
    fn construct_has_valid_checksum() {
        let mut buf = [0u8; 20];
        emit_header(
            &mut buf,
            24,
            64,
            PROTO_ICMP,
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 3),
        );
        assert_eq!(checksum_finish(checksum_sum(&buf, 0)), 0);
        assert_eq!(&buf[12..20], &BYTES[12..20]);
    }

    #[test]
    fn truncation_and_lies_never_panic() {
        for n in 0..BYTES.len() {
            assert!(Packet::new_checked(&BYTES[..n]).is_err());
            let _ = peek_dst(&BYTES[..n]);
        }
        let mut lie = BYTES;
        lie[3] = 200; // total length past the end
        assert_eq!(
            Packet::new_checked(&lie[..]).unwrap_err(),
            WireError::Truncated
        );
        lie[0] = 0x44; // IHL 4 < 5
        assert_eq!(
            Packet::new_checked(&lie[..]).unwrap_err(),
            WireError::Malformed
        );
        lie[0] = 0x65; // version 6
        assert_eq!(
            Packet::new_checked(&lie[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
