//! Lists a source directory as the manifest will describe it.
//!
//! Regular files and directories only, sorted by path, with the stat data
//! [`crate::publish`] compares after reading to detect concurrent changes.
//! qsync's own marker files at the root are skipped, so a restored node can
//! be snapshotted again. Symbolic links and special files are refused rather
//! than silently dropped: a database that depends on them would not restore.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qsync_core::manifest::RESERVED_NAMES;

use crate::SnapshotError;

/// A regular file to publish.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Path relative to the source root, `/`-separated.
    pub rel: String,
    /// The source root, shared by every file of a listing (a million
    /// files' absolute paths took about 60 MB).
    pub root: Arc<Path>,
    /// Stat data before reading.
    pub stat: Stat,
}

impl SourceFile {
    /// Absolute path.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.rel)
    }
}

/// The stat fields that must not change while a file is read, and that
/// identify a file as unchanged since an earlier cycle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// Length.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds.
    pub mtime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device number of the filesystem.
    pub dev: u64,
}

impl Stat {
    /// Stat fields of `m`.
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mode: m.mode() & 0o7777,
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Everything under a source root.
#[derive(Debug, Default)]
pub struct Scan {
    /// Directories (relative path, mode), sorted.
    pub dirs: Vec<(String, u32)>,
    /// Regular files, sorted by relative path.
    pub files: Vec<SourceFile>,
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
    let mut out = Scan::default();
    walk(root, "", &root.into(), &mut out)?;
    out.dirs.sort();
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, root: &Arc<Path>, out: &mut Scan) -> Result<(), SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Source { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| SnapshotError::Unsupported {
                path: path.clone(),
                what: "file name is not UTF-8; qsync manifests carry UTF-8 paths".into(),
            })?;
        if prefix.is_empty() && RESERVED_NAMES.contains(&name.as_str()) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let m = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = m.file_type();
        if ft.is_dir() {
            out.dirs.push((rel.clone(), m.mode() & 0o7777));
            walk(&path, &rel, root, out)?;
        } else if ft.is_file() {
            out.files.push(SourceFile {
                rel,
                root: root.clone(),
                stat: Stat::of(&m),
            });
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
        let files: Vec<_> = s.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(files, ["a", "b/z"]);
        let dirs: Vec<_> = s.dirs.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(dirs, ["b", "b/empty"]);
        std::os::unix::fs::symlink("/etc", d.path().join("link")).unwrap();
        assert!(scan(d.path()).unwrap_err().to_string().contains("symbolic link"));
    }
}
