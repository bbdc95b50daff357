//! One snapshot run: scan -> chunk/hash -> upload missing chunks -> plain
//! trees (IPFS) -> manifest -> sign -> pointer -> catalog, to one store or
//! several at once.
//!
//! Files are read on blocking threads (two at a time) and cut into chunks;
//! each chunk is checked against every store and, where missing, compressed
//! once and uploaded, with at most `concurrency` chunks in flight so memory
//! stays bounded by about `concurrency x max chunk size`. Each store's
//! manifest is written only after every chunk upload to it has returned, and
//! its pointer only after the manifest, so readers never see a snapshot
//! whose objects are missing. A store that fails drops out of the run (its
//! pointer stays where it was) while the others go on.
//!
//! Reading a file lives in [`crate::read`], uploading in [`crate::upload`],
//! the manifest and pointer writes in
//! [`crate::commit`].
//!
//! Files smaller than the chunker's minimum chunk are packed (format 2):
//! read as one stream in manifest order and cut into chunks together
//! ([`crate::read`]), so objects follow bytes, not files.
//!
//! A file whose stat data matches [`KnownFiles`] from the previous run, when
//! every store still holds that run's snapshot, is not read again: its
//! manifest entry is reused. The pack is reused as a whole when every
//! packed file is unchanged, and read again as a whole otherwise (its
//! chunks then mostly exist already and are not uploaded again).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use qsync_core::chunk::ChunkerParams;
use qsync_core::manifest::{ChainMeta, ChunkRef, DirEntry, FileEntry, Manifest};
use qsync_core::pointer::{self, Pointer, SnapshotRef};
use qsync_core::progress::Progress;
use qsync_core::sign::SigningKeys;
use qsync_core::time::Timestamp;
use qsync_core::{Digest, ObjectKey};
use qsync_store::signed::get_signed_for_update;
use qsync_store::{ObjectSink, StoreId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::commit::{finish_store, plain_trees, Expiry, NewSnapshot};
use crate::lease;
use crate::options::{SnapshotOptions, SnapshotSummary};
use crate::read::read_stream;
use crate::scan::{scan, Scan, Stat};
use crate::upload::{Target, Uploader};
use crate::SnapshotError;

/// What the previous run left: each store's manifest and each file's stat
/// data with its manifest entry. Kept in the agent's state directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnownFiles {
    /// BLAKE3 of the manifest each store's pointer named after the run.
    pub manifests: BTreeMap<StoreId, Digest>,
    /// Every file's stat data when read, in the order of [`Self::files`].
    pub stats: Vec<Stat>,
    /// Every file's entry, sorted by path (the manifest's table, moved,
    /// not copied: a million entries are about 140 MB).
    pub files: Vec<FileEntry>,
    /// The pack's chunks, for when every packed file is unchanged.
    #[serde(default)]
    pub pack: Vec<ChunkRef>,
}

/// One store's outcome.
#[derive(Debug)]
pub struct StoreOutcome {
    /// The store.
    pub id: StoreId,
    /// Where it is.
    pub location: String,
    /// Its summary, or why its pointer did not move.
    pub result: Result<SnapshotSummary, SnapshotError>,
}

/// A run over several stores.
#[derive(Debug)]
pub struct Published {
    /// Per store, in the order given.
    pub stores: Vec<StoreOutcome>,
    /// What the next run may trust (only stores that succeeded are recorded).
    pub known: KnownFiles,
    /// Files taken from [`KnownFiles`] without reading.
    pub files_unchanged: u64,
    /// Bytes of those files.
    pub bytes_unchanged: u64,
}

/// Publishes `source` as the next snapshot of `opts.chain` in `sink`, under
/// a lease on the store (one publisher per store and chain at a time).
pub async fn publish(
    source: &Path,
    sink: Arc<dyn ObjectSink>,
    signer: &SigningKeys,
    opts: &SnapshotOptions,
    progress: Arc<dyn Progress>,
) -> Result<SnapshotSummary, SnapshotError> {
    let lease = lease::acquire_for_publish(sink.clone(), &opts.chain).await?;
    let r = publish_many(PublishRun::new(source, signer, opts, progress), vec![sink]).await;
    lease.release().await;
    r?.stores.pop().expect("one store").result
}

