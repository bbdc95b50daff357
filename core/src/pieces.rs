//! Where each file's bytes lie: runs of chunk bytes at file offsets.
//!
//! A file chunked on its own (every file of format 1, large files of
//! format 2) is its chunks end to end, each one whole. A packed file is a
//! stretch of the pack stream (the packed files concatenated in manifest
//! order, cut into the manifest's `pack` chunks), so it may start inside
//! one chunk and end inside another. Both come out of [`Manifest::pieces`]
//! the same way, so the restore, the tar stream and verification handle
//! one kind of thing. The stream offsets are worked out once per manifest
//! ([`PackIndex`]), which is never stored.

use std::sync::OnceLock;

use crate::manifest::{ChunkRef, Manifest};

/// `len` bytes of chunk `chunk`, from byte `at` of it, that belong at
/// `offset` of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk holding the bytes.
    pub chunk: ChunkRef,
    /// Where the bytes start in the chunk's plaintext.
    pub at: u64,
    /// How many bytes.
    pub len: u64,
    /// Where they go in the file.
    pub offset: u64,
}

impl Piece {
    /// Whether the piece is its whole chunk, so the chunk's own digest
    /// proves the bytes in place; a part of a chunk is proved only by its
    /// file's digest.
    pub fn whole(&self) -> bool {
        self.at == 0 && self.len == self.chunk.size
    }
}

/// Stream offsets of the pack: where each packed file starts, and where
/// each pack chunk does. Derived from the manifest on first use; two
/// indexes always compare equal, so manifests compare by what they say.
#[derive(Clone, Debug, Default)]
pub struct PackIndex(OnceLock<Offsets>);

#[derive(Clone, Debug)]
struct Offsets {
    /// Per file: where its bytes start in the pack stream (packed files only).
    file_at: Vec<u64>,
    /// Per pack chunk: where it starts in the stream, and the stream's end last.
    chunk_at: Vec<u64>,
}

impl PartialEq for PackIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PackIndex {}

impl Manifest {
    fn offsets(&self) -> &Offsets {
        self.pack_index.0.get_or_init(|| {
            let mut at = 0u64;
            let file_at = self
                .files
                .iter()
                .map(|f| {
                    let here = at;
                    if f.packed {
                        at = at.saturating_add(f.size);
                    }
                    here
                })
                .collect();
            let mut at = 0u64;
            let mut chunk_at: Vec<u64> = self
                .pack
                .iter()
                .map(|c| {
                    let here = at;
                    at = at.saturating_add(c.size);
                    here
                })
                .collect();
            chunk_at.push(at);
            Offsets { file_at, chunk_at }
        })
    }

    /// The pack chunks file `i` (packed) spans, as indexes into `pack`.
    fn pack_span(&self, i: usize) -> std::ops::Range<usize> {
        let o = self.offsets();
        let (start, end) = (o.file_at[i], o.file_at[i] + self.files[i].size);
        // The chunk holding `start`: the last one starting at or before it.
        let first = o.chunk_at.partition_point(|&c| c <= start) - 1;
        let last = o.chunk_at.partition_point(|&c| c < end);
        first..last.min(self.pack.len())
    }

    /// How many pieces file `i` has (what [`Manifest::pieces`] returns).
    pub fn piece_count(&self, i: usize) -> usize {
        let f = &self.files[i];
        if f.packed {
            self.pack_span(i).len()
        } else {
            f.chunks.len()
        }
    }

    /// File `i`'s bytes, front to back, as pieces of chunks. The manifest
    /// must have been validated ([`Manifest::decode`]), or built by a
    /// writer that cut the pack from exactly its packed files.
    pub fn pieces(&self, i: usize) -> Vec<Piece> {
        let f = &self.files[i];
        if !f.packed {
            let mut offset = 0;
            return f
                .chunks
                .iter()
                .map(|c| {
                    let p = Piece {
                        chunk: c.clone(),
                        at: 0,
                        len: c.size,
                        offset,
                    };
                    offset += c.size;
                    p
                })
                .collect();
        }
        let o = self.offsets();
        let (start, end) = (o.file_at[i], o.file_at[i] + f.size);
        self.pack_span(i)
            .map(|k| {
                let (c0, c1) = (o.chunk_at[k], o.chunk_at[k + 1]);
                let (from, to) = (start.max(c0), end.min(c1));
                Piece {
                    chunk: self.pack[k].clone(),
                    at: from - c0,
                    len: to - from,
                    offset: from - start,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{ChunkRef, FileEntry, Manifest, MANIFEST_FORMAT_PACKED};
    use crate::Digest;

    /// A manifest packing files of `sizes` into chunks of `cuts`.
    fn packed(sizes: &[u64], cuts: &[u64]) -> (Manifest, Vec<u8>) {
        let total: u64 = sizes.iter().sum();
        assert_eq!(total, cuts.iter().sum::<u64>());
        let stream: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let mut m = crate::manifest::tests::sample();
        m.format = MANIFEST_FORMAT_PACKED.into();
        let mut at = 0usize;
        for (n, size) in sizes.iter().enumerate() {
            let bytes = &stream[at..at + *size as usize];
            m.files.push(FileEntry {
                path: format!("p/{n:03}").into(),
                size: *size,
                mode: 0o644,
                blake3: Digest::of(bytes),
                chunks: Box::default(),
                packed: true,
            });
            at += *size as usize;
        }
        let mut at = 0usize;
        for cut in cuts {
            let bytes = &stream[at..at + *cut as usize];
            m.pack.push(ChunkRef {
                blake3: Digest::of(bytes),
                size: *cut,
            });
            at += *cut as usize;
        }
        (m, stream)
    }

    /// Every packed file, put together from its pieces of the stream's
    /// chunks, is exactly its bytes, whichever way files and chunks align.
    #[test]
    fn pieces_reassemble_every_packed_file() {
        for (sizes, cuts) in [
            (vec![4, 9], vec![13]),
            (vec![4, 9], vec![4, 9]),
            (vec![10], vec![3, 3, 4]),
            (vec![1, 1, 1, 10, 2], vec![2, 11, 2]),
            (vec![7, 7, 7], vec![1, 19, 1]),
        ] {
            let (m, stream) = packed(&sizes, &cuts);
            let m = Manifest::decode(&m.encode().0, "t").unwrap();
            let chunk_bytes = |c: &ChunkRef| {
                let k = m.pack.iter().position(|p| p == c).unwrap();
                let start: u64 = m.pack[..k].iter().map(|p| p.size).sum();
                stream[start as usize..(start + c.size) as usize].to_vec()
            };
            for i in (0..m.files.len()).filter(|i| m.files[*i].packed) {
                let f = &m.files[i];
                let pieces = m.pieces(i);
                assert_eq!(pieces.len(), m.piece_count(i), "{sizes:?} {cuts:?} file {i}");
                let mut file = vec![0u8; f.size as usize];
                for p in &pieces {
                    let c = chunk_bytes(&p.chunk);
                    file[p.offset as usize..(p.offset + p.len) as usize]
                        .copy_from_slice(&c[p.at as usize..(p.at + p.len) as usize]);
                    assert_eq!(p.whole(), p.at == 0 && p.len == p.chunk.size);
                }
                assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), f.size);
                assert_eq!(Digest::of(&file), f.blake3, "{sizes:?} {cuts:?} file {i}");
            }
        }
    }
}
