//! The destination directory: markers, confinement and housekeeping.
//!
//! A destination is a restored node only while `.qsync-restore.json` (the
//! completion marker) exists. Before anything is modified the marker is
//! removed and `.qsync-restore.partial.json` written, so a run killed at any
//! point leaves a directory that is visibly incomplete and that the next run
//! recognises as its own. Paths are created component by component; a
//! symbolic link found where a directory or file belongs is removed, never
//! followed, so no write can leave the destination. The file operations of
//! a restore (layout, hashing what is present, sizing, sealing) live here too.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::os::unix::fs::{FileExt, PermissionsExt};

use qsync_core::manifest::{FileEntry, Manifest, RESERVED_NAMES};
use qsync_core::pointer::Pointer;
use qsync_core::progress::Progress;
use qsync_core::time::Timestamp;
use qsync_core::{Digest, FormatError};
use serde::{Deserialize, Serialize};

use crate::RestoreError;

/// Name of the completion marker.
pub const MARKER: &str = RESERVED_NAMES[0];
/// Name of the in-progress marker.
pub const PARTIAL: &str = RESERVED_NAMES[1];
/// Name of the resume journal.
pub const JOURNAL: &str = RESERVED_NAMES[2];
/// Name of the file index of the last completed restore.
pub const INDEX: &str = RESERVED_NAMES[3];

/// Contents of both markers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    /// Always `qsync-restore/1`.
    pub format: String,
    /// Chain restored.
    pub chain: String,
    /// Snapshot version.
    pub version: u64,
    /// Block height, when known.
    #[serde(default)]
    pub height: Option<u64>,
    /// Manifest key.
    pub manifest_key: String,
    /// BLAKE3 of the stored manifest.
    pub manifest_blake3: String,
    /// Signing key id.
    pub key_id: String,
    /// When this marker was written.
    pub written_at: String,
}

impl Marker {
    /// The marker for `pointer`'s current snapshot.
    pub fn new(pointer: &Pointer, key_id: String) -> Marker {
        Marker {
            format: "qsync-restore/1".into(),
            chain: pointer.chain.to_string(),
            version: pointer.current.version,
            height: pointer.current.height,
            manifest_key: pointer.current.manifest_key.to_string(),
            manifest_blake3: pointer.current.manifest_blake3.to_hex(),
            key_id,
            written_at: Timestamp::now().to_string(),
        }
    }
}

/// Reads a marker; `None` when absent or unreadable.
pub fn read_marker(dest: &Path, name: &str) -> Option<Marker> {
    let bytes = std::fs::read(dest.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(RestoreError::io(dir))
}

/// Writes `name` in `dest` atomically and durably.
pub fn write_marker(dest: &Path, name: &str, m: &Marker) -> Result<(), RestoreError> {
    let path = dest.join(name);
    let tmp = dest.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(RestoreError::io(&tmp))?;
    f.write_all(&serde_json::to_vec_pretty(m).expect("serialises"))
        .and_then(|_| f.sync_all())
        .map_err(RestoreError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(RestoreError::io(&path))?;
    sync_dir(dest)
}

/// Removes `name` from `dest` durably (absent is fine).
pub fn remove_marker(dest: &Path, name: &str) -> Result<(), RestoreError> {
    match std::fs::remove_file(dest.join(name)) {
        Ok(()) => sync_dir(dest),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::io(dest.join(name))(e)),
    }
}

/// Claims `dest` for a restore of `pointer`: checks ownership, then writes the
/// in-progress marker and removes the completion marker. Returns the
/// canonical destination path.
pub fn claim(dest: &Path, pointer: &Pointer, key_id: String, force: bool) -> Result<PathBuf, RestoreError> {
    let refuse = |reason: String| RestoreError::Dest {
        path: dest.into(),
        reason,
    };
    std::fs::create_dir_all(dest).map_err(RestoreError::io(dest))?;
    let dest = dest.canonicalize().map_err(RestoreError::io(dest))?;
    let previous = read_marker(&dest, MARKER).or_else(|| read_marker(&dest, PARTIAL));
    match previous {
        Some(m) if m.chain != pointer.chain.as_str() && !force => {
            return Err(refuse(format!(
            "holds a qsync restore of chain {}, not {}; pick another --dest, or pass --force to replace it",
            m.chain, pointer.chain
        )))
        }
        Some(_) => {}
        None => {
            let mut entries = std::fs::read_dir(&dest).map_err(RestoreError::io(&dest))?;
            if entries.next().is_some() && !force {
                return Err(refuse(
                    "is not empty and carries no qsync marker; refusing to touch data qsync did not write. Pick an empty --dest, or pass --force to make it exactly the snapshot (files not in the snapshot are deleted)".into(),
                ));
            }
        }
    }
    write_marker(&dest, PARTIAL, &Marker::new(pointer, key_id))?;
    remove_marker(&dest, MARKER)?;
    Ok(dest)
}

/// Makes `root/rel` a real directory, replacing files or links in the way.
pub fn ensure_dir(root: &Path, rel: &str) -> Result<PathBuf, RestoreError> {
    let mut cur = root.to_path_buf();
    for comp in rel.split('/') {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => std::fs::remove_file(&cur).map_err(RestoreError::io(&cur))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RestoreError::io(&cur)(e)),
        }
        std::fs::create_dir(&cur).map_err(RestoreError::io(&cur))?;
    }
    Ok(cur)
}

