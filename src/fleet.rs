//! The fleet's commands beside the core ones: `restore --peers-dns` (peer
//! nodes as mirrors), `restore --dry-run`'s report, `verify --dest` (a
//! node's files audited) and `serve --data` (a node served to its peers).

use std::sync::Arc;

use anyhow::{Context, Result};
use qsync_core::sign::TrustedKeys;
use qsync_core::ChainName;
use qsync_fetcher::{Mirrors, RestoreError};
use qsync_store::{open_source_with, ObjectSource};

use crate::cli::{ServeArgs, VerifyArgs};
use crate::commands::{print_json, state_dir};

/// Prints what `restore --dry-run` found.
pub(crate) fn print_preview(
    p: &qsync_fetcher::preview::Preview,
    dest: &std::path::Path,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(p);
    }
    println!(
        "would restore {} version {} (created {}, manifest {}) named by {}",
        p.chain, p.version, p.created_at, p.manifest_blake3, p.pointer_from
    );
    println!("  destination {}: {}", dest.display(), p.destination);
    if let Some(why) = &p.refused {
        println!("  REFUSED: {why}");
    }
    if p.already_complete {
        println!("  already complete: nothing would be written");
    }
    println!(
        "  {} files, {} bytes: keep {}, fetch {} in {} chunks, write {} files, delete {} entries",
        p.files,
        p.bytes_total,
        p.bytes_kept,
        p.bytes_to_fetch,
        p.chunks_to_fetch,
        p.files_to_write,
        p.remove.len()
    );
    for r in p.remove.iter().take(20) {
        println!("    delete {r}");
    }
    if p.remove.len() > 20 {
        println!("    ... and {} more (--json lists all)", p.remove.len() - 20);
    }
    let fits = if p.space_needed <= p.space_available {
        "fits"
    } else {
        "DOES NOT FIT"
    };
    println!(
        "  free space: needs {}, {} available ({fits})",
        p.space_needed, p.space_available
    );
    Ok(())
}

/// Most peers one restore asks.
const MAX_PEERS: usize = 16;

/// The peer nodes `name` (`NAME[:PORT]`) resolves to, one mirror per
/// address (at most [`MAX_PEERS`], picked at random). They get `token`,
/// never the origins' `--http-token`. A name that resolves to nothing (the
/// first node of a fleet, or none ready yet) leaves the restore to the
/// origins, with a warning; a malformed one is an error.
pub(crate) async fn peers(
    name: &str,
    token: Option<String>,
    opts: &qsync_store::StoreOptions,
) -> Result<Vec<Arc<dyn ObjectSource>>> {
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port: u16 = port.parse().with_context(|| {
                format!("--peers-dns {name:?}: {port:?} is not a port; use NAME or NAME:PORT")
            })?;
            (host, port)
        }
        Some(_) => anyhow::bail!("--peers-dns {name:?}: write an IPv6 address as [ADDR]:PORT"),
        None => (name, 8080),
    };
    anyhow::ensure!(
        !host.is_empty(),
        "--peers-dns {name:?}: no host name; use NAME or NAME:PORT"
    );
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::warn!("--peers-dns {name}: {e}; restoring from the --from stores alone");
            return Ok(Vec::new());
        }
    };
    addrs.sort();
    addrs.dedup();
    fastrand::shuffle(&mut addrs);
    addrs.truncate(MAX_PEERS);
    let opts = qsync_store::StoreOptions {
        http_token: token,
        ..opts.clone()
    };
    let peers: Vec<Arc<dyn ObjectSource>> = addrs
        .iter()
        .filter_map(|addr| {
            open_source_with(&format!("http://{addr}"), &opts)
                .inspect_err(|e| tracing::warn!("--peers-dns {name}: skipping {addr}: {e}"))
                .ok()
        })
        .collect();
    tracing::info!(
        "--peers-dns {name}: {} peer(s) asked for chunks first: {}",
        peers.len(),
        addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(peers)
}

/// `qsync verify --dest`: a node's files against their snapshot.
pub(crate) async fn verify_dest(
    m: &Mirrors,
    keys: &TrustedKeys,
    chain: &ChainName,
    dest: &std::path::Path,
    a: &VerifyArgs,
) -> Result<()> {
    use qsync_fetcher::audit::{audit, Depth};
    let depth = if a.fast { Depth::Fast } else { Depth::Hash };
    let r = audit(m, keys, chain, dest, a.snapshot_version, depth)
        .await
        .with_context(|| format!("auditing {} against chain {chain}", dest.display()))?;
    if a.json {
        print_json(&r)?;
    } else {
        for (what, list) in [
            ("MISSING", &r.missing),
            ("CHANGED", &r.changed),
            ("EXTRA", &r.extra),
        ] {
            for p in list {
                println!("{what} {p}");
            }
        }
        println!(
            "{} against chain {} version {}: {} files ({} hashed, {} trusted by the index), {} missing, {} changed, {} extra",
            dest.display(), r.chain, r.version, r.files, r.hashed, r.trusted, r.missing.len(), r.changed.len(), r.extra.len()
        );
    }
    if r.clean() {
        return Ok(());
    }
    let list: Vec<&String> = r
        .missing
        .iter()
        .chain(&r.changed)
        .chain(&r.extra)
        .take(5)
        .collect();
    Err(RestoreError::DestDiffers {
        path: dest.into(),
        chain: r.chain.clone(),
        version: r.version,
        missing: r.missing.len(),
        changed: r.changed.len(),
        extra: r.extra.len(),
        list: list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
    }
    .into())
}

/// `serve --data DIR`: the snapshot its last restore kept, chunks read
/// from its files. Nothing to serve is not fatal (a node restored by an
/// older qsync, a restore under way): peers get 404 and the directory is
/// looked at again every [`PEER_REFRESH`]. Returns the configuration and
/// what the banner names.
pub(crate) async fn serve_data(
    dir: &std::path::Path,
    a: &ServeArgs,
    keys: &TrustedKeys,
) -> Result<(qsync_cdn::serve::ServeConfig, String)> {
    let chain = ChainName::new(a.chain.clone().context("--data needs --chain")?)?;
    let state = state_dir(a.state_dir.clone())?;
    anyhow::ensure!(dir.is_dir(), "--data {}: not a directory", dir.display());
    let data = qsync_fetcher::peer::DataDir::new(dir, &state, &chain, keys.clone());
    let mut last = data.refresh().await.map_err(|e| e.to_string());
    match &last {
        Ok(s) => tracing::info!(
            "serving version {} of {chain} ({} chunks) from {}",
            s.version,
            s.chunks,
            dir.display()
        ),
        Err(e) => tracing::warn!("{e}"),
    }
    let watched = data.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PEER_REFRESH).await;
            let now = watched.refresh().await.map_err(|e| e.to_string());
            if now != last {
                match &now {
                    Ok(s) => tracing::info!("now serving version {} ({} chunks)", s.version, s.chunks),
                    Err(e) => tracing::warn!("{e}"),
                }
                last = now;
            }
        }
    });
    let mut cfg = qsync_cdn::serve::ServeConfig::new(dir);
    cfg.objects = Some(Arc::new(data));
    Ok((cfg, format!("{} (chain {chain}) to peers", dir.display())))
}

/// How often `serve --data` looks for a new restore in its directory.
const PEER_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);
