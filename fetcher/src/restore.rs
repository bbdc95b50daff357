//! `qsync restore`: pointer -> manifest -> plan -> fetch -> verify -> write -> seal.
//!
//! A destination that already is the snapshot is recognised first
//! ([`crate::complete`]) and left alone. Otherwise planning
//! ([`crate::plan`]) works out what the destination already holds, so a
//! node a few snapshots behind, or a restore killed half-way, fetches only
//! chunks that are missing or wrong. Each needed chunk is fetched once (even
//! when several files share it), as many at a time as the mirrors reward
//! ([`crate::pace`]), verified against its digest, and written as it
//! arrives at its offsets ([`crate::write`]), so no archive ever sits beside
//! the data. Every file this run changed has its whole-file digest checked: as
//! its chunks land when the run writes all of it, else by reading it back at
//! the seal. The seal fsyncs, and only then is the completion marker written
//! and the trust state advanced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use qsync_core::manifest::{ChunkRef, Manifest};
use qsync_core::progress::Progress;
use qsync_core::records::FileStat;
use qsync_core::sign::TrustedKeys;
use qsync_core::time::Timestamp;
use qsync_core::trust::{Expired, TrustStore};
use qsync_core::{ChainName, Digest};
use serde::Serialize;

use crate::batch::{blocking, per_batch, per_file};
use crate::choose::choose;
use crate::complete::index_and_complete;
use crate::dest::{
    self, layout, presize, seal_dirs, seal_file, ForeignDest, Marker, MARKER, PARTIAL, PREALLOCATE_FROM,
};
use crate::journal::{Index, Journal};
use crate::pace::Pace;
use crate::plan::{plan, Plan};
use crate::root::Root;
use crate::write::{streaming_mib, Disk, Held, Slot};
use crate::{Mirrors, RestoreError};

/// Space kept free beyond what the restore needs.
pub(crate) const SPACE_MARGIN: u64 = 64 << 20;
/// The written files are synced and journaled every `JOURNAL_EVERY`, or
/// as soon as `SYNC_BYTES` were written since the last sync, whichever
/// comes first: a crash loses at most that much work, and the disk writes
/// back steadily while the restore computes. The kernel starts writeback
/// only past a share of memory (gigabytes here), so on a fast link a time
/// alone let a sync face 1.7 GB at once, with the cores idle while it ran
/// and the last one alone at the end (measured in docs/benchmarks.md:
/// 50,000 small files restored in 3.3 s instead of 3.7 s).
const JOURNAL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// See [`JOURNAL_EVERY`].
const SYNC_BYTES: u64 = 128 << 20;
/// Memory of the chunks in flight at once, MiB: a compressed chunk holds
/// its whole plaintext while it decodes, a raw one a few MiB of staging as
/// it streams ([`crate::write::streaming_mib`]); this bounds the restore's
/// memory whatever the pace.
pub(crate) const IN_FLIGHT_MIB: u64 = 96;
/// What the manifest's tables, the plan's slots and the chunks in flight
/// may take together, MiB: a million small files' manifest (about 130 MiB
/// decoded) and slots (24 MiB) leave the chunks less room
/// ([`in_flight_mib`]).
const MEMORY_MIB: u64 = 160;

/// Room for chunks in flight beside a manifest and plan taking `held` bytes:
/// what [`MEMORY_MIB`] leaves, never more than [`IN_FLIGHT_MIB`] and never
/// less than one largest chunk (`max_chunk` bytes), or nothing could move.
fn in_flight_mib(held: u64, max_chunk: u64) -> u64 {
    MEMORY_MIB.saturating_sub(held >> 20).clamp(
        max_chunk.div_ceil(1 << 20).max(1),
        IN_FLIGHT_MIB.max(max_chunk.div_ceil(1 << 20)),
    )
}

