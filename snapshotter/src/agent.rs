//! The long-running agent: each chain's cycles on its cron schedule, the
//! pointer re-signed on its own schedule while snapshots are healthy, and
//! `/healthz` and `/metrics` over HTTP. SIGTERM (the `shutdown` channel)
//! aborts a running cycle before any pointer moves, runs its post hook,
//! releases the leases and returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use qsync_core::progress::Progress;
use qsync_core::time::Timestamp;
use qsync_store::prometheus::{self, labels};
use tokio::sync::watch;

use crate::commit::resign;
use crate::config::{parse_schedule, Config};
use crate::cycle::{ChainJob, CycleError, CycleReport, Stage};

/// What the agent knows about one chain, for `/metrics` and `/healthz`.
#[derive(Clone, Debug, Default)]
pub struct ChainStats {
    /// End of the last cycle that succeeded in every store.
    pub last_success: Option<Timestamp>,
    /// When the agent started watching this chain.
    pub since: Option<Timestamp>,
    /// Duration of the last cycle, seconds.
    pub duration_seconds: f64,
    /// Freeze time of the last cycle, seconds.
    pub freeze_seconds: f64,
    /// Last successful cycle: bytes of chunks new to the stores.
    pub bytes_new: u64,
    /// ... and bytes already there.
    pub bytes_reused: u64,
    /// ... chunk references in the manifest.
    pub chunks: u64,
    /// ... files trusted as unchanged.
    pub files_unchanged: u64,
    /// Snapshot version published last.
    pub version: u64,
    /// Its height.
    pub height: Option<u64>,
    /// Cycles that succeeded.
    pub cycles_ok: u64,
    /// Failures by stage.
    pub failures: BTreeMap<Stage, u64>,
    /// Per store: last success.
    pub store_success: BTreeMap<String, Timestamp>,
    /// Expiry of the pointer as last written.
    pub pointer_expires_at: Option<Timestamp>,
    /// Pointer re-signs.
    pub resigns: u64,
    /// Chunks deleted by garbage collection.
    pub gc_chunks_deleted: u64,
    /// Their bytes.
    pub gc_bytes_deleted: u64,
}

impl ChainStats {
    /// Records a finished cycle.
    pub fn record(&mut self, r: &Result<CycleReport, CycleError>) {
        let report = match r {
            Ok(rep) => rep,
            Err(e) => {
                *self.failures.entry(e.stage).or_default() += 1;
                &e.partial
            }
        };
        self.duration_seconds = report.duration_seconds;
        self.freeze_seconds = report.freeze_seconds;
        let now = Timestamp::now();
        for s in &report.stores {
            if s.summary.is_some() {
                self.store_success.insert(s.location.clone(), now);
            }
            if let Some(g) = &s.gc {
                self.gc_chunks_deleted += g.chunks_deleted;
                self.gc_bytes_deleted += g.bytes_deleted;
            }
        }
        if let Some(s) = &report.summary {
            self.bytes_new = report.bytes_new();
            self.bytes_reused = s.bytes_total.saturating_sub(self.bytes_new);
            self.chunks = s.chunks_total;
            self.files_unchanged = report.files_unchanged;
            self.version = s.version;
            self.height = report.height;
            self.pointer_expires_at = humantime::parse_rfc3339(&s.expires_at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| Timestamp(d.as_secs()));
        }
        if r.is_ok() {
            self.cycles_ok += 1;
            self.last_success = Some(now);
        }
    }

    /// Whether the last success (or the start, before any) is within `max_age`.
    pub fn healthy(&self, max_age: Duration) -> bool {
        let since = self.last_success.or(self.since).unwrap_or(Timestamp(0));
        Timestamp::now().0.saturating_sub(since.0) <= max_age.as_secs()
    }
}

/// The agent's shared state.
#[derive(Default)]
pub struct Stats {
    /// Per chain, with its max-age.
    pub chains: Mutex<BTreeMap<String, (ChainStats, Duration)>>,
}

impl Stats {
    fn update(&self, chain: &str, f: impl FnOnce(&mut ChainStats)) {
        let mut chains = self.chains.lock().expect("not poisoned");
        if let Some((s, _)) = chains.get_mut(chain) {
            f(s);
        }
    }

