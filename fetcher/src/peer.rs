//! A restored node as a store for its peers (`qsync serve --data`).
//!
//! A restore keeps the exact signed bytes of the snapshot it completed (the
//! pointer, the manifest and their signatures) in the state directory, as a
//! one-snapshot store at `<state>/peer/<chain>/<manifest digest>/`
//! ([`keep_signed`]); the destination itself stays exactly the snapshot's
//! files. [`DataDir`] serves that snapshot's chunks out of the restored files:
//! each chunk is read at the offsets the manifest gives, hashed, and
//! handed out only when its BLAKE3 still matches, so a running node that
//! has compacted or rewritten a file since answers "not found" for that
//! chunk and its peer takes it from an origin. Files are opened through
//! [`Root`] (no link followed), so whatever the node plants in its data
//! directory, nothing outside it is ever read.

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::chunk::ZSTD_MAGIC;
use qsync_core::manifest::Manifest;
use qsync_core::sign::TrustedKeys;
use qsync_core::{ChainName, Digest, FormatError, ObjectKey};
use qsync_store::local::LocalStore;
use qsync_store::signed::verify_body;
use qsync_store::{ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError, StoreId};
use tokio::sync::Semaphore;

use crate::dest::{read_marker, MARKER, PARTIAL};
use crate::root::Root;
use crate::{Mirrors, RestoreError};

/// Chunk bytes read for peers at once, MiB: bounds the memory of a node
/// serving many peers.
const READING_MIB: u32 = 128;

/// The directory keeping the signed objects of `chain`'s restored snapshots.
fn chain_dir(state_dir: &Path, chain: &ChainName) -> PathBuf {
    state_dir.join("peer").join(chain.as_str())
}

/// The one-snapshot store holding the signed objects of the snapshot whose
/// manifest has digest `manifest`.
pub fn kept_store(state_dir: &Path, chain: &ChainName, manifest: &Digest) -> PathBuf {
    chain_dir(state_dir, chain).join(manifest.to_hex())
}

/// The signed objects of one snapshot, as a restore received them.
pub struct Signed<'a> {
    /// The chain.
    pub chain: &'a ChainName,
    /// The pointer's stored bytes.
    pub pointer: &'a Bytes,
    /// The manifest's key.
    pub manifest_key: &'a ObjectKey,
    /// Its digest (the kept store is named by it).
    pub manifest_blake3: &'a Digest,
    /// The manifest's stored bytes.
    pub manifest: &'a Bytes,
}

