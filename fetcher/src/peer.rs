//! A restored node as a store for its peers (`qsync serve --data`).
//!
//! A restore keeps the exact signed bytes of the snapshot it completed (the
//! pointer, the manifest and every signature a trusted key made of them)
//! in the state directory, as a store of that one snapshot, one per
//! destination: `<state>/peer/<chain>/<BLAKE3 of the destination's
//! canonical path>/` ([`stage_signed`], then [`Staged::commit`]). The destination itself stays
//! exactly the snapshot's files. [`DataDir`] serves those signed objects
//! from memory and each chunk out of the restored files: read at the
//! offsets the manifest gives, hashed, and handed out only when its BLAKE3
//! still matches, so a running node that has compacted or rewritten a file
//! since answers "not found" for that chunk and its peer takes it from an
//! origin. Files are opened through [`Root`] (no symbolic link followed);
//! what a hard link or a mount inside the directory holds is served only
//! if it hashes to the chunk asked for, which is then exactly the bytes a
//! peer would get from any mirror. A directory with nothing kept (restored
//! by an older qsync, or mid-restore) answers "not found" to everything
//! until a restore keeps its snapshot; [`DataDir::refresh`] picks it up.

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::chunk::ZSTD_MAGIC;
use qsync_core::manifest::Manifest;
use qsync_core::sign::TrustedKeys;
use qsync_core::{ChainName, Digest, ObjectKey};
use qsync_store::local::LocalStore;
use qsync_store::signed::{verify_body, MAX_SIGNATURE_BYTES};
use qsync_store::{ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError, StoreId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::dest::completed;
use crate::root::Root;
use crate::{Mirrors, RestoreError};

/// Chunk bytes read or held for peers at once, MiB (a chunk's memory is
/// held until its response is sent): bounds the memory of a node serving
/// many peers.
const SERVING_MIB: u32 = 128;
/// Chunks read from disk at once: fewer than the blocking threads, so
/// reads for peers never starve the rest of the server.
const READERS: usize = 8;

/// The one-snapshot store keeping the signed objects of the last restore
/// of `chain` into the destination whose canonical path is `dest`.
pub fn kept_store(state_dir: &Path, chain: &ChainName, dest: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let id = Digest::of(dest.as_os_str().as_bytes()).to_hex();
    state_dir.join("peer").join(chain.as_str()).join(&id[..32])
}

/// The signed objects of one snapshot, as a restore received them.
pub struct Signed<'a> {
    /// The chain.
    pub chain: &'a ChainName,
    /// The pointer's stored bytes, when it names this snapshot as current.
    pub pointer: Option<&'a Bytes>,
    /// The manifest's key.
    pub manifest_key: &'a ObjectKey,
    /// The manifest's stored bytes.
    pub manifest: &'a Bytes,
}

/// Signed objects written beside the kept store of a destination, not yet
/// in its place ([`Staged::commit`]). A restore stages them as soon as it
/// holds the destination, so it need not hold the manifest's stored bytes
/// (47 MB for a million files) until it completes.
pub struct Staged {
    tmp: PathBuf,
    dir: PathBuf,
}

/// Writes `s` and its signatures to `<kept store>.tmp` (what a failed run
/// left there is removed first); [`Staged::commit`] puts it in place.
pub async fn stage_signed(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    state_dir: &Path,
    dest: &Path,
    s: Signed<'_>,
) -> Result<Staged, RestoreError> {
    let dir = kept_store(state_dir, s.chain, dest);
    let tmp = dir.with_extension("tmp");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let store = LocalStore::new(&tmp);
    let pointer_key = ObjectKey::pointer(s.chain);
    let objects = s
        .pointer
        .map(|p| (&pointer_key, p))
        .into_iter()
        .chain([(s.manifest_key, s.manifest)]);
    for (key, body) in objects {
        // Signatures first, as a publisher writes them.
        let sigs = mirrors.signatures(key, body, keys).await?;
        for (k, b) in sigs.into_iter().chain([(key.clone(), body.clone())]) {
            store.put(&k, b, PutOptions::for_key(&k)).await?;
        }
    }
    Ok(Staged { tmp, dir })
}

impl Staged {
    /// Replaces the kept store with the staged one; returns its path.
    pub async fn commit(self) -> Result<PathBuf, RestoreError> {
        let io = |e| RestoreError::io(&self.dir)(e);
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        tokio::fs::rename(&self.tmp, &self.dir).await.map_err(io)?;
        std::fs::File::open(self.dir.parent().expect("has a parent"))
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(self.dir)
    }
}

/// Where a stretch of a chunk lies: `len` bytes at `offset` of file `file`.
#[derive(Clone, Copy, Debug)]
struct Part {
    file: u32,
    offset: u64,
    len: u64,
}

