//! The inner Ethernet II header that VXLAN carries: destination, source, ethertype.

use super::{Field, WireError};

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
}

/// Length of an Ethernet II header without a VLAN tag.
pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// An Ethernet II frame over a byte buffer.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps `buffer`, failing when it is shorter than an Ethernet header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buffer })
    }

    pub fn dst(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        m
    }

    pub fn src(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        m
    }

    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Writes the whole header in one go.
    pub fn emit(&mut self, dst: [u8; 6], src: [u8; 6], ethertype: u16) {
        let b = self.buffer.as_mut();
        b[field::DST].copy_from_slice(&dst);
        b[field::SRC].copy_from_slice(&src);
        b[field::ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BYTES: [u8; 16] = [
        1, 2, 3, 4, 5, 6, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x08, 0x00, 0x45, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&BYTES[..]).unwrap();
        assert_eq!(f.dst(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src(), [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 16];
        buf[14] = 0x45;
        Frame::new_unchecked(&mut buf[..]).emit(
            [1, 2, 3, 4, 5, 6],
            [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f],
            ETHERTYPE_IPV4,
        );
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn truncation_never_panics() {
        for n in 0..BYTES.len() {
            assert_eq!(Frame::new_checked(&BYTES[..n]).is_ok(), n >= HEADER_LEN);
        }
    }
}
