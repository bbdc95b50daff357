//! The snapshot manifest: chain metadata and the file table of one snapshot.
//!
//! Stored as compact JSON, or as one zstd frame of it when the JSON exceeds
//! [`COMPRESS_ABOVE`] bytes. Decoding validates everything a restore relies
//! on — confined paths, chunk sizes that add up, bounded sizes — so code
//! holding a [`Manifest`] can trust its shape (its signature is checked by the
//! caller, over the stored bytes, before decoding).
//!
//! Format 2 adds the pack: small files are not chunked one by one but as
//! one stream, their concatenation in path order, whose chunks the
//! manifest lists once ([`Manifest::pack`]); a packed file records no
//! chunks of its own. Where each file's bytes lie, packed or not, is
//! [`crate::pieces`].

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::capped::Capped;
use crate::chunk::{ChunkerParams, ZSTD_MAGIC};
use crate::time::Timestamp;
use crate::{ChainName, Digest, FormatError};

/// `format` field of a v1 manifest: every file chunked on its own.
pub const MANIFEST_FORMAT: &str = "qsync-manifest/1";
/// `format` field of a v2 manifest: small files packed into one stream
/// ([`Manifest::pack`]). A writer uses it only when it packs something, so
/// readers older than v2 keep reading snapshots that do not need it.
pub const MANIFEST_FORMAT_PACKED: &str = "qsync-manifest/2";
/// JSON larger than this is stored zstd-compressed.
pub const COMPRESS_ABOVE: usize = 64 * 1024;
/// zstd level of a stored manifest ([`Manifest::encode`]).
const MANIFEST_ZSTD_LEVEL: i32 = 3;
/// Largest decoded manifest a reader accepts (about 20 million chunks).
pub const MAX_MANIFEST_BYTES: u64 = 2 << 30;
/// Names at the root of a destination that qsync owns (completion marker,
/// in-progress marker, resume journal, file index); never part of a snapshot.
pub const RESERVED_NAMES: [&str; 4] = [
    ".qsync-restore.json",
    ".qsync-restore.partial.json",
    ".qsync-restore.journal",
    ".qsync-restore.index.json",
];

/// What the snapshot is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainMeta {
    /// Chain name, as in the store layout.
    pub name: ChainName,
    /// Block height of the snapshot, when the publisher knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Head block hash, as the chain's client prints it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
}

/// One chunk of a file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// BLAKE3 of the plaintext; names the chunk object.
    pub blake3: Digest,
    /// Plaintext length in bytes.
    pub size: u64,
}

/// A regular file of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative `/`-separated path.
    pub path: Box<str>,
    /// Length in bytes.
    pub size: u64,
    /// Unix permission bits (`0o7777` at most; readers apply `0o777` of it).
    pub mode: u32,
    /// BLAKE3 of the whole file.
    pub blake3: Digest,
    /// Chunks in order; their sizes add up to `size`. Empty for a packed file.
    pub chunks: Box<[ChunkRef]>,
    /// The file's bytes lie in the pack stream ([`Manifest::pack`]), after
    /// those of every packed file before it (format 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packed: bool,
}

/// A directory of the snapshot (listed so that empty ones are restored too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// Relative `/`-separated path.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
}

impl FileEntry {
    /// The mode a reader gives the file: permission bits only, never
    /// setuid, setgid or sticky (a restore as root must not create
    /// root-owned setuid files from a publisher's manifest).
    pub fn applied_mode(&self) -> u32 {
        self.mode & 0o777
    }
}

impl DirEntry {
    /// The mode a reader gives the directory: permission bits only, plus
    /// owner `rwx` so the reader can fill it.
    pub fn applied_mode(&self) -> u32 {
        (self.mode & 0o777) | 0o700
    }

    /// Whether a directory with mode `on_disk` is as a reader leaves it:
    /// permission bits only, for a setgid parent passes its bit on (as
    /// volumes with a Kubernetes `fsGroup` do) and no restore removes it.
    pub fn mode_matches(&self, on_disk: u32) -> bool {
        on_disk & 0o777 == self.applied_mode()
    }
}

