//! Packet slots: a buffer allocated once at full size, with a logical length.
//!
//! The worker loops hand slots to the kernel (TUN reads, `recvmmsg`) and
//! read back as much as it filled. Setting the length is free, because the
//! backing buffer never shrinks and is always initialized.

/// One packet buffer.
#[derive(Debug, Clone)]
pub struct Slot {
    buf: Vec<u8>,
    len: usize,
}

impl Slot {
    /// A zeroed slot of `size` bytes, `size` long.
    pub fn new(size: usize) -> Slot {
        Slot {
            buf: vec![0; size],
            len: size,
        }
    }

    /// Sets the logical length, growing the backing buffer if needed.
    pub fn set_len(&mut self, len: usize) {
        if len > self.buf.len() {
            self.buf.resize(len, 0);
        }
        self.len = len;
    }

    /// Makes the whole backing buffer the slot's contents again.
    pub fn reset(&mut self) {
        self.len = self.buf.len();
    }
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_length_over_a_fixed_buffer() {
        let mut s = Slot::new(16);
        s.set_len(4);
        s.as_mut().copy_from_slice(b"abcd");
        assert_eq!(s.as_ref(), b"abcd");
        s.set_len(20);
        assert_eq!(
            s.as_ref().len(),
            20,
            "grows past the backing buffer when it must"
        );
        s.reset();
        assert_eq!(s.as_ref().len(), 20);
    }
}
