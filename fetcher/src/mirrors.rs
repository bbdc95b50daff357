//! The `--from` stores of one run, read as one.
//!
//! Signed objects (pointer, manifest) may come from any mirror: the signature
//! decides. Pointers are asked of every mirror at once, each within
//! `--timeout`, and ordered by the snapshot's signed creation time
//! (`qsync_core::trust::rank`), which no mix of stores can make go
//! backwards; a mirror serving a bad signature or another chain's pointer is
//! demoted for the run. [`crate::choose`] picks among them. Chunks go to the mirror
//! expected to deliver soonest: each mirror's throughput is tracked as a
//! moving average and divided among its requests in flight; mirrors not yet
//! measured are tried first so that every mirror gets measured. A request
//! that takes four times longer than expected is hedged on another mirror,
//! and the first good copy wins, so one slow or stalled mirror never holds up
//! the restore while another works. Failures put a mirror in a jittered,
//! growing cooldown; a mirror that serves a corrupt copy is demoted for the
//! rest of the run. A chunk that no mirror delivers within the deadline
//! fails the restore.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use qsync_core::chunk::{self, StreamDecoder};
use qsync_core::manifest::{ChunkRef, Manifest};
use qsync_core::pointer::{Pointer, SnapshotRef};
use qsync_core::sign::{KeyId, TrustedKeys};
use qsync_core::trust::rank;
use qsync_core::{ChainName, FormatError, ObjectKey};
use qsync_store::signed::{get_manifest_and_bytes, get_signed, SignedReadError, MAX_SIGNATURE_BYTES};
use qsync_store::{ObjectSource, StoreError};
use serde::Serialize;

use crate::RestoreError;

/// Timeouts of chunk fetching.
#[derive(Clone, Copy, Debug)]
pub struct MirrorOptions {
    /// Longest one request may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// Longest one chunk may take across all mirrors and retries.
    pub deadline: Duration,
    /// Stop using a mirror once it served a corrupt copy. Off for
    /// `qsync verify`, which must look at every object of its one store.
    pub demote_corrupt: bool,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            attempt_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            demote_corrupt: true,
        }
    }
}

/// What one mirror did during a run (part of `restore --json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MirrorReport {
    /// Store location.
    pub location: String,
    /// Stored bytes of chunks received and accepted.
    pub bytes: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Failed requests (errors, timeouts, missing objects).
    pub errors: u64,
    /// Copies that failed verification.
    pub corrupt: u64,
    /// Demoted for serving a corrupt copy, or a pointer it must not.
    pub demoted: bool,
    /// A peer node (`--peers-dns`), asked for chunks before the origins.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub peer: bool,
    /// What its pointer was: `chosen`, `older`, `expired`, `none`, or why
    /// it was unusable or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

/// A validly signed pointer of the chain, as one mirror serves it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Index of the mirror in `--from` order.
    pub mirror: usize,
    /// Its location.
    pub location: String,
    /// The pointer.
    pub pointer: Pointer,
    /// Its stored bytes, as signed.
    pub bytes: Bytes,
}

#[derive(Default)]
struct Health {
    report: MirrorReport,
    /// Moving average of bytes per second per request; `None` until measured.
    rate: Option<f64>,
    failures_in_row: u32,
    cooldown_until: Option<Instant>,
}

struct Mirror {
    source: Arc<dyn ObjectSource>,
    /// Asked for chunks before any origin.
    peer: bool,
    health: Mutex<Health>,
    in_flight: AtomicU32,
}

/// Decrements a mirror's in-flight count when a request ends or is dropped.
struct InFlight<'a>(&'a Mirror);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One or more stores holding the same chain.
#[derive(Clone)]
pub struct Mirrors {
    /// Shared by clones, so every task of a restore sees one health record
    /// per mirror.
    mirrors: Arc<[Mirror]>,
    opts: MirrorOptions,
}

/// Where a chunk's plaintext goes as it arrives. What was written is
/// unverified until [`Mirrors::chunk`] returns `Ok`. Pieces come in order;
/// a piece at offset 0 starts a new attempt, which writes the whole chunk
/// again.
#[async_trait::async_trait]
pub trait ChunkSink: Send {
    /// Writes `plain` at offset `at` within the chunk.
    async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError>;

    /// Called before a stored chunk that is a zstd frame starts expanding:
    /// its whole plaintext is held from then until the chunk is done, where
    /// a raw one streams through.
    async fn expanding(&mut self) -> Result<(), RestoreError> {
        Ok(())
    }

    /// The memory budget a hedged attempt's copy of the chunk is charged
    /// to, and how many of its permits; `None`: not counted. A hedge that
    /// finds no room is not started.
    fn hedge_room(&self) -> Option<(Arc<tokio::sync::Semaphore>, u32)> {
        None
    }
}

