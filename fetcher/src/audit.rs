//! `qsync verify --dest`: audits a live node's data directory against the
//! snapshot its completion marker names (or one asked for by version).
//!
//! The snapshot's manifest comes from the mirrors, signature and digest
//! checked as for a restore, named by the pointer (current or history).
//! Every file is then looked at through [`Root`] (no link followed): a
//! file that is absent or not a regular file is *missing*; one whose size,
//! mode or BLAKE3 differs is *changed*; an entry the snapshot lacks is
//! *extra*. By default every file is hashed; `--fast` trusts a file whose
//! path, size and stat (mtime, ctime, inode) are exactly what the index of
//! the last completed restore recorded, and hashes the rest. Nothing is
//! written.

use std::sync::Arc;

use qsync_core::manifest::Manifest;
use qsync_core::pointer::SnapshotRef;
use qsync_core::sign::TrustedKeys;
use qsync_core::{ChainName, Digest, FormatError};
use serde::Serialize;

use crate::batch::{blocking, per_batch};
use crate::dest::{completed, list_extras};
use crate::journal::Index;
use crate::root::Root;
use crate::{Mirrors, RestoreError};

/// How much to trust what the destination's records say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Hash every file.
    Hash,
    /// Trust files whose stat the last restore's index recorded (`--fast`).
    Fast,
}

/// The result of an audit (`verify --dest --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Audit {
    /// Chain.
    pub chain: String,
    /// Snapshot version audited against.
    pub version: u64,
    /// BLAKE3 of its manifest.
    pub manifest_blake3: String,
    /// Files in the snapshot.
    pub files: u64,
    /// Files whose contents were hashed.
    pub hashed: u64,
    /// Files trusted by the index (`--fast`).
    pub trusted: u64,
    /// Files (and directories, as `path/`) of the snapshot that are absent,
    /// or not what they should be (a link, a device, a file for a directory).
    pub missing: Vec<String>,
    /// Files whose size, mode (setuid bits included), link count or
    /// contents differ from the snapshot, and directories whose mode does,
    /// each as `path (what)`.
    pub changed: Vec<String>,
    /// Entries the snapshot does not have.
    pub extra: Vec<String>,
}

impl Audit {
    /// Whether the destination is exactly the snapshot.
    pub fn clean(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.extra.is_empty()
    }
}

