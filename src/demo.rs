//! `qsync demo`: the whole path on generated data, with no cloud account.
//!
//! generate sample chain data -> keygen -> snapshot into a local store ->
//! serve the store on loopback HTTP -> restore from that URL into a fresh
//! directory -> verify the restored tree against the source, printing each
//! stage with its time. Everything stays under one working directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qsync_core::progress::NoProgress;
use qsync_core::sign::{self, SigningKey, SigningKeys, TrustedKeys};
use qsync_core::ChainName;
use qsync_fetcher::{Mirrors, RestoreOptions};
use qsync_snapshotter::SnapshotOptions;
use qsync_store::open_source;

use crate::cli::DemoArgs;

fn stage(name: &str, started: Instant, detail: String) {
    println!("{name:<10} {:>8.2}s  {detail}", started.elapsed().as_secs_f64());
}

/// Runs the demo.
pub async fn run(a: DemoArgs) -> Result<()> {
    let (work, temporary) = match a.dir {
        Some(d) => (d, false),
        None => (tempfile_dir()?, true),
    };
    let result = demo(&work, a.size_mib).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("qsync-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

async fn demo(work: &Path, size_mib: u64) -> Result<()> {
    let (source, store, dest, state) = (
        work.join("source"),
        work.join("store"),
        work.join("restored"),
        work.join("state"),
    );
    for d in [&source, &store, &dest, &state] {
        if d.exists() {
            bail!(
                "{} already exists; give --dir an empty or new directory",
                d.display()
            );
        }
    }
    println!("qsync demo in {}", work.display());

    let t = Instant::now();
    let (src, sz) = (source.clone(), size_mib << 20);
    let r = tokio::task::spawn_blocking(move || crate::sample::generate(&src, sz, 0, 0, 1)).await??;
    stage(
        "generate",
        t,
        format!(
            "{} files, {} MiB of chain-like data in {}",
            r.files,
            r.bytes_total >> 20,
            source.display()
        ),
    );

    let t = Instant::now();
    let (sk, pk) = (work.join("qsync.sec"), work.join("qsync.pub"));
    let vk = sign::keygen(&sk, &pk)?;
    stage("keygen", t, format!("key {} ({})", vk.id(), pk.display()));

    let t = Instant::now();
    let chain = ChainName::new("sample")?;
    let mut opts = SnapshotOptions::new(chain.clone());
    opts.height = Some(1_000_000);
    let s = qsync_snapshotter::publish(
        &source,
        qsync_store::open_sink(store.to_str().context("UTF-8 path")?)?,
        &SigningKeys::from(SigningKey::load(&sk)?),
        &opts,
        Arc::new(NoProgress),
    )
    .await?;
    stage(
        "snapshot",
        t,
        format!(
            "version {}: {} chunks, {} bytes stored in {}",
            s.version,
            s.chunks_uploaded,
            s.bytes_uploaded,
            store.display()
        ),
    );

    let t = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(qsync_cdn::serve::serve(
        listener,
        qsync_cdn::serve::ServeConfig::new(&store),
        async {
            let _ = stopped.await;
        },
    ));
    stage("serve", t, format!("store at {url}"));

    let t = Instant::now();
    let ropts = RestoreOptions {
        chain: chain.clone(),
        dest: dest.clone(),
        state_dir: state.clone(),
        expired: qsync_core::trust::Expired::Refuse,
        foreign_dest: qsync_fetcher::ForeignDest::Refuse,
        concurrency: 64,
        verify_existing: false,
        verify_cmd: None,
        version: None,
    };
    let restored = qsync_fetcher::restore(
        &Mirrors::new(vec![open_source(&url)?]),
        &TrustedKeys::from(vk),
        &ropts,
        Arc::new(NoProgress),
    )
    .await;
    let _ = stop.send(());
    server.await??;
    let restored = restored?;
    stage(
        "restore",
        t,
        format!(
            "version {} from {url}: {} bytes fetched and verified into {}",
            restored.version,
            restored.bytes_fetched,
            dest.display()
        ),
    );

    let t = Instant::now();
    let (a, b) = (source.clone(), dest.clone());
    let (n, same) = tokio::task::spawn_blocking(move || compare_trees(&a, &b)).await??;
    if !same {
        bail!("restored tree differs from the source; this is a bug, please report it");
    }
    stage(
        "verify",
        t,
        format!(
            "{n} files byte-identical to the source; marker {}",
            dest.join(".qsync-restore.json").display()
        ),
    );
    Ok(())
}

/// Compares two trees file by file (ignoring qsync's markers).
fn compare_trees(a: &Path, b: &Path) -> Result<(u64, bool)> {
    fn list(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
            if rel.starts_with(".qsync-restore") {
                continue;
            }
            if e.file_type()?.is_dir() {
                out.push((rel, Vec::new()));
                list(root, &e.path(), out)?;
            } else {
                out.push((rel, blake3::hash(&std::fs::read(e.path())?).as_bytes().to_vec()));
            }
        }
        Ok(())
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    list(a, a, &mut x)?;
    list(b, b, &mut y)?;
    x.sort();
    y.sort();
    Ok((x.iter().filter(|e| !e.1.is_empty()).count() as u64, x == y))
}