/// A hedged attempt's copy, held in memory: while the first attempt may
/// still be writing to the real sink, a second writer there could leave a
/// mix of the two behind. It holds its charge of the memory budget
/// ([`ChunkSink::hedge_room`]) until the chunk is done.
#[derive(Default)]
struct HedgeCopy {
    bytes: Vec<u8>,
    charge: Option<tokio::sync::OwnedSemaphorePermit>,
}

#[async_trait::async_trait]
impl ChunkSink for HedgeCopy {
    async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
        self.bytes.truncate(at as usize);
        self.bytes.extend_from_slice(plain);
        Ok(())
    }
}

/// How one attempt ended.
enum Attempt {
    Good,
    /// `permanent`: retrying this mirror for this chunk cannot help (a
    /// corrupt copy, a missing object, a client error).
    Failed {
        error: RestoreError,
        permanent: bool,
    },
    /// Writing failed here (the disk, not the mirror): the restore stops.
    Local(RestoreError),
}

/// How bad a mirror's failed attempt was.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Worth retrying on this mirror later (a timeout, a 5xx, a reset).
    Transient,
    /// Retrying this mirror for this chunk cannot help (a missing object,
    /// a client error).
    Permanent,
    /// The mirror served bytes that do not match the signed digest:
    /// permanent, and the mirror is demoted if `--demote-corrupt`.
    Corrupt,
}

/// What went wrong inside one attempt.
enum Fault {
    Store(StoreError),
    Corrupt(FormatError),
    Local(RestoreError),
}

impl From<FormatError> for Fault {
    fn from(e: FormatError) -> Self {
        Fault::Corrupt(e)
    }
}

impl Mirrors {
    /// The mirrors, in preference order, with default timeouts. Panics on an empty list.
    pub fn new(sources: Vec<Arc<dyn ObjectSource>>) -> Self {
        Self::with_options(sources, MirrorOptions::default())
    }

    /// The mirrors with explicit timeouts. Panics on an empty list.
    pub fn with_options(sources: Vec<Arc<dyn ObjectSource>>, opts: MirrorOptions) -> Self {
        Self::with_peers(Vec::new(), sources, opts)
    }