/// Resolves when `cancel` turns true; never without one.
async fn cancelled(cancel: Option<tokio::sync::watch::Receiver<bool>>) {
    match cancel {
        Some(mut c) => {
            let _ = c.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

/// Runs between reading and committing; an error stops the run before any
/// manifest or pointer is written.
pub type CommitGate =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), crate::freeze::HookError>> + Send>>;

/// One publish: what is read, how it is signed, and what the run may be
/// told by its caller. [`PublishRun::new`] gives the plain `qsync snapshot`
/// run; the agent fills in the rest.
pub struct PublishRun<'a> {
    /// The directory read.
    pub source: &'a Path,
    /// Signs the manifest, pointer and catalog (with each key; the first
    /// key's signature is the primary one).
    pub signer: &'a SigningKeys,
    /// Chain, chunker, expiries, retention.
    pub opts: &'a SnapshotOptions,
    /// Where progress is reported.
    pub progress: Arc<dyn Progress>,
    /// Files the last cycle recorded (skip-unchanged): reused when their
    /// stat data are the same.
    pub known: Option<KnownFiles>,
    /// Stops the run before any pointer moves when it turns true.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Runs between reading and committing (the agent's thaw).
    pub gate: Option<CommitGate>,
}

impl<'a> PublishRun<'a> {
    /// A run with nothing known, no cancel and no gate.
    pub fn new(
        source: &'a Path,
        signer: &'a SigningKeys,
        opts: &'a SnapshotOptions,
        progress: Arc<dyn Progress>,
    ) -> Self {
        PublishRun {
            source,
            signer,
            opts,
            progress,
            known: None,
            cancel: None,
            gate: None,
        }
    }
}

/// Publishes `run` to every store in `sinks`; the caller holds each
/// store's publish lease. Fails as a whole only when the source cannot be
/// read consistently, `cancel` fires or `gate` fails before any pointer
/// moves; a store that fails is reported in its [`StoreOutcome`].
pub async fn publish_many(
    run: PublishRun<'_>,
    sinks: Vec<Arc<dyn ObjectSink>>,
) -> Result<Published, SnapshotError> {
    let PublishRun {
        source,
        signer,
        opts,
        progress,
        known,
        cancel,
        gate,
    } = run;
    opts.chunker.validate()?;
    // The pointer this run replaces must verify under one of its own keys.
    let keys = signer.trusted();
    let pointer_key = ObjectKey::pointer(&opts.chain);
    let targets: Vec<Arc<Target>> = sinks
        .into_iter()
        .map(|sink| Arc::new(Target::new(sink)))
        .collect();
    let mut previous = Vec::new();
    for t in &targets {
        let r = async {
            let (bytes, expect) =
                get_signed_for_update(t.sink.as_ref(), &pointer_key, &keys, pointer::MAX_BYTES)
                    .await
                    .map_err(|e| SnapshotError::reading_own(e, signer, "Nothing was written."))?;
            let p = bytes
                .map(|b| Pointer::decode(&b, pointer_key.as_str()))
                .transpose()?;
            Ok::<_, SnapshotError>((p, expect))
        }
        .await;
        match r {
            Ok(p) => previous.push(Some(p)),
            Err(e) => {
                t.fail(e);
                previous.push(None);
            }
        }
    }
    if !targets.iter().any(|t| t.live()) {
        return Ok(finish_failed(targets));
    }
    // Reuse last run's entries only if every store still holds that run's
    // snapshot, whose chunks are then all there.
    let reuse = known.filter(|k| {
        targets.iter().zip(&previous).all(|(t, p)| match p {
            Some((Some(p), _)) => k.manifests.get(&t.sink.id()) == Some(&p.current.manifest_blake3),
            _ => !t.live(),
        })
    });

    let root = source.to_path_buf();
    let listing = tokio::task::spawn_blocking(move || scan(&root))
        .await
        .expect("scan does not panic")?;
    let total: u64 = listing.files.iter().map(|f| f.size).sum();
    progress.start("snapshot", total);

    // At least one maximal chunk must fit, or the run could not make progress.
    let budget_mib = (opts.in_flight_bytes >> 20)
        .max(u64::from(opts.chunker.max_size >> 20))
        .max(1) as u32;
    let up = Arc::new(Uploader {
        targets: targets.clone(),
        seen: Mutex::new(HashSet::new()),
        slots: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        budget: Arc::new(Semaphore::new(budget_mib as usize)),
        budget_mib,
        encoders: Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, usize::from),
        )),
        level: opts.zstd_level,
        progress: progress.clone(),
        uploads: Mutex::new(tokio::task::JoinSet::new()),
    });
    let mut listing = listing;
    let Planned {
        reads: work,
        pack: known_pack,
        files_unchanged,
        bytes_unchanged,
    } = plan_reads(&mut listing, reuse, &opts.chunker);
    progress.advance(bytes_unchanged);
    // Shared by the reads, which set each file's digest in its entry as
    // they finish it; then each read's chunks are filled in, and the
    // entries become the manifest's table.
    let listing = Arc::new(Mutex::new(listing));
    let read_all = async {
        let done: Vec<Done> = futures::stream::iter(work)
            .map(|w| {
                let (up, listing) = (up.clone(), listing.clone());
                let params = opts.chunker.clone();
                async move {
                    match w {
                        Read::Solo(i) => {
                            let (_, chunks) = upload_stream(listing, vec![i as u32], params, up).await?;
                            Ok::<_, SnapshotError>(Done::Solo(i, chunks))
                        }
                        Read::Pack(which) => {
                            let (which, pack) = upload_stream(listing, which, params, up).await?;
                            Ok(Done::Pack(which, pack))
                        }
                    }
                }
            })
            .buffered(2)
            .try_collect()
            .await?;
        let mut uploads = std::mem::take(&mut *up.uploads.lock().expect("not poisoned"));
        while let Some(done) = uploads.join_next().await {
            done.expect("upload task does not panic")?;
        }
        Ok::<_, SnapshotError>(done)
    };
    // Cancelling here is clean: no manifest or pointer has been written.
    let done = tokio::select! {
        biased;
        () = cancelled(cancel.clone()) => {
            up.uploads.lock().expect("not poisoned").abort_all();
            return Err(SnapshotError::Cancelled);
        }
        r = read_all => r?,
    };
    let mut listing = Arc::into_inner(listing)
        .expect("every read has finished")
        .into_inner()
        .expect("not poisoned");
    let mut pack = known_pack.unwrap_or_default();
    for d in done {
        match d {
            Done::Solo(i, chunks) => listing.files[i].chunks = chunks.into(),
            Done::Pack(which, chunks) => {
                for i in which {
                    listing.files[i as usize].packed = true;
                }
                pack = chunks;
            }
        }
    }
    let Scan {
        dirs, files, stats, ..
    } = listing;
    progress.finish();
    if let Some(gate) = gate {
        gate.await.map_err(SnapshotError::Thaw)?;
    }

    // One lineage in every store: the same version and creation time, so
    // the same manifest bytes. Fetchers order snapshots across stores by
    // (creation time, version): the version exceeds every store's, and the
    // creation time is never earlier than any store's snapshot (even if this
    // host's clock went back), so that order only ever moves forward.
    let seen = previous.iter().flatten().filter_map(|(p, _)| p.as_ref());
    let (version, created_at) = seen.fold((1, Timestamp::now()), |(v, t), p| {
        (v.max(p.current.version + 1), t.max(p.current.created_at))
    });
    let now = created_at;
    let when = Expiry {
        now,
        expires_at: now.plus(opts.expires_in),
        manifest_expires_at: now.plus(opts.lifetime.max(opts.expires_in)),
    };
    let manifest = Manifest {
        format: Manifest::format_for(&pack).into(),
        chain: ChainMeta {
            name: opts.chain.clone(),
            height: opts.height,
            block_hash: opts.block_hash.clone(),
        },
        version,
        created_at: now,
        expires_at: when.manifest_expires_at,
        chunker: opts.chunker.clone(),
        directories: dirs
            .into_iter()
            .map(|(path, mode)| DirEntry { path, mode })
            .collect(),
        files,
        pack,
        pack_index: Default::default(),
    };
    // Before any pointer moves, so that every pointer names every tree;
    // cancelling while they are built is as clean as while reading.
    let trees = tokio::select! {
        biased;
        () = cancelled(cancel) => return Err(SnapshotError::Cancelled),
        trees = plain_trees(&targets, &manifest) => trees,
    };
    let mut mirrors: Vec<String> = Vec::new();
    let hints = opts.mirror_hints.iter().cloned();
    for hint in hints.chain(trees.iter().flatten().map(|cid| pointer::plain_tree_hint(cid))) {
        // Several IPFS stores of one node give one tree: one hint.
        if !mirrors.contains(&hint) {
            mirrors.push(hint);
        }
    }
    // Encoded once: every store gets the same bytes (one lineage).
    let (stored, compressed) = manifest.encode();
    let stored = bytes::Bytes::from(stored);
    let manifest_key = ObjectKey::manifest(&opts.chain, manifest.version, &Digest::of(&stored), compressed);
    let current = SnapshotRef::new(&manifest, manifest_key, &stored);
    let snapshot = NewSnapshot {
        signer,
        opts,
        manifest: &manifest,
        stored: &stored,
        current: &current,
        when,
        total,
        mirrors: &mirrors,
    };
    let mut manifests = BTreeMap::new();
    let mut stores = Vec::new();
    for ((t, prev), tree) in targets.iter().zip(previous).zip(trees) {
        let id = t.sink.id();
        let failed = t.failed.lock().expect("not poisoned").take();
        let result = match (failed, prev) {
            (Some(e), _) => Err(e),
            (None, None) => unreachable!("a store without a pointer read has failed"),
            (None, Some((previous, expect))) => {
                finish_store(t, &snapshot, previous.as_ref(), &expect, tree).await
            }
        };
        if let Ok((_, digest)) = &result {
            manifests.insert(id.clone(), *digest);
        }
        stores.push(StoreOutcome {
            id,
            location: t.sink.location(),
            result: result.map(|(summary, _)| summary),
        });
    }
    let known = KnownFiles {
        manifests,
        stats,
        files: manifest.files,
        pack: manifest.pack,
    };
    Ok(Published {
        stores,
        known,
        files_unchanged,
        bytes_unchanged,
    })
}

