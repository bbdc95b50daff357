//! `qsync restore --dry-run`: everything a restore would decide, with
//! nothing written.
//!
//! The same steps as [`crate::restore()`] up to the first write: the
//! snapshot is chosen and its manifest verified ([`crate::choose`]), the
//! destination's ownership is checked as the claim would, the entries the
//! restore would delete are listed instead of deleted, and planning
//! ([`crate::plan`]) works out what is already in place from the journal,
//! the index or by hashing, exactly as the restore will. Nothing is created
//! or locked, in the destination or the state directory: the destination is
//! opened read-only (or found absent), and the trust state is only read.

use std::path::Path;
use std::sync::Arc;

use qsync_core::sign::TrustedKeys;
use qsync_core::time::Timestamp;
use qsync_core::trust::TrustStore;
use serde::Serialize;

use crate::choose::choose;
use crate::complete::index_and_complete;
use crate::dest::{self, read_marker, MARKER, PARTIAL};
use crate::journal::Journal;
use crate::plan::plan;
use crate::restore::{RestoreOptions, SPACE_MARGIN};
use crate::root::Root;
use crate::{Mirrors, RestoreError};
use qsync_core::manifest::Manifest;

/// What a restore would do (`restore --dry-run --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    /// Chain.
    pub chain: String,
    /// Snapshot version the restore would take.
    pub version: u64,
    /// Its block height, when known.
    pub height: Option<u64>,
    /// Its signed creation time.
    pub created_at: String,
    /// BLAKE3 of its manifest.
    pub manifest_blake3: String,
    /// The mirror whose pointer named it.
    pub pointer_from: String,
    /// What the destination holds now: `absent`, `empty`, `complete`
    /// (a finished restore of version N), `partial` (a restore under way
    /// or killed) or `foreign` (data qsync did not write).
    pub destination: String,
    /// Why the restore would refuse to start, if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The destination already is this snapshot: nothing would be written.
    pub already_complete: bool,
    /// Files in the snapshot.
    pub files: u64,
    /// Bytes of all files.
    pub bytes_total: u64,
    /// Bytes already in place that would be kept.
    pub bytes_kept: u64,
    /// Bytes the restore would write, fetched from mirrors.
    pub bytes_to_fetch: u64,
    /// Chunk objects it would fetch.
    pub chunks_to_fetch: u64,
    /// Files it would write, create or truncate.
    pub files_to_write: u64,
    /// Entries it would delete because the snapshot lacks them (a
    /// directory stands for everything under it).
    pub remove: Vec<String>,
    /// Free bytes the restore needs on the destination's filesystem
    /// (what the files grow by, plus a margin).
    pub space_needed: u64,
    /// Free bytes there now.
    pub space_available: u64,
    /// What each mirror served while choosing.
    pub mirrors: Vec<crate::mirrors::MirrorReport>,
}

