//! What a snapshot run is asked to do ([`SnapshotOptions`]) and what it
//! reports per store ([`SnapshotSummary`]): the types the publish pipeline
//! (`publish.rs`) and the commit of each store (`commit.rs`) share, so
//! neither imports the other's.

use std::time::Duration;

use qsync_core::chunk::ChunkerParams;
use qsync_core::ChainName;
use serde::Serialize;

use crate::config::Retention;

/// What to publish and how.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// Chain name.
    pub chain: ChainName,
    /// Block height, when known.
    pub height: Option<u64>,
    /// Head block hash, when known.
    pub block_hash: Option<String>,
    /// How long the pointer stays valid without a re-sign (freshness).
    pub expires_in: Duration,
    /// How long the snapshot itself stays usable (the manifest's expiry; at
    /// least `expires_in`). A pointer re-sign cannot extend it, because the
    /// manifest's bytes are fixed.
    pub lifetime: Duration,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// Chunks in flight (checked, compressed or uploading) at once.
    pub concurrency: usize,
    /// Plaintext bytes of chunks in flight at once; bounds memory.
    pub in_flight_bytes: u64,
    /// Other stores holding this snapshot's chunks, recorded in the pointer.
    pub mirror_hints: Vec<String>,
    /// Which earlier snapshots the pointer keeps; `None` keeps the last
    /// [`qsync_core::pointer::HISTORY_LEN`].
    pub retention: Option<Retention>,
}

impl SnapshotOptions {
    /// Defaults for `chain`: pointer valid 14 days, snapshot 30, default chunker, zstd 3, at most 8
    /// chunks and 32 MiB in flight.
    pub fn new(chain: ChainName) -> Self {
        SnapshotOptions {
            chain,
            height: None,
            block_hash: None,
            expires_in: Duration::from_secs(14 * 24 * 3600),
            lifetime: Duration::from_secs(30 * 24 * 3600),
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            concurrency: 8,
            in_flight_bytes: 32 << 20,
            mirror_hints: Vec::new(),
            retention: None,
        }
    }
}

/// The `--json` summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotSummary {
    /// Chain name.
    pub chain: String,
    /// New snapshot version.
    pub version: u64,
    /// Pointer sequence written.
    pub pointer_sequence: u64,
    /// Pointer object key.
    pub pointer_key: String,
    /// Manifest object key.
    pub manifest_key: String,
    /// BLAKE3 of the stored manifest.
    pub manifest_blake3: String,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of all files.
    pub bytes_total: u64,
    /// Bytes written to the store (chunks, manifest, pointer, signatures).
    pub bytes_uploaded: u64,
    /// Plaintext bytes of chunks the store did not have.
    pub bytes_new: u64,
    /// Chunk references in the manifest.
    pub chunks_total: u64,
    /// Chunk objects uploaded.
    pub chunks_uploaded: u64,
    /// Keys rewritten in place (the pointer, and the catalog when the chain
    /// is new): what a CDN in front of the store must invalidate.
    pub rewritten: Vec<String>,
    /// Root CID of the store directory after this publish, pinned (IPFS stores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipfs_root_cid: Option<String>,
    /// CID of the plain tree (the snapshot's files as a UnixFS directory)
    /// built in this store (IPFS stores); every pointer of the run names it
    /// as a mirror hint `ipfs-tree://<CID>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipfs_tree_cid: Option<String>,
    /// Snapshot creation time.
    pub created_at: String,
    /// Expiry of the pointer.
    pub expires_at: String,
    /// Expiry of the snapshot (manifest).
    pub snapshot_expires_at: String,
}