fn finish_failed(targets: Vec<Arc<Target>>) -> Published {
    Published {
        stores: targets
            .iter()
            .map(|t| StoreOutcome {
                id: t.sink.id(),
                location: t.sink.location(),
                result: Err(t
                    .failed
                    .lock()
                    .expect("not poisoned")
                    .take()
                    .unwrap_or(SnapshotError::Cancelled)),
            })
            .collect(),
        known: KnownFiles::default(),
        files_unchanged: 0,
        bytes_unchanged: 0,
    }
}

/// What one read gives besides the digests it set in the listing, by the
/// files' numbers in it: a file's chunks, or the pack's files and chunks.
enum Done {
    Solo(usize, Vec<ChunkRef>),
    Pack(Vec<u32>, Vec<ChunkRef>),
}

/// What the run reads, by the files' numbers in the listing: a file on
/// its own, or the pack (every packed file, read as one stream; `u32`, as
/// a million are listed).
enum Read {
    Solo(usize),
    Pack(Vec<u32>),
}

/// The reads a run needs, once what the last run knew is taken over.
struct Planned {
    reads: Vec<Read>,
    /// The pack's chunks, when the last run's pack is taken over whole.
    pack: Option<Vec<ChunkRef>>,
    files_unchanged: u64,
    bytes_unchanged: u64,
}

