//! The snapshot manifest: chain metadata and the file table of one snapshot.
//!
//! Stored as compact JSON, or as one zstd frame of it when the JSON exceeds
//! [`COMPRESS_ABOVE`] bytes. Decoding validates everything a restore relies
//! on — confined paths, chunk sizes that add up, bounded sizes — so code
//! holding a [`Manifest`] can trust its shape (its signature is checked by the
//! caller, over the stored bytes, before decoding).

use std::collections::HashSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkerParams, ZSTD_MAGIC};
use crate::time::Timestamp;
use crate::{ChainName, Digest, FormatError};

/// `format` field of a v1 manifest.
pub const MANIFEST_FORMAT: &str = "qsync-manifest/1";
/// JSON larger than this is stored zstd-compressed.
pub const COMPRESS_ABOVE: usize = 64 * 1024;
/// Largest decoded manifest a reader accepts (about 20 million chunks).
pub const MAX_MANIFEST_BYTES: u64 = 2 << 30;
/// Names at the root of a destination that qsync owns (completion marker,
/// in-progress marker, resume journal, file index); never part of a snapshot.
pub const RESERVED_NAMES: [&str; 4] = [
    ".qsync-restore.json",
    ".qsync-restore.partial.json",
    ".qsync-restore.journal",
    ".qsync-restore.index.json",
];

/// What the snapshot is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainMeta {
    /// Chain name, as in the store layout.
    pub name: ChainName,
    /// Block height of the snapshot, when the publisher knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Head block hash, as the chain's client prints it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
}

/// One chunk of a file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// BLAKE3 of the plaintext; names the chunk object.
    pub blake3: Digest,
    /// Plaintext length in bytes.
    pub size: u64,
}

/// A regular file of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Unix permission bits (`0o7777` at most; readers apply `0o777` of it).
    pub mode: u32,
    /// BLAKE3 of the whole file.
    pub blake3: Digest,
    /// Chunks in order; their sizes add up to `size`.
    pub chunks: Vec<ChunkRef>,
}

/// A directory of the snapshot (listed so that empty ones are restored too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
}

impl FileEntry {
    /// The mode a reader gives the file: permission bits only, never
    /// setuid, setgid or sticky (a restore as root must not create
    /// root-owned setuid files from a publisher's manifest).
    pub fn applied_mode(&self) -> u32 {
        self.mode & 0o777
    }
}

impl DirEntry {
    /// The mode a reader gives the directory: permission bits only, plus
    /// owner `rwx` so the reader can fill it.
    pub fn applied_mode(&self) -> u32 {
        (self.mode & 0o777) | 0o700
    }
}

/// One snapshot of one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// What this is a snapshot of.
    pub chain: ChainMeta,
    /// Snapshot version: strictly increasing per chain.
    pub version: u64,
    /// When the snapshot was taken.
    pub created_at: Timestamp,
    /// After this a fetcher refuses the manifest (unless told otherwise).
    pub expires_at: Timestamp,
    /// How files were cut.
    pub chunker: ChunkerParams,
    /// Directories, sorted by path.
    pub directories: Vec<DirEntry>,
    /// Regular files, sorted by path.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Number of chunk references (with repeats).
    pub fn chunk_refs(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum()
    }

    /// Serialises for storage; the bool says whether the bytes are zstd.
    pub fn encode(&self) -> (Vec<u8>, bool) {
        let json = serde_json::to_vec(self).expect("manifest serialises");
        if json.len() > COMPRESS_ABOVE {
            (zstd::bulk::compress(&json, 9).expect("zstd level 9"), true)
        } else {
            (json, false)
        }
    }

    /// Parses and validates stored manifest bytes. `what` names the object in errors.
    pub fn decode(stored: &[u8], what: &str) -> Result<Manifest, FormatError> {
        let invalid = |why: String| FormatError::Invalid(format!("manifest {what}: {why}"));
        let json = if stored.starts_with(&ZSTD_MAGIC) {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(stored)
                .and_then(|d| d.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut out))
                .map_err(|e| invalid(format!("zstd: {e}")))?;
            if out.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(invalid("larger than 2 GiB when decompressed".into()));
            }
            out
        } else {
            stored.to_vec()
        };
        let m: Manifest =
            serde_json::from_slice(&json).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        m.validate().map_err(invalid)?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format {:?} is not {MANIFEST_FORMAT:?}; upgrade qsync to read it",
                self.format
            ));
        }
        self.chunker.validate().map_err(|e| e.to_string())?;
        let files: HashSet<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        if files.len() != self.files.len() {
            return Err("a file path is listed twice".into());
        }
        let mut dirs = HashSet::new();
        for d in &self.directories {
            check_path(&d.path, &files)?;
            if files.contains(d.path.as_str()) || !dirs.insert(d.path.as_str()) {
                return Err(format!("{:?} is listed twice", d.path));
            }
        }
        for f in &self.files {
            check_path(&f.path, &files)?;
            if let Some(c) = f
                .chunks
                .iter()
                .find(|c| c.size == 0 || c.size > u64::from(self.chunker.max_size))
            {
                return Err(format!(
                    "{:?}: chunk {} has size {}, outside 1..={}",
                    f.path, c.blake3, c.size, self.chunker.max_size
                ));
            }
            // Bounded chunks first: a manifest of at most 2 GiB cannot then
            // add up to more than u64 holds.
            let sum: u64 = f.chunks.iter().map(|c| c.size).sum();
            if sum != f.size {
                return Err(format!(
                    "{:?}: chunks add up to {sum} bytes but the file is {} bytes",
                    f.path, f.size
                ));
            }
        }
        Ok(())
    }
}

