//! The destination as one open directory: every file operation of a
//! restore goes through [`Root`], by a path relative to it.
//!
//! A destination is writable by others (the node, another tenant) while
//! qsync, often root in an init container, writes into it. Opening by
//! absolute path would follow whatever links they plant, so nothing here
//! does: the destination is opened once (`O_DIRECTORY`, canonical path),
//! and every path below it is resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (a walk of
//! `openat(O_NOFOLLOW | O_DIRECTORY)` per component where the kernel lacks
//! `openat2`). A link anywhere on the way is an error, never followed.
//! Creating, removing and renaming use the `*at` calls on a parent
//! directory opened that way; modes are set with `fchmod` on an open file.
//! qsync's own records are replaced atomically (exclusive tmp, fsync,
//! rename, fsync of the directory) and read with a size limit, refusing
//! anything that is not a regular file. The directory's `flock` keeps two
//! restores out of one destination. What the records mean lives in
//! [`crate::dest`] and [`crate::journal`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::RestoreError;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// An open destination directory, locked for one restore (or not, for a
/// read-only look).
#[derive(Debug)]
pub struct Root {
    dir: File,
    path: PathBuf,
}

fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

fn refuse(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// Refusal of an entry that is not a private regular file (a FIFO, a
/// device, a directory, a file with other hard links).
fn not_private(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Whether `e` says a path leads through a link or through a file (ELOOP,
/// ENOTDIR): nothing at that path is in the destination.
fn not_beneath(e: &io::Error) -> bool {
    [rustix::io::Errno::LOOP, rustix::io::Errno::NOTDIR]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// Splits a relative path into checked components ("" is the root itself).
fn components(rel: &str) -> io::Result<Vec<&str>> {
    if rel.is_empty() || rel == "." {
        return Ok(Vec::new());
    }
    let comps: Vec<&str> = rel.split('/').collect();
    if rel.starts_with('/') || comps.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(refuse("path escapes or is not normalised"));
    }
    Ok(comps)
}

impl Root {
    /// Creates `path` if needed and opens it (canonical path) with the
    /// exclusive lock that keeps a second restore out for the whole run.
    pub fn create_locked(path: &Path) -> Result<Root, RestoreError> {
        std::fs::create_dir_all(path).map_err(RestoreError::io(path))?;
        let root = Root::open(path)?.ok_or_else(|| RestoreError::Dest {
            path: path.into(),
            reason: "vanished right after it was created; check what else manages this directory".into(),
        })?;
        match root.dir.try_lock() {
            Ok(()) => Ok(root),
            Err(std::fs::TryLockError::WouldBlock) => Err(RestoreError::Dest {
                path: root.path.clone(),
                reason: "another qsync restore is running into DEST; wait for it or stop it".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(RestoreError::io(&root.path)(e)),
        }
    }

    /// Opens an existing `path` without locking it; `None` when absent.
    pub fn open(path: &Path) -> Result<Option<Root>, RestoreError> {
        let canonical = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RestoreError::io(path)(e)),
        };
        let fd = rfs::open(
            &canonical,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RestoreError::io(&canonical)(err(e)))?;
        Ok(Some(Root {
            dir: File::from(fd),
            path: canonical,
        }))
    }

    /// Whether a restore holds this destination's lock right now.
    pub fn busy(&self) -> io::Result<bool> {
        match self.dir.try_lock() {
            Ok(()) => self.dir.unlock().map(|()| false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// The canonical path of the destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` as a path, for messages.
    pub fn display(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Opens `rel` (no link followed anywhere on the way, nothing outside).
    fn open_at(&self, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let comps = components(rel)?;
        // openat2 refuses (EINVAL) any flag beside O_PATH's own few.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let target = if comps.is_empty() { "." } else { rel };
        for _ in 0..16 {
            match rfs::openat2(&self.dir, target, flags, mode, RESOLVE) {
                // Another rename raced the lookup; the kernel asks to retry.
                Err(rustix::io::Errno::AGAIN) => continue,
                Err(rustix::io::Errno::NOSYS) => return self.walk(&comps, flags, mode),
                other => return other.map_err(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the path kept changing while it was opened",
        ))
    }

    /// `open_at` for kernels without `openat2`: one component at a time.
    fn walk(&self, comps: &[&str], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Some((last, parents)) = comps.split_last() else {
            return rfs::openat(&self.dir, ".", flags, mode).map_err(err);
        };
        let mut cur = rfs::openat(&self.dir, ".", dir_flags, Mode::empty()).map_err(err)?;
        for c in parents {
            cur = rfs::openat(&cur, *c, dir_flags, Mode::empty()).map_err(err)?;
        }
        rfs::openat(&cur, *last, flags | OFlags::NOFOLLOW, mode).map_err(err)
    }

    /// The directory holding `rel` (opened for reading) and `rel`'s name.
    fn parent<'a>(&self, rel: &'a str) -> io::Result<(File, &'a str)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if components(name)?.len() != 1 {
            return Err(refuse("not a file name"));
        }
        Ok((self.open_dir(dir)?, name))
    }

    /// Opens the directory `rel` ("" for the root) for reading.
    pub fn open_dir(&self, rel: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        self.open_at(rel, flags, Mode::empty()).map(File::from)
    }

    /// Opens the regular file `rel` for reading (`O_NONBLOCK`, so a FIFO
    /// does not hang the open; anything but a regular file is refused).
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        let fd = self.open_at(
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(not_private("not a regular file"));
        }
        Ok(f)
    }

    /// Opens the existing regular file `rel` for writing, with `extra`
    /// flags (`O_DIRECT`). Refuses a file with more than one hard link:
    /// writing it would write through to the other names, which may lie
    /// outside the destination ([`Root::break_links`] replaces such files).
    pub fn open_write(&self, rel: &str, extra: OFlags) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | extra;
        writable(File::from(self.open_at(rel, flags, Mode::empty())?))
    }

    /// Opens `rel` for writing, creating it with permission bits `mode`
    /// (less the umask) when absent; the same refusals as
    /// [`Root::open_write`].
    pub fn open_create(&self, rel: &str, mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        writable(File::from(self.open_at(
            rel,
            flags,
            Mode::from_raw_mode(mode & 0o777),
        )?))
    }

    /// The metadata of `rel` itself (a link is reported as a link, never
    /// followed); `None` when absent.
    pub fn stat(&self, rel: &str) -> io::Result<Option<std::fs::Metadata>> {
        match self.open_at(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => File::from(fd).metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A link on the way to `rel`, or a file where a directory of its
            // path belongs: what it names is not in DEST.
            Err(e) if not_beneath(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stat of each regular file of `rels` (`None` for anything else
    /// or nothing), looked up through one handle per directory: consecutive
    /// names in one directory cost a `statat` each. No link is followed.
    pub fn stat_files<'a>(
        &self,
        rels: impl IntoIterator<Item = &'a str>,
    ) -> io::Result<Vec<Option<rfs::Stat>>> {
        let mut parent: Option<(&str, File)> = None;
        let mut out = Vec::new();
        for rel in rels {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let handle = match parent.take() {
                Some((d, h)) if d == dir => h,
                _ => match self.open_dir(dir) {
                    Ok(h) => h,
                    Err(e) if e.kind() == io::ErrorKind::NotFound || not_beneath(&e) => {
                        out.push(None);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let st = match rfs::statat(&handle, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => Some(st),
                Ok(_) | Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(err(e)),
            };
            out.push(st);
            parent = Some((dir, handle));
        }
        Ok(out)
    }

    /// Removes the non-directory `rel`; `false` when it was absent.
    pub fn unlink(&self, rel: &str) -> io::Result<bool> {
        let (dir, name) = self.parent(rel)?;
        match rfs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// Fsyncs the destination directory itself.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// Flushes the whole filesystem holding the destination (`syncfs`):
    /// one call instead of an fsync per file when many small files changed.
    /// It covers that filesystem only: what [`Root::device`] says lives on
    /// another (a disk mounted inside DEST) needs syncing of its own.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        rfs::syncfs(&self.dir).map_err(err)
    }

    /// The device of the destination's own filesystem.
    pub fn device(&self) -> io::Result<u64> {
        Ok(rfs::fstat(&self.dir).map_err(err)?.st_dev)
    }

    /// Reads the regular file `rel` if it has at most `limit` bytes.
    /// `Ok(None)` when it is absent, not a regular file (a link, a FIFO,
    /// a device) or larger: such a record is not qsync's.
    pub fn read_bounded(&self, rel: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let f = match self.open_read(rel) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData || e.raw_os_error() == Some(libc::ELOOP) => {
                tracing::warn!("{}: not a regular file; ignoring it", self.display(rel).display());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        f.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            tracing::warn!(
                "{}: over {limit} bytes, more than qsync ever writes there; ignoring it",
                self.display(rel).display()
            );
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Replaces `rel` with a new file that `fill` writes: created under
    /// `<rel>.tmp` (any old entry of that name removed first) with
    /// `O_CREAT | O_EXCL | O_NOFOLLOW`, fsynced, renamed over `rel`, the
    /// directory fsynced. Returns the new file, still open (for appends
    /// with `append`).
    pub fn replace_with(
        &self,
        rel: &str,
        append: bool,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let tmp = format!("{name}.tmp");
        match rfs::unlinkat(&dir, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(err(e)),
        }
        let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if append {
            flags |= OFlags::APPEND;
        }
        let mut f =
            File::from(rfs::openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(0o644)).map_err(err)?);
        let done = fill(&mut f)
            .and_then(|()| f.sync_all())
            .and_then(|()| rfs::renameat(&dir, tmp.as_str(), &dir, name).map_err(err));
        if let Err(e) = done {
            let _ = rfs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        dir.sync_all()?;
        Ok(f)
    }

    /// [`Root::replace_with`] writing `bytes`.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        self.replace_with(rel, false, |f| f.write_all(bytes)).map(drop)
    }

    /// When the regular file `rel` has more than one hard link, replaces it
    /// with a copy on a fresh inode (same bytes and mode), so nothing
    /// written to it later reaches the other names. Returns whether it did.
    pub fn break_links(&self, rel: &str) -> io::Result<bool> {
        let (dir, name) = self.parent(rel)?;
        break_links_at(&dir, name)
    }
}

/// The fields of `st` the journal and index compare.
pub(crate) fn file_stat(st: &rfs::Stat) -> qsync_core::records::FileStat {
    qsync_core::records::FileStat::from_parts(
        st.st_size as u64,
        (st.st_mtime, st.st_mtime_nsec as i64),
        (st.st_ctime, st.st_ctime_nsec as i64),
        st.st_ino,
    )
}

/// `f` if it is a regular file with no other hard link.
fn writable(f: File) -> io::Result<File> {
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(not_private("not a regular file"));
    }
    if m.nlink() > 1 {
        return Err(not_private(
            "has another hard link (something else is changing the destination during the restore)",
        ));
    }
    Ok(f)
}

/// The type and link count of `name` in `dir`, not followed; `None` when absent.
pub(crate) fn stat_at(dir: &File, name: &str) -> io::Result<Option<(FileType, u64)>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_nlink))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Opens the subdirectory `name` of `dir`, refusing a link.
pub(crate) fn open_dir_at(dir: &File, name: &str) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rfs::openat(dir, name, flags, Mode::empty())
        .map(File::from)
        .map_err(err)
}

/// Creates the directory `name` in `dir`.
pub(crate) fn mkdir_at(dir: &File, name: &str) -> io::Result<()> {
    rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755)).map_err(err)
}

/// Removes `name` from `dir`: a directory with everything under it (never
/// following a link), anything else by unlinking the entry itself.
pub(crate) fn remove_at<P: rustix::path::Arg + Copy>(dir: &File, name: P) -> io::Result<()> {
    let is_dir = matches!(
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| FileType::from_raw_mode(st.st_mode)),
        Ok(FileType::Directory)
    );
    if !is_dir {
        return match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(err(e)),
        };
    }
    let sub = File::from(
        rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?,
    );
    for entry in entries(&sub)? {
        remove_at(&sub, entry.as_c_str())?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(err)
}

/// The names in the open directory `dir` (without `.` and `..`).
pub(crate) fn entries(dir: &File) -> io::Result<Vec<std::ffi::CString>> {
    let mut out = Vec::new();
    for entry in rfs::Dir::read_from(dir.as_fd()).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// [`Root::break_links`] for `name` in `dir`.
pub(crate) fn break_links_at(dir: &File, name: &str) -> io::Result<bool> {
    let src = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::LOOP) => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    let meta = src.metadata()?;
    if !meta.is_file() || meta.nlink() <= 1 {
        return Ok(false);
    }
    let tmp = format!(".qsync-restore.{:016x}.tmp", fastrand::u64(..));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dst = File::from(rfs::openat(dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600)).map_err(err)?);
    let copied = io::copy(&mut &src, &mut dst)
        .and_then(|_| rfs::fchmod(&dst, Mode::from_raw_mode(meta.mode() & 0o777)).map_err(err))
        .and_then(|()| dst.sync_all())
        .and_then(|()| rfs::renameat(dir, tmp.as_str(), dir, name).map_err(err));
    if let Err(e) = copied {
        let _ = rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    dir.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_never_followed_and_paths_never_escape() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let dest = d.path().join("dest");
        std::fs::create_dir_all(dest.join("sub")).unwrap();
        symlink(&outside, dest.join("link")).unwrap();
        symlink(d.path(), dest.join("sub/up")).unwrap();
        let root = Root::create_locked(&dest).unwrap();
        assert!(root.open_write("link", OFlags::empty()).is_err());
        assert!(root.open_create("sub/up/outside", 0o600).is_err());
        assert!(root.open_read("../outside").is_err());
        assert!(root.read_bounded("link", 100).unwrap().is_none());
        assert!(root.stat("link").unwrap().unwrap().file_type().is_symlink());
        root.write_atomic("link", b"mine").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(root.read_bounded("link", 100).unwrap().unwrap(), b"mine");
        assert!(root.read_bounded("link", 3).unwrap().is_none());

        // A hard link is replaced by a copy, not written through.
        std::fs::hard_link(&outside, dest.join("sub/hard")).unwrap();
        assert!(root.open_write("sub/hard", OFlags::empty()).is_err());
        assert!(root.break_links("sub/hard").unwrap());
        root.open_write("sub/hard", OFlags::empty())
            .unwrap()
            .write_all(b"new!")
            .unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");

        // One restore at a time; a look while it runs sees it busy.
        assert!(matches!(
            Root::create_locked(&dest),
            Err(RestoreError::Dest { .. })
        ));
        assert!(Root::open(&dest).unwrap().unwrap().busy().unwrap());
        drop(root);
        assert!(!Root::open(&dest).unwrap().unwrap().busy().unwrap());
    }
}
