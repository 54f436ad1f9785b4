//! The VXLAN header (RFC 7348): flags, reserved bits and the 24-bit VNI.

use super::{Field, WireError};
use crate::types::Vni;

mod field {
    use super::Field;
    pub const FLAGS: usize = 0;
    pub const VNI: Field = 4..7;
}

/// Length of a VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The "I" flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;

/// A VXLAN header over a byte buffer.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checks; use [`Packet::new_checked`] on input.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer`, failing when it is shorter than a VXLAN header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The VNI, valid only when the I flag is set.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// What follows the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes a whole header: the I flag, zero reserved bits and `vni`.
    pub fn emit(&mut self, vni: Vni) {
        let v = vni.get().to_be_bytes();
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BYTES: [u8; 10] = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xaa, 0xbb];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&BYTES[..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!(p.vni(), 0x12_3456);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 10];
        buf[8] = 0xaa;
        buf[9] = 0xbb;
        Packet::new_unchecked(&mut buf[..]).emit(Vni::new(0x12_3456).unwrap());
        assert_eq!(buf, BYTES);
    }

    #[test]
    fn truncation_never_panics() {
        for n in 0..BYTES.len() {
            let r = Packet::new_checked(&BYTES[..n]);
            assert_eq!(r.is_ok(), n >= HEADER_LEN);
        }
    }
}
