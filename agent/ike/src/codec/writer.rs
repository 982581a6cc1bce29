//! The serialising side: big-endian `put_*` and length fields back-patched once the structure
//! they cover has been written, so no length is ever computed twice.

use super::error::EncodeError;

/// An append-only buffer for one message.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// A 16-bit length field written as a placeholder, to be filled by [`Writer::end_len16`].
#[derive(Debug)]
#[must_use = "a length placeholder must be filled"]
pub struct LenMark {
    /// Where the structure (and so its length count) starts.
    start: usize,
    /// Where the two length bytes are.
    field: usize,
    what: &'static str,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A big-endian u16.
    pub fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A big-endian u32.
    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Raw bytes.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// `n` zero bytes (space to be filled in place later).
    pub fn put_zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len().saturating_add(n), 0);
    }

    /// A length byte for `b`, then `b`.
    pub fn put_len8_bytes(&mut self, b: &[u8], what: &'static str) -> Result<(), EncodeError> {
        let len = u8::try_from(b.len()).map_err(|_| EncodeError::TooLong { what })?;
        self.put_u8(len);
        self.put_bytes(b);
        Ok(())
    }

    /// Writes a zero u16 length field for a structure that started at `start` (an offset from
    /// [`Writer::len`]); the length counts from `start` to the matching `end_len16`.
    pub fn begin_len16(&mut self, start: usize, what: &'static str) -> LenMark {
        let field = self.buf.len();
        self.put_u16(0);
        LenMark { start, field, what }
    }

    /// Fills the placeholder with the length written since its structure started.
    pub fn end_len16(&mut self, mark: LenMark) -> Result<(), EncodeError> {
        let too_long = EncodeError::TooLong { what: mark.what };
        let len = self
            .buf
            .len()
            .checked_sub(mark.start)
            .ok_or(too_long.clone())?;
        let len = u16::try_from(len).map_err(|_| too_long.clone())?;
        self.patch(mark.field, &len.to_be_bytes()).ok_or(too_long)
    }

    /// Overwrites bytes at `at` (used for the header's 32-bit length as well).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) -> Option<()> {
        let end = at.checked_add(bytes.len())?;
        self.buf.get_mut(at..end)?.copy_from_slice(bytes);
        Some(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn back_patches_lengths_and_refuses_overflow() {
        let mut w = Writer::new();
        w.put_u8(9);
        let start = w.len();
        w.put_u16(0xabcd);
        let mark = w.begin_len16(start, "thing");
        w.put_u32(1);
        w.end_len16(mark).unwrap();
        assert_eq!(w.into_inner(), [9, 0xab, 0xcd, 0, 8, 0, 0, 0, 1]);

        let mut w = Writer::new();
        let mark = w.begin_len16(0, "big");
        w.put_zeros(usize::from(u16::MAX));
        assert_eq!(w.end_len16(mark), Err(EncodeError::TooLong { what: "big" }));
        assert!(w.patch(usize::MAX, &[1]).is_none());
        assert!(Writer::new().put_len8_bytes(&[0; 256], "spi").is_err());
    }
}