/// What to restore where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Chain to restore.
    pub chain: ChainName,
    /// Destination directory.
    pub dest: PathBuf,
    /// Trust state directory (never inside `dest`).
    pub state_dir: PathBuf,
    /// Refuse an expired pointer or manifest, or accept it with a warning.
    pub expired: Expired,
    /// Whether a destination qsync does not own (not empty, no marker, or
    /// another chain's) is refused or taken over.
    pub foreign_dest: ForeignDest,
    /// Most chunks in flight at once; the restore picks how many up to
    /// this from what the mirrors deliver.
    pub concurrency: usize,
    /// Hash everything already in the destination instead of trusting the
    /// resume journal and the index of the last completed restore.
    pub verify_existing: bool,
    /// Shell command that must succeed before the completion marker is
    /// written (run with `sh -c`, `QSYNC_DEST`, `QSYNC_CHAIN`,
    /// `QSYNC_VERSION`, `QSYNC_HEIGHT` and `QSYNC_BLOCK_HASH` set).
    pub verify_cmd: Option<String>,
    /// Restore this snapshot version, which the pointer must still keep
    /// (current or history), instead of the latest: a deliberate rollback.
    pub version: Option<u64>,
}

/// The `--json` summary of a restore.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreSummary {
    /// Chain restored.
    pub chain: String,
    /// Snapshot version.
    pub version: u64,
    /// Block height, when known.
    pub height: Option<u64>,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of all files.
    pub bytes_total: u64,
    /// Plaintext bytes fetched from mirrors.
    pub bytes_fetched: u64,
    /// Bytes already present and kept.
    pub bytes_reused: u64,
    /// Chunk objects fetched.
    pub chunks_fetched: u64,
    /// Entries deleted because the snapshot does not have them.
    pub removed: u64,
    /// BLAKE3 of the manifest restored.
    pub manifest_blake3: String,
    /// The mirror whose pointer named the snapshot restored (the newest
    /// fresh one any mirror offered).
    pub pointer_from: String,
    /// What each mirror delivered.
    pub mirrors: Vec<crate::mirrors::MirrorReport>,
}

