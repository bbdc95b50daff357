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
//!   inode) are unchanged, instead of hashing it. The node rewriting a file
//!   changes its mtime, so the file is hashed again. `--verify-existing`
//!   ignores both records and hashes everything.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qsync_core::manifest::FileEntry;
use qsync_core::Digest;
use serde::{Deserialize, Serialize};

use crate::dest::{INDEX, JOURNAL};
use crate::RestoreError;

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    /// First line: which manifest the chunk indices refer to.
    Header { manifest: Digest },
    /// Chunks `c` of file `f` (indices into the manifest) are done; with
    /// `c` absent, the whole file is.
    Done {
        f: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<Vec<u32>>,
    },
}

/// Verified chunks, by file index; `None` means every chunk of the file.
pub type DoneSet = HashMap<u32, Option<HashSet<u32>>>;

/// An open journal for one manifest.
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

impl Journal {
    /// Opens the journal in `dest` for `manifest`, returning what it already
    /// records. A journal for another manifest (or an unreadable one) is
    /// started afresh.
    pub fn open(dest: &Path, manifest: &Digest) -> Result<(Journal, DoneSet), RestoreError> {
        let path = dest.join(JOURNAL);
        let mut done = DoneSet::new();
        let mut valid = false;
        let mut torn = false;
        if let Ok(bytes) = std::fs::read(&path) {
            torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
            let mut lines = BufReader::new(&bytes[..]).lines().map_while(Result::ok);
            if let Some(Ok(Line::Header { manifest: m })) = lines.next().map(|l| serde_json::from_str(&l)) {
                valid = &m == manifest;
            }
            // A torn last line (power loss mid-append) is simply not counted.
            for line in lines.filter(|_| valid) {
                if let Ok(Line::Done { f, c }) = serde_json::from_str(&line) {
                    merge(&mut done, f, c);
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(RestoreError::io(&path))?;
        if valid && torn {
            // Terminate the torn line so the next record starts on its own.
            file.write_all(b"\n").map_err(RestoreError::io(&path))?;
        }
        if !valid {
            file.set_len(0).map_err(RestoreError::io(&path))?;
            let header = serde_json::to_string(&Line::Header { manifest: *manifest }).expect("serialises");
            writeln!(file, "{header}")
                .and_then(|_| file.sync_data())
                .map_err(RestoreError::io(&path))?;
        }
        Ok((Journal { file, path }, done))
    }

    /// Appends `entries` durably. The caller has already synced the data.
    pub fn record(&mut self, entries: &[(u32, Option<Vec<u32>>)]) -> Result<(), RestoreError> {
        let mut text = String::new();
        for (f, c) in entries {
            text.push_str(&serde_json::to_string(&Line::Done { f: *f, c: c.clone() }).expect("serialises"));
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(RestoreError::io(&self.path))
    }

    /// Removes the journal (the restore is complete).
    pub fn remove(self) -> Result<(), RestoreError> {
        drop(self.file);
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RestoreError::io(&self.path)(e)),
            _ => Ok(()),
        }
    }
}

fn merge(done: &mut DoneSet, f: u32, c: Option<Vec<u32>>) {
    match (done.entry(f).or_insert_with(|| Some(HashSet::new())), c) {
        (all @ Some(_), None) => *all = None,
        (Some(set), Some(c)) => set.extend(c),
        (None, _) => {}
    }
}

/// A file as it was right after a completed restore sealed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Whole-file digest.
    pub blake3: Digest,
    /// Stat after sealing.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i128,
    /// Inode.
    pub ino: u64,
}

impl IndexEntry {
    /// The entry for a file with digest `blake3` and metadata `m`.
    pub fn new(blake3: Digest, m: &std::fs::Metadata) -> Self {
        IndexEntry {
            blake3,
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        }
    }
}

/// The index of the last completed restore in a destination.
#[derive(Default, Serialize, Deserialize)]
pub struct Index {
    files: HashMap<String, IndexEntry>,
}

impl Index {
    /// Loads the index of `dest` (empty when absent or unreadable).
    pub fn load(dest: &Path) -> Index {
        std::fs::read(dest.join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Whether the file at `path` is still exactly what a restore left for `f`.
    pub fn unchanged(&self, path: &Path, f: &FileEntry) -> bool {
        let Some(entry) = self.files.get(&f.path) else {
            return false;
        };
        entry.blake3 == f.blake3
            && entry.size == f.size
            && std::fs::symlink_metadata(path)
                .is_ok_and(|m| m.is_file() && IndexEntry::new(f.blake3, &m) == *entry)
    }

    /// Writes the index atomically.
    pub fn save(dest: &Path, files: HashMap<String, IndexEntry>) -> Result<(), RestoreError> {
        let path = dest.join(INDEX);
        let tmp = dest.join(format!("{INDEX}.tmp"));
        let bytes = serde_json::to_vec(&Index { files }).expect("serialises");
        let mut f = std::fs::File::create(&tmp).map_err(RestoreError::io(&tmp))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(RestoreError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(RestoreError::io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_reopen_and_resets_for_another_manifest() {
        let d = tempfile::tempdir().unwrap();
        let (m1, m2) = (Digest::of(b"1"), Digest::of(b"2"));
        let (mut j, done) = Journal::open(d.path(), &m1).unwrap();
        assert!(done.is_empty());
        j.record(&[(0, Some(vec![1, 2])), (3, None)]).unwrap();
        j.record(&[(0, Some(vec![5]))]).unwrap();
        drop(j);
        // A torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap()
            .write_all(b"{\"f\":9,\"c\":[")
            .unwrap();
        let (mut j, done) = Journal::open(d.path(), &m1).unwrap();
        assert_eq!(done[&0], Some(HashSet::from([1, 2, 5])));
        assert_eq!(done[&3], None);
        assert!(!done.contains_key(&9));
        j.record(&[(7, None)]).unwrap();
        drop(j);
        let (_, done) = Journal::open(d.path(), &m1).unwrap();
        assert_eq!(done[&7], None, "record after a torn line was lost");
        let (_, done) = Journal::open(d.path(), &m2).unwrap();
        assert!(done.is_empty());
    }
}