/// What one file turned out to be.
enum Look {
    Missing,
    /// Different by what its entry shows (size, mode, links, unreadable).
    Changed(&'static str),
    /// Hashed, and its contents differ.
    Differs,
    Hashed,
    Trusted,
}

/// Audits `dest` against the snapshot of `chain` its marker names, or
/// `version` when given.
pub async fn audit(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    chain: &ChainName,
    dest: &std::path::Path,
    version: Option<u64>,
    depth: Depth,
) -> Result<Audit, RestoreError> {
    let refuse = |reason: String| RestoreError::Dest {
        path: dest.into(),
        reason,
    };
    let root = Arc::new(Root::open(dest)?.ok_or_else(|| refuse("does not exist".into()))?);
    let marker = match (completed(&root), version) {
        (Ok(m), _) => Some(m),
        (Err(_), Some(_)) => None,
        (Err(why), None) => {
            return Err(refuse(format!(
                "holds no complete qsync restore ({why}); finish the restore, or name the snapshot to audit against with --snapshot-version"
            )))
        }
    };
    if let Some(m) = marker.as_ref().filter(|m| m.chain != chain.as_str()) {
        return Err(refuse(format!(
            "holds a restore of chain {}, not {chain}; pass --chain {}",
            m.chain, m.chain
        )));
    }
    let pointer = mirrors.pointer(chain, keys).await?;
    let kept: Vec<&SnapshotRef> = std::iter::once(&pointer.current)
        .chain(&pointer.history)
        .collect();
    let snap = match (version, &marker) {
        (Some(v), _) => kept.iter().find(|s| s.version == v),
        (None, Some(m)) => kept
            .iter()
            .find(|s| s.manifest_blake3.to_hex() == m.manifest_blake3),
        (None, None) => None,
    };
    let Some(snap) = snap.copied() else {
        let what = version.map_or_else(
            || {
                format!(
                    "the snapshot it holds (version {})",
                    marker.as_ref().map_or(0, |m| m.version)
                )
            },
            |v| format!("version {v}"),
        );
        let listed: Vec<String> = kept.iter().map(|s| s.version.to_string()).collect();
        return Err(FormatError::Invalid(format!(
            "{what} of chain {chain} is no longer named by the pointer (it keeps {}); audit against one of those with --snapshot-version, or restore the latest",
            listed.join(", ")
        ))
        .into());
    };
    let manifest = Arc::new(mirrors.manifest(snap, keys).await?.0);
    let index = Arc::new(match depth {
        Depth::Fast => Index::load(&root, &manifest),
        Depth::Hash => Index::default(),
    });
    let (r, m) = (root.clone(), manifest.clone());
    let looks: Vec<Look> = per_batch(manifest.files.len(), move |files| {
        // Entries looked at through one handle per directory, as the seal does.
        let rels = files.clone().map(|i| m.files[i].path.as_ref());
        let stats = r.stat_files(rels).map_err(RestoreError::io(r.path()))?;
        files
            .zip(stats)
            .map(|(i, st)| look(&r, &m, &index, i, st))
            .collect()
    })
    .await?;
    let (r, m) = (root.clone(), manifest.clone());
    let (extra, (dirs_missing, dirs_changed)) =
        blocking(move || Ok::<_, RestoreError>((list_extras(&r, &m)?, look_dirs(&r, &m)?))).await?;
    let mut a = Audit {
        chain: chain.to_string(),
        version: snap.version,
        manifest_blake3: snap.manifest_blake3.to_hex(),
        files: manifest.files.len() as u64,
        hashed: 0,
        trusted: 0,
        missing: dirs_missing,
        changed: dirs_changed,
        extra,
    };
    for (f, l) in manifest.files.iter().zip(looks) {
        match l {
            Look::Missing => a.missing.push(f.path.to_string()),
            Look::Changed(why) => a.changed.push(format!("{} ({why})", f.path)),
            Look::Differs => {
                a.hashed += 1;
                a.changed.push(format!("{} (contents)", f.path));
            }
            Look::Hashed => a.hashed += 1,
            Look::Trusted => a.trusted += 1,
        }
    }
    Ok(a)
}

/// Looks at file `i` of `m` in `root`, whose entry is `st` (`None` when
/// absent or not a regular file; never through a link), then, unless the
/// index vouches for it, at its contents.
fn look(
    root: &Root,
    m: &Manifest,
    index: &Index,
    i: usize,
    st: Option<rustix::fs::Stat>,
) -> Result<Look, RestoreError> {
    let f = &m.files[i];
    let path = root.display(&f.path);
    let Some(st) = st else {
        return Ok(Look::Missing);
    };
    if st.st_size as u64 != f.size {
        return Ok(Look::Changed("size"));
    }
    if st.st_mode & 0o7777 != f.applied_mode() {
        return Ok(Look::Changed("mode"));
    }
    if st.st_nlink > 1 {
        return Ok(Look::Changed("links"));
    }
    if index.unchanged_stat(i, f, crate::root::file_stat(&st)) {
        return Ok(Look::Trusted);
    }
    let file = match root.open_read(&f.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(Look::Changed("unreadable")),
        // Swapped for something else since the look above.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Look::Missing)
        }
        Err(e) => return Err(RestoreError::io(path)(e)),
    };
    let mut h = blake3::Hasher::new();
    h.update_reader(&file).map_err(RestoreError::io(&path))?;
    Ok(if Digest::from(h.finalize()) == f.blake3 {
        Look::Hashed
    } else {
        Look::Differs
    })
}

/// The manifest's directories that are missing (or not directories), and
/// those whose mode differs from what a restore applies, as `path/`.
fn look_dirs(root: &Root, m: &Manifest) -> Result<(Vec<String>, Vec<String>), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let (mut missing, mut changed) = (Vec::new(), Vec::new());
    for d in &m.directories {
        match root.stat(&d.path) {
            Ok(Some(meta)) if meta.is_dir() => {
                if !d.mode_matches(meta.mode()) {
                    changed.push(format!("{}/ (mode)", d.path));
                }
            }
            Ok(_) => missing.push(format!("{}/", d.path)),
            Err(e) => return Err(RestoreError::io(root.display(&d.path))(e)),
        }
    }
    Ok((missing, changed))
}
