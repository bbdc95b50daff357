//! The records a fetcher keeps inside a destination, as bytes.
//!
//! The completion and in-progress markers, the lines of the resume journal
//! and the file index of the last completed restore: their types, their
//! serialisation, the size each may reach, and pure parse functions
//! (`bytes -> Result<T, FormatError>`; the index, which can reach hundreds
//! of MB, is also read and written as a stream) that can be fuzzed on
//! their own.
//! A destination is writable by others, so every parser treats its input
//! as hostile: bounded, never trusted beyond what it says. Reading the
//! bytes safely (no links, no FIFOs) is the fetcher's job
//! (`qsync_fetcher::root`); what a record means for a restore is
//! `qsync_fetcher::journal`'s and `qsync_fetcher::dest`'s.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::capped::Capped;

use crate::pointer::Pointer;
use crate::time::Timestamp;
use crate::{Digest, FormatError};

/// Most bytes a marker may have; a larger one is not a qsync marker.
pub const MARKER_LIMIT: u64 = 64 << 10;

/// `format` of both markers.
pub const MARKER_FORMAT: &str = "qsync-restore/1";

/// Contents of both markers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    /// Always [`MARKER_FORMAT`].
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
            format: MARKER_FORMAT.into(),
            chain: pointer.chain.to_string(),
            version: pointer.current.version,
            height: pointer.current.height,
            manifest_key: pointer.current.manifest_key.to_string(),
            manifest_blake3: pointer.current.manifest_blake3.to_hex(),
            key_id,
            written_at: Timestamp::now().to_string(),
        }
    }

    /// The marker as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialises")
    }
}

/// Parses a marker (at most [`MARKER_LIMIT`] bytes).
pub fn parse_marker(bytes: &[u8]) -> Result<Marker, FormatError> {
    if bytes.len() as u64 > MARKER_LIMIT {
        return Err(FormatError::Invalid(format!(
            "restore marker is {} bytes, over the {MARKER_LIMIT}-byte limit; it was not written by qsync",
            bytes.len()
        )));
    }
    let m: Marker = serde_json::from_slice(bytes)
        .map_err(|e| FormatError::Invalid(format!("restore marker is not valid JSON ({e})")))?;
    if m.format != MARKER_FORMAT {
        return Err(FormatError::Invalid(format!(
            "restore marker has format {:?}, expected {MARKER_FORMAT:?}",
            m.format
        )));
    }
    Ok(m)
}

/// What a file looked like at one moment: enough to tell that anything
/// wrote to it, renamed another file over it or changed its metadata since
/// (a write moves mtime; resetting mtime moves ctime, which no one can set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

impl FileStat {
    /// The stat of an open file or of a path (not followed).
    pub fn of(m: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        // i64 nanoseconds reach the year 2262; serde's untagged enums
        // (the journal line) cannot carry i128.
        FileStat::from_parts(
            m.len(),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
            m.ino(),
        )
    }

    /// The stat of a file of `size` bytes whose mtime and ctime are
    /// (seconds, nanoseconds) and inode `ino`, as `stat(2)` gives them.
    pub fn from_parts(size: u64, mtime: (i64, i64), ctime: (i64, i64), ino: u64) -> FileStat {
        let ns = |(s, n): (i64, i64)| s.saturating_mul(1_000_000_000).saturating_add(n);
        FileStat {
            size,
            mtime_ns: ns(mtime),
            ctime_ns: ns(ctime),
            ino,
        }
    }
}

/// One line of the resume journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JournalLine {
    /// First line: which manifest the chunk indices refer to.
    Header {
        /// BLAKE3 of the stored manifest.
        manifest: Digest,
    },
    /// Chunks `c` of file `f` (indices into the manifest) are written and
    /// verified; with `c` absent, the whole file is. `st` is the file's
    /// stat once they were on disk: the chunks count only while the file
    /// still has exactly that stat.
    Done {
        /// File index.
        f: u32,
        /// Chunk indices; absent for every chunk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<Vec<u32>>,
        /// Stat after the data was synced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        st: Option<FileStat>,
    },
}

impl JournalLine {
    /// The line as stored, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("serialises");
        s.push('\n');
        s
    }
}

/// Verified chunks, by file index; `None` means every chunk of the file.
pub type DoneSet = HashMap<u32, Option<HashSet<u32>>>;

