//! A reader with a size limit, for records parsed as they are read.
//!
//! Streaming parsers (the manifest as it decompresses, the file index as
//! it is read from a destination) never hold their input whole, so the
//! limit that `take` plus a length check gave a whole buffer has to be
//! kept by the reader itself: [`Capped`] fails the read that passes it,
//! and says so afterwards ([`Capped::over`]) for the caller's own message.

use std::io::Read;

/// `inner`, failing once more than `limit` bytes have come out of it.
pub struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Capped<R> {
    /// At most `limit` bytes of `inner`.
    pub fn new(inner: R, limit: u64) -> Self {
        Capped {
            inner,
            left: limit.saturating_add(1),
        }
    }

    /// Whether `inner` held more than the limit (a read has failed on it).
    pub fn over(&self) -> bool {
        self.left == 0
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("over the size limit"));
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        if self.left == 0 {
            return Err(std::io::Error::other("over the size limit"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], limit: u64) -> (std::io::Result<Vec<u8>>, bool) {
        let mut c = Capped::new(bytes, limit);
        let mut out = Vec::new();
        let r = c.read_to_end(&mut out).map(|_| out);
        (r, c.over())
    }

    #[test]
    fn passes_up_to_the_limit_and_fails_past_it() {
        assert_eq!(read_all(b"abcd", 4).0.unwrap(), b"abcd");
        assert!(!read_all(b"abcd", 4).1);
        assert_eq!(read_all(b"", 0).0.unwrap(), b"");
        let (r, over) = read_all(b"abcde", 4);
        assert!(r.is_err() && over);
        let (r, over) = read_all(b"a", 0);
        assert!(r.is_err() && over);
    }
}