/// A restored destination, serving the snapshot it holds.
#[derive(Clone)]
pub struct DataDir(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    state_dir: PathBuf,
    chain: ChainName,
    keys: TrustedKeys,
    /// The snapshot being served, `None` while there is nothing to serve.
    loaded: RwLock<Option<Arc<Loaded>>>,
    serving: Arc<Semaphore>,
    readers: Arc<Semaphore>,
}

/// What one complete restore of the directory offers.
struct Loaded {
    root: Root,
    /// Digest of the manifest the completion marker names.
    marker: Digest,
    manifest: Manifest,
    /// The kept signed objects: pointer, manifest and their signatures.
    objects: HashMap<ObjectKey, Bytes>,
    /// Each chunk as stretches of files, in order; only chunks some files
    /// cover whole are listed.
    chunks: HashMap<Digest, (u64, Vec<Part>)>,
}

/// What [`DataDir::refresh`] found being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// The snapshot's version.
    pub version: u64,
    /// Chunks the directory can serve.
    pub chunks: usize,
}

impl DataDir {
    /// Serves `dir`, a restore of `chain`, with the signed objects its
    /// restore kept in `state_dir`, checked under `keys`. Nothing is
    /// served until [`DataDir::refresh`] finds a complete restore.
    pub fn new(dir: &Path, state_dir: &Path, chain: &ChainName, keys: TrustedKeys) -> DataDir {
        DataDir(Arc::new(Inner {
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            chain: chain.clone(),
            keys,
            loaded: RwLock::new(None),
            serving: Arc::new(Semaphore::new(SERVING_MIB as usize)),
            readers: Arc::new(Semaphore::new(READERS)),
        }))
    }

    /// Looks at the directory again: a new complete restore is loaded, and
    /// a directory that holds none (a restore under way, the marker gone)
    /// stops being served. Returns what is served, or why nothing is.
    pub async fn refresh(&self) -> Result<Serving, RestoreError> {
        let me = self.clone();
        let current = self.loaded().map(|l| l.marker);
        let found = crate::batch::blocking(move || me.look(current)).await;
        let mut slot = self.0.loaded.write().expect("not poisoned");
        match found {
            Ok(Some(new)) => *slot = Some(Arc::new(new)),
            Ok(None) => {}
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        }
        let l = slot.as_ref().expect("loaded or returned");
        Ok(Serving {
            version: l.manifest.version,
            chunks: l.chunks.len(),
        })
    }

    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.0.loaded.read().expect("not poisoned").clone()
    }

    /// The directory's complete restore, unless it is the one with
    /// manifest `current` (already loaded: `None`). Blocking.
    fn look(&self, current: Option<Digest>) -> Result<Option<Loaded>, RestoreError> {
        let i = &self.0;
        let refuse = |reason: String| RestoreError::Dest {
            path: i.dir.clone(),
            reason,
        };
        let root = Root::open(&i.dir)?.ok_or_else(|| refuse("does not exist".into()))?;
        let marker = completed(&root).map_err(|why| {
            refuse(format!(
                "holds no complete qsync restore ({why}); answering 404 until one completes"
            ))
        })?;
        if marker.chain != i.chain.as_str() {
            return Err(refuse(format!(
                "holds a restore of chain {}, not {}; pass --chain {}",
                marker.chain, i.chain, marker.chain
            )));
        }
        let digest: Digest = marker.manifest_blake3.parse()?;
        if current == Some(digest) {
            return Ok(None);
        }
        let kept = kept_store(&i.state_dir, &i.chain, root.path());
        let read = |key: &ObjectKey| -> Option<Bytes> {
            std::fs::read(kept.join(key.as_str())).ok().map(Bytes::from)
        };
        let key = ObjectKey::new(&marker.manifest_key)?;
        let Some(bytes) = read(&key).filter(|b| Digest::of(b) == digest) else {
            return Err(refuse(format!(
                "its snapshot {} was restored, but its signed objects are not kept in {}: it was restored by an older qsync, or with another --state-dir. Its next restore (QSYNC_MAX_AGE reached, or `qsync restore` with the node stopped) keeps them; until then peers get 404",
                marker.version,
                kept.display()
            )));
        };
        let local = LocalStore::new(&kept);
        let handle = tokio::runtime::Handle::current();
        let verify = |key: &ObjectKey, body: &Bytes| {
            handle
                .block_on(verify_body(&local, key, body, &i.keys))
                .map_err(RestoreError::from)
        };
        verify(&key, &bytes)?;
        let what = format!("{key} in {}", kept.display());
        let manifest = Manifest::decode(&bytes, &what)?;
        let mut objects = HashMap::new();
        let pointer_key = ObjectKey::pointer(&i.chain);
        let mut signed = vec![(key, bytes)];
        if let Some(p) = read(&pointer_key) {
            verify(&pointer_key, &p)?;
            signed.push((pointer_key, p));
        }
        for (key, body) in signed {
            // Each signature bounded and checked before it is served: the
            // kept store is only ever what a restore verified, but a file
            // changed there since must not reach a peer.
            for sig_key in i.keys.signature_keys(&key, &body) {
                let sig = handle
                    .block_on(local.get_limited(&sig_key, MAX_SIGNATURE_BYTES))
                    .ok();
                if let Some(sig) = sig.filter(|s| i.keys.verify(&key, &body, s).is_ok()) {
                    objects.insert(sig_key, sig);
                }
            }
            objects.insert(key, body);
        }
        Ok(Some(Loaded {
            chunks: index(&manifest),
            root,
            marker: digest,
            manifest,
            objects,
        }))
    }

    /// Chunk `digest`'s plaintext read from the files of `l`, if the files
    /// still hold it.
    fn read(l: &Loaded, digest: &Digest) -> Option<Vec<u8>> {
        let (size, parts) = l.chunks.get(digest)?;
        let mut plain = vec![0u8; *size as usize];
        let mut at = 0usize;
        for p in parts {
            let path = &l.manifest.files[p.file as usize].path;
            let end = at + p.len as usize;
            let read = l
                .root
                .open_read(path)
                .and_then(|f| f.read_exact_at(&mut plain[at..end], p.offset));
            if let Err(e) = read {
                tracing::debug!("{path}: {e}; chunk {digest} not served");
                return None;
            }
            at = end;
        }
        if Digest::of(&plain) != *digest {
            tracing::info!(
                "chunk {digest} no longer matches the files it came from (the node rewrote them); answering not found"
            );
            return None;
        }
        Some(plain)
    }
}