/// A path is safe to join onto a destination: relative, no `.`/`..`/empty
/// segments, no NUL, not reserved, and no ancestor of it is a file.
fn check_path(path: &str, files: &HashSet<&str>) -> Result<(), String> {
    let unsafe_path = path.is_empty()
        || path.len() > 4096
        || path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || RESERVED_NAMES.contains(&path);
    if unsafe_path {
        return Err(format!(
            "path {path:?} would escape or clobber the destination; refusing the whole snapshot"
        ));
    }
    let mut ancestor = path;
    while let Some((parent, _)) = ancestor.rsplit_once('/') {
        if files.contains(parent) {
            return Err(format!("{path:?} lies under {parent:?}, which is a file"));
        }
        ancestor = parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let data = b"hello";
        Manifest {
            format: MANIFEST_FORMAT.into(),
            chain: ChainMeta {
                name: ChainName::new("eth").unwrap(),
                height: Some(42),
                block_hash: None,
            },
            version: 1,
            created_at: Timestamp(1),
            expires_at: Timestamp(2),
            chunker: ChunkerParams::default(),
            directories: vec![DirEntry {
                path: "db".into(),
                mode: 0o755,
            }],
            files: vec![FileEntry {
                path: "db/a.sst".into(),
                size: 5,
                mode: 0o644,
                blake3: Digest::of(data),
                chunks: vec![ChunkRef {
                    blake3: Digest::of(data),
                    size: 5,
                }],
            }],
        }
    }

    #[test]
    fn round_trip_small_and_large() {
        let m = sample();
        let (bytes, z) = m.encode();
        assert!(!z);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        let mut big = sample();
        for i in 0..2000 {
            let mut f = big.files[0].clone();
            f.path = format!("db/{i:06}.sst");
            big.files.push(f);
        }
        let (bytes, z) = big.encode();
        assert!(z);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), big);
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a//b",
            ".qsync-restore.json",
            "",
        ] {
            let mut m = sample();
            m.files[0].path = bad.into();
            let (bytes, _) = m.encode();
            let err = Manifest::decode(&bytes, "t").unwrap_err().to_string();
            assert!(err.contains("escape"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refuses_inconsistent_sizes_and_unknown_fields() {
        let mut m = sample();
        m.files[0].size = 6;
        assert!(Manifest::decode(&m.encode().0, "t").is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode().0).unwrap();
        v["surprise"] = 1.into();
        assert!(Manifest::decode(&serde_json::to_vec(&v).unwrap(), "t").is_err());
    }

    #[test]
    fn refuses_file_under_file() {
        let mut m = sample();
        let mut f = m.files[0].clone();
        f.path = "db/a.sst/inner".into();
        m.files.push(f);
        assert!(Manifest::decode(&m.encode().0, "t").is_err());
    }

    /// Found writing fuzz/fuzz_targets/manifest.rs: chunk sizes whose sum
    /// overflows u64 panicked the decoder before the per-chunk bound was
    /// checked (in builds with overflow checks, as tests and fuzzing have).
    #[test]
    fn refuses_chunk_sizes_that_overflow() {
        let mut m = sample();
        m.files[0].size = 4;
        m.files[0].chunks[0].size = u64::MAX;
        let mut c = m.files[0].chunks[0].clone();
        c.size = 5;
        m.files[0].chunks.push(c);
        let err = Manifest::decode(&m.encode().0, "t").unwrap_err().to_string();
        assert!(err.contains("outside 1..="), "{err}");
    }
}
