//! The destination directory: markers, confinement and housekeeping.
//!
//! A destination is a restored node only while `.qsync-restore.json` (the
//! completion marker) exists. Before anything is modified the marker is
//! removed and `.qsync-restore.partial.json` written, so a run killed at any
//! point leaves a directory that is visibly incomplete and that the next run
//! recognises as its own. Every operation goes through [`Root`], relative
//! to the open destination: paths are created component by component, each
//! directory opened relative to its parent; a symbolic link found where a
//! directory or file belongs is removed, never followed, and a file with
//! other hard links is replaced by a private copy before anything writes
//! it, so no write can leave the destination. The file operations of a
//! restore (layout, hashing what is present, sizing, sealing) live here too.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use qsync_core::manifest::{FileEntry, Manifest, RESERVED_NAMES};
use qsync_core::pieces::Piece;
use qsync_core::pointer::Pointer;
use qsync_core::progress::Progress;
use qsync_core::records::{parse_marker, MARKER_LIMIT};
use qsync_core::{Digest, FormatError};
use rustix::fs::FileType;

pub use qsync_core::records::Marker;

use crate::root::{self, Root};
use crate::RestoreError;

/// Name of the completion marker.
pub const MARKER: &str = RESERVED_NAMES[0];
/// Name of the in-progress marker.
pub const PARTIAL: &str = RESERVED_NAMES[1];
/// Name of the resume journal.
pub const JOURNAL: &str = RESERVED_NAMES[2];
/// Name of the file index of the last completed restore.
pub const INDEX: &str = RESERVED_NAMES[3];

/// Reads a marker; `None` when absent, not a regular file, too large or
/// not a qsync marker.
pub fn read_marker(root: &Root, name: &str) -> Option<Marker> {
    let bytes = root.read_bounded(name, MARKER_LIMIT).ok()??;
    parse_marker(&bytes)
        .inspect_err(|e| tracing::warn!("{}: {e}; ignoring it", root.display(name).display()))
        .ok()
}

/// The marker of the complete restore `root` holds, or why it holds none
/// (no completion marker, or a restore under way or interrupted).
pub fn completed(root: &Root) -> Result<Marker, &'static str> {
    if read_marker(root, PARTIAL).is_some() {
        return Err("a restore into it is under way or was interrupted");
    }
    read_marker(root, MARKER).ok_or("it carries no completion marker")
}

/// Writes `name` in the destination atomically and durably.
pub fn write_marker(root: &Root, name: &str, m: &Marker) -> Result<(), RestoreError> {
    root.write_atomic(name, &m.to_bytes())
        .map_err(RestoreError::io(root.display(name)))
}

