//! A thin IPv6 header view: what routing, source checks, ICMPv6 errors and
//! offloads need (the fixed 40-byte header; extension headers are not walked).

use std::net::Ipv6Addr;

use super::{Field, WireError, checksum_sum};

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Field = 8..24;
    pub const DST: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Next header: ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// Next header: fragment extension header.
pub const PROTO_FRAGMENT: u8 = 44;

/// An IPv6 packet over a byte buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking the version and that the payload length
    /// fits inside the buffer (trailing bytes are allowed: Ethernet pads).
    /// A payload length of 0 (a jumbogram's) is refused: weft carries none.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + usize::from(p.payload_len()) > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The first 32 bits: version, traffic class and flow label.
    pub fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The packet's length by its header: 40 + payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

/// The destination of what looks like an IPv6 packet, without checking it
/// further: the routing decision needs nothing else.
#[inline]
pub fn peek_dst(b: &[u8]) -> Option<Ipv6Addr> {
    if b.len() < HEADER_LEN || b[0] >> 4 != 6 {
        return None;
    }
    Some(addr(&b[field::DST]))
}

/// Writes a fixed IPv6 header (traffic class and flow label 0) into `out[..40]`.
///
/// # Panics
/// When `out` is shorter than 40 bytes (a caller bug, not packet input).
pub fn emit_header(
    out: &mut [u8],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    out[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    out[field::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    out[field::NEXT_HEADER] = next_header;
    out[field::HOP_LIMIT] = hop_limit;
    out[field::SRC].copy_from_slice(&src.octets());
    out[field::DST].copy_from_slice(&dst.octets());
}

/// The IPv6 pseudo-header sum (RFC 8200 §8.1) for an upper-layer packet of
/// `len` bytes, added to `acc`; not folded or complemented.
#[inline]
pub fn pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32, acc: u32) -> u32 {
    let acc = checksum_sum(&src.octets(), acc);
    let acc = checksum_sum(&dst.octets(), acc);
    acc + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ICMPv6 echo request from fc00:0:0:1::5 to fc00:0:0:2::7, 8 bytes of payload.
    static PACKET: [u8; 48] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x08, 0x3a, 0x40, // ver, len 8, ICMPv6, hop 64
        0xfc, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, // src
        0xfc, 0x00, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, // dst
        0x80, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, // echo request
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.total_len(), 48);
        assert_eq!(p.next_header(), PROTO_ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src(), "fc00:0:0:1::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "fc00:0:0:2::7".parse::<Ipv6Addr>().unwrap());
        assert_eq!(peek_dst(&PACKET), Some(p.dst()));
    }

    #[test]
    fn construct() {
        let mut b = [0u8; 48];
        emit_header(
            &mut b,
            8,
            PROTO_ICMPV6,
            64,
            "fc00:0:0:1::5".parse().unwrap(),
            "fc00:0:0:2::7".parse().unwrap(),
        );
        b[40..].copy_from_slice(&PACKET[40..]);
        assert_eq!(b, PACKET);
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        for n in 0..PACKET.len() {
            assert!(Packet::new_checked(&PACKET[..n]).is_err(), "{n}");
            let _ = peek_dst(&PACKET[..n]);
        }
        let mut v4 = PACKET;
        v4[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&v4[..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(peek_dst(&v4), None);
    }
}
