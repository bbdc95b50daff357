//! What the unit tests share: manifests built in place, of given
//! directories and files.

use qsync_core::chunk::ChunkerParams;
use qsync_core::manifest::{ChainMeta, ChunkRef, DirEntry, FileEntry, Manifest, MANIFEST_FORMAT};
use qsync_core::time::Timestamp;
use qsync_core::Digest;

/// A manifest of chain "eth", version 1, listing `directories` (mode
/// 0755) and `files`.
pub(crate) fn manifest(directories: &[&str], files: Vec<FileEntry>) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT.into(),
        chain: ChainMeta {
            name: qsync_core::ChainName::new("eth").unwrap(),
            height: None,
            block_hash: None,
        },
        version: 1,
        created_at: Timestamp(1),
        expires_at: Timestamp(2),
        chunker: ChunkerParams::default(),
        directories: directories
            .iter()
            .map(|d| DirEntry {
                path: d.to_string(),
                mode: 0o755,
            })
            .collect(),
        files,
        pack: Vec::new(),
        pack_index: Default::default(),
    }
}

/// A file of `size` bytes made of `chunks` (not packed), mode 0644.
pub(crate) fn file(path: &str, size: u64, chunks: Vec<ChunkRef>) -> FileEntry {
    FileEntry {
        path: path.to_string().into(),
        size,
        mode: 0o644,
        blake3: Digest::of(b"f"),
        chunks: chunks.into(),
        packed: false,
    }
}