/// Removes `name` from the destination durably (absent is fine).
pub fn remove_marker(root: &Root, name: &str) -> Result<(), RestoreError> {
    let io = RestoreError::io(root.display(name));
    match root.unlink(name) {
        Ok(true) => root.sync().map_err(io),
        Ok(false) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// What a restore does with a destination qsync does not own: one that is
/// not empty and carries no marker, or holds another chain's restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignDest {
    /// Refuse it, naming `--force` (the default: never touch data qsync did
    /// not write).
    Refuse,
    /// Make it exactly the snapshot, deleting what is not in it (`--force`).
    TakeOver,
}

/// Claims the destination for a restore of `pointer`: checks ownership,
/// then writes the in-progress marker and removes the completion marker.
pub fn claim(
    root: &Root,
    pointer: &Pointer,
    key_id: String,
    foreign: ForeignDest,
) -> Result<(), RestoreError> {
    check_owner(root, pointer, foreign)?;
    write_marker(root, PARTIAL, &Marker::new(pointer, key_id))?;
    remove_marker(root, MARKER)
}

/// Refuses a destination qsync does not own (not empty and unmarked, or
/// another chain's restore) unless `foreign` says to take it over.
pub fn check_owner(root: &Root, pointer: &Pointer, foreign: ForeignDest) -> Result<(), RestoreError> {
    let force = foreign == ForeignDest::TakeOver;
    let refuse = |reason: String| RestoreError::Dest {
        path: root.path().into(),
        reason,
    };
    let previous = read_marker(root, MARKER).or_else(|| read_marker(root, PARTIAL));
    match previous {
        Some(m) if m.chain != pointer.chain.as_str() && !force => {
            return Err(refuse(format!(
            "holds a qsync restore of chain {}, not {}; pick another --dest, or pass --force to replace it",
            m.chain, pointer.chain
        )))
        }
        Some(_) => {}
        None => {
            // qsync's own records, or the temporary a record is written to
            // first, are what a restore killed while claiming leaves: they
            // make no directory foreign.
            if !holds_only_records(root)? && !force {
                return Err(refuse(
                    "is not empty and carries no qsync marker; refusing to touch data qsync did not write. Pick an empty --dest, or pass --force to make it exactly the snapshot (files not in the snapshot are deleted)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `name`, at the root of a destination, is one of qsync's records
/// or the temporary one is written to before it is renamed into place.
/// Whether the destination holds nothing but qsync's own records (or the
/// temporaries they are written to first): what a restore killed while
/// claiming leaves, which makes no directory foreign.
pub(crate) fn holds_only_records(root: &Root) -> Result<bool, RestoreError> {
    let io = io_at(root, "");
    Ok(root::entries(&root.open_dir("").map_err(&io)?)
        .map_err(io)?
        .iter()
        .all(|name| is_qsync_record(name.to_bytes())))
}

fn is_qsync_record(name: &[u8]) -> bool {
    let name = name.strip_suffix(b".tmp").unwrap_or(name);
    RESERVED_NAMES.iter().any(|r| r.as_bytes() == name)
}

/// An I/O error at `rel` in the destination, usable more than once.
fn io_at<'a>(root: &'a Root, rel: &'a str) -> impl Fn(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        path: root.display(rel),
        source,
    }
}

/// Most directories [`Dirs`] keeps open at once.
const OPEN_ANCESTORS: usize = 64;

/// Opens the destination's directories in path order, creating them, and
/// keeps the chain of the last one's ancestors open: a directory costs an
/// open of its own, not a walk down from the root.
struct Dirs<'r> {
    root: &'r Root,
    /// The open directories from the root ("") down to the last entered.
    chain: Vec<(String, File)>,
}

impl<'r> Dirs<'r> {
    fn new(root: &'r Root) -> Result<Self, RestoreError> {
        let top = root.open_dir("").map_err(RestoreError::io(root.path()))?;
        Ok(Dirs {
            root,
            chain: vec![(String::new(), top)],
        })
    }

    /// Makes `rel` ("" for the destination) a real directory, replacing
    /// files or links in the way, and leaves it open as the last entered.
    /// Each component is opened relative to its parent and never through a
    /// link. Returns whether this call created `rel` (it is then empty).
    fn enter(&mut self, rel: &str) -> Result<bool, RestoreError> {
        let within = |dir: &str| {
            dir.is_empty() || rel == dir || rel.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
        };
        while !within(&self.chain.last().expect("the root stays").0) {
            self.chain.pop();
        }
        let mut created = false;
        let done = self.chain.last().expect("the root stays").0.len();
        let rest = rel[done..].trim_start_matches('/');
        if rest.is_empty() {
            return Ok(false);
        }
        for comp in rest.split('/') {
            let (at, cur) = self.chain.last().expect("the root stays");
            let at = if at.is_empty() {
                comp.to_string()
            } else {
                format!("{at}/{comp}")
            };
            let io = io_at(self.root, &at);
            // Nothing is in a directory this walk just created.
            let there = if created {
                None
            } else {
                root::stat_at(cur, comp).map_err(&io)?
            };
            created = match there {
                Some((FileType::Directory, _)) => false,
                Some(_) => {
                    root::remove_at(cur, comp).map_err(&io)?;
                    root::mkdir_at(cur, comp).map_err(&io)?;
                    true
                }
                None => {
                    root::mkdir_at(cur, comp).map_err(&io)?;
                    true
                }
            };
            let dir = root::open_dir_at(cur, comp).map_err(io)?;
            self.chain.push((at, dir));
            if self.chain.len() > OPEN_ANCESTORS {
                // Deep paths hold no more descriptors than this: the root
                // and the deepest stay, what lies between is reopened
                // (from the root) if the walk comes back to it.
                self.chain.drain(1..self.chain.len() - 1);
            }
        }
        Ok(created)
    }

    /// The directory last entered, open.
    fn last(&self) -> &File {
        &self.chain.last().expect("the root stays").1
    }
}

/// Prepares `name` in the open directory `parent` (at `rel`) to be a
/// regular file: nothing but a regular file (or nothing) is left there, and
/// a regular file with other hard links is replaced by a private copy.
/// Returns whether a regular file is there.
fn file_slot_at(root: &Root, parent: &File, rel: &str, name: &str) -> Result<bool, RestoreError> {
    let io = io_at(root, rel);
    match root::stat_at(parent, name).map_err(&io)? {
        Some((FileType::RegularFile, links)) if links > 1 => {
            root::break_links_at(parent, name).map_err(io)?;
            Ok(true)
        }
        Some((FileType::RegularFile, _)) => Ok(true),
        None => Ok(false),
        Some(_) => {
            root::remove_at(parent, name).map_err(io)?;
            Ok(false)
        }
    }
}

/// Deletes everything in the destination that `manifest` does not list
/// (markers excepted). Returns how many entries were removed.
pub fn remove_extras(root: &Root, manifest: &Manifest) -> Result<u64, RestoreError> {
    let mut removed = 0;
    walk_extras(root, manifest, &mut |dir, name, rel| {
        root::remove_at(dir, name).map_err(io_at(root, rel))?;
        removed += 1;
        Ok(())
    })?;
    Ok(removed)
}

/// What [`remove_extras`] would delete, without deleting anything: each
/// entry's path (a directory stands for everything under it).
pub fn list_extras(root: &Root, manifest: &Manifest) -> Result<Vec<String>, RestoreError> {
    let mut listed = Vec::new();
    walk_extras(root, manifest, &mut |_, _, rel| {
        listed.push(rel.to_string());
        Ok(())
    })?;
    Ok(listed)
}

/// What the walk does with an entry the manifest lacks: given its open
/// parent directory, its name there and its path.
type Extra<'a> = dyn FnMut(&File, &std::ffi::CStr, &str) -> Result<(), RestoreError> + 'a;

fn walk_extras(root: &Root, manifest: &Manifest, extra: &mut Extra<'_>) -> Result<(), RestoreError> {
    let mut keep: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_ref()).collect();
    keep.extend(manifest.directories.iter().map(|d| d.path.as_str()));
    keep.extend(RESERVED_NAMES);
    let dir = root.open_dir("").map_err(RestoreError::io(root.path()))?;
    prune(root, &dir, "", &keep, extra)
}

/// Walks the open directory `dir` (at `prefix`), descending only into
/// kept subdirectories, each opened relative to its parent, never a link;
/// every entry not kept goes to `extra`.
fn prune(
    root: &Root,
    dir: &File,
    prefix: &str,
    keep: &HashSet<&str>,
    extra: &mut Extra<'_>,
) -> Result<(), RestoreError> {
    let here = RestoreError::io(root.display(prefix));
    for name in root::entries(dir).map_err(here)? {
        let text = name.to_string_lossy();
        let rel = if prefix.is_empty() {
            text.to_string()
        } else {
            format!("{prefix}/{text}")
        };
        // A name that is not UTF-8 is in no manifest.
        let kept = name.to_str().is_ok() && keep.contains(rel.as_str());
        if kept {
            let io = io_at(root, &rel);
            if let Some((FileType::Directory, _)) = root::stat_at(dir, &text).map_err(&io)? {
                let sub = root::open_dir_at(dir, &text).map_err(&io)?;
                prune(root, &sub, &rel, keep, extra)?;
            }
            continue;
        }
        extra(dir, name.as_c_str(), &rel)?;
    }
    Ok(())
}

/// Bytes free for unprivileged writers on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, RestoreError> {
    fs4::available_space(dir).map_err(RestoreError::io(dir))
}

/// Removes what the snapshot lacks, creates its directories, and clears
/// every file's slot of links, directories and other hard links. Returns
/// how many entries were removed, and per file whether a regular file is
/// there now (what is absent needs no look later). Files of one directory
/// are checked through one handle of it.
pub(crate) fn layout(root: &Root, m: &Manifest) -> Result<(u64, Vec<bool>), RestoreError> {
    let removed = remove_extras(root, m)?;
    let mut dirs = Dirs::new(root)?;
    // A directory this run creates is empty: its files need no look (one
    // planted meanwhile is still refused when it is opened for writing,
    // see `Root::open_create`).
    let mut created = HashSet::new();
    for d in &m.directories {
        if dirs.enter(&d.path)? {
            created.insert(d.path.as_ref());
        }
    }
    let mut present = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let (dir, name) = f.path.rsplit_once('/').unwrap_or(("", f.path.as_ref()));
        if created.contains(dir) {
            present.push(false);
            continue;
        }
        dirs.enter(dir)?;
        present.push(file_slot_at(root, dirs.last(), &f.path, name)?);
    }
    Ok((removed, present))
}

/// For each piece of `f` ([`qsync_core::pieces`]): does the file already
/// hold it? A whole chunk is proved by its own digest; a part of one (a
/// packed file's) only by the whole file's digest. Also returns the file's
/// stat as it was read (`None` when absent).
pub(crate) fn hash_existing(
    root: &Root,
    f: &FileEntry,
    pieces: &[Piece],
) -> Result<(Vec<bool>, Option<std::fs::Metadata>), RestoreError> {
    let path = root.display(&f.path);
    let file = match root.open_read(&f.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![false; pieces.len()], None)),
        Err(e) => return Err(RestoreError::io(path)(e)),
    };
    let meta = file.metadata().map_err(RestoreError::io(&path))?;
    let have = meta.len();
    let mut buf = Vec::new();
    let whole_file_ok = pieces.iter().any(|p| !p.whole()) && have == f.size && {
        let mut h = blake3::Hasher::new();
        h.update_reader(&file).map_err(RestoreError::io(&path))?;
        Digest::from(h.finalize()) == f.blake3
    };
    let mut ok = Vec::with_capacity(pieces.len());
    for p in pieces {
        let present = if p.whole() {
            p.offset + p.len <= have && {
                buf.resize(p.len as usize, 0);
                file.read_exact_at(&mut buf, p.offset)
                    .map_err(RestoreError::io(&path))?;
                Digest::of(&buf) == p.chunk.blake3
            }
        } else {
            whole_file_ok
        };
        ok.push(present);
    }
    Ok((ok, Some(meta)))
}