/// What a journal records for one manifest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalState {
    /// Chunks journaled, by file.
    pub done: DoneSet,
    /// The last stat recorded for each file.
    pub stats: HashMap<u32, FileStat>,
    /// The last line is torn (power loss mid-append); appending must start
    /// a new line.
    pub torn: bool,
}

/// Most bytes a journal for a manifest of `files` files and `chunk_places`
/// chunk places may reach: every place in its own line plus a line per
/// file, with room to spare. A longer journal is not trusted.
pub fn journal_limit(files: usize, chunk_places: usize) -> u64 {
    (files as u64) * 512 + (chunk_places as u64) * 160 + (1 << 20)
}

/// Parses a journal for `manifest`. A torn last line is not counted; a
/// journal for another manifest, without a header, or over `limit` bytes
/// is refused (the caller starts afresh).
pub fn parse_journal(bytes: &[u8], manifest: &Digest, limit: u64) -> Result<JournalState, FormatError> {
    if bytes.len() as u64 > limit {
        return Err(FormatError::Invalid(format!(
            "resume journal is {} bytes, over the {limit} this manifest can need",
            bytes.len()
        )));
    }
    let mut lines = bytes.split(|b| *b == b'\n');
    match lines.next().map(serde_json::from_slice::<JournalLine>) {
        Some(Ok(JournalLine::Header { manifest: m })) if &m == manifest => {}
        Some(Ok(JournalLine::Header { manifest: m })) => {
            return Err(FormatError::Invalid(format!(
                "resume journal is for manifest {m}, not {manifest}"
            )))
        }
        _ => return Err(FormatError::Invalid("resume journal has no valid header".into())),
    }
    let mut state = JournalState {
        torn: !bytes.is_empty() && !bytes.ends_with(b"\n"),
        ..JournalState::default()
    };
    for line in lines {
        if let Ok(JournalLine::Done { f, c, st }) = serde_json::from_slice(line) {
            merge(&mut state.done, f, c);
            match st {
                Some(st) => state.stats.insert(f, st),
                // A record without a stat vouches for nothing that follows.
                None => state.stats.remove(&f),
            };
        }
    }
    Ok(state)
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
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds.
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
}

impl IndexEntry {
    /// The entry for a file with digest `blake3` and stat `st`.
    pub fn new(blake3: Digest, st: FileStat) -> Self {
        IndexEntry {
            blake3,
            size: st.size,
            mtime_ns: st.mtime_ns,
            ctime_ns: st.ctime_ns,
            ino: st.ino,
        }
    }

    /// The stat this entry recorded.
    pub fn stat(&self) -> FileStat {
        FileStat {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            ino: self.ino,
        }
    }
}

/// Most bytes an index of `files` files with paths of `path_bytes` bytes
/// in all may reach.
pub fn index_limit(files: usize, path_bytes: usize) -> u64 {
    (files as u64) * 256 + path_bytes as u64 + (1 << 20)
}

/// Writes the file index of the last completed restore,
/// `{"files":{PATH:ENTRY,...}}`, one entry at a time (a million files'
/// index is about 180 MB of JSON; it is never held whole).
pub fn write_index<'a, W: Write>(
    w: W,
    entries: impl IntoIterator<Item = (&'a str, IndexEntry)>,
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
    w.write_all(b"{\"files\":{")?;
    for (n, (path, entry)) in entries.into_iter().enumerate() {
        if n > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut w, path)?;
        w.write_all(b":")?;
        serde_json::to_writer(&mut w, &entry)?;
    }
    w.write_all(b"}}")?;
    w.flush()
}

/// Reads a file index of at most `limit` bytes as it comes, handing each
/// path and entry to `each` in stored order. On an error some entries may
/// have been handed over already: the caller discards them.
pub fn read_index<R: Read>(
    r: R,
    limit: u64,
    mut each: impl FnMut(String, IndexEntry),
) -> Result<(), FormatError> {
    let mut capped = Capped::new(r, limit);
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, &mut capped));
    let parsed = IndexSeed(&mut each).deserialize(&mut de).and_then(|()| de.end());
    drop(de);
    if capped.over() {
        return Err(FormatError::Invalid(format!(
            "file index is over the {limit} bytes this manifest can need"
        )));
    }
    parsed.map_err(|e| FormatError::Invalid(format!("file index is not valid ({e})")))
}

