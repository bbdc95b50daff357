//! The per-chain "latest" pointer and the store catalog.
//!
//! The pointer is the only mutable object of a chain: it names the current
//! manifest by key and BLAKE3 and carries a short history for `qsync ls` and
//! deliberate rollbacks. It has its own `sequence` (bumped on every write,
//! including a re-sign that only extends the expiry) and `expires_at`, so a
//! stale or replayed pointer is detectable. The catalog lists the chains of a
//! store, for `qsync ls` over HTTP where directories cannot be listed.

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::time::Timestamp;
use crate::{ChainName, Digest, FormatError, ObjectKey};

/// `format` field of a v1 pointer.
pub const POINTER_FORMAT: &str = "qsync-pointer/1";
/// `format` field of a v1 catalog.
pub const CATALOG_FORMAT: &str = "qsync-catalog/1";
/// Largest pointer or catalog a reader accepts (real ones are a few KiB).
pub const MAX_BYTES: u64 = 1 << 20;
/// How many earlier snapshots a pointer remembers.
pub const HISTORY_LEN: usize = 32;
/// What a mirror hint starts with when it names the snapshot's plain tree
/// (a directory of its files, not a store): `ipfs-tree://<CID>`.
pub const PLAIN_TREE_HINT: &str = "ipfs-tree://";

/// The mirror hint naming the plain tree whose IPFS CID is `cid`.
pub fn plain_tree_hint(cid: &str) -> String {
    format!("{PLAIN_TREE_HINT}{cid}")
}

/// The CID of the plain tree `hint` names; `None` when the hint names a
/// store (which readers may open as a mirror).
pub fn plain_tree_cid(hint: &str) -> Option<&str> {
    hint.strip_prefix(PLAIN_TREE_HINT)
}

/// A snapshot as the pointer names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// Snapshot version (the manifest's).
    pub version: u64,
    /// Manifest object key.
    pub manifest_key: ObjectKey,
    /// BLAKE3 of the stored manifest bytes.
    pub manifest_blake3: Digest,
    /// Stored manifest length in bytes.
    pub manifest_size: u64,
    /// When the snapshot was taken.
    pub created_at: Timestamp,
    /// Block height, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Number of files.
    pub files: u64,
    /// Total file bytes.
    pub bytes: u64,
}

impl SnapshotRef {
    /// Describes `manifest`, stored at `key` as `stored`.
    pub fn new(manifest: &Manifest, key: ObjectKey, stored: &[u8]) -> Self {
        SnapshotRef {
            version: manifest.version,
            manifest_key: key,
            manifest_blake3: Digest::of(stored),
            manifest_size: stored.len() as u64,
            created_at: manifest.created_at,
            height: manifest.chain.height,
            files: manifest.files.len() as u64,
            bytes: manifest.total_bytes(),
        }
    }
}

/// `chains/<chain>/latest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Always [`POINTER_FORMAT`].
    pub format: String,
    /// The chain this pointer belongs to.
    pub chain: ChainName,
    /// Strictly increasing on every write of this pointer.
    pub sequence: u64,
    /// When this pointer was written.
    pub created_at: Timestamp,
    /// After this a fetcher refuses the pointer (unless told otherwise).
    pub expires_at: Timestamp,
    /// The current snapshot.
    pub current: SnapshotRef,
    /// Earlier snapshots, newest first, at most [`HISTORY_LEN`].
    #[serde(default)]
    pub history: Vec<SnapshotRef>,
    /// Other stores that hold this snapshot's chunks (for example
    /// `ipfs://<root CID>`), as the publisher was told. Hints for finding
    /// more mirrors, never trusted: whatever is read there is verified
    /// against the digests like any mirror's bytes. A hint starting with
    /// [`PLAIN_TREE_HINT`] names the snapshot's plain files instead, for
    /// people and tools without qsync; it is no store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

