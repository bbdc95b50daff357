//! Whether a destination already is the snapshot, at about a stat per file.
//!
//! An init container restarting its node, or a top-up with nothing new,
//! lands here: the completion marker names this very manifest, no restore
//! is under way or left its journal, the tree holds exactly the snapshot's names (read from the
//! directories, which give each entry's type without a stat), every
//! directory has its mode, and every file has one link and the stat the
//! index recorded when the restore that wrote it sealed it, for the
//! manifest's digest. Then the restore writes nothing, not even its
//! markers. Anything else, and it goes the full way (claim, layout, plan),
//! which hashes what it cannot trust.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use qsync_core::manifest::{DirEntry, FileEntry, Manifest, RESERVED_NAMES};
use qsync_core::Digest;
use rustix::fs::{self as rfs, AtFlags, FileType};

use crate::dest::{read_marker, JOURNAL, MARKER, PARTIAL};
use crate::journal::Index;
use crate::root::{self, Root};
use crate::RestoreError;

/// What the snapshot has at a path.
enum Want<'a> {
    File(usize, &'a FileEntry),
    Dir(&'a DirEntry),
}

/// The index of the destination's last completed restore (none under
/// `--verify-existing`, which trusts nothing), and whether the destination
/// already is the snapshot of `manifest` (stored with digest `digest`):
/// what a restore and its dry run both start from.
pub(crate) async fn index_and_complete(
    root: &Arc<Root>,
    manifest: &Arc<Manifest>,
    digest: Digest,
    verify_existing: bool,
) -> Result<(Arc<Index>, bool), RestoreError> {
    if verify_existing {
        return Ok((Arc::new(Index::default()), false));
    }
    let index = Arc::new(Index::load(root, manifest));
    let (r, m, i) = (root.clone(), manifest.clone(), index.clone());
    let complete = crate::batch::blocking(move || {
        already_complete(&r, &m, &digest, &i).map_err(RestoreError::io(r.path()))
    })
    .await?;
    Ok((index, complete))
}

/// True when `root` holds exactly the snapshot of `manifest` (stored with
/// digest `digest`), as the last completed restore left it.
fn already_complete(root: &Root, manifest: &Manifest, digest: &Digest, index: &Index) -> io::Result<bool> {
    let marked = read_marker(root, MARKER).is_some_and(|m| m.manifest_blake3 == digest.to_hex());
    // A journal beside the marker is a restore killed before its last
    // step: the full path finishes it.
    if !marked || root.stat(PARTIAL)?.is_some() || root.stat(JOURNAL)?.is_some() {
        return Ok(false);
    }
    let mut want: HashMap<&str, Want> = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_ref(), Want::File(i, f)))
        .collect();
    want.extend(
        manifest
            .directories
            .iter()
            .map(|d| (d.path.as_str(), Want::Dir(d))),
    );
    let mut seen = 0;
    let top = root.open_dir("")?;
    Ok(walk(&top, "", &want, index, &mut seen)? && seen == want.len())
}

/// Checks every entry under the open directory `dir` (at `prefix`); counts
/// what it found in `seen`. False at the first entry that is not as wanted.
fn walk(
    dir: &File,
    prefix: &str,
    want: &HashMap<&str, Want>,
    index: &Index,
    seen: &mut usize,
) -> io::Result<bool> {
    for entry in rfs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(name) = name.to_str() else {
            return Ok(false);
        };
        if prefix.is_empty() && RESERVED_NAMES.contains(&name) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = match entry.file_type() {
            FileType::Unknown => {
                FileType::from_raw_mode(rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode)
            }
            known => known,
        };
        let ok = match (want.get(rel.as_str()), kind) {
            (Some(Want::Dir(d)), FileType::Directory) => {
                let sub = root::open_dir_at(dir, name)?;
                // Permission bits only: a setgid parent passes its bit on.
                d.mode_matches(sub.metadata()?.mode()) && walk(&sub, &rel, want, index, seen)?
            }
            (Some(Want::File(i, f)), FileType::RegularFile) => {
                let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                st.st_nlink == 1
                    && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && index.unchanged_stat(*i, f, root::file_stat(&st))
            }
            _ => false,
        };
        if !ok {
            return Ok(false);
        }
        *seen += 1;
    }
    Ok(true)
}
