//! The BLAKE3 of a whole file, assembled from spans that arrive in any order.
//!
//! A restore receives a file as content-defined chunks, out of order and
//! from several connections. Re-reading the file afterwards to check its
//! whole-file digest would cost a second pass over the disk; instead each
//! span (a chunk at its file offset) is hashed as it streams past, into
//! the chaining values of the BLAKE3 tree nodes that lie wholly inside it
//! (BLAKE3 is a tree hash: every aligned power-of-two run of 1 KiB leaves
//! is a node of the tree). The few leaves that straddle span boundaries
//! are kept as bytes, at most 2 KiB per span. Once every span is in,
//! [`FileHasher::finish`] merges the nodes into exactly the root
//! [`blake3::hash`] computes over the whole file (property-tested below).

use std::collections::{BTreeMap, HashMap};

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::{Hasher, CHUNK_LEN};

use crate::span::Aligned;
use crate::Digest;

const LEAF: u64 = CHUNK_LEN as u64;

/// The nodes and boundary bytes of one span, once fully fed.
#[derive(Debug, Default)]
pub struct Span {
    nodes: Vec<(u64, u64, ChainingValue)>,
    fragments: Vec<(u64, Vec<u8>)>,
}

/// Hashes one span `[offset, end)` of a file, fed in order.
pub struct SpanHasher {
    /// Next absolute offset to be fed.
    pos: u64,
    /// The span, and its whole leaves; bytes outside those are fragments.
    range: Aligned,
    file_len: u64,
    /// The node being hashed: its offset, length and hasher.
    node: Option<(u64, u64, Hasher)>,
    done: Span,
}

impl SpanHasher {
    /// A hasher for the bytes at `[offset, offset + len)` of a file of
    /// `file_len` bytes.
    pub fn new(offset: u64, len: u64, file_len: u64) -> Self {
        // A file of one leaf has no inner nodes: its root is that leaf.
        let range = Aligned::new(offset, len, LEAF, file_len > LEAF);
        SpanHasher {
            pos: offset,
            range,
            file_len,
            node: None,
            done: Span::default(),
        }
    }

