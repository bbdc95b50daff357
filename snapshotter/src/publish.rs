//! One snapshot run: scan -> chunk/hash -> upload missing chunks -> manifest
//! -> sign -> pointer -> catalog.
//!
//! Files are read on blocking threads (two at a time) and cut into chunks;
//! each chunk is checked against the store and, only if missing, compressed
//! and uploaded, with at most `concurrency` chunks in flight so memory stays
//! bounded by about `concurrency x max chunk size`. The manifest is written
//! only after every chunk upload has returned, and the pointer only after the
//! manifest, so readers never see a snapshot whose objects are missing.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use qsync_cdn::signed::get_signed_for_update;
use qsync_cdn::{Expect, ObjectSink, PutOptions, StoreError};
use qsync_core::chunk::{self, ChunkerParams};
use qsync_core::manifest::{ChainMeta, ChunkRef, DirEntry, FileEntry, Manifest, MANIFEST_FORMAT};
use qsync_core::pointer::{self, Catalog, Pointer, SnapshotRef};
use qsync_core::progress::Progress;
use qsync_core::sign::SigningKey;
use qsync_core::time::Timestamp;
use qsync_core::{ChainName, Digest, ObjectKey};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::scan::{scan, SourceFile, Stat};
use crate::SnapshotError;

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
}

impl SnapshotOptions {
    /// Defaults for `chain`: pointer valid 14 days, snapshot 30, default chunker, zstd 3, at most 8
    /// chunks and 64 MiB in flight.
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
            in_flight_bytes: 64 << 20,
            mirror_hints: Vec::new(),
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
    /// Snapshot creation time.
    pub created_at: String,
    /// Expiry of the pointer.
    pub expires_at: String,
    /// Expiry of the snapshot (manifest).
    pub snapshot_expires_at: String,
}

#[derive(Default)]
struct Counters {
    bytes_uploaded: AtomicU64,
    bytes_new: AtomicU64,
    chunks_uploaded: AtomicU64,
}

/// Shared state of the chunk upload stage.
struct Uploader {
    sink: Arc<dyn ObjectSink>,
    seen: Mutex<HashSet<Digest>>,
    /// One permit per chunk in flight.
    slots: Arc<Semaphore>,
    /// One permit per MiB (rounded up) of chunk plaintext in flight.
    budget: Arc<Semaphore>,
    budget_mib: u32,
    level: i32,
    counters: Counters,
    progress: Arc<dyn Progress>,
    /// Chunk uploads not yet awaited.
    uploads: Mutex<tokio::task::JoinSet<Result<(), SnapshotError>>>,
}

impl Uploader {
    /// Makes sure chunk `d` is in the store. Skips chunks this run already
    /// handled and chunks the store holds.
    async fn ensure(&self, d: Digest, plain: Vec<u8>) -> Result<(), SnapshotError> {
        let len = plain.len() as u64;
        if !self.seen.lock().expect("not poisoned").insert(d) {
            self.progress.advance(len);
            return Ok(());
        }
        let key = ObjectKey::chunk(&d);
        if retrying(|| self.sink.head(&key)).await?.is_none() {
            let level = self.level;
            let (_, stored) = tokio::task::spawn_blocking(move || chunk::encode(plain, level))
                .await
                .expect("encoder does not panic");
            let stored = Bytes::from(stored);
            let stored_len = stored.len() as u64;
            retrying(|| self.sink.put(&key, stored.clone(), PutOptions::for_key(&key))).await?;
            self.counters
                .bytes_uploaded
                .fetch_add(stored_len, Ordering::Relaxed);
            self.counters.bytes_new.fetch_add(len, Ordering::Relaxed);
            self.counters.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
        }
        self.progress.advance(len);
        Ok(())
    }