/// Restores the latest snapshot of `opts.chain` from `mirrors` into `opts.dest`.
pub async fn restore(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    opts: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary, RestoreError> {
    let clock = std::time::Instant::now();
    let trust = TrustStore::new(&opts.state_dir);
    refuse_state_inside_dest(&opts.state_dir, &opts.dest)?;
    let now = Timestamp::now();
    let chosen = choose(
        mirrors,
        keys,
        &opts.chain,
        &trust,
        opts.expired,
        opts.version,
        now,
    )
    .await?;
    let (pointer, pointer_from) = (chosen.pointer, chosen.from);
    // Recorded in the trust record and the marker (informational: rollback
    // is judged per chain, whichever key signed).
    let signed_by = chosen.signed_by.to_string();
    let manifest = Arc::new(chosen.manifest);
    let signed = (chosen.pointer_bytes, chosen.manifest_bytes);

    // One restore per destination and per chain's trust state, for the
    // whole run: a second restore into DEST fails at once; one of the same
    // chain elsewhere waits for the trust record.
    let root = {
        let d = opts.dest.clone();
        Arc::new(blocking(move || Root::create_locked(&d)).await?)
    };
    refuse_state_inside_dest(&opts.state_dir, root.path())?;
    let _trust_lock = {
        let (t, chain) = (TrustStore::new(&opts.state_dir), opts.chain.clone());
        blocking(move || {
            t.lock(&chain, || {
                tracing::info!("waiting for another restore of chain {chain} to finish with the trust state")
            })
            .map_err(RestoreError::from)
        })
        .await?
    };
    // Staged now, so the manifest's stored bytes are not held through the
    // restore; put in place when it completes.
    let staged = stage_for_peers(mirrors, keys, opts, root.path(), &pointer, signed).await;
    let (index, complete) = index_and_complete(
        &root,
        &manifest,
        pointer.current.manifest_blake3,
        opts.verify_existing,
    )
    .await?;
    let mut summary = RestoreSummary {
        chain: opts.chain.to_string(),
        version: pointer.current.version,
        height: manifest.chain.height,
        files: manifest.files.len() as u64,
        bytes_total: manifest.total_bytes(),
        bytes_fetched: 0,
        bytes_reused: manifest.total_bytes(),
        chunks_fetched: 0,
        removed: 0,
        manifest_blake3: pointer.current.manifest_blake3.to_hex(),
        pointer_from,
        mirrors: Vec::new(),
    };
    if complete {
        tracing::info!(
            elapsed = ?clock.elapsed(),
            "{} already holds snapshot {} exactly as the last restore left it; nothing to do",
            root.path().display(),
            pointer.current.version
        );
        trust.advance(&opts.chain, &pointer.current, &signed_by)?;
        keep_for_peers(staged).await;
        summary.mirrors = mirrors.report();
        return Ok(summary);
    }
    dest::claim(&root, &pointer, signed_by.clone(), opts.foreign_dest)?;
    let (removed, present) = {
        let (root, m) = (root.clone(), manifest.clone());
        blocking(move || layout(&root, &m)).await?
    };
    let (mut journal, done) =
        Journal::open(root.clone(), manifest.clone(), &pointer.current.manifest_blake3)?;
    let done = (!opts.verify_existing).then(|| Arc::new(done));
    let plan = plan(&manifest, &root, done, index, Arc::new(present)).await?;
    if !plan.verified.is_empty() {
        journal.record(&plan.verified)?;
    }
    let free = dest::free_space(root.path())?;
    if plan.growth + SPACE_MARGIN > free {
        return Err(RestoreError::Dest {
            path: root.path().into(),
            reason: format!(
                "needs {} more bytes (plus a {SPACE_MARGIN}-byte margin) but only {free} are free; free space or pick another --dest",
                plan.growth
            ),
        });
    }
    tracing::info!(
        elapsed = ?clock.elapsed(),
        "planned: {} of {} bytes already in place, {} chunks to fetch",
        plan.reused,
        manifest.total_bytes(),
        plan.needed.len()
    );
    {
        let (root, m) = (root.clone(), manifest.clone());
        // A small file that was not there is created by its first write:
        // sizing it beforehand would cost an open for nothing.
        let sized: Arc<Vec<Option<bool>>> = Arc::new(
            plan.touched
                .iter()
                .zip(&plan.existed)
                .zip(&manifest.files)
                .map(|((t, e), f)| (*t && (*e || f.size == 0 || f.size >= PREALLOCATE_FROM)).then_some(*e))
                .collect(),
        );
        per_file(manifest.files.len(), move |i| match sized[i] {
            Some(existed) => {
                let f = &m.files[i];
                presize(&root, &f.path, f.size, f.applied_mode(), existed)
            }
            None => Ok(()),
        })
        .await?;
    }

    let (reused, touched) = (plan.reused, plan.touched.clone());
    let disk = Arc::new(Disk::new(manifest.clone(), root.clone(), plan.whole.clone()));
    let (bytes_fetched, chunks_fetched, journal) =
        fetch_and_write(mirrors, plan, &disk, journal, opts.concurrency, &progress).await?;
    tracing::info!(elapsed = ?clock.elapsed(), "fetched and wrote {bytes_fetched} bytes");
    // Files whose digest was checked as they filled are not read back.
    let checked = disk.checked();
    let rehash: Arc<Vec<bool>> = Arc::new(touched.iter().zip(&checked).map(|(t, c)| *t && !c).collect());
    let index = match seal(&root, &manifest, &rehash, &progress).await {
        Ok(index) => index,
        Err(e) => {
            // Never let a journal vouch for data that failed its final check.
            journal.remove()?;
            return Err(e);
        }
    };
    tracing::info!(elapsed = ?clock.elapsed(), "sealed: changed files verified, everything synced");
    Index::save(&root, &manifest, &index)?;
    if let Some(cmd) = &opts.verify_cmd {
        run_verify_cmd(cmd, root.path(), &manifest).await?;
        tracing::info!(elapsed = ?clock.elapsed(), "--verify-cmd accepted the restore");
    }
    // The trust record first: a run killed between the two leaves an
    // incomplete destination, never a complete one the bar does not cover.
    trust.advance(&opts.chain, &pointer.current, &signed_by)?;
    dest::write_marker(&root, MARKER, &Marker::new(&pointer, signed_by))?;
    dest::remove_marker(&root, PARTIAL)?;
    journal.remove()?;
    keep_for_peers(staged).await;

    summary.bytes_fetched = bytes_fetched;
    summary.bytes_reused = reused;
    summary.chunks_fetched = chunks_fetched;
    summary.removed = removed;
    summary.mirrors = mirrors.report();
    Ok(summary)
}

/// Stages the snapshot's signed objects beside the destination's kept
/// store in the state directory ([`crate::peer::stage_signed`]), so that
/// `qsync serve --data` can serve the destination to peers once the
/// restore completes ([`keep_for_peers`]), and the stored bytes need not
/// be held until then. The pointer is kept only when it names this
/// snapshot as current (not after `--snapshot-version` took an older one).
/// The restore goes on whatever happens here: a failure is only logged.
async fn stage_for_peers(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    opts: &RestoreOptions,
    dest: &Path,
    pointer: &qsync_core::pointer::Pointer,
    (pointer_bytes, manifest_bytes): (Option<bytes::Bytes>, bytes::Bytes),
) -> Option<crate::peer::Staged> {
    let signed = crate::peer::Signed {
        chain: &opts.chain,
        pointer: pointer_bytes.as_ref(),
        manifest_key: &pointer.current.manifest_key,
        manifest: &manifest_bytes,
    };
    crate::peer::stage_signed(mirrors, keys, &opts.state_dir, dest, signed)
        .await
        .map_err(|e| {
            tracing::warn!(
                "the snapshot's signed objects could not be kept for serving peers (qsync serve --data): {e}"
            )
        })
        .ok()
}

/// Puts what [`stage_for_peers`] staged in place: the restore is complete.
async fn keep_for_peers(staged: Option<crate::peer::Staged>) {
    if let Some(staged) = staged {
        if let Err(e) = staged.commit().await {
            tracing::warn!("the restore is complete, but its signed objects could not be kept for serving peers (qsync serve --data): {e}");
        }
    }
}

/// Fetches every needed chunk once and writes it wherever it goes, while a
/// flusher syncs the written files and journals the chunks (every
/// [`JOURNAL_EVERY`] or [`SYNC_BYTES`]). Returns plaintext bytes and chunks fetched, and the journal.
async fn fetch_and_write(
    mirrors: &Mirrors,
    plan: Plan,
    disk: &Arc<Disk>,
    journal: Journal,
    concurrency: usize,
    progress: &Arc<dyn Progress>,
) -> Result<(u64, u64, Journal), RestoreError> {
    // Bytes to write, and what the plan's slots take of the memory budget.
    let (to_write, slot_bytes) = plan
        .needed
        .values()
        .fold((0u64, 0usize), |(bytes, held), (_, slots)| {
            (
                bytes + slots.iter().map(Slot::len).sum::<u64>(),
                held + std::mem::size_of::<(Digest, (u64, Vec<Slot>))>()
                    + slots.capacity() * std::mem::size_of::<Slot>(),
            )
        });
    progress.start("restore", to_write);
    let fetched = Arc::new(AtomicU64::new(0));
    let chunks = plan.needed.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Slot>>();
    let flusher = tokio::spawn(flush_journal(rx, journal));
    let needed = shuffle_in_windows(plan.needed, 64 * 16);
    // Chunks in flight: as many as the mirrors reward ([`Pace`]), at most
    // `concurrency`, and never more than IN_FLIGHT_MIB of them (a
    // compressible chunk is held whole while it decodes). Each is a task of
    // its own, so hashing, decompressing and page-cache writes run on every
    // core.
    let room = in_flight_mib(
        disk.manifest().memory_estimate() + slot_bytes as u64,
        u64::from(disk.manifest().chunker.max_size),
    );
    if room < IN_FLIGHT_MIB {
        tracing::info!(
            "at most {room} MiB of chunks in flight: the manifest and the plan take the rest of qsync's memory budget"
        );
    }
    let budget = Arc::new(tokio::sync::Semaphore::new(room as usize));
    let mut pace = Pace::new(concurrency, std::time::Instant::now());
    let fetch = |(blake3, (size, slots)): (Digest, (u64, Vec<Slot>))| {
        let (fetched, tx, budget) = (fetched.clone(), tx.clone(), budget.clone());
        let (mirrors, disk, progress) = (mirrors.clone(), disk.clone(), progress.clone());
        async move {
            // A raw chunk streams through in a few MiB; a compressed one
            // takes its whole size once it starts expanding
            // ([`crate::write::Targets::expanding`]). Only while the
            // budget has its full room: a chunk waiting to expand keeps its
            // connection and places outside the budget, which a large
            // manifest's restore has no room for (a million files went
            // from 232 to 288 MiB), so there every chunk is charged whole.
            // Expanded, a chunk still stages what it streams to.
            let streaming = streaming_mib(&slots, size);
            let whole = (size.div_ceil(1 << 20) as u32 + streaming - 1).clamp(1, room as u32);
            let first = if room >= IN_FLIGHT_MIB {
                streaming.min(whole)
            } else {
                whole
            };
            let permits = budget
                .clone()
                .acquire_many_owned(first)
                .await
                .expect("never closed");
            let mut targets = disk.targets(&slots, size);
            targets.hold(Held::new(budget, permits, whole));
            mirrors.chunk(&ChunkRef { blake3, size }, &mut targets).await?;
            targets.landed().await?;
            fetched.fetch_add(size, Ordering::Relaxed);
            progress.advance(slots.iter().map(Slot::len).sum());
            let _ = tx.send(slots);
            Ok::<_, RestoreError>(())
        }
    };
    let result = async {
        let mut queue = needed.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let mut done = 0u64;
        loop {
            while running.len() < pace.limit() {
                let Some(next) = queue.next() else { break };
                running.spawn(fetch(next));
            }
            if running.is_empty() {
                return Ok::<(), RestoreError>(());
            }
            tokio::select! {
                r = running.join_next() => {
                    r.expect("not empty").expect("a chunk task does not panic")?;
                    done += 1;
                }
                _ = tick.tick() => {}
            }
            let now = std::time::Instant::now();
            pace.observe(fetched.load(Ordering::Relaxed), done, mirrors.errors(), now);
        }
    }
    .await;
    tracing::info!(
        "chunks in flight: up to {} (--concurrency {concurrency}), {} at the end",
        pace.peak(),
        pace.limit()
    );
    drop(tx);
    // The fetch is over; the last sync may take a while, and is no stall.
    progress.finish();
    // Journal what was written even when the run failed: the rerun keeps it.
    let journal = flusher.await.expect("flusher does not panic")?;
    result?;
    Ok((fetched.load(Ordering::Relaxed), chunks, journal))
}

/// Orders the chunks file by file, shuffled within windows of `window`
/// chunks: chunks in flight together mostly land in different files
/// (writers to one file queue on its inode lock), while the files partly
/// written at any time stay within one window (each holds its in-flight
/// digest until its last chunk lands).
fn shuffle_in_windows(
    needed: HashMap<Digest, (u64, Vec<Slot>)>,
    window: usize,
) -> Vec<(Digest, (u64, Vec<Slot>))> {
    let mut sorted: Vec<_> = needed.into_iter().collect();
    sorted.sort_unstable_by_key(|(_, (_, slots))| (slots[0].file, slots[0].offset));
    for w in sorted.chunks_mut(window) {
        fastrand::shuffle(w);
    }
    sorted
}

/// Batches written slots; after each batch ([`next_batch`]) syncs the
/// files they touched, then appends them to the journal with each file's
/// stat once synced. Returns the journal when `rx` closes.
async fn flush_journal(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Slot>>,
    journal: Journal,
) -> Result<Journal, RestoreError> {
    let journal = Arc::new(std::sync::Mutex::new(journal));
    let mut open = true;
    while open {
        let batch;
        (batch, open) = next_batch(&mut rx, JOURNAL_EVERY, SYNC_BYTES).await;
        if batch.is_empty() {
            continue;
        }
        let journal = journal.clone();
        blocking(move || {
            let mut by_file: HashMap<u32, Vec<u32>> = HashMap::new();
            for s in batch {
                by_file.entry(s.file).or_default().push(s.piece);
            }
            journal.lock().expect("not poisoned").sync_and_record(by_file)
        })
        .await?;
    }
    Ok(Arc::into_inner(journal)
        .expect("flusher holds the last reference")
        .into_inner()
        .expect("not poisoned"))
}

/// The slots written from now until `every` has passed or they hold
/// `bytes`, whichever comes first, and whether `rx` is still open.
async fn next_batch(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<Slot>>,
    every: std::time::Duration,
    bytes: u64,
) -> (Vec<Slot>, bool) {
    let mut batch: Vec<Slot> = Vec::new();
    let mut written = 0;
    let deadline = tokio::time::Instant::now() + every;
    while written < bytes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(slots)) => {
                written += slots.iter().map(Slot::len).sum::<u64>();
                batch.extend(slots);
            }
            Ok(None) => return (batch, false),
            Err(_) => break,
        }
    }
    (batch, true)
}

