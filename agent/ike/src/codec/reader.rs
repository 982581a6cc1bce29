//! A cursor over received bytes that cannot panic (rustls `msgs/codec.rs` style).
//!
//! Every read is checked; a structure with a length field gets a bounded sub-reader so it can
//! neither read past its end nor leave bytes unread unnoticed.

use super::error::DecodeError;

/// Reads big-endian fields from a byte slice. `what` names the structure being read, so a
/// truncation error says where it happened.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
    /// Offset of `rest` from the start of the outermost buffer, so sub-readers can report
    /// absolute positions (the SK layer needs byte ranges of the datagram).
    offset: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over all of `buf`.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self {
            rest: buf,
            offset: 0,
            what,
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Position of the next byte, relative to the outermost buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated { what: self.what })?;
        self.rest = tail;
        self.offset = self.offset.saturating_add(n);
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated { what: self.what })?;
        self.rest = tail;
        self.offset = self.offset.saturating_add(N);
        Ok(*head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let all = self.rest;
        self.offset = self.offset.saturating_add(all.len());
        self.rest = &[];
        all
    }

    /// A reader over the next `len` bytes, for a structure named `what` whose length field said
    /// `len`. A length beyond what is left is a lie, not a truncation of this structure.
    pub fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        let available = self.rest.len();
        let offset = self.offset;
        let body = self.take(len).map_err(|_| DecodeError::BadLength {
            what,
            declared: len,
            available,
        })?;
        Ok(Reader {
            rest: body,
            offset,
            what,
        })
    }

    /// Fails unless everything has been read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData {
                what: self.what,
                len: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_checked() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6, 7], "test");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0203);
        assert_eq!(r.offset(), 3);
        let mut sub = r.sub(2, "inner").unwrap();
        assert_eq!(sub.offset(), 3);
        assert_eq!(sub.u32(), Err(DecodeError::Truncated { what: "inner" }));
        assert_eq!(sub.take(2).unwrap(), &[4, 5]);
        assert!(sub.finish().is_ok());
        assert_eq!(
            r.finish(),
            Err(DecodeError::TrailingData {
                what: "test",
                len: 2
            })
        );
        assert_eq!(
            r.sub(3, "lie").unwrap_err(),
            DecodeError::BadLength {
                what: "lie",
                declared: 3,
                available: 2
            }
        );
        // A failed read consumes nothing.
        assert_eq!(r.rest(), &[6, 7]);
        assert!(r.is_empty());
        assert_eq!(
            r.take(usize::MAX),
            Err(DecodeError::Truncated { what: "test" })
        );
    }
}