/// Works out what [`crate::restore()`] would do with `opts`, writing nothing.
pub async fn preview(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    opts: &RestoreOptions,
) -> Result<Preview, RestoreError> {
    let trust = TrustStore::new(&opts.state_dir);
    let chosen = choose(
        mirrors,
        keys,
        &opts.chain,
        &trust,
        opts.expired,
        opts.version,
        Timestamp::now(),
    )
    .await?;
    let (pointer, manifest) = (chosen.pointer, Arc::new(chosen.manifest));
    let mut p = Preview {
        chain: opts.chain.to_string(),
        version: pointer.current.version,
        height: manifest.chain.height,
        created_at: pointer.current.created_at.to_string(),
        manifest_blake3: pointer.current.manifest_blake3.to_hex(),
        pointer_from: chosen.from,
        destination: "absent".into(),
        refused: None,
        already_complete: false,
        files: manifest.files.len() as u64,
        bytes_total: manifest.total_bytes(),
        bytes_kept: 0,
        bytes_to_fetch: 0,
        chunks_to_fetch: 0,
        files_to_write: 0,
        remove: Vec::new(),
        space_needed: 0,
        space_available: 0,
        mirrors: Vec::new(),
    };
    let root = match Root::open(&opts.dest)? {
        Some(root) => Arc::new(root),
        None => {
            // Nothing there yet: everything is fetched, into the nearest
            // directory that exists.
            (p.chunks_to_fetch, p.bytes_to_fetch) = distinct_chunks(&manifest);
            p.files_to_write = p.files;
            p.space_needed = p.bytes_total + SPACE_MARGIN;
            p.space_available = dest::free_space(existing_ancestor(&opts.dest))?;
            p.mirrors = mirrors.report();
            return Ok(p);
        }
    };
    p.destination = describe(&root)?;
    let busy = root.busy().map_err(RestoreError::io(root.path()))?;
    let refusal =
        crate::restore::refuse_state_inside_dest(&opts.state_dir, root.path()).and_then(|()| match busy {
            true => Err(RestoreError::Dest {
                path: root.path().into(),
                reason: "another qsync restore is running into DEST; wait for it or stop it".into(),
            }),
            false => dest::check_owner(&root, &pointer, opts.foreign_dest),
        });
    p.refused = match refusal {
        Ok(()) => None,
        Err(RestoreError::Dest { reason, .. }) => Some(reason),
        Err(e) => Some(e.to_string()),
    };
    let digest = pointer.current.manifest_blake3;
    let (index, complete) = index_and_complete(&root, &manifest, digest, opts.verify_existing).await?;
    p.already_complete = complete;
    p.space_available = dest::free_space(root.path())?;
    if p.already_complete {
        p.bytes_kept = p.bytes_total;
        p.mirrors = mirrors.report();
        return Ok(p);
    }
    let (r, m) = (root.clone(), manifest.clone());
    let (remove, present) = crate::batch::blocking(move || {
        let remove = in_the_way(&r, &m, dest::list_extras(&r, &m)?)?;
        let rels = m.files.iter().map(|f| f.path.as_ref());
        let present: Vec<bool> = r
            .stat_files(rels)
            .map_err(RestoreError::io(r.path()))?
            .iter()
            .map(Option::is_some)
            .collect();
        Ok::<_, RestoreError>((remove, present))
    })
    .await?;
    let done = match opts.verify_existing {
        true => None,
        false => Some(Arc::new(
            Journal::peek(&root, &manifest, &digest)?.unwrap_or_default(),
        )),
    };
    let planned = plan(&manifest, &root, done, index, Arc::new(present)).await?;
    p.remove = remove;
    p.bytes_kept = planned.reused;
    p.bytes_to_fetch = planned.needed.values().map(|(size, _)| size).sum();
    p.chunks_to_fetch = planned.needed.len() as u64;
    p.files_to_write = planned.touched.iter().filter(|t| **t).count() as u64;
    p.space_needed = planned.growth + SPACE_MARGIN;
    p.mirrors = mirrors.report();
    Ok(p)
}

/// How many distinct chunks `m` has, and their bytes.
fn distinct_chunks(m: &qsync_core::manifest::Manifest) -> (u64, u64) {
    let set: std::collections::HashMap<_, _> = m.all_chunks().map(|c| (c.blake3, c.size)).collect();
    (set.len() as u64, set.values().sum())
}

/// `extras`, with what layout would also delete: anything but a directory
/// at a directory's path, and anything but a regular file at a file's
/// (a directory there standing for what is under it).
fn in_the_way(root: &Root, m: &Manifest, extras: Vec<String>) -> Result<Vec<String>, RestoreError> {
    let mut remove = Vec::new();
    let dirs = m.directories.iter().map(|d| (d.path.as_str(), true));
    for (path, dir) in dirs.chain(m.files.iter().map(|f| (f.path.as_ref(), false))) {
        let meta = root.stat(path).map_err(RestoreError::io(root.display(path)))?;
        if meta.is_some_and(|meta| if dir { !meta.is_dir() } else { !meta.is_file() }) {
            remove.push(path.to_string());
        }
    }
    // An extra under an entry already listed goes with it: looked up by
    // its ancestors, not by a scan of the list per extra.
    let listed: std::collections::HashSet<&str> = remove.iter().map(String::as_str).collect();
    let under = |e: &str| e.match_indices('/').any(|(at, _)| listed.contains(&e[..at]));
    let extras: Vec<String> = extras.into_iter().filter(|e| !under(e)).collect();
    remove.extend(extras);
    remove.sort();
    Ok(remove)
}

/// `dest`'s nearest ancestor that exists (where it would be created).
fn existing_ancestor(dest: &Path) -> &Path {
    let mut at = dest;
    while !at.exists() {
        match at.parent() {
            Some(up) if !up.as_os_str().is_empty() => at = up,
            _ => return Path::new("."),
        }
    }
    at
}

/// What the destination holds, in a word (see [`Preview::destination`]).
fn describe(root: &Root) -> Result<String, RestoreError> {
    if read_marker(root, PARTIAL).is_some() {
        return Ok("partial".into());
    }
    if let Some(m) = read_marker(root, MARKER) {
        return Ok(format!("complete (chain {} version {})", m.chain, m.version));
    }
    // qsync's own records make no directory foreign, as for the claim.
    Ok(if dest::holds_only_records(root)? {
        "empty"
    } else {
        "foreign"
    }
    .into())
}