/// Files at least this large get their blocks reserved when sized; for
/// smaller ones the call costs more than the fragmentation it saves.
pub(crate) const PREALLOCATE_FROM: u64 = 1 << 20;

/// Creates or truncates/extends `rel` to `size`, reserving the blocks of a
/// large file. `existed`: layout found a regular file there (a file absent
/// then is created with its final mode `mode`, plus owner read and write
/// while it fills). A file with other hard links is first replaced by a
/// private copy, so the writes that follow never reach a name outside the
/// destination.
pub(crate) fn presize(
    root: &Root,
    rel: &str,
    size: u64,
    mode: u32,
    existed: bool,
) -> Result<(), RestoreError> {
    let path = root.display(rel);
    let io = || RestoreError::io(&path);
    if existed {
        root.break_links(rel).map_err(io())?;
        // A previous restore may have left the file read-only (its snapshot
        // mode): widen it through an open file, never by path.
        if let Ok(f) = root.open_read(rel) {
            let mode = f.metadata().map_err(io())?.permissions().mode() | 0o600;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io())?;
        }
    }
    let f = root.open_create(rel, mode | 0o600).map_err(io())?;
    // Unchanged size: leave the file (and its stat, which the journal
    // compares) alone.
    if existed && f.metadata().map_err(io())?.len() == size {
        return Ok(());
    }
    f.set_len(size).map_err(io())?;
    if size >= PREALLOCATE_FROM {
        // Not every filesystem can preallocate; the free-space check already ran.
        let _ = fs4::fs_std::FileExt::allocate(&f, size);
    }
    Ok(())
}

