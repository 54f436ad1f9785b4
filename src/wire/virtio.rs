//! The virtio-net header (`struct virtio_net_hdr`) that a TUN device opened with
//! `IFF_VNET_HDR` puts in front of every packet: how to checksum and segment it.
//!
//! Its 16-bit fields are in the host's byte order (a TUN device is "legacy"
//! virtio unless `TUNSETVNETLE`/`TUNSETVNETBE` says otherwise), so they are
//! read and written native-endian here.

use super::WireError;

/// Length of the header weft's TUN device uses (no `num_buffers` field).
pub const HEADER_LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` must still be computed
/// over `[csum_start..]`; the field holds the pseudo-header sum.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;

/// `gso_type`: a single packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: a TCP/IPv4 super-packet to cut into `gso_size` segments.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (obsolete; never enabled by weft).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: a TCP/IPv6 super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP super-packet to cut into `gso_size` datagrams (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP stream uses ECN (CWR goes on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header (it is small enough to copy out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Header {
    /// Reads the header at the start of `b`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when `b` is shorter than [`HEADER_LEN`].
    pub fn parse(b: &[u8]) -> Result<Header, WireError> {
        let b = b.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(Header {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into `b[..HEADER_LEN]`.
    ///
    /// # Panics
    /// When `b` is shorter than [`HEADER_LEN`] (a caller bug: output buffers
    /// are sized by weft, not by packet input).
    pub fn emit(&self, b: &mut [u8]) {
        let b = &mut b[..HEADER_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The segmentation type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; HEADER_LEN];
        h.emit(&mut b);
        assert_eq!(Header::parse(&b), Ok(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(Header::parse(&[0u8; 16][..n]), Err(WireError::Truncated));
        }
    }
}
