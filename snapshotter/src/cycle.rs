//! One snapshot cycle of a configured chain: probe each store for
//! conditional writes and take its lease, freeze
//! the node, record its head, read (directly, from hard-link staging, or
//! from the pre hook's copy), thaw, publish to every store, invalidate the
//! CDN, apply retention and collect garbage, and remember what was read.
//!
//! The post hook runs whenever the pre hook was started: on success, on
//! every failure and on cancellation. With the `hooks` strategy it runs
//! after the chunks are uploaded and before any manifest or pointer is
//! written, so a failing post hook (a node that does not come back) leaves
//! every store's previous snapshot in place and is reported, like every
//! other failure, with the stage it happened in.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qsync_core::progress::Progress;
use qsync_core::sign::SigningKeys;
use qsync_core::ChainName;
use qsync_store::probe::{require_conditional_writes, WriteSafety};
use qsync_store::{open_sink_at, ObjectSink, StoreId};
use serde::Serialize;

use crate::chainmeta::AroundFreeze;
use crate::commit;
use crate::config::{ChainConfig, Strategy};
use crate::freeze::{self, run_hook};
use crate::gc::{self, GcReport};
use crate::lease::{self, Lease, LeaseError};
use crate::options::SnapshotSummary;
use crate::publish::{publish_many, KnownFiles, PublishRun};
use crate::SnapshotError;

pub use crate::error::Stage;

/// A failed cycle: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("chain {chain}: {} stage failed: {message}", stage.as_str())]
pub struct CycleError {
    /// The chain.
    pub chain: String,
    /// Where it failed.
    pub stage: Stage,
    /// Why, with what to do.
    pub message: String,
    /// What the cycle measured before failing.
    pub partial: Box<CycleReport>,
}

/// One store's part of a cycle.
#[derive(Clone, Debug, Serialize)]
pub struct StoreReport {
    /// Which store (matches the report to the opened store).
    #[serde(skip)]
    pub id: StoreId,
    /// The store.
    pub location: String,
    /// Whether its pointer moved.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
    /// Garbage collection after the publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcReport>,
    /// CloudFront invalidation ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudfront_invalidation: Option<String>,
}

/// What a cycle did. Its JSON starts with the fields of the first
/// successful store's [`SnapshotSummary`], as `qsync snapshot --json` prints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CycleReport {
    /// The first successful store's summary.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
    /// Freeze strategy.
    pub strategy: String,
    /// Seconds from the start of the pre hook to the end of the post hook.
    pub freeze_seconds: f64,
    /// Seconds of the whole cycle.
    pub duration_seconds: f64,
    /// Head block recorded in the manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Its hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
    /// Files trusted as unchanged since the last cycle (not read).
    pub files_unchanged: u64,
    /// Their bytes.
    pub bytes_unchanged: u64,
    /// Per store.
    pub stores: Vec<StoreReport>,
}

impl StoreReport {
    /// A store's report from its publish result; GC and the CDN come later.
    fn new(sink: &dyn ObjectSink, result: Result<SnapshotSummary, impl std::fmt::Display>) -> StoreReport {
        StoreReport::of(sink.id(), sink.location(), result)
    }

    fn of(
        id: StoreId,
        location: String,
        result: Result<SnapshotSummary, impl std::fmt::Display>,
    ) -> StoreReport {
        StoreReport {
            id,
            location,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| e.to_string()),
            summary: result.ok(),
            gc: None,
            cloudfront_invalidation: None,
        }
    }
}

impl CycleReport {
    /// Bytes of chunks no store had before (the most any store uploaded).
    pub fn bytes_new(&self) -> u64 {
        self.stores
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.bytes_new)
            .max()
            .unwrap_or(0)
    }
}

/// State-dir records of a chain: the unchanged-file index, and the IPFS
/// root each store pinned last.
const KNOWN_FILES: &str = "known-files.json";
const IPFS_ROOTS: &str = "ipfs-roots.json";

/// The post hook's result and the freeze time when it finished.
type Thawed = (Result<(), freeze::HookError>, Duration);