impl Pointer {
    /// Pretty JSON (pointers are small and read by people).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("pointer serialises");
        v.push(b'\n');
        v
    }

    /// Parses and validates stored pointer bytes.
    pub fn decode(stored: &[u8], what: &str) -> Result<Pointer, FormatError> {
        let p: Pointer = serde_json::from_slice(stored)
            .map_err(|e| FormatError::Invalid(format!("pointer {what}: not valid JSON: {e}")))?;
        if p.format != POINTER_FORMAT {
            return Err(FormatError::Invalid(format!(
                "pointer {what}: format {:?} is not {POINTER_FORMAT:?}; upgrade qsync to read it",
                p.format
            )));
        }
        Ok(p)
    }

    /// The pointer that replaces `previous` to name `current`.
    pub fn next(
        previous: Option<&Pointer>,
        chain: ChainName,
        current: SnapshotRef,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Pointer {
        let (sequence, mut history) = match previous {
            Some(p) => {
                let mut h = vec![p.current.clone()];
                h.extend(p.history.iter().cloned());
                (p.sequence + 1, h)
            }
            None => (1, Vec::new()),
        };
        history.retain(|s| s.version != current.version);
        history.truncate(HISTORY_LEN);
        Pointer {
            format: POINTER_FORMAT.into(),
            chain,
            sequence,
            created_at: now,
            expires_at,
            current,
            history,
            mirrors: Vec::new(),
        }
    }
}

/// `catalog.json`: the chains a store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Always [`CATALOG_FORMAT`].
    pub format: String,
    /// Chain names, sorted.
    pub chains: Vec<ChainName>,
}

impl Catalog {
    /// Pretty JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("catalog serialises");
        v.push(b'\n');
        v
    }

    /// Parses stored catalog bytes.
    pub fn decode(stored: &[u8]) -> Result<Catalog, FormatError> {
        let c: Catalog = serde_json::from_slice(stored)
            .map_err(|e| FormatError::Invalid(format!("catalog.json: not valid JSON: {e}")))?;
        if c.format != CATALOG_FORMAT {
            return Err(FormatError::Invalid(format!(
                "catalog.json: format {:?} is not {CATALOG_FORMAT:?}",
                c.format
            )));
        }
        Ok(c)
    }

    /// Adds `chain` if missing; true when the catalog changed.
    pub fn insert(&mut self, chain: &ChainName) -> bool {
        self.format = CATALOG_FORMAT.into();
        match self.chains.binary_search(chain) {
            Ok(_) => false,
            Err(i) => {
                self.chains.insert(i, chain.clone());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64) -> SnapshotRef {
        let chain = ChainName::new("eth").unwrap();
        let d = Digest::of(&version.to_le_bytes());
        SnapshotRef {
            version,
            manifest_key: ObjectKey::manifest(&chain, version, &d, false),
            manifest_blake3: d,
            manifest_size: 10,
            created_at: Timestamp(version),
            height: None,
            files: 1,
            bytes: 1,
        }
    }

    #[test]
    fn next_bumps_sequence_and_keeps_bounded_history() {
        let chain = ChainName::new("eth").unwrap();
        let mut p = Pointer::next(None, chain.clone(), snap(1), Timestamp(1), Timestamp(9));
        for v in 2..50 {
            p = Pointer::next(Some(&p), chain.clone(), snap(v), Timestamp(v), Timestamp(99));
        }
        assert_eq!(p.sequence, 49);
        assert_eq!(p.history.len(), HISTORY_LEN);
        assert_eq!(p.history[0].version, 48);
        assert_eq!(Pointer::decode(&p.encode(), "t").unwrap(), p);
    }

    #[test]
    fn plain_tree_hints_are_told_from_stores() {
        let hint = plain_tree_hint("bafyabc");
        assert_eq!(hint, "ipfs-tree://bafyabc");
        assert_eq!(plain_tree_cid(&hint), Some("bafyabc"));
        assert_eq!(plain_tree_cid("ipfs://bafyabc"), None);
    }
}