    /// `/metrics` in the Prometheus text format (docs/operations.md lists
    /// every metric; the Grafana dashboard and alerts use these names).
    pub fn render(&self) -> String {
        let chains = self.chains.lock().expect("not poisoned");
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            prometheus::family(&mut out, name, kind, help, rows);
        };
        let per = |f: &dyn Fn(&ChainStats) -> Option<f64>| -> Vec<(String, f64)> {
            chains
                .iter()
                .filter_map(|(c, (s, _))| f(s).map(|v| (labels(&[("chain", c)]), v)))
                .collect()
        };
        family(
            "qsync_agent_last_success_timestamp_seconds",
            "gauge",
            "End of the last cycle that succeeded in every store.",
            per(&|s| s.last_success.map(|t| t.0 as f64)),
        );
        family(
            "qsync_agent_cycle_duration_seconds",
            "gauge",
            "Duration of the last cycle.",
            per(&|s| Some(s.duration_seconds)),
        );
        family(
            "qsync_agent_freeze_seconds",
            "gauge",
            "Time the node was frozen in the last cycle.",
            per(&|s| Some(s.freeze_seconds)),
        );
        family(
            "qsync_agent_bytes_new",
            "gauge",
            "Last snapshot: bytes of chunks the stores did not have.",
            per(&|s| Some(s.bytes_new as f64)),
        );
        family(
            "qsync_agent_bytes_reused",
            "gauge",
            "Last snapshot: bytes already in the stores.",
            per(&|s| Some(s.bytes_reused as f64)),
        );
        family(
            "qsync_agent_chunks",
            "gauge",
            "Last snapshot: chunk references in its manifest.",
            per(&|s| Some(s.chunks as f64)),
        );
        family(
            "qsync_agent_files_unchanged",
            "gauge",
            "Last snapshot: files trusted as unchanged and not read.",
            per(&|s| Some(s.files_unchanged as f64)),
        );
        family(
            "qsync_agent_snapshot_version",
            "gauge",
            "Version of the last snapshot published.",
            per(&|s| (s.version > 0).then_some(s.version as f64)),
        );
        family(
            "qsync_agent_snapshot_height",
            "gauge",
            "Block height of the last snapshot published.",
            per(&|s| s.height.map(|h| h as f64)),
        );
        family(
            "qsync_agent_pointer_expires_timestamp_seconds",
            "gauge",
            "Expiry of the pointer as last written.",
            per(&|s| s.pointer_expires_at.map(|t| t.0 as f64)),
        );
        family(
            "qsync_agent_cycles_total",
            "counter",
            "Cycles that succeeded in every store.",
            per(&|s| Some(s.cycles_ok as f64)),
        );
        family(
            "qsync_agent_resigns_total",
            "counter",
            "Pointer re-signs.",
            per(&|s| Some(s.resigns as f64)),
        );
        family(
            "qsync_agent_gc_deleted_chunks_total",
            "counter",
            "Chunks deleted by garbage collection.",
            per(&|s| Some(s.gc_chunks_deleted as f64)),
        );
        family(
            "qsync_agent_gc_deleted_bytes_total",
            "counter",
            "Bytes deleted by garbage collection.",
            per(&|s| Some(s.gc_bytes_deleted as f64)),
        );
        let failures = chains
            .iter()
            .flat_map(|(c, (s, _))| {
                Stage::ALL.iter().map(move |st| {
                    (
                        labels(&[("chain", c), ("stage", st.as_str())]),
                        *s.failures.get(st).unwrap_or(&0) as f64,
                    )
                })
            })
            .collect();
        family(
            "qsync_agent_failures_total",
            "counter",
            "Failed cycles by the stage that failed.",
            failures,
        );
        let stores = chains
            .iter()
            .flat_map(|(c, (s, _))| {
                s.store_success
                    .iter()
                    .map(move |(store, t)| (labels(&[("chain", c), ("store", store)]), t.0 as f64))
            })
            .collect();
        family(
            "qsync_agent_store_last_success_timestamp_seconds",
            "gauge",
            "Last publish that moved the pointer in this store.",
            stores,
        );
        let healthy = chains
            .iter()
            .map(|(c, (s, max_age))| {
                (
                    labels(&[("chain", c)]),
                    if s.healthy(*max_age) { 1.0 } else { 0.0 },
                )
            })
            .collect();
        family(
            "qsync_agent_healthy",
            "gauge",
            "1 while the last success is younger than max-age.",
            healthy,
        );
        out
    }

    /// Chains whose last success is older than their max-age.
    pub fn unhealthy(&self) -> Vec<String> {
        let chains = self.chains.lock().expect("not poisoned");
        chains
            .iter()
            .filter(|(_, (s, max_age))| !s.healthy(*max_age))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

async fn healthz(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    let bad = stats.unhealthy();
    if bad.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no successful snapshot within max-age for: {}\n", bad.join(", ")),
        )
    }
}