    /// Peer nodes (`qsync serve --data`) and origins: chunks are asked of
    /// a peer first while one can deliver them, of the origins otherwise;
    /// signed objects come from whichever serves them, peers first, and
    /// are verified the same. Panics when both lists are empty.
    pub fn with_peers(
        peers: Vec<Arc<dyn ObjectSource>>,
        origins: Vec<Arc<dyn ObjectSource>>,
        opts: MirrorOptions,
    ) -> Self {
        assert!(!(peers.is_empty() && origins.is_empty()), "at least one mirror");
        let peers = peers.into_iter().map(|s| (s, true));
        let mirrors: Vec<Mirror> = peers
            .chain(origins.into_iter().map(|s| (s, false)))
            .map(|(source, peer)| Mirror {
                health: Mutex::new(Health {
                    report: MirrorReport {
                        location: source.location(),
                        peer,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                source,
                peer,
                in_flight: AtomicU32::new(0),
            })
            .collect();
        Mirrors {
            mirrors: mirrors.into(),
            opts,
        }
    }

    /// The first mirror (for single-store commands).
    pub fn primary(&self) -> &dyn ObjectSource {
        self.mirrors[0].source.as_ref()
    }

    /// Per-mirror counters so far.
    pub fn report(&self) -> Vec<MirrorReport> {
        self.mirrors
            .iter()
            .map(|m| m.health.lock().expect("not poisoned").report.clone())
            .collect()
    }

    /// Failed attempts so far, on every mirror.
    pub fn errors(&self) -> u64 {
        self.mirrors
            .iter()
            .map(|m| m.health.lock().expect("not poisoned").report.errors)
            .sum()
    }

    /// Logs a mirror failure. With one mirror the error itself reaches the
    /// operator, so the log line would only repeat it.
    fn note(&self, mirror: &dyn ObjectSource, what: std::fmt::Arguments<'_>) {
        if self.mirrors.len() > 1 {
            tracing::warn!(mirror = %mirror.location(), "{what}");
        } else {
            tracing::debug!(mirror = %mirror.location(), "{what}");
        }
    }

    fn locations(&self) -> String {
        self.mirrors
            .iter()
            .map(|m| m.source.location())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The newest validly signed pointer of `chain` on any mirror (by
    /// [`rank`]: signed creation time, then version), expired or not.
    pub async fn pointer(&self, chain: &ChainName, keys: &TrustedKeys) -> Result<Pointer, RestoreError> {
        let mut c = self.pointers(chain, keys).await?;
        Ok(c.swap_remove(0).pointer)
    }

    /// Every validly signed pointer of `chain` the mirrors serve, newest
    /// first (by [`rank`], then the pointer's own signing time). All mirrors
    /// are asked at once, each within `--timeout`, so a mirror that stalls
    /// or trickles its pointer never holds up the others. A mirror that
    /// serves a pointer failing its signature, or a validly signed pointer
    /// of another chain, is demoted for the rest of the run; one that does
    /// not answer in time is skipped for the pointer only.
    pub async fn pointers(
        &self,
        chain: &ChainName,
        keys: &TrustedKeys,
    ) -> Result<Vec<Candidate>, RestoreError> {
        let key = ObjectKey::pointer(chain);
        let limit = qsync_core::pointer::MAX_BYTES;
        let asks = self.mirrors.iter().map(|m| {
            let key = &key;
            async move {
                tokio::time::timeout(
                    self.opts.attempt_timeout,
                    get_signed(m.source.as_ref(), key, keys, limit),
                )
                .await
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut found = Vec::new();
        let mut last_err: Option<RestoreError> = None;
        for (i, answer) in answers.into_iter().enumerate() {
            let s = self.mirrors[i].source.as_ref();
            let what = format!("{key} in {}", s.location());
            let outcome = match answer {
                Err(_) => Err((
                    StoreError::Transport {
                        location: s.location(),
                        key: key.to_string(),
                        source: format!("no answer within {:?} (--timeout)", self.opts.attempt_timeout).into(),
                    }
                    .into(),
                    false,
                )),
                Ok(Ok(None)) => {
                    self.set_pointer_status(i, "none".into());
                    continue;
                }
                Ok(Ok(Some(bytes))) => match Pointer::decode(&bytes, &what) {
                    Ok(p) if &p.chain != chain => Err((
                        FormatError::Invalid(format!(
                            "{what} is validly signed but names chain {}, not {chain}; the mirror is mislabelled or replaying another chain",
                            p.chain
                        ))
                        .into(),
                        true,
                    )),
                    Ok(p) => Ok((p, bytes)),
                    Err(e) => Err((e.into(), true)),
                },
                Ok(Err(SignedReadError::Format(e))) => Err((e.into(), true)),
                Ok(Err(e)) => Err((e.into(), false)),
            };
            match outcome {
                Ok((pointer, bytes)) => found.push(Candidate {
                    mirror: i,
                    location: s.location(),
                    pointer,
                    bytes,
                }),
                Err((e, bad)) => {
                    if bad {
                        self.note(s, format_args!("{e}; mirror not used for this run"));
                        self.demote(i, format!("rejected: {e}"));
                    } else {
                        self.note(s, format_args!("pointer unusable: {e}"));
                        self.set_pointer_status(i, format!("error: {e}"));
                    }
                    last_err = Some(e);
                }
            }
        }
        found.sort_by(|a, b| {
            let key = |c: &Candidate| (rank(&c.pointer.current), c.pointer.created_at);
            key(b).cmp(&key(a))
        });
        if !found.is_empty() {
            return Ok(found);
        }
        Err(last_err.unwrap_or_else(|| RestoreError::NoSnapshot {
            chain: chain.to_string(),
            locations: self.locations(),
        }))
    }

    /// Records what mirror `i`'s pointer was, for the run's report.
    pub fn set_pointer_status(&self, i: usize, status: String) {
        self.mirrors[i]
            .health
            .lock()
            .expect("not poisoned")
            .report
            .pointer = Some(status);
    }

    /// Takes mirror `i` out of this run (it served something it must not).
    fn demote(&self, i: usize, why: String) {
        let mut h = self.mirrors[i].health.lock().expect("not poisoned");
        h.report.demoted = true;
        h.report.pointer = Some(why);
    }

    /// The manifest `snap` names, verified (signature and digest) and
    /// parsed, with the id of the trusted key whose signature verified.
    pub async fn manifest(
        &self,
        snap: &SnapshotRef,
        keys: &TrustedKeys,
    ) -> Result<(Manifest, KeyId), RestoreError> {
        self.manifest_and_bytes(snap, keys, None)
            .await
            .map(|(m, signer, _)| (m, signer))
    }

    /// [`Self::manifest`], with its stored bytes, asking mirror `first`
    /// (the one whose pointer named it, which just answered) before the
    /// others in their order.
    pub async fn manifest_and_bytes(
        &self,
        snap: &SnapshotRef,
        keys: &TrustedKeys,
        first: Option<usize>,
    ) -> Result<(Manifest, KeyId, Bytes), RestoreError> {
        let mut last: Option<RestoreError> = None;
        let rest = (0..self.mirrors.len()).filter(|i| Some(*i) != first);
        for i in first.into_iter().chain(rest) {
            let s = self.mirrors[i].source.as_ref();
            match get_manifest_and_bytes(s, snap, keys).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    let e = RestoreError::from(e);
                    self.note(s, format_args!("manifest unusable: {e}"));
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one mirror"))
    }

    /// Every signature of `body`, stored at `key`, that one of `keys`
    /// verifies (the primary one and each trusted key's additional one),
    /// as `(signature key, bytes)`, from the first mirror that serves any.
    pub async fn signatures(
        &self,
        key: &ObjectKey,
        body: &[u8],
        keys: &TrustedKeys,
    ) -> Result<Vec<(ObjectKey, Bytes)>, RestoreError> {
        let wanted = keys.signature_keys(key, body);
        let mut last: Option<RestoreError> = None;
        // Each request within --timeout, demoted mirrors skipped: a mirror
        // that stalls must not hold up the end of a completed restore.
        for m in self.mirrors.iter() {
            if m.health.lock().expect("not poisoned").report.demoted {
                continue;
            }
            let mut found = Vec::new();
            for sig_key in &wanted {
                let got = tokio::time::timeout(
                    self.opts.attempt_timeout,
                    m.source.get_limited(sig_key, MAX_SIGNATURE_BYTES),
                )
                .await;
                match got {
                    Ok(Ok(sig)) => match keys.verify(key, body, &sig) {
                        Ok(_) => found.push((sig_key.clone(), sig)),
                        Err(e) => last = Some(e.into()),
                    },
                    Ok(Err(e)) if e.is_not_found() => {}
                    Ok(Err(e)) => last = Some(e.into()),
                    Err(_) => {
                        last = Some(
                            StoreError::Transport {
                                location: m.source.location(),
                                key: sig_key.to_string(),
                                source: format!(
                                    "no answer within {:?} (--timeout)",
                                    self.opts.attempt_timeout
                                )
                                .into(),
                            }
                            .into(),
                        );
                        break;
                    }
                }
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Err(last.unwrap_or_else(|| RestoreError::NoMirror {
            chunk: wanted[0].to_string(),
            locations: self.locations(),
        }))
    }

    /// Expected seconds for mirror `i` to deliver `size` more bytes; 0 when
    /// not yet measured (so it gets tried).
    fn expected_secs(&self, i: usize, size: u64) -> f64 {
        let m = &self.mirrors[i];
        let rate = m.health.lock().expect("not poisoned").rate;
        rate.map_or(0.0, |r| {
            (f64::from(m.in_flight.load(Ordering::Relaxed)) + 1.0) * size as f64 / r
        })
    }

    /// The usable mirror expected to deliver soonest, skipping `tried`.
    /// Mirrors in cooldown are used only when nothing else is left.
    fn pick(&self, tried: &[usize], size: u64) -> Option<usize> {
        // Peers first: they exist to spare the origins. A slow one is
        // raced against an origin by the hedge ([`Self::pick_hedge`]).
        // But at most PEERS_PER_CHUNK of them before the origins: peers
        // still on an older snapshot lack every new chunk, and sixteen of
        // them must not cost sixteen 404s per chunk.
        let peers_tried = tried.iter().filter(|i| self.mirrors[**i].peer).count();
        let order = match peers_tried < PEERS_PER_CHUNK {
            true => [true, false],
            false => [false, true],
        };
        for respect_cooldown in [true, false] {
            for peer in order {
                if let Some(i) = self.best(tried, size, Some(peer), respect_cooldown) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// For a hedge of a request to mirror `first`: a mirror of the other
    /// kind (an origin for a peer's request, a peer for an origin's) when
    /// one is usable, so a slow peer is raced against an origin.
    fn pick_hedge(&self, tried: &[usize], size: u64, first: usize) -> Option<usize> {
        let other = !self.mirrors[first].peer;
        self.best(tried, size, Some(other), true)
            .or_else(|| self.pick(tried, size))
    }

    /// The usable mirror of `class` (peers, origins, or any) expected to
    /// deliver soonest, skipping `tried` and demoted ones (and cooling ones
    /// when `respect_cooldown`).
    fn best(&self, tried: &[usize], size: u64, class: Option<bool>, respect_cooldown: bool) -> Option<usize> {
        let now = Instant::now();
        (0..self.mirrors.len())
            .filter(|i| class.is_none_or(|peer| self.mirrors[*i].peer == peer))
            .filter(|i| {
                let h = self.mirrors[*i].health.lock().expect("not poisoned");
                let cooling = respect_cooldown && h.cooldown_until.is_some_and(|t| t > now);
                !(tried.contains(i) || h.report.demoted || cooling)
            })
            .min_by(|a, b| {
                self.expected_secs(*a, size)
                    .total_cmp(&self.expected_secs(*b, size))
            })
    }

    /// One request for chunk `c` to mirror `i`, streamed into `sink` and
    /// verified.
    /// `paused` keeps the time the sink waits on the restore itself (for
    /// room in its memory budget), which `--timeout` and the mirror's rate
    /// do not count.
    async fn attempt(&self, i: usize, c: &ChunkRef, sink: &mut dyn ChunkSink, paused: &Paused) -> Attempt {
        let m = &self.mirrors[i];
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(m);
        let key = ObjectKey::chunk(&c.blake3);
        let started = Instant::now();
        let transfer = async {
            let mut body = m
                .source
                .get_stream(&key, chunk::stored_limit(c.size))
                .await
                .map_err(Fault::Store)?;
            let mut decoder = StreamDecoder::new(c.size, c.blake3);
            let mut wire = 0u64;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(Fault::Store)?;
                wire += piece.len() as u64;
                if decoder.starts_frame(&piece) {
                    paused.during(sink.expanding()).await.map_err(Fault::Local)?;
                }
                if let Some((at, plain)) = decoder.feed(&piece)? {
                    sink.write(at, &plain).await.map_err(Fault::Local)?;
                }
            }
            if let Some((at, plain)) = decoder.finish()? {
                sink.write(at, &plain).await.map_err(Fault::Local)?;
            }
            Ok::<_, Fault>(wire)
        };
        // `--timeout`, pushed back by the wait for room.
        let timer = paused.sleep_past(started, self.opts.attempt_timeout);
        let outcome = tokio::select! {
            r = transfer => Ok(r),
            () = timer => Err(()),
        };
        let wire = match outcome {
            Ok(Ok(wire)) => wire,
            Ok(Err(Fault::Store(e))) if m.peer && e.is_not_found() => {
                // A peer lacks what its node rewrote, or holds an older
                // snapshot: ordinary, and no reason to slow down or cool it.
                tracing::debug!(mirror = %m.source.location(), "{e}; taking it from another mirror");
                return Attempt::Failed {
                    error: e.into(),
                    permanent: true,
                };
            }
            Ok(Err(Fault::Store(e))) => {
                let kind = if e.is_retryable() {
                    Failure::Transient
                } else {
                    Failure::Permanent
                };
                return self.failed(i, e.into(), kind);
            }
            Ok(Err(Fault::Corrupt(e))) => return self.failed(i, e.into(), Failure::Corrupt),
            Ok(Err(Fault::Local(e))) => return Attempt::Local(e),
            Err(_) => {
                let e = StoreError::Transport {
                    location: m.source.location(),
                    key: key.to_string(),
                    source: format!("no answer within {:?} (--timeout)", self.opts.attempt_timeout).into(),
                };
                return self.failed(i, e.into(), Failure::Transient);
            }
        };
        let secs = started
            .elapsed()
            .saturating_sub(paused.total())
            .as_secs_f64()
            .max(1e-4);
        let mut h = m.health.lock().expect("not poisoned");
        let sample = wire as f64 / secs;
        h.rate = Some(h.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample));
        h.report.bytes += wire;
        h.report.chunks += 1;
        h.failures_in_row = 0;
        h.cooldown_until = None;
        Attempt::Good
    }

    /// [`Self::attempt`], tagged with the mirror, for racing attempts.
    async fn attempt_at(
        &self,
        i: usize,
        c: &ChunkRef,
        sink: &mut dyn ChunkSink,
        paused: &Paused,
    ) -> (usize, Attempt) {
        (i, self.attempt(i, c, sink, paused).await)
    }

    fn failed(&self, i: usize, e: RestoreError, kind: Failure) -> Attempt {
        let m = &self.mirrors[i];
        let corrupt = kind == Failure::Corrupt;
        {
            let mut h = m.health.lock().expect("not poisoned");
            h.report.errors += 1;
            if corrupt {
                h.report.corrupt += 1;
                h.report.demoted = self.opts.demote_corrupt;
            }
            h.failures_in_row += 1;
            let backoff = jittered(Duration::from_millis(250) * 2u32.pow(h.failures_in_row.min(6)));
            h.cooldown_until = Some(Instant::now() + backoff);
        }
        if corrupt && self.opts.demote_corrupt {
            self.note(
                m.source.as_ref(),
                format_args!("{e}; mirror demoted for the rest of this run"),
            );
        } else {
            self.note(m.source.as_ref(), format_args!("{e}"));
        }
        Attempt::Failed {
            error: e,
            permanent: kind != Failure::Transient,
        }
    }

    /// Chunk `c`, verified, from whichever mirror delivers, written into
    /// `sink` as it arrives. A hedged second request holds its copy in
    /// memory and writes it only once the first request is gone, so `sink`
    /// never has two writers.
    pub async fn chunk(&self, c: &ChunkRef, sink: &mut dyn ChunkSink) -> Result<(), RestoreError> {
        let started = Instant::now();
        // Mirrors tried this round, and mirrors that cannot deliver this chunk.
        let mut tried: Vec<usize> = Vec::new();
        let mut exhausted: Vec<usize> = Vec::new();
        let mut last: Option<RestoreError> = None;
        let mut pause = Duration::from_millis(200);
        // Taken before an attempt borrows the sink.
        let room = sink.hedge_room();
        loop {
            let Some(first) = self.pick(&tried, c.size) else {
                // Every usable mirror failed this round: back off, then retry.
                let hopeless = (0..self.mirrors.len()).all(|i| {
                    exhausted.contains(&i)
                        || self.mirrors[i]
                            .health
                            .lock()
                            .expect("not poisoned")
                            .report
                            .demoted
                });
                if hopeless || started.elapsed() + pause > self.opts.deadline {
                    return Err(last.unwrap_or_else(|| RestoreError::NoMirror {
                        chunk: ObjectKey::chunk(&c.blake3).to_string(),
                        locations: self.locations(),
                    }));
                }
                tokio::time::sleep(jittered(pause)).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                tried.clone_from(&exhausted);
                continue;
            };
            tried.push(first);
            let hedge_after = Duration::from_secs_f64((4.0 * self.expected_secs(first, c.size)).max(2.0));
            let mut held = HedgeCopy::default();
            let mut hedge_sink = Some(&mut held);
            // The first attempt's waits for room in the memory budget hold
            // off the hedge too: a hedge then would hold the whole chunk
            // outside the budget. The hedge's sink (memory) never waits.
            let (paused, never) = (Paused::default(), Paused::default());
            let mut racing = FuturesUnordered::new();
            racing.push(self.attempt_at(first, c, &mut *sink, &paused));
            let hedge = paused.sleep_past(Instant::now(), hedge_after);
            tokio::pin!(hedge);
            let mut hedged = false;
            while !racing.is_empty() {
                tokio::select! {
                    Some((i, outcome)) = racing.next() => match outcome {
                        Attempt::Good if i == first => return Ok(()),
                        Attempt::Good => {
                            drop(racing);
                            // Its charge covers the copy and what writing
                            // it stages.
                            return sink.write(0, &held.bytes).await;
                        }
                        Attempt::Local(e) => return Err(e),
                        Attempt::Failed { error, permanent } => {
                            if permanent {
                                exhausted.push(i);
                            }
                            last = Some(error);
                        }
                    },
                    _ = &mut hedge, if !hedged => {
                        hedged = true;
                        let charge = match &room {
                            Some((budget, n)) => match budget.clone().try_acquire_many_owned(*n) {
                                Ok(p) => Some(p),
                                Err(_) => {
                                    tracing::debug!("no room in the memory budget to hedge chunk {}", c.blake3);
                                    continue;
                                }
                            },
                            None => None,
                        };
                        if let (Some(second), Some(h)) = (self.pick_hedge(&tried, c.size, first), hedge_sink.take()) {
                            h.charge = charge;
                            tracing::debug!("hedging chunk {} on {}", c.blake3, self.mirrors[second].source.location());
                            tried.push(second);
                            racing.push(self.attempt_at(second, c, h, &never));
                        }
                    }
                }
            }
        }
    }
}

/// Time an attempt spent waiting on the restore itself (for room in its
/// memory budget), and since when it is waiting now: no deadline set for
/// a mirror counts it.
#[derive(Default)]
struct Paused(std::sync::Mutex<(Duration, Option<Instant>)>);

impl Paused {
    /// Runs `wait`, counting its time.
    async fn during<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        self.0.lock().expect("not poisoned").1 = Some(Instant::now());
        let out = wait.await;
        let mut p = self.0.lock().expect("not poisoned");
        if let Some(since) = p.1.take() {
            p.0 += since.elapsed();
        }
        out
    }

    /// Time waited so far.
    fn total(&self) -> Duration {
        let p = self.0.lock().expect("not poisoned");
        p.0 + p.1.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Returns once `after` has passed since `from`, not counting the
    /// waits: a few ms late at most, and never spinning while a wait keeps
    /// pushing the end back.
    async fn sleep_past(&self, from: Instant, after: Duration) {
        loop {
            let until = from + after + self.total();
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until(until.max(now + Duration::from_millis(5)).into()).await;
        }
    }
}

/// Peers asked for one chunk before the origins are ([`Mirrors::pick`]).
const PEERS_PER_CHUNK: usize = 2;

/// `d` scaled by a random factor in [0.5, 1.5), so retries do not synchronise.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_store::testing::{Fault, Faulty, MemoryStore};
    use qsync_store::{ObjectSink, PutOptions};

    /// The chunk a store holds for `plain`, published as the snapshotter does.
    async fn publish(stores: &[&MemoryStore], plain: &[u8]) -> ChunkRef {
        let c = ChunkRef {
            blake3: qsync_core::Digest::of(plain),
            size: plain.len() as u64,
        };
        let key = ObjectKey::chunk(&c.blake3);
        let (_, stored) = chunk::encode(plain.to_vec(), 3);
        for s in stores {
            s.put(&key, stored.clone().into(), PutOptions::for_key(&key))
                .await
                .unwrap();
        }
        c
    }

    /// Collects a chunk's plaintext.
    struct Buffer(Vec<u8>);

    #[async_trait::async_trait]
    impl ChunkSink for Buffer {
        async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
            let end = at as usize + plain.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[at as usize..end].copy_from_slice(plain);
            Ok(())
        }
    }

    fn fast() -> MirrorOptions {
        MirrorOptions {
            attempt_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(20),
            demote_corrupt: true,
        }
    }

    fn plain() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    /// A sink that waits, as a restore waits for room in its memory
    /// budget, before a compressed chunk expands.
    struct Crowded(Buffer, Duration);

    #[async_trait::async_trait]
    impl ChunkSink for Crowded {
        async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
            self.0.write(at, plain).await
        }

        async fn expanding(&mut self) -> Result<(), RestoreError> {
            tokio::time::sleep(self.1).await;
            Ok(())
        }
    }

    /// Waiting for room in the memory budget is not the mirror's doing:
    /// it neither times the attempt out nor counts against the mirror.
    #[tokio::test]
    async fn waiting_for_memory_is_not_a_mirror_timeout() {
        let store = MemoryStore::new("a");
        let data = plain();
        let c = publish(&[&store], &data).await;
        let m = Mirrors::with_options(vec![Arc::new(store)], fast());
        let mut got = Crowded(Buffer(Vec::new()), fast().attempt_timeout * 3);
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0 .0, data);
        let r = m.report();
        assert_eq!((r[0].chunks, r[0].errors), (1, 0), "{r:?}");
    }

    /// Nor does it hedge: a second request then would hold the whole
    /// chunk outside the budget the first is waiting for.
    #[tokio::test]
    async fn waiting_for_memory_does_not_hedge() {
        let (a, b) = (Arc::new(MemoryStore::new("a")), Arc::new(MemoryStore::new("b")));
        let data = plain();
        let c = publish(&[&a, &b], &data).await;
        let (a, b) = (Arc::new(Faulty::new(a)), Arc::new(Faulty::new(b)));
        let opts = MirrorOptions {
            attempt_timeout: Duration::from_secs(10),
            ..fast()
        };
        let m = Mirrors::with_options(vec![a.clone(), b.clone()], opts);
        // Longer than the soonest hedge (2 s).
        let mut got = Crowded(Buffer(Vec::new()), Duration::from_millis(2600));
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0 .0, data);
        assert_eq!((a.reads(), b.reads()), (1, 0), "asked of each mirror");
    }

    /// A sink whose hedges are charged to a memory budget, as a
    /// restore's are.
    struct Budgeted(Buffer, Arc<tokio::sync::Semaphore>, u32);

    #[async_trait::async_trait]
    impl ChunkSink for Budgeted {
        async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
            self.0.write(at, plain).await
        }

        fn hedge_room(&self) -> Option<(Arc<tokio::sync::Semaphore>, u32)> {
            Some((self.1.clone(), self.2))
        }
    }

    /// A hedge holds a copy of the chunk in memory: it is charged to the
    /// restore's budget while it lasts, and not started without room there
    /// (a raw chunk holds only its streaming share, so an uncharged hedge
    /// of each chunk in flight could hold a gigabyte beside the budget).
    #[tokio::test]
    async fn a_hedge_is_charged_to_the_memory_budget_and_not_started_without_room() {
        let (a, b) = (Arc::new(MemoryStore::new("a")), Arc::new(MemoryStore::new("b")));
        let data = plain();
        let c = publish(&[&a, &b], &data).await;
        let stalling = Arc::new(Faulty::new(a));
        stalling.set(None, Fault::Stall);
        // The hedge comes after 2 s, the timeout after 3.
        let opts = || MirrorOptions {
            attempt_timeout: Duration::from_secs(3),
            ..fast()
        };
        let budget = Arc::new(tokio::sync::Semaphore::new(10));
        let m = Mirrors::with_options(vec![stalling.clone(), b.clone()], opts());
        let mut got = Budgeted(Buffer(Vec::new()), budget.clone(), 4);
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0 .0, data);
        assert_eq!(m.report()[0].errors, 0, "the hedge did not serve the chunk");
        assert_eq!(budget.available_permits(), 10, "the hedge's charge was kept");
        // Three permits free where the hedge needs four: the stalled
        // request times out, and only then is the other mirror asked.
        let crowded = Arc::new(tokio::sync::Semaphore::new(3));
        let m = Mirrors::with_options(vec![stalling, b], opts());
        let mut got = Budgeted(Buffer(Vec::new()), crowded, 4);
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0 .0, data);
        assert_eq!(m.report()[0].errors, 1, "hedged outside the budget");
    }

    #[tokio::test]
    async fn peers_that_lack_a_chunk_cost_at_most_two_requests_before_an_origin() {
        let origin = MemoryStore::new("origin");
        let c = publish(&[&origin], &plain()).await;
        let peers: Vec<Arc<Faulty>> = (0..5)
            .map(|i| Arc::new(Faulty::new(Arc::new(MemoryStore::new(&format!("peer{i}"))))))
            .collect();
        let m = Mirrors::with_peers(
            peers.iter().map(|p| p.clone() as Arc<dyn ObjectSource>).collect(),
            vec![Arc::new(origin)],
            fast(),
        );
        let mut got = Buffer(Vec::new());
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0, plain());
        let asked: u64 = peers.iter().map(|p| p.reads()).sum();
        assert_eq!(asked, PEERS_PER_CHUNK as u64, "peers asked before the origin");
    }

    #[tokio::test]
    async fn a_corrupt_mirror_is_demoted_and_the_chunk_comes_from_an_honest_one() {
        let (a, b) = (Arc::new(MemoryStore::new("a")), MemoryStore::new("b"));
        let data = plain();
        let c = publish(&[&a, &b], &data).await;
        let bad = Arc::new(Faulty::new(a));
        bad.set(None, Fault::Corrupt);
        // With no rates measured yet, the first mirror is asked first.
        let m = Mirrors::with_options(vec![bad.clone(), Arc::new(b)], fast());
        let mut got = Buffer(Vec::new());
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0, data);
        let r = m.report();
        assert_eq!((r[0].corrupt, r[0].demoted, r[0].chunks), (1, true, 0), "{r:?}");
        assert_eq!(r[1].chunks, 1, "{r:?}");
        // Demoted: the next chunk does not ask it again.
        let before = bad.reads();
        m.chunk(&c, &mut Buffer(Vec::new())).await.unwrap();
        assert_eq!(bad.reads(), before);
    }

    #[tokio::test]
    async fn stalling_failing_and_missing_mirrors_do_not_stop_the_chunk() {
        let s: Vec<Arc<MemoryStore>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| Arc::new(MemoryStore::new(n)))
            .collect();
        let data = plain();
        let c = publish(&[&s[0], &s[1], &s[2], &s[3]], &data).await;
        let faulty = |i: usize, fault: Fault| {
            let f = Arc::new(Faulty::new(s[i].clone()));
            f.set(None, fault);
            f as Arc<dyn ObjectSource>
        };
        let m = Mirrors::with_options(
            vec![
                faulty(0, Fault::Stall),
                faulty(1, Fault::Error),
                faulty(2, Fault::Missing),
                s[3].clone(),
            ],
            fast(),
        );
        let mut got = Buffer(Vec::new());
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0, data);
        let r = m.report();
        assert_eq!(r[3].chunks, 1, "{r:?}");
        assert_eq!(r[0].chunks + r[1].chunks + r[2].chunks, 0, "{r:?}");
    }