/// Sorts the listing into reads: files below the chunker's minimum chunk
/// go into the pack; files `reuse` knows unchanged (same stat) are not
/// read, their entries moved into the listing (the pack's only when every
/// packed file is unchanged, with the pack's chunks). Both lists are in
/// path order, so one pass over them pairs the files: the last run's
/// entries are moved, never copied.
fn plan_reads(listing: &mut Scan, reuse: Option<KnownFiles>, chunker: &ChunkerParams) -> Planned {
    let packs = |size: u64| size > 0 && size < u64::from(chunker.min_size);
    let (known_files, known_stats, known_pack) = match reuse {
        Some(k) => (k.files, k.stats, Some(k.pack)),
        None => Default::default(),
    };
    let known_packed_total = known_files.iter().filter(|e| e.packed).count();
    let mut known = known_files.into_iter().zip(known_stats).peekable();
    let (mut reads, mut packed, mut known_packed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut files_unchanged, mut bytes_unchanged) = (0, 0);
    for (i, st) in listing.stats.iter().enumerate() {
        let listed = &listing.files[i];
        while known.next_if(|(e, _)| e.path < listed.path).is_some() {}
        let entry = known
            .next_if(|(e, kst)| {
                e.path == listed.path && kst == st && e.size == listed.size && e.mode == listed.mode
            })
            .map(|(e, _)| e);
        if packs(listed.size) {
            if let Some(e) = entry.filter(|e| e.packed) {
                known_packed.push((i, e));
            }
            packed.push(i as u32);
            continue;
        }
        match entry.filter(|e| !e.packed) {
            Some(e) => {
                files_unchanged += 1;
                bytes_unchanged += e.size;
                listing.files[i] = e;
            }
            None => reads.push(Read::Solo(i)),
        }
    }
    drop(known);
    // The same packed files as last time, each unchanged: the same stream.
    let same_pack = known_packed.len() == packed.len() && known_packed_total == packed.len();
    let mut pack = None;
    if !packed.is_empty() {
        match known_pack.filter(|_| same_pack) {
            Some(chunks) => {
                for (i, e) in known_packed {
                    files_unchanged += 1;
                    bytes_unchanged += e.size;
                    listing.files[i] = e;
                }
                pack = Some(chunks);
            }
            // First, so the one long read of many small files overlaps the others.
            None => reads.insert(0, Read::Pack(packed)),
        }
    }
    Planned {
        reads,
        pack,
        files_unchanged,
        bytes_unchanged,
    }
}