/// Prepares `root/rel` to be a regular file: parents are real directories and
/// nothing but a regular file (or nothing) is left at the path.
pub fn ensure_file_slot(root: &Path, rel: &str) -> Result<PathBuf, RestoreError> {
    let parent = match rel.rsplit_once('/') {
        Some((dir, _)) => ensure_dir(root, dir)?,
        None => root.to_path_buf(),
    };
    let path = parent.join(rel.rsplit('/').next().expect("non-empty path"));
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path).map_err(RestoreError::io(&path))?,
        Ok(_) => std::fs::remove_file(&path).map_err(RestoreError::io(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RestoreError::io(&path)(e)),
    }
    Ok(path)
}

/// Deletes everything under `root` that `manifest` does not list (markers
/// excepted). Returns how many entries were removed.
pub fn remove_extras(root: &Path, manifest: &Manifest) -> Result<u64, RestoreError> {
    let mut keep: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    keep.extend(manifest.directories.iter().map(|d| d.path.as_str()));
    keep.extend(RESERVED_NAMES);
    let mut removed = 0;
    prune(root, "", &keep, &mut removed)?;
    Ok(removed)
}

fn prune(dir: &Path, prefix: &str, keep: &HashSet<&str>, removed: &mut u64) -> Result<(), RestoreError> {
    for entry in std::fs::read_dir(dir).map_err(RestoreError::io(dir))? {
        let entry = entry.map_err(RestoreError::io(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ft = entry.file_type().map_err(RestoreError::io(&path))?;
        if keep.contains(rel.as_str()) {
            if ft.is_dir() {
                prune(&path, &rel, keep, removed)?;
            }
            continue;
        }
        if ft.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(RestoreError::io(&path))?;
        *removed += 1;
    }
    Ok(())
}

/// Bytes free for unprivileged writers on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, RestoreError> {
    fs4::available_space(dir).map_err(RestoreError::io(dir))
}

/// Removes what the snapshot lacks, creates its directories, and returns the
/// path of every file (with the slot cleared of links and directories).
pub(crate) fn layout(root: &Path, m: &Manifest) -> Result<(u64, Vec<PathBuf>), RestoreError> {
    let removed = remove_extras(root, m)?;
    for d in &m.directories {
        ensure_dir(root, &d.path)?;
    }
    let paths = m
        .files
        .iter()
        .map(|f| ensure_file_slot(root, &f.path))
        .collect::<Result<_, _>>()?;
    Ok((removed, paths))
}

/// For each chunk of `f`: does the file at `path` already hold it?
pub(crate) fn hash_existing(path: &Path, f: &FileEntry) -> Result<Vec<bool>, RestoreError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![false; f.chunks.len()]),
        Err(e) => return Err(RestoreError::io(path)(e)),
    };
    let have = file.metadata().map_err(RestoreError::io(path))?.len();
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut ok = Vec::with_capacity(f.chunks.len());
    for c in &f.chunks {
        let present = offset + c.size <= have && {
            buf.resize(c.size as usize, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(RestoreError::io(path))?;
            Digest::of(&buf) == c.blake3
        };
        ok.push(present);
        offset += c.size;
    }
    Ok(ok)
}

/// Creates or truncates/extends `path` to `size`, reserving the blocks.
pub(crate) fn presize(path: &Path, size: u64) -> Result<(), RestoreError> {
    // A previous restore may have left the file read-only (its snapshot mode).
    if let Ok(m) = std::fs::symlink_metadata(path) {
        let mode = m.permissions().mode() | 0o600;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(RestoreError::io(path))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(RestoreError::io(path))?;
    f.set_len(size).map_err(RestoreError::io(path))?;
    if size > 0 {
        // Not every filesystem can preallocate; the free-space check already ran.
        let _ = fs4::fs_std::FileExt::allocate(&f, size);
    }
    Ok(())
}

/// Applies the mode and fsyncs; with `changed` (a file this run changed
/// whose digest was not already assembled as its chunks landed), first
/// reads it back and verifies the whole-file digest (chunk digests were
/// checked as they landed; this catches a chunk written at the wrong place).
pub(crate) fn seal_file(
    path: &Path,
    f: &FileEntry,
    changed: bool,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let file = std::fs::File::open(path).map_err(RestoreError::io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode & 0o777))
        .map_err(RestoreError::io(path))?;
    if !changed {
        return Ok(());
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < f.size {
        let n = ((f.size - offset) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(RestoreError::io(path))?;
        h.update(&buf[..n]);
        offset += n as u64;
        progress.advance(n as u64);
    }
    let actual: Digest = h.finalize().into();
    if actual != f.blake3 {
        return Err(FormatError::DigestMismatch {
            what: format!("restored file {}", path.display()),
            expected: f.blake3,
            actual,
        }
        .into());
    }
    file.sync_all().map_err(RestoreError::io(path))
}

/// Applies directory modes and fsyncs every directory, deepest first.
pub(crate) fn seal_dirs(root: &Path, m: &Manifest) -> Result<(), RestoreError> {
    for d in m.directories.iter().rev() {
        let p = root.join(&d.path);
        // Keep the owner able to write, or a later top-up could not update it.
        let mode = (d.mode & 0o777) | 0o700;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(RestoreError::io(&p))?;
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(RestoreError::io(&p))?;
    }
    std::fs::File::open(root)
        .and_then(|f| f.sync_all())
        .map_err(RestoreError::io(root))
}
