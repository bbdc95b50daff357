//! What a destination already holds, without reading it again.
//!
//! Two records live next to the data, both tied to content, not to trust:
//!
//! - The **journal** (`.qsync-restore.journal`) lists chunks of the manifest
//!   being restored that are written and verified. A batch is appended only
//!   after the data files it covers are fdatasync'ed, so after SIGKILL or
//!   power loss every journaled chunk is on disk; a rerun fetches only the
//!   rest, wasting at most the batch in flight.
//! - The **index** (`.qsync-restore.index.json`) is written when a restore
//!   completes: each file's digest and the stat it had right after sealing.
//!   A later top-up trusts a file whose path, digest and stat (size, mtime,
//!   ctime, inode) are unchanged, instead of hashing it. The node rewriting
//!   a file changes its mtime (and resetting mtime changes ctime), so the
//!   file is hashed again. `--verify-existing` ignores both records and
//!   hashes everything.
//!
//! Each journal record carries the file's stat right after its fdatasync;
//! on resume a file's journaled chunks count only while its stat is still
//! the last one recorded, so a file changed in place (same size) since is
//! hashed, not trusted. Both records are read with a size limit set by the
//! manifest and only from regular files, through [`Root`]; the record
//! formats are `qsync_core::records`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use qsync_core::manifest::{FileEntry, Manifest};
use qsync_core::records::{
    index_limit, journal_limit, parse_index, parse_journal, FileStat, IndexFile, JournalLine, JournalState,
};
use qsync_core::Digest;
use rustix::fs::OFlags;

pub use qsync_core::records::{DoneSet, IndexEntry};

use crate::dest::{INDEX, JOURNAL};
use crate::root::{self, Root};
use crate::RestoreError;

/// Files a journal batch fdatasyncs one by one; more are synced with one
/// `syncfs`.
const SYNC_ONE_BY_ONE: usize = 16;

/// One record to append: file, chunks (`None` for all), stat once synced.
pub type Record = (u32, Option<Vec<u32>>, Option<FileStat>);

/// An open journal for one manifest.
pub struct Journal {
    file: std::fs::File,
    root: Arc<Root>,
    manifest: Arc<Manifest>,
}

impl Journal {
    /// Opens the journal of the destination for `manifest` (stored with
    /// digest `digest`), returning what it already records. A journal for
    /// another manifest, unreadable, over the size this manifest can need,
    /// or not a regular file is started afresh.
    pub fn open(
        root: Arc<Root>,
        manifest: Arc<Manifest>,
        digest: &Digest,
    ) -> Result<(Journal, JournalState), RestoreError> {
        let path = root.display(JOURNAL);
        if let Some(state) = Self::peek(&root, &manifest, digest)? {
            // Append to the very file, unless it became something else.
            if let Ok(mut file) = root.open_write(JOURNAL, OFlags::APPEND) {
                if state.torn {
                    // Terminate the torn line so the next record starts on its own.
                    file.write_all(b"\n").map_err(RestoreError::io(&path))?;
                }
                return Ok((Journal { file, root, manifest }, state));
            }
        }
        let header = JournalLine::Header { manifest: *digest }.to_line();
        let file = root
            .replace_with(JOURNAL, true, |f| f.write_all(header.as_bytes()))
            .map_err(RestoreError::io(&path))?;
        Ok((Journal { file, root, manifest }, JournalState::default()))
    }

    /// What the destination's journal of the manifest with digest `digest`
    /// records, without opening it for writing (`None`: no such journal).
    pub fn peek(
        root: &Root,
        manifest: &Manifest,
        digest: &Digest,
    ) -> Result<Option<JournalState>, RestoreError> {
        let places = (0..manifest.files.len()).map(|i| manifest.piece_count(i)).sum();
        let limit = journal_limit(manifest.files.len(), places);
        Ok(root
            .read_bounded(JOURNAL, limit)
            .map_err(RestoreError::io(root.display(JOURNAL)))?
            .and_then(|bytes| parse_journal(&bytes, digest, limit).ok()))
    }

    /// Appends `entries` durably. The caller has already synced the data.
    pub fn record(&mut self, entries: &[Record]) -> Result<(), RestoreError> {
        let mut text = String::new();
        for (f, c, st) in entries {
            text.push_str(
                &JournalLine::Done {
                    f: *f,
                    c: c.clone(),
                    st: *st,
                }
                .to_line(),
            );
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(RestoreError::io(self.root.display(JOURNAL)))
    }

    /// Makes each file of `written` (file index -> pieces written) durable,
    /// then journals the pieces with the stat each file had once synced.
    /// A few files are fdatasync'ed one by one; many (small packed files)
    /// with one `syncfs` of the destination's filesystem, as `tar -x; sync`
    /// would, instead of a disk flush per file.
    pub fn sync_and_record(&mut self, written: HashMap<u32, Vec<u32>>) -> Result<(), RestoreError> {
        let mut written: Vec<(u32, Vec<u32>)> = written.into_iter().collect();
        // In path order, so the stats below reuse each directory's handle.
        written.sort_unstable_by_key(|(f, _)| *f);
        let files = &self.manifest.files;
        let stats: Vec<Option<FileStat>> = if written.len() <= SYNC_ONE_BY_ONE {
            written
                .iter()
                .map(|(f, _)| {
                    let rel = &files[*f as usize].path;
                    let io = || RestoreError::io(self.root.display(rel));
                    let file = self.root.open_read(rel).map_err(io())?;
                    file.sync_data().map_err(io())?;
                    Ok(Some(FileStat::of(&file.metadata().map_err(io())?)))
                })
                .collect::<Result<_, RestoreError>>()?
        } else {
            let io = || RestoreError::io(self.root.path());
            self.root.sync_filesystem().map_err(io())?;
            let rels = written.iter().map(|(f, _)| files[*f as usize].path.as_str());
            let stats = self.root.stat_files(rels).map_err(io())?;
            // A file on another filesystem (a disk mounted inside DEST) is
            // not covered by the syncfs: it is synced on its own.
            let here = self.root.device().map_err(io())?;
            for ((f, _), st) in written.iter().zip(&stats) {
                if st.as_ref().is_some_and(|st| st.st_dev != here) {
                    let rel = &files[*f as usize].path;
                    let io = || RestoreError::io(self.root.display(rel));
                    self.root
                        .open_read(rel)
                        .and_then(|f| f.sync_data())
                        .map_err(io())?;
                }
            }
            stats.iter().map(|st| st.as_ref().map(root::file_stat)).collect()
        };
        let mut entries = Vec::with_capacity(written.len());
        for ((f, pieces), st) in written.into_iter().zip(stats) {
            let st = st.ok_or_else(|| {
                RestoreError::io(self.root.display(&files[f as usize].path))(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "vanished while it was restored",
                ))
            })?;
            entries.push((f, Some(pieces), Some(st)));
        }
        self.record(&entries)
    }