/// Verifies whole-file digests of the files `touched` names, applies
/// modes, fsyncs files and directories, and returns each file's stat once
/// sealed (for the index the next top-up trusts).
async fn seal(
    root: &Arc<Root>,
    manifest: &Arc<Manifest>,
    touched: &Arc<Vec<bool>>,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<FileStat>, RestoreError> {
    let to_hash = manifest
        .files
        .iter()
        .zip(touched.iter())
        .filter(|(_, t)| **t)
        .map(|(f, _)| f.size)
        .sum();
    progress.start("verify", to_hash);
    let (m, r, t, p) = (manifest.clone(), root.clone(), touched.clone(), progress.clone());
    let entries: Vec<FileStat> = per_batch(manifest.files.len(), move |files| {
        // Most files need no more than a look: their digest was checked in
        // flight (or they were not touched), they have one link and the
        // mode they were created with. The look goes through one handle
        // per directory; anything else is opened and sealed in full.
        let rels = files.clone().map(|i| m.files[i].path.as_ref());
        let stats = r.stat_files(rels).map_err(RestoreError::io(r.path()))?;
        files
            .zip(stats)
            .map(|(i, st)| {
                let f = &m.files[i];
                let stat = match st {
                    Some(st) if !t[i] && st.st_nlink == 1 && st.st_mode & 0o7777 == f.applied_mode() => {
                        crate::root::file_stat(&st)
                    }
                    _ => FileStat::of(&seal_file(&r, f, t[i], p.as_ref())?),
                };
                Ok(stat)
            })
            .collect()
    })
    .await?;
    progress.finish();
    let (root, m) = (root.clone(), manifest.clone());
    blocking(move || seal_dirs(&root, &m)).await?;
    Ok(entries)
}

/// Runs the operator's check; a non-zero exit keeps the marker away.
async fn run_verify_cmd(cmd: &str, root: &Path, m: &Manifest) -> Result<(), RestoreError> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(root)
        .stdin(std::process::Stdio::null());
    c.env("QSYNC_DEST", root)
        .env("QSYNC_CHAIN", m.chain.name.as_str())
        .env("QSYNC_VERSION", m.version.to_string())
        .env(
            "QSYNC_HEIGHT",
            m.chain.height.map(|h| h.to_string()).unwrap_or_default(),
        )
        .env("QSYNC_BLOCK_HASH", m.chain.block_hash.clone().unwrap_or_default());
    let out = c.output().await.map_err(RestoreError::io(root))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: String = text
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    Err(RestoreError::VerifyCmd {
        command: cmd.into(),
        status: out.status.to_string(),
        stderr: if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        },
    })
}