/// Reads the listed files `which` as one stream ([`read_stream`], which
/// sets their digests in the listing), starting the uploads of its chunks
/// as they are cut; returns `which` (handed back, not copied: the pack
/// lists every small file) and the stream's chunks once it is read. Uploads run on, bounded by the slots
/// and the byte budget, so many small chunks keep the store busy while
/// only two streams are read at a time; [`publish`] awaits them all.
async fn upload_stream(
    listing: Arc<Mutex<Scan>>,
    which: Vec<u32>,
    params: ChunkerParams,
    up: Arc<Uploader>,
) -> Result<(Vec<u32>, Vec<ChunkRef>), SnapshotError> {
    let (tx, mut rx) = mpsc::channel::<(Digest, Vec<u8>)>(1);
    let reader = tokio::task::spawn_blocking(move || {
        let read = read_stream(&listing, &which, &params, tx);
        (which, read)
    });
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
    let (which, read) = reader.await.expect("reader does not panic");
    read?;
    Ok((which, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::progress::NoProgress;
    use qsync_core::ChainName;
    use qsync_store::testing::{FaultySink, MemoryStore, WriteFault};
    use qsync_store::ObjectSource;

    fn source() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("db")).unwrap();
        for i in 0..5u32 {
            let body: Vec<u8> = (0..300_000u32).map(|j| ((j * 7 + i) % 253) as u8).collect();
            std::fs::write(d.path().join(format!("db/{i}.sst")), body).unwrap();
        }
        d
    }

    fn signer(dir: &Path) -> SigningKeys {
        qsync_core::sign::keygen(&dir.join("k.sec"), &dir.join("k.pub")).unwrap();
        qsync_core::sign::SigningKey::load(&dir.join("k.sec"))
            .unwrap()
            .into()
    }

    /// Every chunk the manifest at `key` references is in `store`.
    async fn complete(store: &MemoryStore, manifest_key: &str) -> bool {
        let bytes = store.get(&ObjectKey::new(manifest_key).unwrap()).await.unwrap();
        let m = Manifest::decode(&bytes, manifest_key).unwrap();
        for c in m.all_chunks() {
            if store.head(&ObjectKey::chunk(&c.blake3)).await.unwrap().is_none() {
                return false;
            }
        }
        true
    }

    #[tokio::test]
    async fn a_plain_tree_that_fails_leaves_the_snapshot_published_without_it() {
        let (src, keys) = (source(), tempfile::tempdir().unwrap());
        let signer = signer(keys.path());
        let chain = ChainName::new("eth").unwrap();
        let opts = SnapshotOptions::new(chain.clone());
        let memory = Arc::new(MemoryStore::new("tree"));
        let store = Arc::new(FaultySink::with_failing_tree(memory.clone()));
        let s = publish(src.path(), store, &signer, &opts, Arc::new(NoProgress))
            .await
            .expect("a failed plain tree does not fail the publish");
        assert_eq!(s.version, 1);
        let bytes = memory.get(&ObjectKey::pointer(&chain)).await.unwrap();
        let p = qsync_core::pointer::Pointer::decode(&bytes, "pointer").unwrap();
        assert!(
            p.mirrors
                .iter()
                .all(|h| qsync_core::pointer::plain_tree_cid(h).is_none()),
            "the pointer names a tree that was not built: {:?}",
            p.mirrors
        );
    }

    #[tokio::test]
    async fn the_pointer_moves_only_after_the_manifest_and_every_chunk_are_stored() {
        let (src, keys) = (source(), tempfile::tempdir().unwrap());
        let signer = signer(keys.path());
        let chain = ChainName::new("eth").unwrap();
        let opts = SnapshotOptions::new(chain.clone());
        let memory = Arc::new(MemoryStore::new("ordering"));
        let store = Arc::new(FaultySink::new(memory.clone()));
        let pointer = ObjectKey::pointer(&chain);

        // The store goes away when the manifest is written: chunks are up,
        // but no pointer names them.
        store.fail_writes("chains/eth/manifests/", WriteFault::Refused, None);
        let e = publish(src.path(), store.clone(), &signer, &opts, Arc::new(NoProgress))
            .await
            .unwrap_err();
        assert!(matches!(e, SnapshotError::Store(_)), "{e}");
        assert_eq!(e.stage(), crate::error::Stage::Upload);
        assert!(
            memory.head(&pointer).await.unwrap().is_none(),
            "a pointer without its manifest"
        );
        assert!(memory.keys().iter().any(|k| k.as_str().starts_with("chunks/")));

        // Back: the rerun publishes version 1, and its pointer names a
        // manifest whose chunks are all there.
        store.heal();
        let s = publish(src.path(), store.clone(), &signer, &opts, Arc::new(NoProgress))
            .await
            .unwrap();
        assert_eq!(s.version, 1);
        assert!(memory.head(&pointer).await.unwrap().is_some());
        assert!(complete(&memory, &s.manifest_key).await);
        // Nothing new to upload the second time but the manifest and pointer.
        assert_eq!(s.chunks_uploaded, 0, "{s:?}");
    }
}