/// Keeps `s` (with signatures fetched from `mirrors`) as the one-snapshot
/// store [`kept_store`], then removes what was kept for the chain's older
/// restores. Written beside it and renamed into place, so a reader sees
/// the whole store or none.
pub async fn keep_signed(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    state_dir: &Path,
    s: Signed<'_>,
) -> Result<PathBuf, RestoreError> {
    let dir = kept_store(state_dir, s.chain, s.manifest_blake3);
    let io = |e| RestoreError::io(&dir)(e);
    if tokio::fs::metadata(&dir).await.is_ok() {
        return Ok(dir);
    }
    let pointer_key = ObjectKey::pointer(s.chain);
    let objects = [(&pointer_key, s.pointer), (s.manifest_key, s.manifest)];
    let tmp = dir.with_extension("tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let store = LocalStore::new(&tmp);
    for (key, body) in objects {
        // Signatures first, as a publisher writes them.
        let sigs = mirrors.signatures(key, body, keys).await?;
        for (k, b) in sigs.into_iter().chain([(key.clone(), body.clone())]) {
            store.put(&k, b, PutOptions::for_key(&k)).await?;
        }
    }
    tokio::fs::rename(&tmp, &dir).await.map_err(&io)?;
    let parent = chain_dir(state_dir, s.chain);
    let mut entries = tokio::fs::read_dir(&parent).await.map_err(&io)?;
    while let Some(e) = entries.next_entry().await.map_err(&io)? {
        if e.path() != dir {
            let _ = tokio::fs::remove_dir_all(e.path()).await;
        }
    }
    std::fs::File::open(&parent)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    Ok(dir)
}

/// Where a stretch of a chunk lies: `len` bytes at `offset` of file `file`.
#[derive(Clone, Copy, Debug)]
struct Part {
    file: u32,
    offset: u64,
    len: u64,
}

/// A restored destination, serving the chunks of the snapshot it holds.
#[derive(Clone)]
pub struct DataDir(Arc<Inner>);

struct Inner {
    root: Root,
    manifest: Manifest,
    /// Each chunk as stretches of files, in order; only chunks some files
    /// cover whole are listed.
    chunks: HashMap<Digest, (u64, Vec<Part>)>,
    reading: Semaphore,
}

/// What [`DataDir::open`] found.
pub struct Opened {
    /// The chunks of the destination.
    pub data: DataDir,
    /// The one-snapshot store of its signed objects.
    pub signed: PathBuf,
    /// The snapshot's version.
    pub version: u64,
}

impl DataDir {
    /// Opens `dir`, a complete restore of `chain`, with the signed objects
    /// its restore kept in `state_dir`, checked under `vk`.
    pub async fn open(
        dir: &Path,
        state_dir: &Path,
        chain: &ChainName,
        keys: &TrustedKeys,
    ) -> Result<Opened, RestoreError> {
        let refuse = |reason: String| RestoreError::Dest {
            path: dir.into(),
            reason,
        };
        let root = Root::open(dir)?.ok_or_else(|| refuse("does not exist".into()))?;
        let marker = read_marker(&root, MARKER).filter(|_| read_marker(&root, PARTIAL).is_none());
        let Some(marker) = marker else {
            return Err(refuse(
                "holds no complete qsync restore (no completion marker, or a restore is under way); restore it first"
                    .into(),
            ));
        };
        if marker.chain != chain.as_str() {
            return Err(refuse(format!(
                "holds a restore of chain {}, not {chain}; pass --chain {}",
                marker.chain, marker.chain
            )));
        }
        let digest: Digest = marker.manifest_blake3.parse()?;
        let signed = kept_store(state_dir, chain, &digest);
        let store = LocalStore::new(&signed);
        let key = ObjectKey::new(&marker.manifest_key)?;
        let bytes = store.get(&key).await.map_err(|e| {
            refuse(format!(
                "its snapshot {} was restored, but its signed manifest is not kept in {} ({e}); run `qsync restore` into it once more with --state-dir {} (a complete destination costs a stat per file) so that it is",
                marker.version,
                signed.display(),
                state_dir.display()
            ))
        })?;
        verify_body(&store, &key, &bytes, keys)
            .await
            .map_err(RestoreError::from)?;
        if Digest::of(&bytes) != digest {
            return Err(FormatError::DigestMismatch {
                what: format!("{key} in {}", signed.display()),
                expected: digest,
                actual: Digest::of(&bytes),
            }
            .into());
        }
        let what = format!("{key} in {}", signed.display());
        let manifest = tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &what))
            .await
            .expect("decode does not panic")?;
        let chunks = index(&manifest);
        Ok(Opened {
            version: manifest.version,
            data: DataDir(Arc::new(Inner {
                root,
                manifest,
                chunks,
                reading: Semaphore::new(READING_MIB as usize),
            })),
            signed,
        })
    }

    /// Chunks this destination can serve.
    pub fn chunk_count(&self) -> usize {
        self.0.chunks.len()
    }

    /// Chunk `digest`'s plaintext read from the files, if it is listed and
    /// the files still hold it.
    fn read(&self, digest: &Digest) -> std::io::Result<Option<Vec<u8>>> {
        let Some((size, parts)) = self.0.chunks.get(digest) else {
            return Ok(None);
        };
        let mut plain = vec![0u8; *size as usize];
        let mut at = 0usize;
        for p in parts {
            let path = &self.0.manifest.files[p.file as usize].path;
            let f = match self.0.root.open_read(path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("{path}: {e}; chunk {digest} not served");
                    return Ok(None);
                }
            };
            let end = at + p.len as usize;
            if let Err(e) = f.read_exact_at(&mut plain[at..end], p.offset) {
                tracing::debug!("{path}: {e}; chunk {digest} not served");
                return Ok(None);
            }
            at = end;
        }
        if Digest::of(&plain) != *digest {
            tracing::info!(
                "chunk {digest} no longer matches the files it came from (the node rewrote them); answering not found"
            );
            return Ok(None);
        }
        Ok(Some(plain))
    }
}