    /// Writes `body` at `key` with its signature. The signature goes first, so
    /// a reader that sees the body also finds its signature. With `expect`,
    /// the body is written only if the object is still as expected.
    async fn put_signed(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        signer: &SigningKey,
        expect: Option<&Expect>,
    ) -> Result<(), StoreError> {
        let sig = signer.sign(key, &body);
        let n = (body.len() + sig.len()) as u64;
        let sig_key = key.signature_for(&body);
        let sig_opts = PutOptions::for_key(&sig_key);
        let sig = Bytes::from(sig);
        retrying(|| self.sink.put(&sig_key, sig.clone(), sig_opts)).await?;
        let (body, opts) = (Bytes::from(body), PutOptions::for_key(key));
        match expect {
            Some(expect) => match retrying(|| self.sink.put_if(key, body.clone(), opts, expect)).await {
                // Retried (here or in the backend) after a lost answer, the
                // write can meet its own first attempt: not a conflict.
                Err(StoreError::Conflict { .. })
                    if self
                        .sink
                        .get_limited(key, body.len() as u64)
                        .await
                        .is_ok_and(|now| now == body) => {}
                r => r?,
            },
            None => retrying(|| self.sink.put(key, body.clone(), opts)).await?,
        }
        self.counters.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs a store operation, trying again with growing pauses while it fails
/// with a transient error. Backends retry single requests themselves; this
/// rides out a longer outage (about a minute) instead of failing a publish
/// that may have run for hours over one chunk.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(500);
    for _ in 0..7 {
        match op().await {
            Err(e) if e.is_retryable() => {
                tracing::warn!("{e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            r => return r,
        }
    }
    op().await
}

/// Publishes `source` as the next snapshot of `opts.chain` in `sink`.
pub async fn publish(
    source: &Path,
    sink: Arc<dyn ObjectSink>,
    signer: &SigningKey,
    opts: &SnapshotOptions,
    progress: Arc<dyn Progress>,
) -> Result<SnapshotSummary, SnapshotError> {
    opts.chunker.validate()?;
    let vk = signer.verifying_key();
    let pointer_key = ObjectKey::pointer(&opts.chain);
    let (previous, expect) =
        get_signed_for_update(sink.as_ref(), &pointer_key, vk, pointer::MAX_BYTES).await?;
    let previous = previous
        .map(|b| Pointer::decode(&b, pointer_key.as_str()))
        .transpose()?;
    let version = previous.as_ref().map_or(1, |p| p.current.version + 1);

    let root = source.to_path_buf();
    let listing = tokio::task::spawn_blocking(move || scan(&root))
        .await
        .expect("scan does not panic")?;
    let total: u64 = listing.files.iter().map(|f| f.stat.size).sum();
    progress.start("snapshot", total);

    // At least one maximal chunk must fit, or the run could not make progress.
    let budget_mib = (opts.in_flight_bytes >> 20)
        .max(u64::from(opts.chunker.max_size >> 20))
        .max(1) as u32;
    let up = Arc::new(Uploader {
        sink: sink.clone(),
        seen: Mutex::new(HashSet::new()),
        slots: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        budget: Arc::new(Semaphore::new(budget_mib as usize)),
        budget_mib,
        level: opts.zstd_level,
        counters: Counters::default(),
        progress: progress.clone(),
        uploads: Mutex::new(tokio::task::JoinSet::new()),
    });
    let files: Vec<FileEntry> = futures::stream::iter(listing.files)
        .map(|f| publish_file(f, opts.chunker.clone(), up.clone()))
        .buffered(2)
        .try_collect()
        .await?;
    let mut uploads = std::mem::take(&mut *up.uploads.lock().expect("not poisoned"));
    while let Some(done) = uploads.join_next().await {
        done.expect("upload task does not panic")?;
    }
    progress.finish();

    let now = Timestamp::now();
    let expires_at = now.plus(opts.expires_in);
    let manifest_expires_at = now.plus(opts.lifetime.max(opts.expires_in));
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        chain: ChainMeta {
            name: opts.chain.clone(),
            height: opts.height,
            block_hash: opts.block_hash.clone(),
        },
        version,
        created_at: now,
        expires_at: manifest_expires_at,
        chunker: opts.chunker.clone(),
        directories: listing
            .dirs
            .into_iter()
            .map(|(path, mode)| DirEntry { path, mode })
            .collect(),
        files,
    };
    let (stored, compressed) = manifest.encode();
    let manifest_key = ObjectKey::manifest(&opts.chain, version, &Digest::of(&stored), compressed);
    let current = SnapshotRef::new(&manifest, manifest_key.clone(), &stored);
    up.put_signed(&manifest_key, stored, signer, None).await?;

    let mut pointer = Pointer::next(previous.as_ref(), opts.chain.clone(), current, now, expires_at);
    pointer.mirrors = opts.mirror_hints.clone();
    // Written only over the pointer this run started from: of two publishers
    // racing on one chain, the second finds the pointer moved and fails.
    match up
        .put_signed(&pointer_key, pointer.encode(), signer, Some(&expect))
        .await
    {
        Err(StoreError::Conflict { location, key }) => {
            return Err(SnapshotError::PointerRace { location, key })
        }
        r => r?,
    }
    let mut rewritten = vec![pointer_key.to_string()];
    if update_catalog(&up, signer, &opts.chain).await? {
        rewritten.push(ObjectKey::catalog().to_string());
    }
    let ipfs_root_cid = sink.snapshot_root().await?;

    let c = &up.counters;
    Ok(SnapshotSummary {
        chain: opts.chain.to_string(),
        version,
        pointer_sequence: pointer.sequence,
        pointer_key: pointer_key.to_string(),
        manifest_key: manifest_key.to_string(),
        manifest_blake3: pointer.current.manifest_blake3.to_hex(),
        files: manifest.files.len() as u64,
        bytes_total: total,
        bytes_uploaded: c.bytes_uploaded.load(Ordering::Relaxed),
        bytes_new: c.bytes_new.load(Ordering::Relaxed),
        chunks_total: manifest.chunk_refs() as u64,
        chunks_uploaded: c.chunks_uploaded.load(Ordering::Relaxed),
        rewritten,
        ipfs_root_cid,
        created_at: now.to_string(),
        expires_at: expires_at.to_string(),
        snapshot_expires_at: manifest_expires_at.to_string(),
    })
}

/// Adds `chain` to the catalog; true when it was not listed. Publishers of
/// other chains may update it at the same time, so the write is conditional
/// and retried on a conflict.
async fn update_catalog(
    up: &Uploader,
    signer: &SigningKey,
    chain: &ChainName,
) -> Result<bool, SnapshotError> {
    let key = ObjectKey::catalog();
    let mut attempts = 0;
    loop {
        let vk = signer.verifying_key();
        let (bytes, expect) = get_signed_for_update(up.sink.as_ref(), &key, vk, pointer::MAX_BYTES).await?;
        let mut catalog = match bytes {
            Some(b) => Catalog::decode(&b)?,
            None => Catalog::default(),
        };
        if !catalog.insert(chain) {
            return Ok(false);
        }
        match up.put_signed(&key, catalog.encode(), signer, Some(&expect)).await {
            Err(StoreError::Conflict { .. }) if attempts < 8 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
            }
            r => return Ok(r.map(|()| true)?),
        }
    }
}

/// Reads and chunks one file and starts the uploads of its chunks; returns
/// its manifest entry once the file is read. Uploads run on, bounded by the
/// slots and the byte budget, so many small files keep the store busy while
/// only two are read at a time; [`publish`] awaits them all.
async fn publish_file(
    file: SourceFile,
    params: ChunkerParams,
    up: Arc<Uploader>,
) -> Result<FileEntry, SnapshotError> {
    let (tx, mut rx) = mpsc::channel::<(Digest, Vec<u8>)>(1);
    let path = file.path.clone();
    let before = file.stat.clone();
    let reader = tokio::task::spawn_blocking(move || read_chunks(&path, &before, &params, tx));

    let mut chunks = Vec::new();
    while let Some((d, plain)) = rx.recv().await {
        chunks.push(ChunkRef {
            blake3: d,
            size: plain.len() as u64,
        });
        let mib = ((plain.len() as u64).div_ceil(1 << 20) as u32).clamp(1, up.budget_mib);
        let bytes = up
            .budget
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("semaphore open");
        let slot = up.slots.clone().acquire_owned().await.expect("semaphore open");
        let task = up.clone();
        let mut uploads = up.uploads.lock().expect("not poisoned");
        uploads.spawn(async move {
            let r = task.ensure(d, plain).await;
            drop((slot, bytes));
            r
        });
        // Report a failed upload (of any file) as soon as it is seen.
        while let Some(done) = uploads.try_join_next() {
            done.expect("upload task does not panic")?;
        }
    }
    let whole = reader.await.expect("reader does not panic")?;
    Ok(FileEntry {
        path: file.rel,
        size: file.stat.size,
        mode: file.stat.mode,
        blake3: whole,
        chunks,
    })
}

/// Blocking: cuts `path` into chunks, sends them with their digests, and
/// returns the whole-file digest after checking the file did not change.
fn read_chunks(
    path: &Path,
    before: &Stat,
    params: &ChunkerParams,
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
) -> Result<Digest, SnapshotError> {
    let io = |source| SnapshotError::Source {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let opened = Stat::of(&f.metadata().map_err(io)?);
    let mut whole = blake3::Hasher::new();
    let mut read = 0u64;
    for c in params.chunks(std::io::BufReader::with_capacity(1 << 20, &f)) {
        let (_, data) = c.map_err(io)?;
        whole.update(&data);
        read += data.len() as u64;
        if tx.blocking_send((Digest::of(&data), data)).is_err() {
            break; // the upload side failed; its error is reported
        }
    }
    let after = Stat::of(&f.metadata().map_err(io)?);
    let changed = |what: String| SnapshotError::FileChanged {
        path: path.into(),
        what,
    };
    if opened != *before {
        return Err(changed(
            "it was replaced or modified between listing and opening".into(),
        ));
    }
    if after != opened || read != before.size {
        return Err(changed(format!(
            "size {} -> {}, read {read} bytes, mtime {} -> {}",
            before.size, after.size, before.mtime_ns, after.mtime_ns
        )));
    }
    Ok(whole.finalize().into())
}
