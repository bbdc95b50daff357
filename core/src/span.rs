//! A byte range cut into an aligned interior and unaligned edges.
//!
//! Both the in-flight file digest (whole 1 KiB BLAKE3 leaves inside a
//! chunk) and the restore's writer (whole 4 KiB blocks for `O_DIRECT`) walk
//! a chunk's bytes front to back, treating the aligned middle one way and
//! the ragged ends another.

/// `[start, end)` with its `align`ed interior `[first, last)`, which is
/// empty (`first == last == end`) when the range holds no whole aligned
/// block or the caller does not want one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aligned {
    /// Start of the aligned interior.
    pub first: u64,
    /// End of the aligned interior.
    pub last: u64,
    /// End of the range.
    pub end: u64,
}

impl Aligned {
    /// The range `[start, start + len)`; `want` false gives no interior.
    pub fn new(start: u64, len: u64, align: u64, want: bool) -> Self {
        let end = start + len;
        let (first, last) = (start.next_multiple_of(align), end / align * align);
        let (first, last) = if want && first < last {
            (first, last)
        } else {
            (end, end)
        };
        Aligned { first, last, end }
    }

    /// Where the edge holding `pos` ends, or `None` when `pos` lies in the
    /// interior.
    pub fn edge_until(&self, pos: u64) -> Option<u64> {
        if pos < self.first {
            Some(self.first)
        } else if pos >= self.last {
            Some(self.end)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interior_and_edges() {
        let a = Aligned::new(100, 10_000, 4096, true);
        assert_eq!((a.first, a.last, a.end), (4096, 8192, 10_100));
        assert_eq!(a.edge_until(100), Some(4096));
        assert_eq!(a.edge_until(5000), None);
        assert_eq!(a.edge_until(8192), Some(10_100));
        assert_eq!(Aligned::new(100, 3000, 4096, true).edge_until(100), Some(3100));
        assert_eq!(Aligned::new(0, 8192, 4096, false).edge_until(0), Some(8192));
    }
}