/// Applies the mode (when it differs) and fsyncs; with `changed` (a file
/// this run changed whose digest was not already assembled as its chunks
/// landed), first reads it back and verifies the whole-file digest (chunk
/// digests were checked as they landed; this catches a chunk written at the
/// wrong place). Returns the file's metadata once sealed, for the index.
pub(crate) fn seal_file(
    root: &Root,
    f: &FileEntry,
    changed: bool,
    progress: &dyn Progress,
) -> Result<std::fs::Metadata, RestoreError> {
    let path = root.display(&f.path);
    let io = || RestoreError::io(&path);
    let file = root.open_read(&f.path).map_err(io())?;
    let mut meta = file.metadata().map_err(io())?;
    if changed {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < f.size {
            let n = ((f.size - offset) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], offset).map_err(io())?;
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
        file.sync_all().map_err(io())?;
    }
    if meta.permissions().mode() & 0o7777 != f.applied_mode() {
        file.set_permissions(std::fs::Permissions::from_mode(f.applied_mode()))
            .map_err(io())?;
        meta = file.metadata().map_err(io())?;
    }
    Ok(meta)
}

/// Directories above which [`seal_dirs`] syncs the filesystem once instead
/// of each directory.
const SYNC_DIRS_ONE_BY_ONE: usize = 16;