/// A chunk's bytes and the share of the serving budget they take, released
/// when the last reference to the bytes (the response being sent) is gone.
struct Held {
    bytes: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
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
        format!("data directory {}", self.0.dir.display())
    }

    fn id(&self) -> StoreId {
        StoreId::unlisted(&self.location())
    }

    /// A kept signed object, or a chunk as a store holds it: the
    /// plaintext, or one zstd frame of it when it starts with the zstd
    /// magic (docs/format.md §3).
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let not_found = || StoreError::NotFound {
            location: self.location(),
            key: key.to_string(),
        };
        let l = self.loaded().ok_or_else(not_found)?;
        if let Some(b) = l.objects.get(key) {
            return Ok(b.clone());
        }
        let digest = chunk_digest(key).ok_or_else(not_found)?;
        let (size, _) = l.chunks.get(&digest).ok_or_else(not_found)?;
        let mib = (size.div_ceil(1 << 20) as u32).clamp(1, SERVING_MIB);
        let budget = self
            .0
            .serving
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("never closed");
        let reader = self
            .0
            .readers
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        // The permits go with the read: a request dropped on a timeout
        // leaves its read holding them until it ends.
        let held = tokio::task::spawn_blocking(move || {
            let _reader = reader;
            let plain = DataDir::read(&l, &digest)?;
            let bytes = if plain.starts_with(&ZSTD_MAGIC) {
                zstd::bulk::compress(&plain, 1).ok()?
            } else {
                plain
            };
            Some(Held {
                bytes,
                _budget: budget,
            })
        })
        .await
        .expect("reading does not panic")
        .ok_or_else(not_found)?;
        Ok(Bytes::from_owner(held))
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let body = self.get(key).await?;
        let end = (range.end as usize).min(body.len());
        Ok(body.slice((range.start as usize).min(end)..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        let Some(l) = self.loaded() else {
            return Ok(None);
        };
        if let Some(b) = l.objects.get(key) {
            return Ok(Some(ObjectMeta { size: b.len() as u64 }));
        }
        Ok(chunk_digest(key)
            .and_then(|d| l.chunks.get(&d))
            .map(|(size, _)| ObjectMeta { size: *size }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_served_chunk_holds_its_budget_until_its_bytes_are_dropped() {
        let budget = Arc::new(Semaphore::new(4));
        let held = Held {
            bytes: vec![7u8; 1000],
            _budget: budget.clone().acquire_many_owned(3).await.unwrap(),
        };
        let body = Bytes::from_owner(held);
        // What the response sends: a view of the same bytes.
        let sent = body.slice(10..20);
        drop(body);
        assert_eq!(budget.available_permits(), 1, "released while still being sent");
        drop(sent);
        assert_eq!(budget.available_permits(), 4);
    }

    #[test]
    fn chunk_keys_name_their_digest_and_nothing_else_does() {
        let d = Digest::of(b"x");
        assert_eq!(chunk_digest(&ObjectKey::chunk(&d)), Some(d));
        let wrong_shard = ObjectKey::new(format!("chunks/zz/{}", d.to_hex())).unwrap();
        assert_eq!(chunk_digest(&wrong_shard), None);
        assert_eq!(chunk_digest(&ObjectKey::new("catalog.json").unwrap()), None);
    }
}