/// Each chunk of `m` as stretches of its files: a chunk a file holds whole
/// is that stretch of the first such file; a pack chunk is the run of
/// packed files it spans.
fn index(m: &Manifest) -> HashMap<Digest, (u64, Vec<Part>)> {
    let mut chunks: HashMap<Digest, (u64, Vec<Part>)> = HashMap::new();
    // Bytes of each chunk covered so far, in order.
    let mut covered: HashMap<Digest, u64> = HashMap::new();
    for (i, _) in m.files.iter().enumerate() {
        for piece in m.pieces(i) {
            let done = covered.entry(piece.chunk.blake3).or_insert(0);
            if piece.at != *done {
                continue;
            }
            *done += piece.len;
            chunks
                .entry(piece.chunk.blake3)
                .or_insert_with(|| (piece.chunk.size, Vec::new()))
                .1
                .push(Part {
                    file: i as u32,
                    offset: piece.offset,
                    len: piece.len,
                });
        }
    }
    chunks.retain(|d, (size, _)| covered.get(d) == Some(size));
    chunks
}

/// The digest a chunk key names.
fn chunk_digest(key: &ObjectKey) -> Option<Digest> {
    let rest = key.as_str().strip_prefix("chunks/")?;
    let (shard, name) = rest.split_once('/')?;
    let d: Digest = name.parse().ok()?;
    (shard == &name[..2]).then_some(d)
}

#[async_trait]
impl ObjectSource for DataDir {
    fn location(&self) -> String {
        format!("data directory {}", self.0.root.path().display())
    }

    fn id(&self) -> StoreId {
        StoreId::unlisted(&self.location())
    }

    /// A chunk as a store holds it: the plaintext, or one zstd frame of it
    /// when it starts with the zstd magic (docs/format.md §3).
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let not_found = || StoreError::NotFound {
            location: self.location(),
            key: key.to_string(),
        };
        let digest = chunk_digest(key).ok_or_else(not_found)?;
        let Some((size, _)) = self.0.chunks.get(&digest) else {
            return Err(not_found());
        };
        let mib = (size.div_ceil(1 << 20) as u32).clamp(1, READING_MIB);
        let _reading = self.0.reading.acquire_many(mib).await.expect("never closed");
        let me = self.clone();
        let plain = tokio::task::spawn_blocking(move || me.read(&digest))
            .await
            .expect("reading does not panic")
            .map_err(|source| StoreError::Io {
                location: self.location(),
                key: key.to_string(),
                source,
            })?
            .ok_or_else(not_found)?;
        if plain.starts_with(&ZSTD_MAGIC) {
            let framed = zstd::bulk::compress(&plain, 1).map_err(|source| StoreError::Io {
                location: self.location(),
                key: key.to_string(),
                source,
            })?;
            return Ok(framed.into());
        }
        Ok(plain.into())
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let body = self.get(key).await?;
        let end = (range.end as usize).min(body.len());
        Ok(body.slice((range.start as usize).min(end)..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(chunk_digest(key)
            .and_then(|d| self.0.chunks.get(&d))
            .map(|(size, _)| ObjectMeta { size: *size }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_name_their_digest_and_nothing_else_does() {
        let d = Digest::of(b"x");
        assert_eq!(chunk_digest(&ObjectKey::chunk(&d)), Some(d));
        let wrong_shard = ObjectKey::new(format!("chunks/zz/{}", d.to_hex())).unwrap();
        assert_eq!(chunk_digest(&wrong_shard), None);
        assert_eq!(chunk_digest(&ObjectKey::new("catalog.json").unwrap()), None);
    }
}