/// Reads a whole file index held in memory (tests and fuzzing).
pub fn parse_index(bytes: &[u8], limit: u64) -> Result<Vec<(String, IndexEntry)>, FormatError> {
    let mut out = Vec::new();
    read_index(bytes, limit, |p, e| out.push((p, e)))?;
    Ok(out)
}

/// The index object: its `files` map goes to the callback, anything
/// else is skipped.
struct IndexSeed<F>(F);

impl<'de, F: FnMut(String, IndexEntry)> DeserializeSeed<'de> for IndexSeed<&mut F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(String, IndexEntry)> Visitor<'de> for IndexSeed<&mut F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a file index")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut files = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "files" && !files {
                map.next_value_seed(FilesSeed(&mut *self.0))?;
                files = true;
            } else if key == "files" {
                return Err(serde::de::Error::duplicate_field("files"));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if files {
            Ok(())
        } else {
            Err(serde::de::Error::missing_field("files"))
        }
    }
}

/// The `files` map of an index, entry by entry.
struct FilesSeed<F>(F);

impl<'de, F: FnMut(String, IndexEntry)> DeserializeSeed<'de> for FilesSeed<&mut F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(String, IndexEntry)> Visitor<'de> for FilesSeed<&mut F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of paths to file entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((path, entry)) = map.next_entry::<String, IndexEntry>()? {
            (self.0)(path, entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64) -> FileStat {
        FileStat {
            size: 10,
            mtime_ns: 1,
            ctime_ns: 2,
            ino,
        }
    }

    #[test]
    fn journal_round_trips_keeps_the_last_stat_and_ignores_a_torn_line() {
        let m = Digest::of(b"m");
        let mut text = JournalLine::Header { manifest: m }.to_line();
        for (f, c, s) in [
            (0, Some(vec![1, 2]), Some(st(1))),
            (3, None, None),
            (0, Some(vec![5]), Some(st(2))),
        ] {
            text.push_str(&JournalLine::Done { f, c, st: s }.to_line());
        }
        text.push_str("{\"f\":9,\"c\":[");
        let j = parse_journal(text.as_bytes(), &m, 1 << 20).unwrap();
        assert_eq!(j.done[&0], Some(HashSet::from([1, 2, 5])));
        assert_eq!(j.done[&3], None);
        assert!(!j.done.contains_key(&9));
        assert_eq!(j.stats[&0], st(2));
        assert!(!j.stats.contains_key(&3));
        assert!(j.torn);
        assert!(parse_journal(text.as_bytes(), &Digest::of(b"other"), 1 << 20).is_err());
        assert!(parse_journal(text.as_bytes(), &m, 10).is_err());
        assert!(parse_journal(b"", &m, 10).is_err());
    }

    #[test]
    fn hostile_bytes_are_refused_not_trusted() {
        for bad in [&b"\xff\xfe"[..], b"{}", b"[1,2]", b"{\"format\":\"x\"}", b"null"] {
            assert!(parse_marker(bad).is_err());
            assert!(parse_journal(bad, &Digest::of(b"m"), 1 << 20).is_err());
        }
        assert!(parse_marker(&vec![b' '; MARKER_LIMIT as usize + 1]).is_err());
        assert!(parse_index(&[b' '; 100], 99).is_err());
        let idx = vec![
            ("a".to_string(), IndexEntry::new(Digest::of(b"a"), st(7))),
            ("b/\"c".to_string(), IndexEntry::new(Digest::of(b"b"), st(8))),
        ];
        let mut bytes = Vec::new();
        write_index(&mut bytes, idx.iter().map(|(p, e)| (p.as_str(), e.clone()))).unwrap();
        assert_eq!(parse_index(&bytes, 1 << 20).unwrap(), idx);
        assert!(parse_index(&bytes, bytes.len() as u64 - 1).is_err());
        assert!(parse_index(&[bytes.as_slice(), b"x"].concat(), 1 << 20).is_err());
        assert!(parse_index(br#"{"other":1}"#, 1 << 20).is_err());
        // An index written before ctime was recorded is not trusted.
        assert!(parse_index(
            br#"{"files":{"a":{"blake3":"00","size":1,"mtime_ns":1,"ino":1}}}"#,
            1 << 20
        )
        .is_err());
    }
}