/// One snapshot of one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// What this is a snapshot of.
    pub chain: ChainMeta,
    /// Snapshot version: strictly increasing per chain.
    pub version: u64,
    /// When the snapshot was taken.
    pub created_at: Timestamp,
    /// After this a fetcher refuses the manifest (unless told otherwise).
    pub expires_at: Timestamp,
    /// How files were cut.
    pub chunker: ChunkerParams,
    /// Directories, sorted by path.
    pub directories: Vec<DirEntry>,
    /// Regular files, sorted by path.
    #[serde(deserialize_with = "presized")]
    pub files: Vec<FileEntry>,
    /// Chunks of the pack stream: the packed files' bytes, concatenated in
    /// file order (format 2; empty in format 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pack: Vec<ChunkRef>,
    /// Where packed files and pack chunks start in the stream, worked out
    /// once on first use (never stored).
    #[serde(skip)]
    pub pack_index: crate::pieces::PackIndex,
}

impl Manifest {
    /// The `format` a manifest with this `pack` is labelled with: format 2
    /// only when it packs something.
    pub fn format_for(pack: &[ChunkRef]) -> &'static str {
        if pack.is_empty() {
            MANIFEST_FORMAT
        } else {
            MANIFEST_FORMAT_PACKED
        }
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Number of chunk references (with repeats), the pack's included.
    pub fn chunk_refs(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum::<usize>() + self.pack.len()
    }

    /// About how many bytes of memory the decoded manifest takes (its
    /// tables, paths and the pack index; not the stored bytes), for
    /// callers that fit their buffers around it.
    pub fn memory_estimate(&self) -> u64 {
        let rounded = |len: usize| (len as u64).div_ceil(16) * 16;
        let files: u64 = self
            .files
            .iter()
            .map(|f| std::mem::size_of::<FileEntry>() as u64 + rounded(f.path.len()) + 8)
            .sum();
        let dirs: u64 = self
            .directories
            .iter()
            .map(|d| std::mem::size_of::<DirEntry>() as u64 + rounded(d.path.len()))
            .sum();
        let chunks = self.chunk_refs() as u64 * std::mem::size_of::<ChunkRef>() as u64;
        files + dirs + chunks
    }

