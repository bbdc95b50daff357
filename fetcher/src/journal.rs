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
    index_limit, journal_limit, parse_journal, read_index, write_index, FileStat, JournalLine, JournalState,
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
        // Line by line through a buffer: a batch of a million small files
        // is tens of MB of lines, never held whole.
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &self.file);
        entries
            .iter()
            .try_for_each(|(f, c, st)| {
                let line = JournalLine::Done {
                    f: *f,
                    c: c.clone(),
                    st: *st,
                };
                w.write_all(line.to_line().as_bytes())
            })
            .and_then(|()| w.flush())
            .and_then(|()| {
                drop(w);
                self.file.sync_data()
            })
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
            let here = self.root.device().map_err(io())?;
            let mut stats = Vec::with_capacity(written.len());
            // A few thousand at a time: the kernel's stat is 144 bytes, the
            // one kept 40.
            for part in written.chunks(4096) {
                let rels = part.iter().map(|(f, _)| files[*f as usize].path.as_ref());
                let raw = self.root.stat_files(rels).map_err(io())?;
                // A file on another filesystem (a disk mounted inside DEST)
                // is not covered by the syncfs: it is synced on its own.
                for ((f, _), st) in part.iter().zip(&raw) {
                    if st.as_ref().is_some_and(|st| st.st_dev != here) {
                        let rel = &files[*f as usize].path;
                        let io = || RestoreError::io(self.root.display(rel));
                        self.root
                            .open_read(rel)
                            .and_then(|f| f.sync_data())
                            .map_err(io())?;
                    }
                }
                stats.extend(raw.iter().map(|st| st.as_ref().map(root::file_stat)));
            }
            stats
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

/// The index of the last completed restore in a destination, as one
/// fingerprint per file of the manifest being restored (16 bytes, where
/// the paths and entries took about 190; a million files' index is 16 MB).
#[derive(Default)]
pub struct Index {
    /// By file number: [`fingerprint`] of the entry recorded for that
    /// file's path, 0 for none.
    marks: Vec<u128>,
}

/// What [`Index::unchanged_stat`] compares: a digest of the file's
/// content digest and stat.
fn fingerprint(blake3: &Digest, st: FileStat) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&blake3.0);
    for n in [st.size, st.mtime_ns as u64, st.ctime_ns as u64, st.ino] {
        h.update(&n.to_le_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(out)
}

impl Index {
    /// Loads the index of the destination (empty when absent, unreadable,
    /// not a regular file, not valid or larger than `manifest` can need).
    /// Read as a stream; entries for paths `manifest` does not list are
    /// dropped as they come.
    pub fn load(root: &Root, manifest: &Manifest) -> Index {
        let paths = manifest.files.iter().map(|f| f.path.len()).sum();
        let limit = index_limit(manifest.files.len(), paths);
        let file = match root.open_read(INDEX) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Index::default(),
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; hashing instead of trusting it",
                    root.display(INDEX).display()
                );
                return Index::default();
            }
        };
        let files = &manifest.files;
        let mut marks = vec![0u128; files.len()];
        // Written in manifest order: the next path is most often the next file.
        let mut next = 0;
        let read = read_index(file, limit, |path, entry| {
            let at = match files.get(next) {
                Some(f) if *f.path == *path => Some(next),
                _ => files
                    .binary_search_by(|f| f.path.as_ref().cmp(path.as_str()))
                    .ok(),
            };
            if let Some(i) = at {
                marks[i] = fingerprint(&entry.blake3, entry.stat());
                next = i + 1;
            }
        });
        match read {
            Ok(()) => Index { marks },
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; hashing instead of trusting it",
                    root.display(INDEX).display()
                );
                Index::default()
            }
        }
    }

    /// Whether file number `i` of the manifest, `f`, with stat `now` is
    /// still exactly what a restore of `f` left.
    pub fn unchanged_stat(&self, i: usize, f: &FileEntry, now: FileStat) -> bool {
        now.size == f.size
            && self
                .marks
                .get(i)
                .is_some_and(|m| *m != 0 && *m == fingerprint(&f.blake3, now))
    }

    /// Writes the index of `manifest`'s files, whose stats once sealed are
    /// `sealed` (in file order), atomically and durably, as a stream.
    pub fn save(root: &Root, manifest: &Manifest, sealed: &[FileStat]) -> Result<(), RestoreError> {
        let all = manifest
            .files
            .iter()
            .zip(sealed)
            .map(|(f, st)| (f.path.as_ref(), IndexEntry::new(f.blake3, *st)));
        root.replace_with(INDEX, false, |f| write_index(f, all))
            .map(drop)
            .map_err(RestoreError::io(root.display(INDEX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::records::FileStat;

    fn manifest() -> Arc<Manifest> {
        let chunk = qsync_core::manifest::ChunkRef {
            blake3: Digest::of(b"c"),
            size: 1,
        };
        let file = |i: usize| crate::testing::file(&format!("f{i}"), 10, vec![chunk.clone(); 10]);
        Arc::new(crate::testing::manifest(&[], (0..10).map(file).collect()))
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
