//! Packet slots: a buffer allocated once at full size, with a logical length.
//!
//! The worker loops hand slots to the kernel (recvmmsg) and to tun-rs's
//! offload code (GSO split on read, GRO coalescing on write). Setting the
//! length is free, because the backing buffer never shrinks and is always
//! initialized. Growing past it allocates; that only happens if a coalesced
//! packet outgrows [`super::SLOT`], which the 64 KiB limit of GRO prevents.

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

impl tun_rs::ExpandBuffer for Slot {
    fn buf_capacity(&self) -> usize {
        self.buf.len()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        let old = self.len;
        self.set_len(new_len);
        if new_len > old {
            self.buf[old..new_len].fill(value);
        }
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let start = self.len;
        self.set_len(start + src.len());
        self.buf[start..start + src.len()].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tun_rs::ExpandBuffer;

    #[test]
    fn logical_length_over_a_fixed_buffer() {
        let mut s = Slot::new(16);
        s.set_len(4);
        s.as_mut().copy_from_slice(b"abcd");
        s.buf_extend_from_slice(b"ef");
        assert_eq!(s.as_ref(), b"abcdef");
        s.buf_resize(8, b'x');
        assert_eq!(s.as_ref(), b"abcdefxx");
        assert_eq!(s.buf_capacity(), 16);
        s.buf_extend_from_slice(&[b'y'; 12]);
        assert_eq!(
            s.as_ref().len(),
            20,
            "grows past the backing buffer when it must"
        );
        s.reset();
        assert_eq!(s.as_ref().len(), 20);
    }
}