    /// Every chunk the snapshot references (with repeats): each file's,
    /// then the pack's.
    pub fn all_chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.files.iter().flat_map(|f| f.chunks.iter()).chain(&self.pack)
    }

    /// Serialises for storage; the bool says whether the bytes are zstd.
    /// The JSON is streamed into the compressor once it outgrows
    /// [`COMPRESS_ABOVE`], so only the compressed bytes are ever held
    /// whole (a million files' JSON is about 175 MB, its zstd 46 MB).
    pub fn encode(&self) -> (Vec<u8>, bool) {
        let mut out = Spill::Plain(Vec::new());
        serde_json::to_writer(&mut out, self).expect("manifest serialises");
        match out {
            Spill::Plain(json) => (json, false),
            Spill::Zstd(z) => (z.finish().expect("zstd into memory"), true),
        }
    }

    /// Parses and validates stored manifest bytes. `what` names the object in errors.
    /// Compressed bytes are parsed as they decompress: the JSON is never
    /// held whole.
    pub fn decode(stored: &[u8], what: &str) -> Result<Manifest, FormatError> {
        let invalid = |why: String| FormatError::Invalid(format!("manifest {what}: {why}"));
        // Every file's entry carries its 32-byte digest, which compresses
        // only when files repeat one (empty ones do): the stored size
        // estimates the table, and a table past it just grows.
        let per_file = if stored.starts_with(&ZSTD_MAGIC) { 32 } else { 64 };
        FILES_EXPECTED.set((stored.len() / per_file).min(PRESIZE_MAX));
        let parsed = Self::parse(stored, &invalid);
        // Read only where the table starts: cleared for whatever is
        // deserialised on this thread next, whether or not it got there.
        FILES_EXPECTED.set(0);
        let m = parsed?;
        m.validate().map_err(invalid)?;
        Ok(m)
    }

    /// [`Manifest::decode`]'s parse, zstd or plain JSON, before validation.
    fn parse(stored: &[u8], invalid: &impl Fn(String) -> FormatError) -> Result<Manifest, FormatError> {
        if !stored.starts_with(&ZSTD_MAGIC) {
            return serde_json::from_slice(stored).map_err(|e| invalid(format!("not valid JSON: {e}")));
        }
        let z =
            zstd::stream::read::Decoder::with_buffer(stored).map_err(|e| invalid(format!("zstd: {e}")))?;
        let mut capped = Capped::new(z, MAX_MANIFEST_BYTES);
        let parsed = serde_json::from_reader(std::io::BufReader::with_capacity(1 << 16, &mut capped));
        if capped.over() {
            return Err(invalid("larger than 2 GiB when decompressed".into()));
        }
        parsed.map_err(|e| match e.io_error_kind() {
            Some(_) => invalid(format!("zstd: {e}")),
            None => invalid(format!("not valid JSON: {e}")),
        })
    }

    fn validate(&self) -> Result<(), String> {
        let packs = match self.format.as_str() {
            MANIFEST_FORMAT => false,
            MANIFEST_FORMAT_PACKED => true,
            other => {
                return Err(format!(
                    "format {other:?} is not one this qsync reads ({MANIFEST_FORMAT:?}, {MANIFEST_FORMAT_PACKED:?}); upgrade qsync to read it"
                ))
            }
        };
        if !packs && (!self.pack.is_empty() || self.files.iter().any(|f| f.packed)) {
            return Err(format!(
                "format {MANIFEST_FORMAT:?} cannot pack files; a packing writer labels its manifests {MANIFEST_FORMAT_PACKED:?}"
            ));
        }
        self.chunker.validate().map_err(|e| e.to_string())?;
        let files = FilePaths::of(&self.files)?;
        let mut dirs = HashSet::new();
        for d in &self.directories {
            files.check(&d.path)?;
            if files.contains(d.path.as_str()) || !dirs.insert(d.path.as_str()) {
                return Err(format!("{:?} is listed twice", d.path));
            }
        }
        let bad_size = |c: &&ChunkRef| c.size == 0 || c.size > u64::from(self.chunker.max_size);
        if let Some(c) = self.pack.iter().find(bad_size) {
            return Err(format!(
                "pack chunk {} has size {}, outside 1..={}",
                c.blake3, c.size, self.chunker.max_size
            ));
        }
        let mut packed_bytes = 0u64;
        for f in &self.files {
            files.check(&f.path)?;
            if f.packed {
                if !f.chunks.is_empty() || f.size == 0 {
                    return Err(format!(
                        "{:?} is packed but lists chunks of its own or is empty",
                        f.path
                    ));
                }
                packed_bytes = packed_bytes
                    .checked_add(f.size)
                    .ok_or_else(|| format!("{:?}: packed files add up to more than 2^64 bytes", f.path))?;
                continue;
            }
            if let Some(c) = f.chunks.iter().find(bad_size) {
                return Err(format!(
                    "{:?}: chunk {} has size {}, outside 1..={}",
                    f.path, c.blake3, c.size, self.chunker.max_size
                ));
            }
            // Bounded chunks first: a manifest of at most 2 GiB cannot then
            // add up to more than u64 holds.
            let sum: u64 = f.chunks.iter().map(|c| c.size).sum();
            if sum != f.size {
                return Err(format!(
                    "{:?}: chunks add up to {sum} bytes but the file is {} bytes",
                    f.path, f.size
                ));
            }
        }
        // One size per chunk: a digest names one plaintext. A reader that
        // fetched the chunk at one size must not be asked for bytes past it.
        let mut sizes: std::collections::HashMap<&Digest, u64> = std::collections::HashMap::new();
        for c in self.all_chunks() {
            if *sizes.entry(&c.blake3).or_insert(c.size) != c.size {
                return Err(format!(
                    "chunk {} is listed with two sizes; a digest names one plaintext",
                    c.blake3
                ));
            }
        }
        // Bounded chunks again: at most 2 GiB of them cannot overflow.
        let pack_bytes: u64 = self.pack.iter().map(|c| c.size).sum();
        if pack_bytes != packed_bytes {
            return Err(format!(
                "the pack's chunks add up to {pack_bytes} bytes but the packed files to {packed_bytes}"
            ));
        }
        Ok(())
    }
}