async fn metrics(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    ([("content-type", prometheus::CONTENT_TYPE)], stats.render())
}

/// The router of `/healthz` and `/metrics`.
pub fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(stats)
}

/// Sleeps until the next time `schedule` names; false when told to stop first.
async fn wait_for(schedule: &cron::Schedule, shutdown: &mut watch::Receiver<bool>) -> bool {
    let Some(next) = schedule.upcoming(chrono::Utc).next() else {
        let _ = shutdown.wait_for(|s| *s).await;
        return false;
    };
    let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
    let stopped = tokio::select! {
        () = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    !stopped && !*shutdown.borrow()
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let mut jobs = Vec::new();
    for c in cfg.chains {
        let max_age = c.max_age;
        let job = Arc::new(ChainJob::open(c, &cfg.agent.state_dir)?);
        stats.chains.lock().expect("not poisoned").insert(
            job.chain.to_string(),
            (
                ChainStats {
                    since: Some(Timestamp::now()),
                    ..ChainStats::default()
                },
                max_age,
            ),
        );
        jobs.push(job);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let schedule = parse_schedule(&job.cfg.schedule)?;
        let (cycle_stats, mut stop, progress) = (stats.clone(), shutdown.clone(), progress.clone());
        let cycles = job.clone();
        tasks.spawn(async move {
            while wait_for(&schedule, &mut stop).await {
                let chain = cycles.chain.to_string();
                tracing::info!("chain {chain}: cycle starting");
                let started = Instant::now();
                let r = cycles.run(progress.clone(), stop.clone()).await;
                match &r {
                    Ok(rep) => tracing::info!(
                        "chain {chain}: version {} published in {:.1?} (frozen {:.1}s)",
                        rep.summary.as_ref().map_or(0, |s| s.version),
                        started.elapsed(),
                        rep.freeze_seconds
                    ),
                    Err(e) => tracing::error!("{e}"),
                }
                cycle_stats.update(&chain, |s| s.record(&r));
            }
        });
        let schedule = parse_schedule(&job.cfg.resign)?;
        let (resign_stats, mut stop) = (stats.clone(), shutdown.clone());
        tasks.spawn(async move {
            while wait_for(&schedule, &mut stop).await {
                resign_all(&job, &resign_stats).await;
            }
        });
    }
    let app = router(stats.clone());
    let mut stop = shutdown.clone();
    let server = qsync_cdn::serve::listen::serve_router(listener, app, Default::default(), async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let (served, ()) = tokio::join!(server, async { while tasks.join_next().await.is_some() {} });
    served?;
    Ok(())
}

/// Re-signs the chain's pointer in every store, unless its snapshot is
/// older than max-age: then the expiry stops moving and readers eventually
/// refuse the stale source instead of restoring it.
async fn resign_all(job: &ChainJob, stats: &Stats) {
    // A running cycle writes a fresh pointer anyway.
    let Ok(_busy) = job.busy.try_lock() else {
        return;
    };
    for sink in job.sinks() {
        // Another process publishing this chain holds the lease: skip.
        let key = qsync_core::ObjectKey::publish_lock(&job.chain);
        let lease =
            match crate::lease::Lease::acquire(sink.clone(), key, &format!("re-sign {}", job.chain)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::info!(
                        "chain {}: not re-signing in {} now: {e}",
                        job.chain,
                        sink.location()
                    );
                    continue;
                }
            };
        let r = resign(
            sink.clone(),
            job.signer(),
            &job.chain,
            job.cfg.expires_in,
            job.cfg.max_age,
        )
        .await;
        lease.release().await;
        match r {
            Ok(Some(p)) => stats.update(job.chain.as_str(), |s| {
                s.resigns += 1;
                s.pointer_expires_at = Some(p.expires_at);
            }),
            Ok(None) => {}
            Err(e) => tracing::warn!("chain {}: re-signing in {}: {e}", job.chain, sink.location()),
        }
    }
}
