//! One function per command: turn parsed flags into library calls and print
//! the result (human text, or one JSON document with `--json`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use qsync_cdn::serve::cache::PullThrough;
use qsync_core::chunk::ChunkerParams;
use qsync_core::pointer::plain_tree_cid;
use qsync_core::sign::{self, SigningKeys, TrustedKeys};
use qsync_core::trust::{Expired, TrustStore};
use qsync_core::ChainName;
use qsync_fetcher::{inspect, ForeignDest, MirrorOptions, Mirrors, RestoreError, RestoreOptions};
use qsync_snapshotter::config::Config;
use qsync_snapshotter::cycle::ChainJob;
use qsync_snapshotter::{SnapshotError, SnapshotOptions};
use qsync_store::probe::WriteSafety;
use qsync_store::{open_sink_at, open_sink_with, open_source_with, ObjectSource, StoreUrl};

use crate::cli::*;

/// Exit code for a failed command (docs/operations.md).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RestoreError>() {
            return r.exit_code() as u8;
        }
        if let Some(s) = cause.downcast_ref::<SnapshotError>() {
            return s.exit_code();
        }
        if cause.downcast_ref::<qsync_core::FormatError>().is_some() {
            return 3;
        }
    }
    1
}

/// Runs `cmd`.
pub async fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Keygen(a) => keygen(a),
        Command::Snapshot(a) => snapshot(a).await,
        Command::Agent(a) => agent(a).await,
        Command::Gc(a) => gc(a).await,
        Command::Restore(a) => restore(a).await,
        Command::Verify(a) => verify(a).await,
        Command::Ls(a) => ls(a).await,
        Command::Serve(a) => serve(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Sample(a) => sample(a),
    }?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn keygen(a: KeygenArgs) -> Result<()> {
    let vk = sign::keygen(&a.secret_key, &a.public_key)?;
    println!(
        "key {} written: secret {} (keep it private), public {} (give it to fetchers)",
        vk.id(),
        a.secret_key.display(),
        a.public_key.display()
    );
    Ok(())
}

async fn snapshot(a: SnapshotArgs) -> Result<()> {
    if let Some(config) = &a.config {
        return snapshot_cycle(config, &a.chain, a.json, a.lease_only).await;
    }
    let (Some(source), Some(store), false) = (a.source, a.store, a.secret_keys.is_empty()) else {
        anyhow::bail!("snapshot needs --source, --store and --secret-key, or --config with --once");
    };
    let chain = ChainName::new(a.chain)?;
    let signer = SigningKeys::load(&a.secret_keys)?;
    let mut store_opts = qsync_store::StoreOptions {
        s3: a.s3.options(),
        edge_cache: a.cloudfront_distribution_id.map(|distribution| {
            Arc::new(qsync_cdn::cloudfront::CloudFront { distribution }) as Arc<dyn qsync_store::EdgeCache>
        }),
        ..Default::default()
    };
    store_opts.s3.pointer_max_age = a.pointer_max_age;
    let sink = open_sink_at(&StoreUrl::parse(&store)?, &store_opts)?;
    let mut opts = SnapshotOptions::new(chain.clone());
    opts.height = a.height;
    opts.block_hash = a.block_hash;
    opts.expires_in = a.expires_in;
    opts.lifetime = a.lifetime;
    opts.concurrency = a.concurrency;
    opts.mirror_hints = a.mirror_hints;
    opts.chunker = ChunkerParams::with_average_kib(a.chunk_size).context("--chunk-size")?;
    qsync_store::probe::require_conditional_writes(sink.as_ref(), WriteSafety::from_lease_only(a.lease_only))
        .await
        .with_context(|| format!("probing {} before publishing", sink.location()))?;
    let started = std::time::Instant::now();
    let s = qsync_snapshotter::publish(
        &source,
        sink.clone(),
        &signer,
        &opts,
        crate::progress::for_terminal(a.json),
    )
    .await
    .with_context(|| {
        format!(
            "publishing {} as chain {chain} to {}",
            source.display(),
            sink.location()
        )
    })?;
    let invalidation = qsync_snapshotter::commit::invalidate_rewritten(sink.as_ref(), &s.rewritten).await;
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(i) = &invalidation {
            v["cloudfront_invalidation"] = i.clone().into();
        }
        print_json(&v)?;
    } else {
        println!(
            "published {} version {} ({} files, {} bytes; uploaded {} of {} chunks, {} bytes) in {:.1?}\n  manifest {}\n  pointer  {}",
            s.chain, s.version, s.files, s.bytes_total, s.chunks_uploaded, s.chunks_total, s.bytes_uploaded,
            started.elapsed(), s.manifest_key, s.pointer_key
        );
        if let Some(cid) = &s.ipfs_root_cid {
            println!("  store    /ipfs/{cid}");
        }
        if let Some(cid) = &s.ipfs_tree_cid {
            println!("  files    /ipfs/{cid}");
        }
    }
    Ok(())
}