/// Where [`Manifest::encode`] writes: plain JSON up to [`COMPRESS_ABOVE`]
/// bytes, then a zstd stream that starts with what was written so far.
enum Spill {
    Plain(Vec<u8>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::io::Write for Spill {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Spill::Plain(json) if json.len() + buf.len() <= COMPRESS_ABOVE => {
                json.extend_from_slice(buf);
                Ok(buf.len())
            }
            Spill::Plain(json) => {
                // Level 3: a million files' JSON (175 MB) became 45.9 MB in
                // 0.7 s with a 3 MB context, where level 9 gave 47.3 MB in
                // 4.3 s with a 56 MB one (its digests do not compress).
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), MANIFEST_ZSTD_LEVEL)?;
                z.write_all(json)?;
                z.write_all(buf)?;
                *self = Spill::Zstd(z);
                Ok(buf.len())
            }
            Spill::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Most file entries [`Manifest::decode`] reserves room for up front.
const PRESIZE_MAX: usize = 4 << 20;

thread_local! {
    /// How many file entries the manifest being decoded on this thread can
    /// hold at most, from its stored size ([`Manifest::decode`]).
    static FILES_EXPECTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reads the file table into a vector reserved once for what the stored
/// size allows. Grown by doubling, a million files' table (80 MB) had
/// 40 MB of earlier copies beside it; room reserved and never written
/// costs address space only.
fn presized<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileEntry>, D::Error> {
    struct Table;
    impl<'de> serde::de::Visitor<'de> for Table {
        type Value = Vec<FileEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of files")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut files = Vec::with_capacity(FILES_EXPECTED.take());
            while let Some(f) = seq.next_element()? {
                files.push(f);
            }
            // The hint counts chunk digests too: a manifest of a few large
            // files in many chunks would keep a reservation of millions.
            files.shrink_to_fit();
            Ok(files)
        }
    }
    d.deserialize_seq(Table)
}

/// The set of file paths a manifest lists, for the checks that no path is
/// listed twice or lies under a file. Every writer sorts the table, and a
/// sorted table is its own set (a million files' hash set took 34 MB while
/// decoding); an unsorted one gets a hash set. Checked, not assumed.
enum FilePaths<'a> {
    Sorted {
        files: &'a [FileEntry],
        /// The last directory found to be no file: a sorted table's
        /// neighbours mostly share it.
        clear: std::cell::RefCell<String>,
    },
    Hashed(HashSet<&'a str>),
}

impl<'a> FilePaths<'a> {
    fn of(files: &'a [FileEntry]) -> Result<FilePaths<'a>, String> {
        if files.windows(2).all(|w| w[0].path < w[1].path) {
            return Ok(FilePaths::Sorted {
                files,
                clear: Default::default(),
            });
        }
        let set: HashSet<&str> = files.iter().map(|f| f.path.as_ref()).collect();
        if set.len() != files.len() {
            return Err("a file path is listed twice".into());
        }
        Ok(FilePaths::Hashed(set))
    }

    fn contains(&self, path: &str) -> bool {
        match self {
            FilePaths::Sorted { files, .. } => files.binary_search_by(|f| (*f.path).cmp(path)).is_ok(),
            FilePaths::Hashed(set) => set.contains(path),
        }
    }

    /// A path is safe to join onto a destination: relative, no
    /// `.`/`..`/empty segments, no NUL, not reserved, and no ancestor of it
    /// is a file.
    fn check(&self, path: &str) -> Result<(), String> {
        let unsafe_path = path.is_empty()
            || path.len() > 4096
            || path.starts_with('/')
            || path.contains('\0')
            || path.split('/').any(|s| s.is_empty() || s == "." || s == "..")
            || RESERVED_NAMES.contains(&path);
        if unsafe_path {
            return Err(format!(
                "path {path:?} would escape or clobber the destination; refusing the whole snapshot"
            ));
        }
        let Some((dir, _)) = path.rsplit_once('/') else {
            return Ok(());
        };
        if let FilePaths::Sorted { clear, .. } = self {
            if *clear.borrow() == dir {
                return Ok(());
            }
        }
        let mut ancestor = dir;
        loop {
            if self.contains(ancestor) {
                return Err(format!("{path:?} lies under {ancestor:?}, which is a file"));
            }
            match ancestor.rsplit_once('/') {
                Some((parent, _)) => ancestor = parent,
                None => break,
            }
        }
        if let FilePaths::Sorted { clear, .. } = self {
            dir.clone_into(&mut clear.borrow_mut());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The table's size hint is for the decode that set it only, also when
    /// the decode fails before the table.
    #[test]
    fn a_failed_decode_leaves_no_size_hint_behind() {
        let cut_short = [&b"{\"format\":\"qsync-manifest/1\","[..], &[b' '; 4096]].concat();
        assert!(Manifest::decode(&cut_short, "test").is_err());
        assert_eq!(FILES_EXPECTED.get(), 0);
    }

    /// The checks that no path is listed twice or lies under a file hold
    /// whether the table is sorted (checked against itself) or not
    /// (checked through a hash set).
    #[test]
    fn paths_listed_twice_or_under_a_file_are_refused_sorted_or_not() {
        let file = |path: &str| FileEntry {
            path: path.into(),
            size: 0,
            mode: 0o644,
            blake3: Digest::of(b""),
            chunks: Box::default(),
            packed: false,
        };
        let check = |paths: &[&str]| {
            let mut m = sample();
            m.directories.clear();
            m.files = paths.iter().map(|p| file(p)).collect();
            let stored = serde_json::to_vec(&m).unwrap();
            Manifest::decode(&stored, "test")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for paths in [
            &["a", "a/b"][..],
            &["a/b", "a"],
            &["x/y", "x/y/z", "x/y2"],
            &["x/y/z", "x/y", "b"],
        ] {
            let e = check(paths).unwrap_err();
            assert!(e.contains("which is a file"), "{paths:?}: {e}");
        }
        for paths in [&["a", "a"][..], &["b", "a", "b"]] {
            let e = check(paths).unwrap_err();
            assert!(e.contains("listed twice"), "{paths:?}: {e}");
        }
        check(&["a/b", "a/c", "b", "b.d/e"]).unwrap();
        check(&["b.d/e", "a/c", "b", "a/b"]).unwrap();
    }

    /// A million files' table is held once, at this size per entry (plus
    /// its path): 96 bytes with a `String` path and a `Vec` of chunks.
    #[test]
    fn a_file_entry_stays_compact() {
        assert!(std::mem::size_of::<FileEntry>() <= 80);
        let m = sample();
        assert!(m.memory_estimate() >= std::mem::size_of::<FileEntry>() as u64 * m.files.len() as u64);
    }

    pub(crate) fn sample() -> Manifest {
        let data = b"hello";
        Manifest {
            format: MANIFEST_FORMAT.into(),
            chain: ChainMeta {
                name: ChainName::new("eth").unwrap(),
                height: Some(42),
                block_hash: None,
            },
            version: 1,
            created_at: Timestamp(1),
            expires_at: Timestamp(2),
            chunker: ChunkerParams::default(),
            directories: vec![DirEntry {
                path: "db".into(),
                mode: 0o755,
            }],
            files: vec![FileEntry {
                path: "db/a.sst".into(),
                size: 5,
                mode: 0o644,
                blake3: Digest::of(data),
                chunks: vec![ChunkRef {
                    blake3: Digest::of(data),
                    size: 5,
                }]
                .into(),
                packed: false,
            }],
            pack: Vec::new(),
            pack_index: Default::default(),
        }
    }

    /// `sample` with two more files packed into one pack chunk.
    pub(crate) fn packed_sample() -> Manifest {
        let mut m = sample();
        m.format = MANIFEST_FORMAT_PACKED.into();
        let stream = b"0123456789abc";
        for (path, bytes) in [("db/b", &stream[..4]), ("db/c", &stream[4..])] {
            m.files.push(FileEntry {
                path: path.into(),
                size: bytes.len() as u64,
                mode: 0o644,
                blake3: Digest::of(bytes),
                chunks: Box::default(),
                packed: true,
            });
        }
        m.pack = vec![ChunkRef {
            blake3: Digest::of(stream),
            size: stream.len() as u64,
        }];
        m
    }

    #[test]
    fn packed_round_trip_and_version_rules() {
        let m = packed_sample();
        assert_eq!(Manifest::format_for(&m.pack), MANIFEST_FORMAT_PACKED);
        let (bytes, _) = m.encode();
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        // A v1 manifest cannot pack: an old writer never made one, and a
        // v1 reader would not see those files' bytes.
        let mut v1 = packed_sample();
        v1.format = MANIFEST_FORMAT.into();
        let err = Manifest::decode(&v1.encode().0, "t").unwrap_err().to_string();
        assert!(err.contains("cannot pack"), "{err}");
        // A version from the future is named, with what to do.
        let mut v3 = packed_sample();
        v3.format = "qsync-manifest/3".into();
        let err = Manifest::decode(&v3.encode().0, "t").unwrap_err().to_string();
        assert!(
            err.contains("\"qsync-manifest/3\"") && err.contains("upgrade qsync"),
            "{err}"
        );
        // The pack must hold exactly the packed files' bytes.
        let mut short = packed_sample();
        short.pack[0].size -= 1;
        let err = Manifest::decode(&short.encode().0, "t").unwrap_err().to_string();
        assert!(err.contains("add up"), "{err}");
        let mut both = packed_sample();
        both.files[1].chunks = both.pack.clone().into();
        assert!(Manifest::decode(&both.encode().0, "t").is_err());
        // One digest, two sizes (found in review: the restore fetched the
        // chunk at the first size and never reached a piece past it).
        let mut two = packed_sample();
        two.pack[0].blake3 = two.files[0].chunks[0].blake3;
        let err = Manifest::decode(&two.encode().0, "t").unwrap_err().to_string();
        assert!(err.contains("two sizes"), "{err}");
    }

    #[test]
    fn round_trip_small_and_large() {
        let m = sample();
        let (bytes, z) = m.encode();
        assert!(!z);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        let mut big = sample();
        for i in 0..2000 {
            let mut f = big.files[0].clone();
            f.path = format!("db/{i:06}.sst").into();
            big.files.push(f);
        }
        let (bytes, z) = big.encode();
        assert!(z);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), big);
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a//b",
            ".qsync-restore.json",
            "",
        ] {
            let mut m = sample();
            m.files[0].path = bad.into();
            let (bytes, _) = m.encode();
            let err = Manifest::decode(&bytes, "t").unwrap_err().to_string();
            assert!(err.contains("escape"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn refuses_inconsistent_sizes_and_unknown_fields() {
        let mut m = sample();
        m.files[0].size = 6;
        assert!(Manifest::decode(&m.encode().0, "t").is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode().0).unwrap();
        v["surprise"] = 1.into();
        assert!(Manifest::decode(&serde_json::to_vec(&v).unwrap(), "t").is_err());
    }

    #[test]
    fn refuses_file_under_file() {
        let mut m = sample();
        let mut f = m.files[0].clone();
        f.path = "db/a.sst/inner".into();
        m.files.push(f);
        assert!(Manifest::decode(&m.encode().0, "t").is_err());
    }

    /// Found writing fuzz/fuzz_targets/manifest.rs: chunk sizes whose sum
    /// overflows u64 panicked the decoder before the per-chunk bound was
    /// checked (in builds with overflow checks, as tests and fuzzing have).
    #[test]
    fn refuses_chunk_sizes_that_overflow() {
        let mut m = sample();
        m.files[0].size = 4;
        m.files[0].chunks[0].size = u64::MAX;
        let mut c = m.files[0].chunks[0].clone();
        c.size = 5;
        m.files[0].chunks = [m.files[0].chunks[0].clone(), c].into();
        let err = Manifest::decode(&m.encode().0, "t").unwrap_err().to_string();
        assert!(err.contains("outside 1..="), "{err}");
    }
}