    /// Feeds the next bytes of the span.
    pub fn update(&mut self, mut bytes: &[u8]) {
        assert!(
            self.pos + bytes.len() as u64 <= self.range.end,
            "fed past the end of the span"
        );
        while !bytes.is_empty() {
            // Outside the whole leaves: a fragment, kept as bytes.
            let take = if let Some(until) = self.range.edge_until(self.pos) {
                let n = (until - self.pos).min(bytes.len() as u64) as usize;
                match self.done.fragments.last_mut() {
                    Some((at, b)) if *at + b.len() as u64 == self.pos => b.extend_from_slice(&bytes[..n]),
                    _ => self.done.fragments.push((self.pos, bytes[..n].to_vec())),
                }
                n
            } else {
                let (start, len, hasher) = self.node.get_or_insert_with(|| {
                    let len = largest_node(self.pos, self.range.last, self.file_len);
                    let mut h = Hasher::new();
                    h.set_input_offset(self.pos);
                    (self.pos, len, h)
                });
                let n = (*start + *len - self.pos).min(bytes.len() as u64) as usize;
                hasher.update(&bytes[..n]);
                if self.pos + n as u64 == *start + *len {
                    let cv = hasher.finalize_non_root();
                    self.done.nodes.push((*start, *len, cv));
                    self.node = None;
                }
                n
            };
            self.pos += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// The span's nodes and fragments. Panics unless all of it was fed.
    pub fn finish(self) -> Span {
        assert_eq!(self.pos, self.range.end, "span not fully fed");
        self.done
    }
}

/// The largest tree node starting at `pos` (a leaf boundary) that ends by
/// `limit`: aligned to its own power-of-two size, and never the whole file
/// (the root is finalised differently from every other node).
fn largest_node(pos: u64, limit: u64, file_len: u64) -> u64 {
    let mut len = LEAF;
    let fits = |len: u64| {
        if pos == 0 {
            len < file_len
        } else {
            pos.is_multiple_of(len)
        }
    };
    while fits(len * 2) && pos + len * 2 <= limit {
        len *= 2;
    }
    len
}

/// Collects the spans of one file of `len` bytes.
#[derive(Debug)]
pub struct FileHasher {
    len: u64,
    nodes: HashMap<(u64, u64), ChainingValue>,
    fragments: BTreeMap<u64, Vec<u8>>,
}

impl FileHasher {
    /// A hasher for a file of `len` bytes.
    pub fn new(len: u64) -> Self {
        FileHasher {
            len,
            nodes: HashMap::new(),
            fragments: BTreeMap::new(),
        }
    }

    /// Adds a finished span.
    pub fn add(&mut self, span: Span) {
        self.nodes
            .extend(span.nodes.into_iter().map(|(at, len, cv)| ((at, len), cv)));
        self.fragments.extend(span.fragments);
    }

    /// The file's BLAKE3, or `None` when some part of it was never added.
    pub fn finish(&self) -> Option<Digest> {
        if self.len <= LEAF {
            return Some(Digest::of(&self.bytes(0, self.len)?));
        }
        let left = left_subtree_len(self.len);
        let (l, r) = (self.node(0, left)?, self.node(left, self.len - left)?);
        Some(Digest::from(merge_subtrees_root(&l, &r, Mode::Hash)))
    }

    /// The chaining value of the tree node `[at, at + len)`.
    fn node(&self, at: u64, len: u64) -> Option<ChainingValue> {
        if let Some(cv) = self.nodes.get(&(at, len)) {
            return Some(*cv);
        }
        if len <= LEAF {
            let bytes = self.bytes(at, len)?;
            return Some(
                Hasher::new()
                    .set_input_offset(at)
                    .update(&bytes)
                    .finalize_non_root(),
            );
        }
        let left = left_subtree_len(len);
        let (l, r) = (self.node(at, left)?, self.node(at + left, len - left)?);
        Some(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }

    /// Bytes `[at, at + len)` from the fragments, if they hold all of them.
    fn bytes(&self, at: u64, len: u64) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        let start = self.fragments.range(..=at).next_back().map_or(at, |(k, _)| *k);
        for (k, b) in self.fragments.range(start..at + len) {
            let want = at + out.len() as u64;
            if *k > want || *k + b.len() as u64 <= want {
                continue;
            }
            let from = (want - k) as usize;
            let n = (b.len() - from).min((len - out.len() as u64) as usize);
            out.extend_from_slice(&b[from..from + n]);
        }
        (out.len() as u64 == len).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hashes `data` cut at `cuts`, spans added in reverse order and each
    /// fed in `piece`-byte pieces.
    fn assembled(data: &[u8], cuts: &[usize], piece: usize) -> Option<Digest> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.extend([0, data.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        let mut file = FileHasher::new(data.len() as u64);
        for w in cuts.windows(2).rev() {
            let mut span = SpanHasher::new(w[0] as u64, (w[1] - w[0]) as u64, data.len() as u64);
            for p in data[w[0]..w[1]].chunks(piece.max(1)) {
                span.update(p);
            }
            file.add(span.finish());
        }
        file.finish()
    }

    #[test]
    fn whole_file_in_one_span_and_edge_sizes() {
        for len in [
            0usize,
            1,
            1023,
            1024,
            1025,
            2048,
            3000,
            4096,
            70_000,
            1 << 20,
            (3 << 20) + 5,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(assembled(&data, &[], 4096), Some(Digest::of(&data)), "len {len}");
            assert_eq!(
                assembled(&data, &[1, 1024, 1500, 2048], 333),
                Some(Digest::of(&data)),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_missing_span_gives_none() {
        let data = vec![7u8; 10_000];
        let mut file = FileHasher::new(data.len() as u64);
        let mut span = SpanHasher::new(0, 6000, 10_000);
        span.update(&data[..6000]);
        file.add(span.finish());
        assert_eq!(file.finish(), None);
    }

    proptest! {
        #[test]
        fn spans_in_any_order_give_the_whole_file_digest(
            len in 0usize..300_000,
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            piece in 1usize..70_000,
            seed in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            prop_assert_eq!(assembled(&data, &cuts, piece), Some(Digest::of(&data)));
        }
    }
}