    /// Removes the journal (the restore is complete).
    pub fn remove(self) -> Result<(), RestoreError> {
        drop(self.file);
        let io = RestoreError::io(self.root.display(JOURNAL));
        match self.root.unlink(JOURNAL) {
            Ok(true) => self.root.sync().map_err(io),
            Ok(false) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

/// The index of the last completed restore in a destination.
#[derive(Default)]
pub struct Index {
    files: HashMap<String, IndexEntry>,
}

impl Index {
    /// Loads the index of the destination (empty when absent, unreadable,
    /// not a regular file or larger than `manifest` can need).
    pub fn load(root: &Root, manifest: &Manifest) -> Index {
        let paths = manifest.files.iter().map(|f| f.path.len()).sum();
        let limit = index_limit(manifest.files.len(), paths);
        let files = root
            .read_bounded(INDEX, limit)
            .ok()
            .flatten()
            .and_then(|b| parse_index(&b, limit).ok())
            .map(|i| i.files)
            .unwrap_or_default();
        Index { files }
    }

    /// Whether a file of `f`'s path with stat `now` is still exactly what
    /// a restore of `f` left.
    pub fn unchanged_stat(&self, f: &FileEntry, now: FileStat) -> bool {
        self.files
            .get(&f.path)
            .is_some_and(|e| e.blake3 == f.blake3 && e.size == f.size && e.stat() == now)
    }

    /// Writes the index atomically and durably.
    pub fn save(root: &Root, files: HashMap<String, IndexEntry>) -> Result<(), RestoreError> {
        root.write_atomic(INDEX, &IndexFile { files }.to_bytes())
            .map_err(RestoreError::io(root.display(INDEX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::records::FileStat;

    fn manifest() -> Arc<Manifest> {
        use qsync_core::chunk::ChunkerParams;
        use qsync_core::manifest::{ChainMeta, ChunkRef, MANIFEST_FORMAT};
        use qsync_core::time::Timestamp;
        let chunk = ChunkRef {
            blake3: Digest::of(b"c"),
            size: 1,
        };
        let file = |i: usize| FileEntry {
            path: format!("f{i}"),
            size: 10,
            mode: 0o644,
            blake3: Digest::of(b"f"),
            chunks: vec![chunk.clone(); 10],
            packed: false,
        };
        Arc::new(Manifest {
            format: MANIFEST_FORMAT.into(),
            chain: ChainMeta {
                name: qsync_core::ChainName::new("eth").unwrap(),
                height: None,
                block_hash: None,
            },
            version: 1,
            created_at: Timestamp(1),
            expires_at: Timestamp(2),
            chunker: ChunkerParams::default(),
            directories: Vec::new(),
            files: (0..10).map(file).collect(),
            pack: Vec::new(),
            pack_index: Default::default(),
        })
    }

    #[test]
    fn journal_survives_reopen_and_resets_for_another_manifest() {
        let d = tempfile::tempdir().unwrap();
        let root = Arc::new(Root::create_locked(d.path()).unwrap());
        let (m1, m2) = (Digest::of(b"1"), Digest::of(b"2"));
        let stat = FileStat {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
        };
        let st = Some(stat);
        let (mut j, done) = Journal::open(root.clone(), manifest(), &m1).unwrap();
        assert!(done.done.is_empty());
        j.record(&[(0, Some(vec![1, 2]), st), (3, None, None)]).unwrap();
        j.record(&[(0, Some(vec![5]), st)]).unwrap();
        drop(j);
        // A torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap()
            .write_all(b"{\"f\":9,\"c\":[")
            .unwrap();
        let (mut j, done) = Journal::open(root.clone(), manifest(), &m1).unwrap();
        assert_eq!(done.done[&0], Some([1, 2, 5].into()));
        assert_eq!(done.stats[&0], stat);
        assert_eq!(done.done[&3], None);
        assert!(!done.done.contains_key(&9));
        j.record(&[(7, None, None)]).unwrap();
        drop(j);
        let (_, done) = Journal::open(root.clone(), manifest(), &m1).unwrap();
        assert_eq!(done.done[&7], None, "record after a torn line was lost");
        let (_, done) = Journal::open(root, manifest(), &m2).unwrap();
        assert!(done.done.is_empty());
    }
}