/// Refuses a trust state directory inside the destination, comparing
/// resolved paths (so `x/../dd` and `dd/state`, or a link, are caught).
pub(crate) fn refuse_state_inside_dest(state: &Path, dest: &Path) -> Result<(), RestoreError> {
    if resolved(state).starts_with(resolved(dest)) {
        return Err(RestoreError::Dest {
            path: dest.into(),
            reason: format!(
                "--state-dir {} lies inside the destination; trust state must survive the destination being wiped, so put it elsewhere",
                state.display()
            ),
        });
    }
    Ok(())
}

/// `p` as the kernel will resolve it once created: the longest existing
/// prefix canonicalised (links followed), the rest appended with `..`
/// applied (components that do not exist yet cannot be links).
fn resolved(p: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let comps: Vec<Component> = abs.components().collect();
    for keep in (1..=comps.len()).rev() {
        let prefix: PathBuf = comps[..keep].iter().collect();
        let Ok(mut out) = prefix.canonicalize() else {
            continue;
        };
        for c in &comps[keep..] {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
        return out;
    }
    abs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_manifest_leaves_chunks_less_room_but_never_less_than_one() {
        let max = 16 << 20;
        assert_eq!(in_flight_mib(1 << 20, max), IN_FLIGHT_MIB);
        assert_eq!(in_flight_mib(120 << 20, max), MEMORY_MIB - 120);
        assert_eq!(in_flight_mib(2 << 30, max), 16);
        assert_eq!(in_flight_mib(2 << 30, 200 << 20), 200);
    }

    fn slot(file: usize, len: u64) -> Slot {
        let piece = qsync_core::pieces::Piece {
            chunk: qsync_core::manifest::ChunkRef {
                blake3: qsync_core::Digest::of(&[]),
                size: len,
            },
            at: 0,
            len,
            offset: 0,
        };
        Slot::of(file, 0, &piece)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_synced_once_it_holds_enough_bytes_without_waiting_for_the_clock() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let every = std::time::Duration::from_secs(2);
        tx.send(vec![slot(0, 100), slot(1, 27)]).unwrap();
        tx.send(vec![slot(2, 1)]).unwrap();
        tx.send(vec![slot(3, 500)]).unwrap();
        let clock = tokio::time::Instant::now();
        let (batch, open) = next_batch(&mut rx, every, 128).await;
        assert_eq!((batch.len(), open), (3, true));
        assert_eq!(
            clock.elapsed(),
            std::time::Duration::ZERO,
            "a full batch waited for the clock"
        );
        // Fewer bytes than the bound wait for the clock ...
        let (batch, open) = next_batch(&mut rx, every, 1000).await;
        assert_eq!((batch.len(), open), (1, true));
        assert_eq!(clock.elapsed(), every);
        // ... and a closed channel ends the batch at once.
        tx.send(vec![slot(4, 1)]).unwrap();
        drop(tx);
        let (batch, open) = next_batch(&mut rx, every, 1000).await;
        assert_eq!((batch.len(), open), (1, false));
        assert_eq!(clock.elapsed(), every);
    }
}
