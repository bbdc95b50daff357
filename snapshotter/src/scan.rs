//! Lists a source directory as the manifest will describe it.
//!
//! Regular files and directories only, sorted by path, with the stat data
//! [`crate::publish`] compares after reading to detect concurrent changes.
//! qsync's own marker files at the root are skipped, so a restored node can
//! be snapshotted again. Symbolic links and special files are refused rather
//! than silently dropped: a database that depends on them would not restore.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qsync_core::manifest::{FileEntry, RESERVED_NAMES};
use qsync_core::Digest;

use crate::SnapshotError;

/// The stat fields that must not change while a file is read, and that
/// identify a file as unchanged since an earlier cycle, besides the size
/// and permission bits its [`FileEntry`] holds ([`unchanged`]). 24 bytes:
/// a million files hold one each.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// Modification time, nanoseconds since 1970 (saturating).
    pub mtime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number of the filesystem.
    pub dev: u64,
}

const _: () = assert!(std::mem::size_of::<Stat>() == 24);

impl Stat {
    /// Stat fields of `m`.
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// A file as listed: size, permission bits and stat data, what must not
/// change from listing to the last byte read ([`Scan::listed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Length.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// The rest.
    pub stat: Stat,
}

impl Listed {
    /// What `m` says of its file.
    pub fn of(m: &std::fs::Metadata) -> Listed {
        Listed {
            size: m.len(),
            mode: m.mode() & 0o7777,
            stat: Stat::of(m),
        }
    }
}

/// Everything under a source root.
///
/// The files are listed as the manifest's own table, so a million small
/// files are held once: [`crate::publish`] fills in each entry's digest
/// and chunks as it reads, and moves the table into the manifest.
#[derive(Debug, Default)]
pub struct Scan {
    /// The directory listed.
    pub root: PathBuf,
    /// Directories (relative path, mode), sorted.
    pub dirs: Vec<(String, u32)>,
    /// Regular files, sorted by relative path, with path, size and mode
    /// set (digest zero and no chunks until they are read).
    pub files: Vec<FileEntry>,
    /// Each file's stat data when listed, in the order of `files`.
    pub stats: Vec<Stat>,
}

impl Scan {
    /// Absolute path of file `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&*self.files[i].path)
    }

    /// File `i` as listed.
    pub fn listed(&self, i: usize) -> Listed {
        let f = &self.files[i];
        Listed {
            size: f.size,
            mode: f.mode,
            stat: self.stats[i].clone(),
        }
    }
}

/// Walks `root`.
pub fn scan(root: &Path) -> Result<Scan, SnapshotError> {
    let meta = std::fs::metadata(root).map_err(|source| SnapshotError::Source {
        path: root.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SnapshotError::Unsupported {
            path: root.into(),
            what: "is not a directory; --source must be the chain's data directory".into(),
        });
    }
    let mut out = Scan {
        root: root.to_path_buf(),
        ..Scan::default()
    };
    walk(root, "", &mut out)?;
    out.dirs.sort();
    // The walk lists files in path order (see `walk`); checked, not assumed.
    if !out.files.windows(2).all(|w| w[0].path < w[1].path) {
        let mut both: Vec<(FileEntry, Stat)> = out.files.drain(..).zip(out.stats.drain(..)).collect();
        both.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        (out.files, out.stats) = both.into_iter().unzip();
    }
    Ok(out)
}

/// Lists `dir` (at `prefix`) into `out`, depth first, siblings sorted by
/// name with a directory's name followed by `/`: each directory's files
/// then come out exactly in the order of their full paths (`a.b` before
/// `a/x`, as `.` sorts before `/`), with no sort of the whole listing.
/// The sort goes by the directory entry's own type; each entry is
/// `lstat`ed right before it is listed or walked into, so a directory
/// swapped for a link has no more time to do it than an unsorted walk
/// gave (an entry whose type changed in between can only break the order,
/// which [`scan`] checks).
fn walk(dir: &Path, prefix: &str, out: &mut Scan) -> Result<(), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Source { path, source }
    };
    let mut here = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| SnapshotError::Unsupported {
                path: entry.path(),
                what: "file name is not UTF-8; qsync manifests carry UTF-8 paths".into(),
            })?;
        if prefix.is_empty() && RESERVED_NAMES.contains(&name.as_str()) {
            continue;
        }
        // The entry's own type (never follows a link).
        let is_dir = entry.file_type().map_err(io(&entry.path()))?.is_dir();
        here.push((if is_dir { format!("{name}/") } else { name.clone() }, name));
    }
    here.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, name) in here {
        let path = dir.join(&name);
        let m = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = m.file_type();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if ft.is_dir() {
            out.dirs.push((rel.clone(), m.mode() & 0o7777));
            walk(&path, &rel, out)?;
        } else if ft.is_file() {
            out.files.push(FileEntry {
                path: rel.into(),
                size: m.len(),
                mode: m.mode() & 0o7777,
                blake3: Digest([0; 32]),
                chunks: Box::default(),
                packed: false,
            });
            out.stats.push(Stat::of(&m));
        } else {
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "a special file"
            };
            return Err(SnapshotError::Unsupported {
                path,
                what: format!("is {kind}; qsync publishes regular files and directories only. Point --source at the real directory (or a checkpoint) instead"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sorted_and_skips_markers_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/empty")).unwrap();
        std::fs::write(d.path().join("b/z"), b"z").unwrap();
        std::fs::write(d.path().join("a"), b"a").unwrap();
        std::fs::write(d.path().join(".qsync-restore.json"), b"{}").unwrap();
        let s = scan(d.path()).unwrap();
        let files: Vec<_> = s.files.iter().map(|f| f.path.as_ref()).collect();
        assert_eq!(files, ["a", "b/z"]);
        assert_eq!(s.stats.len(), 2);
        let dirs: Vec<_> = s.dirs.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(dirs, ["b", "b/empty"]);
        // Names that sort differently with and without the `/`: the walk
        // must still list in full-path order.
        for name in ["c.b", "c-c/y", "c/x", "c0", "b/z.0", "b.d/q/r"] {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let s = scan(d.path()).unwrap();
        let files: Vec<_> = s.files.iter().map(|f| f.path.as_ref()).collect();
        assert_eq!(
            files,
            ["a", "b.d/q/r", "b/z", "b/z.0", "c-c/y", "c.b", "c/x", "c0"]
        );
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        assert!(scan(d.path()).unwrap_err().to_string().contains("symbolic link"));
    }
}