    #[tokio::test]
    async fn a_stalling_peer_is_raced_against_an_origin_not_another_peer() {
        let s: Vec<Arc<MemoryStore>> = ["peer-a", "peer-b", "origin"]
            .iter()
            .map(|n| Arc::new(MemoryStore::new(n)))
            .collect();
        let data = plain();
        let c = publish(&[&s[0], &s[1], &s[2]], &data).await;
        let stalling = Arc::new(Faulty::new(s[0].clone()));
        stalling.set(None, Fault::Stall);
        // Long enough per request that the hedge (after 2 s) fires first.
        let opts = MirrorOptions {
            attempt_timeout: Duration::from_secs(20),
            ..fast()
        };
        let m = Mirrors::with_peers(vec![stalling, s[1].clone()], vec![s[2].clone()], opts);
        let mut got = Buffer(Vec::new());
        m.chunk(&c, &mut got).await.unwrap();
        assert_eq!(got.0, data);
        let r = m.report();
        assert_eq!((r[1].chunks, r[2].chunks), (0, 1), "{r:?}");
    }

    #[tokio::test]
    async fn a_peers_404_costs_it_nothing_and_the_origin_serves_the_chunk() {
        let (peer, origin) = (
            Arc::new(MemoryStore::new("peer")),
            Arc::new(MemoryStore::new("origin")),
        );
        let data = plain();
        let c = publish(&[&origin], &data).await;
        let m = Mirrors::with_peers(vec![peer], vec![origin], fast());
        m.chunk(&c, &mut Buffer(Vec::new())).await.unwrap();
        let r = m.report();
        assert_eq!((r[0].errors, r[1].chunks), (0, 1), "{r:?}");
        assert_eq!(m.errors(), 0, "a peer's 404 would cut the pace");
    }

    #[tokio::test]
    async fn a_chunk_no_mirror_holds_fails_naming_it_instead_of_retrying_forever() {
        let (a, b) = (MemoryStore::new("a"), MemoryStore::new("b"));
        let data = plain();
        let c = ChunkRef {
            blake3: qsync_core::Digest::of(&data),
            size: data.len() as u64,
        };
        let m = Mirrors::with_options(vec![Arc::new(a), Arc::new(b)], fast());
        let e = m
            .chunk(&c, &mut Buffer(Vec::new()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&c.blake3.to_hex()[..16]), "{e}");
    }
}