/// Applies directory modes (through open directories, where they differ)
/// and makes every directory durable: each fsynced, deepest first, or the
/// whole filesystem synced once when there are many.
pub(crate) fn seal_dirs(root: &Root, m: &Manifest) -> Result<(), RestoreError> {
    let one_by_one = m.directories.len() <= SYNC_DIRS_ONE_BY_ONE;
    let here = root.device().map_err(RestoreError::io(root.path()))?;
    for d in m.directories.iter().rev() {
        let io = || RestoreError::io(root.display(&d.path));
        let dir = root.open_dir(&d.path).map_err(io())?;
        let meta = dir.metadata().map_err(io())?;
        // Keep the owner able to write, or a later top-up could not update it.
        if !d.mode_matches(meta.permissions().mode()) {
            dir.set_permissions(std::fs::Permissions::from_mode(d.applied_mode()))
                .map_err(io())?;
        }
        // The one syncfs below covers DEST's filesystem only.
        if one_by_one || meta.dev() != here {
            dir.sync_all().map_err(io())?;
        }
    }
    if !one_by_one {
        root.sync_filesystem().map_err(RestoreError::io(root.path()))?;
    }
    root.sync().map_err(RestoreError::io(root.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dirs: &[&str], files: &[&str]) -> Manifest {
        let files = files
            .iter()
            .map(|f| crate::testing::file(f, 0, Vec::new()))
            .collect();
        crate::testing::manifest(dirs, files)
    }

    /// Directories that share a prefix ("a", "a-b", "a/b"), that existed or
    /// not, and in the way (a file, a link): each is made a real directory
    /// through its own parent, and a file is reported present exactly when
    /// a regular file is there; those in directories the run created are
    /// not looked at, and nothing outside is touched.
    #[test]
    fn layout_walks_sibling_prefixes_and_finds_exactly_the_files_there() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        std::fs::create_dir_all(dest.join("a/b")).unwrap();
        std::fs::write(dest.join("a/b/kept"), b"x").unwrap();
        std::fs::write(dest.join("top"), b"x").unwrap();
        // In the way of directory "a-b": a file; of "z": a link outside.
        std::fs::write(dest.join("a-b"), b"not a dir").unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.join("z")).unwrap();
        let root = Root::create_locked(&dest).unwrap();
        let dirs = ["a", "a-b", "a/b", "a/b/c", "a/bc", "ab", "z", "z/y"];
        let files = [
            "a-b/new",
            "a/b/c/new",
            "a/b/kept",
            "a/bc/new",
            "a/x",
            "top",
            "z/y/new",
        ];
        let m = manifest(&dirs, &files);
        let (_, present) = layout(&root, &m).unwrap();
        assert_eq!(present, [false, false, true, false, false, true, false]);
        for dir in dirs {
            let meta = std::fs::symlink_metadata(dest.join(dir)).unwrap();
            assert!(meta.is_dir(), "{dir} is a real directory");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A path deeper than the descriptors kept open: still one real
        // directory per level, through a handful of descriptors.
        let deep: Vec<String> = (1..=200).map(|n| vec!["d"; n].join("/")).collect();
        let mut dirs = Dirs::new(&root).unwrap();
        for d in &deep {
            dirs.enter(d).unwrap();
            assert!(dirs.chain.len() <= OPEN_ANCESTORS, "{} open", dirs.chain.len());
        }
        dirs.enter("d/d/x").unwrap();
        assert!(std::fs::symlink_metadata(dest.join(&deep[199])).unwrap().is_dir());
        assert!(dest.join("d/d/x").is_dir());
        // Again, with everything in place: every file is looked at.
        std::fs::write(dest.join("a/bc/new"), b"x").unwrap();
        let (_, present) = layout(&root, &m).unwrap();
        assert_eq!(present, [false, false, true, true, false, true, false]);
    }
}