/// A configured chain, ready to run cycles.
pub struct ChainJob {
    /// Its configuration.
    pub cfg: ChainConfig,
    /// Its validated name.
    pub chain: ChainName,
    signer: SigningKeys,
    /// The opened stores, in the configured order.
    stores: Vec<Arc<dyn ObjectSink>>,
    state_dir: PathBuf,
    /// Held while a cycle or a re-sign writes this chain's pointers: both
    /// write conditionally, so running them at once would fail one.
    pub busy: tokio::sync::Mutex<()>,
}

impl ChainJob {
    /// Loads the key and opens the stores of `cfg`.
    pub fn open(cfg: ChainConfig, state_dir: &Path) -> anyhow::Result<ChainJob> {
        use anyhow::Context;
        let chain = ChainName::new(cfg.name.clone())?;
        let signer =
            SigningKeys::load(&cfg.secret_key).with_context(|| format!("chain {chain}: secret-key"))?;
        let opts = cfg.store_options();
        let stores = cfg
            .stores
            .iter()
            .map(|url| open_sink_at(url, &opts).with_context(|| format!("chain {chain}: store {url}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(ChainJob {
            state_dir: state_dir.join(chain.as_str()),
            chain,
            signer,
            stores,
            cfg,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The signing keys (one, or two during a key rotation).
    pub fn signer(&self) -> &SigningKeys {
        &self.signer
    }

    /// The opened stores.
    pub fn sinks(&self) -> impl Iterator<Item = &Arc<dyn ObjectSink>> {
        self.stores.iter()
    }

    /// A JSON record of this chain in the state dir; `None` when absent or
    /// unreadable (each record is only an optimisation or a reminder).
    fn load_state<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.state_dir.join(name);
        // Read as a stream: a million files' record is hundreds of MB of JSON.
        let file = std::fs::File::open(&path).ok()?;
        serde_json::from_reader(std::io::BufReader::with_capacity(1 << 16, file))
            .map_err(|e| tracing::warn!("ignoring {}: {e}", path.display()))
            .ok()
    }

    /// Replaces a record in the state dir atomically; a failure is logged.
    fn save_state(&self, name: &str, value: &impl Serialize, consequence: &str) {
        let path = self.state_dir.join(name);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.state_dir)?;
            let tmp = path.with_extension("json.tmp");
            let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
            serde_json::to_writer(&mut w, value)?;
            std::io::Write::flush(&mut w)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!("could not save {}: {e}; {consequence}", path.display());
        }
    }

    /// Runs one cycle. `cancel` turning true aborts it before any pointer
    /// moves (the post hook still runs).
    pub async fn run(
        &self,
        progress: Arc<dyn Progress>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<CycleReport, CycleError> {
        let _busy = self.busy.lock().await;
        let started = Instant::now();
        let mut report = CycleReport {
            strategy: format!("{:?}", self.cfg.freeze.strategy).to_lowercase(),
            ..CycleReport::default()
        };
        let fail = |stage: Stage, message: String, report: &CycleReport| CycleError {
            chain: self.chain.to_string(),
            stage,
            message,
            partial: Box::new(report.clone()),
        };

        // Leases first: a second agent stops here, before touching the node.
        // Each store must first show that it honours conditional writes,
        // which leases and pointer moves rely on (unless `lease-only`).
        let mut leases: Vec<Lease> = Vec::new();
        let mut sinks: Vec<Arc<dyn ObjectSink>> = Vec::new();
        for sink in &self.stores {
            if let Err(e) =
                require_conditional_writes(sink.as_ref(), WriteSafety::from_lease_only(self.cfg.lease_only))
                    .await
            {
                report.stores.push(StoreReport::new(sink.as_ref(), Err(e)));
                continue;
            }
            match lease::acquire_for_publish(sink.clone(), &self.chain).await {
                Ok(l) => {
                    leases.push(l);
                    sinks.push(sink.clone());
                }
                Err(e @ LeaseError::Held { .. }) => {
                    for l in leases {
                        l.release().await;
                    }
                    return Err(fail(Stage::Lock, e.to_string(), &report));
                }
                Err(e) => report.stores.push(StoreReport::new(sink.as_ref(), Err(e))),
            }
        }
        let result = if sinks.is_empty() {
            let why: Vec<String> = report
                .stores
                .iter()
                .map(|s| format!("{}: {}", s.location, s.error.as_deref().unwrap_or("?")))
                .collect();
            Err(fail(
                Stage::Upload,
                format!(
                    "no store could be reached ({}); the previous snapshots stand",
                    why.join("; ")
                ),
                &report,
            ))
        } else {
            self.frozen(&sinks, progress, cancel, &mut report, started).await
        };
        if result.is_ok() {
            self.after_publish(&mut report).await;
        }
        for l in leases {
            l.release().await;
        }
        report.duration_seconds = started.elapsed().as_secs_f64();
        let failed = report.stores.iter().find(|s| !s.ok);
        match (result, failed) {
            (Err(mut e), _) => {
                e.partial = Box::new(report);
                Err(e)
            }
            (Ok(()), Some(s)) => {
                let message = format!("store {}: {}", s.location, s.error.clone().unwrap_or_default());
                let stage = if s.summary.is_some() {
                    Stage::Gc
                } else {
                    Stage::Upload
                };
                Err(fail(stage, message, &report))
            }
            (Ok(()), None) => Ok(report),
        }
    }

    /// Freeze, read, thaw, publish.
    async fn frozen(
        &self,
        sinks: &[Arc<dyn ObjectSink>],
        progress: Arc<dyn Progress>,
        cancel: tokio::sync::watch::Receiver<bool>,
        report: &mut CycleReport,
        started: Instant,
    ) -> Result<(), CycleError> {
        let f = &self.cfg.freeze;
        let fail = |stage: Stage, message: String| CycleError {
            chain: self.chain.to_string(),
            stage,
            message,
            partial: Box::default(),
        };
        let around = match &self.cfg.metadata {
            Some(m) => Some(AroundFreeze::before(m).await),
            None => None,
        };
        let frozen_at = Instant::now();
        // The post hook, run at most once, from wherever the cycle ends up.
        let thawed: Arc<Mutex<Option<Thawed>>> = Arc::default();
        let thaw = || {
            let thawed = thawed.clone();
            let (post, timeout) = (f.post.clone(), f.timeout);
            async move {
                if thawed.lock().expect("not poisoned").is_some() {
                    return Ok(());
                }
                let r = run_hook("post", &post, timeout).await;
                *thawed.lock().expect("not poisoned") = Some((r.clone(), frozen_at.elapsed()));
                r
            }
        };
        if let Err(e) = run_hook("pre", &f.pre, f.timeout).await {
            let _ = thaw().await;
            return Err(fail(Stage::Freeze, e.to_string()));
        }
        let head = match (&self.cfg.metadata, around) {
            (Some(m), Some(around)) => match around.frozen(m).await {
                Ok(h) => Some(h),
                Err(e) => {
                    let _ = thaw().await;
                    return Err(fail(
                        Stage::Metadata,
                        format!("the head block could not be read while frozen: {e}"),
                    ));
                }
            },
            _ => None,
        };
        report.height = head.as_ref().map(|h| h.height);
        report.block_hash = head.as_ref().map(|h| h.block_hash.clone());
        let staging = f
            .staging
            .clone()
            .unwrap_or_else(|| freeze::default_staging(&self.cfg.source, self.chain.as_str()));
        let read_from = match f.strategy {
            Strategy::Hooks => self.cfg.source.clone(),
            Strategy::Path => f.path.clone().expect("checked by Config::load"),
            Strategy::Hardlink => {
                let (src, dst, pats) = (self.cfg.source.clone(), staging.clone(), f.immutable.clone());
                let staged = tokio::task::spawn_blocking(move || freeze::stage(&src, &dst, &pats))
                    .await
                    .expect("staging does not panic");
                match staged {
                    Ok(s) => tracing::info!(
                        "staged {}: {} files hard-linked, {} copied ({} bytes)",
                        staging.display(),
                        s.linked,
                        s.copied,
                        s.bytes_copied
                    ),
                    Err(e) => {
                        let _ = thaw().await;
                        let _ = freeze::clear(&staging);
                        return Err(fail(Stage::Stage, e.to_string()));
                    }
                }
                staging.clone()
            }
        };
        if f.strategy != Strategy::Hooks {
            if let Err(e) = thaw().await {
                let _ = freeze::clear(&staging);
                report.freeze_seconds = frozen_at.elapsed().as_secs_f64();
                return Err(fail(Stage::Thaw, e.to_string()));
            }
        }
        let opts = self.cfg.snapshot_options(self.chain.clone(), head.as_ref());
        let known: Option<KnownFiles> = self
            .cfg
            .skip_unchanged
            .then(|| self.load_state(KNOWN_FILES))
            .flatten();
        // With the hooks strategy the node thaws once the chunks are up,
        // before any pointer moves.
        let run = PublishRun {
            known,
            cancel: Some(cancel),
            gate: Some(Box::pin(thaw())),
            ..PublishRun::new(&read_from, &self.signer, &opts, progress)
        };
        let published = publish_many(run, sinks.to_vec()).await;
        let done = thawed.lock().expect("not poisoned").clone();
        let post = match done {
            Some(done) => done,
            None => (thaw().await, frozen_at.elapsed()),
        };
        report.freeze_seconds = post.1.as_secs_f64();
        if f.strategy == Strategy::Hardlink {
            if let Err(e) = freeze::clear(&staging) {
                tracing::warn!("removing staging: {e}");
            }
        }
        let published = match published {
            Ok(p) => p,
            Err(SnapshotError::Cancelled) => {
                return Err(fail(
                    Stage::Cancelled,
                    "stopped by a signal before any pointer moved; the previous snapshot stands".into(),
                ))
            }
            Err(e) => return Err(fail(e.stage(), e.to_string())),
        };
        if let Err(e) = post.0 {
            return Err(fail(Stage::Thaw, e.to_string()));
        }
        report.files_unchanged = published.files_unchanged;
        report.bytes_unchanged = published.bytes_unchanged;
        if self.cfg.skip_unchanged {
            self.save_state(KNOWN_FILES, &published.known, "the next cycle reads every file");
        }
        for s in published.stores {
            report.stores.push(StoreReport::of(s.id, s.location, s.result));
        }
        report.summary = report.stores.iter().find_map(|s| s.summary.clone());
        tracing::debug!("cycle of {} published after {:?}", self.chain, started.elapsed());
        Ok(())
    }

    /// Each IPFS publish pins the store directory's new root, which holds
    /// every snapshot the pointer keeps; the root pinned by the previous
    /// cycle is then unpinned (remembered in the state dir per store).
    async fn retire_older_root(&self, sink: &dyn ObjectSink, root: &str) {
        let mut roots: std::collections::BTreeMap<StoreId, String> =
            self.load_state(IPFS_ROOTS).unwrap_or_default();
        let location = sink.location();
        let old = roots.get(&sink.id()).filter(|old| old.as_str() != root);
        if let (Some(old), Some(pins)) = (old, sink.roots()) {
            match pins.retire_root(old).await {
                Ok(()) => tracing::info!("{location}: unpinned the previous root {old}"),
                Err(e) => tracing::warn!("{location}: could not unpin the previous root {old}: {e}"),
            }
        }
        roots.insert(sink.id(), root.to_string());
        self.save_state(IPFS_ROOTS, &roots, "the next cycle cannot unpin this root");
    }

    /// CDN invalidation and garbage collection in each store that took the snapshot.
    async fn after_publish(&self, report: &mut CycleReport) {
        for s in report.stores.iter_mut() {
            let Some(summary) = &s.summary else { continue };
            let Some(sink) = self.stores.iter().find(|k| k.id() == s.id) else {
                continue;
            };
            s.cloudfront_invalidation = commit::invalidate_rewritten(sink.as_ref(), &summary.rewritten).await;
            if let Some(root) = &summary.ipfs_root_cid {
                self.retire_older_root(sink.as_ref(), root).await;
            }
            if self.cfg.retention.gc {
                match gc::collect(
                    sink.clone(),
                    &self.signer.trusted(),
                    Some(&self.chain),
                    self.cfg.retention.gc_grace,
                    gc::GcMode::Delete,
                )
                .await
                {
                    Ok(g) => {
                        if let Some(why) = &g.deferred {
                            tracing::info!("{}: garbage collection deferred: {why}", s.location);
                        }
                        s.gc = Some(g);
                    }
                    Err(e) => {
                        s.ok = false;
                        s.error = Some(format!(
                            "published, but garbage collection failed: {e}; nothing was deleted that a kept snapshot needs"
                        ));
                    }
                }
            }
        }
    }
}