/// A watch that turns true on SIGTERM or SIGINT.
fn stop_on_signal() -> Result<tokio::sync::watch::Receiver<bool>> {
    let signal = shutdown_signal()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        tracing::warn!(
            "stopping: the running cycle is aborted before any pointer moves, and its post hook runs"
        );
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// `qsync snapshot --config F --chain N --once`.
async fn snapshot_cycle(config: &std::path::Path, chain: &str, json: bool, lease_only: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let mut c = cfg.chain(chain)?.clone();
    c.lease_only |= lease_only;
    let job = ChainJob::open(c, &cfg.agent.state_dir)?;
    let stop = stop_on_signal()?;
    let started = std::time::Instant::now();
    let r = job.run(crate::progress::for_terminal(json), stop).await;
    let report = match &r {
        Ok(rep) => rep,
        Err(e) => &e.partial,
    };
    if json {
        print_json(report)?;
    } else {
        for s in &report.stores {
            match (&s.summary, &s.error) {
                (Some(sum), None) => println!(
                    "{}: version {} ({} files, {} bytes; uploaded {} of {} chunks, {} bytes)",
                    s.location,
                    sum.version,
                    sum.files,
                    sum.bytes_total,
                    sum.chunks_uploaded,
                    sum.chunks_total,
                    sum.bytes_uploaded
                ),
                (_, Some(e)) => println!("{}: FAILED: {e}", s.location),
                _ => {}
            }
        }
        println!(
            "cycle of {chain} ({}) in {:.1?}: frozen {:.2}s, {} files unchanged",
            report.strategy,
            started.elapsed(),
            report.freeze_seconds,
            report.files_unchanged
        );
    }
    r?;
    Ok(())
}

async fn agent(a: AgentArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    if a.check {
        return agent_check(cfg).await;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.agent.listen)
        .await
        .with_context(|| format!("listening on {} ([agent] listen)", cfg.agent.listen))?;
    let addr = listener.local_addr()?;
    let stop = stop_on_signal()?;
    println!(
        "agent: {} chain(s); health and metrics on http://{addr}",
        cfg.chains.len()
    );
    std::io::stdout().flush()?;
    qsync_snapshotter::agent::run(cfg, listener, stop, crate::progress::for_terminal(true)).await
}

/// `qsync agent --check`: the configuration, each chain's key, and every
/// store contacted as a cycle will (credentials, bucket, write permission,
/// conditional writes), one line per check.
async fn agent_check(cfg: Config) -> Result<()> {
    let mut failed = Vec::new();
    for c in cfg.chains {
        let job = ChainJob::open(c, &cfg.agent.state_dir)?;
        println!(
            "chain {}: configuration and key(s) {} ok",
            job.chain,
            job.signer().describe()
        );
        for (url, sink) in job.cfg.stores.iter().zip(job.sinks()) {
            for step in
                qsync_store::probe::check(sink.as_ref(), WriteSafety::from_lease_only(job.cfg.lease_only))
                    .await
            {
                match step.result {
                    Ok(note) => println!("  store {url}: {}: {note}", step.what),
                    Err(e) => {
                        println!("  store {url}: {}: FAILED: {e}", step.what);
                        failed.push(format!("chain {} store {url}: {}", job.chain, step.what));
                    }
                }
            }
        }
    }
    std::io::stdout().flush()?;
    if !failed.is_empty() {
        anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

async fn gc(a: GcArgs) -> Result<()> {
    let keys = a.keys.load()?;
    let opts = qsync_store::StoreOptions {
        s3: a.s3.options(),
        ..Default::default()
    };
    let sink = open_sink_with(&a.store, &opts)?;
    let mode = if a.dry_run {
        qsync_snapshotter::gc::GcMode::DryRun
    } else {
        qsync_snapshotter::gc::GcMode::Delete
    };
    let r = qsync_snapshotter::gc::collect(sink, &keys, None, a.grace, mode)
        .await
        .with_context(|| format!("collecting garbage in {}", a.store))?;
    if a.json {
        return print_json(&r);
    }
    if let Some(why) = &r.deferred {
        println!("nothing collected: {why}; run again later");
        return Ok(());
    }
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for m in &r.manifests_deleted {
        println!("{verb} {m}");
    }
    println!(
        "{} chain(s), {} snapshot(s) kept and {} retired less than {grace} ago, {} chunks referenced; {verb} {} manifests, {} chunks ({} bytes), {} old signatures; {} unreferenced chunks younger than {grace} kept",
        r.chains.len(), r.manifests_kept, r.manifests_in_grace, r.chunks_referenced, r.manifests_deleted.len(), r.chunks_deleted,
        r.bytes_deleted, r.signatures_deleted, r.chunks_in_grace, grace = humantime::format_duration(a.grace)
    );
    Ok(())
}

fn mirrors(from: &[String], t: Option<&Timeouts>, remote: &Remote) -> Result<Mirrors> {
    let sources = open_all(from, &remote.options()?)?;
    Ok(Mirrors::with_options(sources, mirror_options(t)))
}

fn open_all(from: &[String], opts: &qsync_store::StoreOptions) -> Result<Vec<Arc<dyn ObjectSource>>> {
    Ok(from
        .iter()
        .map(|u| open_source_with(u, opts))
        .collect::<Result<Vec<_>, _>>()?)
}

fn mirror_options(t: Option<&Timeouts>) -> MirrorOptions {
    t.map_or_else(MirrorOptions::default, |t| MirrorOptions {
        attempt_timeout: t.timeout,
        deadline: t.deadline,
        ..MirrorOptions::default()
    })
}

pub(crate) fn state_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    arg.or_else(TrustStore::default_dir)
        .context("no --state-dir given and neither XDG_STATE_HOME nor HOME is set; pass --state-dir")
}

async fn restore(a: RestoreArgs) -> Result<()> {
    let chain = ChainName::new(a.chain.clone())?;
    let started = std::time::Instant::now();
    if a.init && !a.dry_run {
        let fresh = crate::init::still_fresh(&a.dest, &chain, a.max_age)
            .filter(|m| a.snapshot_version.is_none_or(|v| m.version == v));
        if let Some(m) = fresh {
            tracing::info!(
                chain = %chain, version = m.version, restored = %m.written_at,
                "{} already holds a complete restore of {chain} (version {}); nothing to do",
                a.dest.display(), m.version
            );
            if let Some(path) = &a.metrics_file {
                crate::metrics_file::write(path, &chain, &crate::metrics_file::Run::skipped(&m))?;
            }
            return Ok(());
        }
    }
    let keys = a.keys.load()?;
    let store_opts = a.remote.options()?;
    let mut sources = open_all(&a.from, &store_opts)?;
    let opts = mirror_options(Some(&a.timeouts));
    if a.mirror_hints {
        let pointer = Mirrors::with_options(sources.clone(), opts)
            .pointer(&chain, &keys)
            .await?;
        for hint in pointer.mirrors.iter().filter(|h| !a.from.contains(h)) {
            if plain_tree_cid(hint).is_some() {
                tracing::debug!("not fetching from {hint}: it names the snapshot's plain files, not a store");
                continue;
            }
            match open_source_with(hint, &store_opts) {
                Ok(s) => {
                    tracing::info!("also fetching from {hint}, a mirror the pointer names");
                    sources.push(s);
                }
                Err(e) => tracing::warn!("skipping the pointer's mirror hint: {e}"),
            }
        }
    }
    let peers = match &a.peers_dns {
        Some(name) => crate::fleet::peers(name, a.peers_http_token.clone(), &store_opts).await?,
        None => Vec::new(),
    };
    let m = Mirrors::with_peers(peers, sources, opts);
    let opts = RestoreOptions {
        chain: chain.clone(),
        dest: a.dest.clone(),
        state_dir: state_dir(a.state_dir)?,
        expired: if a.allow_expired {
            Expired::Allow
        } else {
            Expired::Refuse
        },
        foreign_dest: if a.force {
            ForeignDest::TakeOver
        } else {
            ForeignDest::Refuse
        },
        concurrency: a.concurrency,
        verify_existing: a.verify_existing,
        verify_cmd: a.verify_cmd.clone(),
        version: a.snapshot_version,
    };
    if a.dry_run {
        let p = qsync_fetcher::preview::preview(&m, &keys, &opts)
            .await
            .with_context(|| format!("planning a restore of chain {chain} into {}", a.dest.display()))?;
        crate::fleet::print_preview(&p, &a.dest, a.json)?;
        let fits = p.space_needed <= p.space_available;
        let why = match (&p.refused, fits) {
            (Some(why), _) => why.clone(),
            (None, false) => format!(
                "needs {} free bytes but {} are available; free space or pick another --dest",
                p.space_needed, p.space_available
            ),
            (None, true) => return Ok(()),
        };
        return Err(anyhow::Error::new(RestoreError::Dest {
            path: a.dest.clone(),
            reason: why,
        })
        .context("the restore would fail (--dry-run: nothing was written)"));
    }
    let result = qsync_fetcher::restore(
        &m,
        &keys,
        &opts,
        crate::progress::for_restore(a.json || a.init, a.progress_interval, a.timeouts.timeout),
    )
    .await;
    if let Some(path) = &a.metrics_file {
        let run = crate::metrics_file::Run::finished(result.as_ref().ok(), m.report(), started.elapsed());
        crate::metrics_file::write(path, &chain, &run)?;
    }
    let s = result.with_context(|| {
        format!(
            "restoring chain {chain} from {} into {}",
            a.from.join(", "),
            a.dest.display()
        )
    })?;
    if a.json {
        print_json(&s)?;
    } else {
        for m in s.mirrors.iter().filter(|_| s.mirrors.len() > 1) {
            let demoted = if m.demoted { " (demoted)" } else { "" };
            println!(
                "  mirror {}: {} chunks, {} bytes, {} errors, {} corrupt{demoted}",
                m.location, m.chunks, m.bytes, m.errors, m.corrupt
            );
        }
        println!(
            "restored {} version {} into {} ({} files, {} bytes: fetched {}, kept {}, removed {} stale entries) in {:.1?}",
            s.chain, s.version, a.dest.display(), s.files, s.bytes_total, s.bytes_fetched, s.bytes_reused, s.removed,
            started.elapsed()
        );
    }
    Ok(())
}

async fn verify(a: VerifyArgs) -> Result<()> {
    let chain = ChainName::new(a.chain.clone())?;
    let keys = a.keys.load()?;
    let sources = vec![open_source_with(&a.from, &a.remote.options()?)?];
    let opts = MirrorOptions {
        attempt_timeout: a.timeouts.timeout,
        deadline: a.timeouts.deadline,
        demote_corrupt: false,
    };
    let m = Mirrors::with_options(sources, opts);
    if let Some(dest) = &a.dest {
        return crate::fleet::verify_dest(&m, &keys, &chain, dest, &a).await;
    }
    let r = inspect::verify_store(&m, &keys, &chain, a.concurrency).await?;
    if a.json {
        print_json(&r)?;
    } else {
        for b in &r.bad {
            println!("BAD {b}");
        }
        println!(
            "chain {} version {}: {} chunks ({} bytes) checked, {} problem(s)",
            r.chain,
            r.version,
            r.chunks_checked,
            r.bytes_checked,
            r.bad.len()
        );
    }
    if r.bad.is_empty() {
        return Ok(());
    }
    Err(RestoreError::BadObjects {
        chain: r.chain,
        location: a.from,
        count: r.bad.len(),
        list: r.bad.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
    }
    .into())
}

async fn ls(a: LsArgs) -> Result<()> {
    let keys = a.keys.load()?;
    let chain = a.chain.map(ChainName::new).transpose()?;
    let m = mirrors(std::slice::from_ref(&a.from), None, &a.remote)?;
    let pointers = inspect::list(&m, &keys, chain.as_ref()).await?;
    if a.json {
        return print_json(&pointers);
    }
    println!(
        "{:<20} {:>8} {:>12} {:<21} {:>7} {:>15}",
        "CHAIN", "VERSION", "HEIGHT", "CREATED", "FILES", "BYTES"
    );
    for p in &pointers {
        for (i, s) in std::iter::once(&p.current).chain(&p.history).enumerate() {
            let height = s.height.map_or("-".to_string(), |h| h.to_string());
            let mark = if i == 0 { " (latest)" } else { "" };
            println!(
                "{:<20} {:>8} {:>12} {:<21} {:>7} {:>15}{mark}",
                p.chain.as_str(),
                s.version,
                height,
                s.created_at.to_string(),
                s.files,
                s.bytes
            );
        }
        for hint in &p.mirrors {
            match plain_tree_cid(hint) {
                Some(cid) => println!(
                    "{:<20} plain files at /ipfs/{cid} (unverified hint)",
                    p.chain.as_str()
                ),
                None => println!("{:<20} also at {hint} (unverified hint)", p.chain.as_str()),
            }
        }
    }
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    let public_keys = match a.public_keys.is_empty() {
        true => None,
        false => Some(TrustedKeys::load(&a.public_keys)?),
    };
    let store = a.store.clone().unwrap_or_default();
    let local = match &a.data {
        Some(_) => None,
        None => qsync_store::open::local_dir(&store)?,
    };
    let (mut cfg, serving) = match (&a.data, local, &a.cache_dir) {
        (Some(dir), _, _) => {
            let keys = public_keys.as_ref().context("--data needs --public-key")?;
            crate::fleet::serve_data(dir, &a, keys).await?
        }
        (None, Some(dir), None) => (qsync_cdn::serve::ServeConfig::new(dir), store.clone()),
        (None, _, None) => {
            anyhow::bail!("serving the remote store {store} needs --cache-dir (a pull-through cache)")
        }
        (None, _, Some(dir)) => {
            let upstream = open_source_with(&store, &a.remote.options()?)?;
            qsync_store::probe::readable(upstream.as_ref())
                .await
                .with_context(|| format!("checking the upstream store {store}"))?;
            let cache = PullThrough::open(
                upstream,
                dir,
                a.cache_size,
                a.pointer_max_age,
                a.upstream_concurrency,
            )
            .with_context(|| format!("opening --cache-dir {}", dir.display()))?
            .with_public_keys(public_keys.clone());
            let mut cfg = qsync_cdn::serve::ServeConfig::new(dir);
            cfg.pull_through = Some(Arc::new(cache));
            (cfg, store.clone())
        }
    };
    cfg.public_keys = public_keys;
    if let Some(path) = &a.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?;
        cfg.tokens = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        anyhow::ensure!(
            !cfg.tokens.is_empty(),
            "--token-file {} holds no token",
            path.display()
        );
    }
    cfg.allow = a
        .allow
        .iter()
        .map(|c| c.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--allow")?;
    cfg.pointer_max_age = a.pointer_max_age;
    cfg.request_timeout = a.request_timeout;
    cfg.limits = qsync_cdn::serve::listen::Limits {
        header_timeout: a.header_timeout,
        send_timeout: a.send_timeout,
        max_connections: a.max_connections as usize,
    };
    cfg.tar_memory = usize::try_from(a.tar_memory).unwrap_or(usize::MAX);
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let addr = listener.local_addr()?;
    // Handlers first: a SIGTERM right after the banner must stop us gracefully.
    let shutdown = shutdown_signal()?;
    println!("serving {serving} on http://{addr}");
    std::io::stdout().flush()?;
    qsync_cdn::serve::serve(listener, cfg, shutdown).await?;
    Ok(())
}

/// Registers SIGINT and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn sample(a: SampleArgs) -> Result<()> {
    let r = match a.action {
        SampleAction::Generate {
            dir,
            size_mib,
            small_files,
            small_max_kib,
            seed,
        } => crate::sample::generate(&dir, size_mib << 20, small_files, small_max_kib << 10, seed)?,
        SampleAction::Mutate { dir, percent, seed } => crate::sample::mutate(&dir, percent, seed)?,
    };
    print_json(&r)
}
