//! Writing fetched chunks into the destination, and checking whole files as
//! they fill.
//!
//! A chunk streams into every place it goes as it arrives. The part of each
//! place that is aligned to [`ALIGN`] goes through `O_DIRECT`: the disk
//! reads it straight from our buffer, where the page cache would cost a
//! copy into freshly allocated cache pages (on the VMs we measured, the
//! largest single cost of a restore, see docs/benchmarks.md) and would
//! evict everything else for data nobody reads back. The unaligned edges,
//! under [`ALIGN`] bytes per chunk, go through the page cache. Filesystems
//! without `O_DIRECT` (tmpfs) get the page cache throughout.
//!
//! Files this run writes entirely are hashed as their chunks land
//! ([`qsync_core::filehash`]), so the seal does not read them back; the
//! others (top-ups, resumed runs) are re-read at the seal.
//!
//! A place is a byte range of the chunk at an offset of a file: the whole
//! chunk for a file chunked on its own, a part of it for a packed small
//! file (format 2), where one chunk holds many files. A place's file is
//! opened when the stream reaches its range and closed once the range is
//! written, so a chunk of a thousand small files holds one or two
//! descriptors at a time. Packed files (parts of chunks) are written
//! through the page cache, as small writes should be.
//!
//! Two bounds hold whatever the manifest says. The same range of a chunk
//! streams into at most [`FANOUT`] places; once it is verified, the rest
//! are copied one at a time from the first such place's file, so one chunk
//! shared by thousands of identical files costs a handful of descriptors,
//! not thousands. And an attempt that was dropped (a timeout, a hedge that
//! lost) cannot write after the next one: a place's pending blocking write
//! is awaited before the place is written again.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
#[cfg(test)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use qsync_core::filehash::{FileHasher, Span, SpanHasher};
use qsync_core::manifest::Manifest;
use qsync_core::span::Aligned;
use qsync_core::FormatError;

use crate::mirrors::ChunkSink;
use crate::root::Root;
use crate::RestoreError;

/// File offset and memory alignment of `O_DIRECT` writes: the page size,
/// which satisfies every logical block size up to 4 KiB.
pub(crate) const ALIGN: u64 = 4096;
/// Bytes gathered before one `O_DIRECT` write.
const STAGE: usize = 1 << 20;
/// Places a chunk streams into as it arrives; the others are filled from
/// the first once it is verified.
const FANOUT: usize = 4;

/// Where bytes of one chunk go: `len` bytes from `at` in the chunk, to
/// `offset` in a file (by index into the manifest), as its piece `piece`.
/// A plan holds one per file piece still to write, so it is 24 bytes: a
/// chunk is at most `u32::MAX` bytes (the chunker's `max_size`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) file: u32,
    pub(crate) piece: u32,
    pub(crate) offset: u64,
    at: u32,
    len: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 24);

impl Slot {
    /// The slot of `piece` (number `c`) of file `file`.
    pub(crate) fn of(file: usize, c: usize, piece: &qsync_core::pieces::Piece) -> Slot {
        let small = |n: u64| u32::try_from(n).expect("a validated manifest's chunks fit u32");
        Slot {
            file: file as u32,
            piece: c as u32,
            offset: piece.offset,
            at: small(piece.at),
            len: small(piece.len),
        }
    }

    /// Where the bytes start in the chunk.
    pub(crate) fn at(&self) -> u64 {
        self.at.into()
    }

    /// How many bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len.into()
    }

    fn range(&self) -> (u64, u64) {
        (self.at(), self.at() + self.len())
    }
}

/// A file hashed in flight: its digest so far and how many chunk places
/// are still to land.
type Filling = (FileHasher, usize);

/// The destination files of one restore, as the fetch loop writes them.
/// Files are the manifest's, opened through the destination's [`Root`] by
/// their paths; what is kept per file besides is a few bits, so a million
/// small files cost the manifest once, not five copies of it.
pub(crate) struct Disk {
    root: Arc<Root>,
    manifest: Arc<Manifest>,
    /// Cleared on the first file that refuses `O_DIRECT`.
    direct: AtomicBool,
    /// Per file: written entirely by this run, so its digest is assembled
    /// in flight.
    whole: Vec<bool>,
    /// Files being assembled: their digests so far. A file leaves once
    /// checked, and is then marked in `checked`.
    filling: Mutex<(HashMap<u32, Filling>, Vec<bool>)>,
}

impl Disk {
    /// The manifest being restored.
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `whole[i]`: file `i` is written entirely by this run, so its digest
    /// can be assembled in flight.
    pub(crate) fn new(manifest: Arc<Manifest>, root: Arc<Root>, whole: Vec<bool>) -> Self {
        let n = manifest.files.len();
        Disk {
            root,
            manifest,
            direct: AtomicBool::new(true),
            whole,
            filling: Mutex::new((HashMap::new(), vec![false; n])),
        }
    }

    /// The manifest path of file `i`, and how messages name it.
    fn rel(&self, i: u32) -> &str {
        &self.manifest.files[i as usize].path
    }

    fn path(&self, i: u32) -> PathBuf {
        self.root.display(self.rel(i))
    }

    /// Whether file `i`'s digest is assembled in flight.
    pub(crate) fn hashes(&self, i: usize) -> bool {
        self.whole[i]
    }

    /// The places a chunk of `size` bytes goes: each range of it streams
    /// into its first [`FANOUT`] places, the others are filled by
    /// [`Targets::landed`] from the first. Nothing is opened yet.
    pub(crate) fn targets(&self, slots: &[Slot], size: u64) -> Targets<'_> {
        // Counted per range, not by a scan: a chunk of tiny packed files
        // goes to tens of thousands of places.
        let mut streamed: HashMap<(u64, u64), usize> = HashMap::new();
        let (mut places, mut rest) = (Vec::new(), Vec::new());
        for s in slots {
            let n = streamed.entry(s.range()).or_default();
            if *n >= FANOUT {
                rest.push(*s);
            } else {
                *n += 1;
                places.push(Place {
                    slot: *s,
                    state: State::Waiting,
                });
            }
        }
        places.sort_by_key(|p| p.slot.at);
        let mut first: HashMap<(u64, u64), usize> = HashMap::new();
        for (i, p) in places.iter().enumerate() {
            first.entry(p.slot.range()).or_insert(i);
        }
        let rest = rest.into_iter().map(|s| (first[&s.range()], s)).collect();
        Targets {
            disk: self,
            places,
            rest,
            size,
            held: None,
        }
    }

    /// Opens `slot`'s range of its file for writing, with `O_DIRECT` for
    /// a whole chunk (a part of one belongs to a small packed file).
    /// The file is created, when its first write creates it (small files
    /// are not sized beforehand), with its final permission bits and owner
    /// read and write.
    fn open(&self, slot: Slot, size: u64) -> Result<RangeWriter, RestoreError> {
        let f = &self.manifest.files[slot.file as usize];
        let file = self
            .root
            .open_create(&f.path, f.applied_mode() | 0o600)
            .map_err(|e| RestoreError::io(self.path(slot.file))(e))?;
        let direct = if slot.range() == (0, size) {
            self.open_direct(&f.path)?
        } else {
            None
        };
        Ok(RangeWriter::new(file, direct, slot.offset, slot.len()))
    }

    /// A fresh in-flight digest of `slot`, for a file hashed in flight.
    fn span(&self, slot: Slot) -> Option<SpanHasher> {
        let file_len = self.manifest.files[slot.file as usize].size;
        self.hashes(slot.file as usize)
            .then(|| SpanHasher::new(slot.offset, slot.len(), file_len))
    }

    fn open_direct(&self, rel: &str) -> Result<Option<std::fs::File>, RestoreError> {
        if !self.direct.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match self.root.open_write(rel, rustix::fs::OFlags::DIRECT) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                tracing::debug!(
                    "{}: no O_DIRECT here ({e}); writing through the page cache",
                    self.root.display(rel).display()
                );
                self.direct.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(RestoreError::io(self.root.display(rel))(e)),
        }
    }

    /// Which files had their digest checked as they filled.
    pub(crate) fn checked(&self) -> Vec<bool> {
        self.filling.lock().expect("not poisoned").1.clone()
    }

    /// Records that a chunk landed (verified) in `slot`; when that was the
    /// last piece of a file hashed in flight, checks the file's digest.
    fn landed(&self, slot: Slot, span: Span) -> Result<(), RestoreError> {
        if !self.hashes(slot.file as usize) {
            return Ok(());
        }
        let assembled = {
            let mut filling = self.filling.lock().expect("not poisoned");
            let (hasher, left) = filling.0.entry(slot.file).or_insert_with(|| {
                let i = slot.file as usize;
                (
                    FileHasher::new(self.manifest.files[i].size),
                    self.manifest.piece_count(i),
                )
            });
            hasher.add(span);
            *left -= 1;
            if *left > 0 {
                return Ok(());
            }
            let (hasher, _) = filling.0.remove(&slot.file).expect("just filled");
            filling.1[slot.file as usize] = true;
            hasher
        };
        let want = self.manifest.files[slot.file as usize].blake3;
        match assembled.finish() {
            Some(actual) if actual == want => Ok(()),
            Some(actual) => Err(FormatError::DigestMismatch {
                what: format!("restored file {}", self.path(slot.file).display()),
                expected: want,
                actual,
            }
            .into()),
            None => Err(RestoreError::Dest {
                path: self.path(slot.file),
                reason: "every chunk landed but the file's digest could not be assembled; this is a qsync bug, rerun with --verify-existing".into(),
            }),
        }
    }
}

/// The places one chunk goes: those it streams into, by where their
/// range starts, and the `rest`, each filled from a streamed place of the
/// same range (by position) once the chunk is verified.
pub(crate) struct Targets<'a> {
    disk: &'a Disk,
    places: Vec<Place>,
    rest: Vec<(usize, Slot)>,
    size: u64,
    held: Option<Held>,
}

/// What a chunk in flight holds of the restore's memory budget (one permit
/// per MiB): what streaming it takes, until it turns out to be a zstd
/// frame, which is expanded whole and then holds `whole`.
pub(crate) struct Held {
    budget: Arc<tokio::sync::Semaphore>,
    permits: Option<tokio::sync::OwnedSemaphorePermit>,
    whole: u32,
}

impl Held {
    /// `permits` taken from `budget` to stream a chunk that would take
    /// `whole` expanded.
    pub(crate) fn new(
        budget: Arc<tokio::sync::Semaphore>,
        permits: tokio::sync::OwnedSemaphorePermit,
        whole: u32,
    ) -> Self {
        Held {
            budget,
            permits: Some(permits),
            whole,
        }
    }

    /// Holds the chunk's whole share, once it turns out to be a zstd frame.
    pub(crate) async fn expand(&mut self) {
        if self
            .permits
            .as_ref()
            .is_some_and(|p| p.num_permits() >= self.whole as usize)
        {
            return;
        }
        // Given back first, then taken whole: a chunk never waits for more
        // while holding part of the budget, so chunks waiting for room
        // cannot hold each other up. (An earlier attempt's staging, at most
        // the streaming share, is held until this one's first write.)
        self.permits = None;
        let whole = self.budget.clone().acquire_many_owned(self.whole).await;
        self.permits = Some(whole.expect("the budget is never closed"));
    }

    /// What a hedge of the chunk takes of the budget: its copy in memory
    /// and its own decoder's expansion, each up to the whole share.
    pub(crate) fn hedge_room(&self) -> (Arc<tokio::sync::Semaphore>, u32) {
        (self.budget.clone(), 2 * self.whole)
    }
}

struct Place {
    slot: Slot,
    state: State,
}

/// Where a streamed place stands in the current attempt.
/// Boxed while open, and only the finished digest nodes kept once written:
/// a chunk of tiny files has tens of thousands of places, mostly waiting
/// or written, so those must be small.
enum State {
    /// The stream has not reached its range.
    Waiting,
    /// Its range is being written, with its in-flight digest.
    Open(Box<(RangeWriter, Option<SpanHasher>)>),
    /// Its range is written (the file closed), with its finished digest nodes.
    Written(Option<Span>),
}

impl Place {
    /// Back to [`State::Waiting`] for a new attempt, once a dropped
    /// attempt's last write to it is done.
    async fn reset(&mut self) {
        if let State::Open(open) = &mut self.state {
            open.0.settle().await;
        }
        self.state = State::Waiting;
    }

    /// Writes the part of `plain` (at `at` in the chunk) that falls in this
    /// place's range, opening its file when the stream reaches the range
    /// and closing it at the range's end.
    async fn write(&mut self, disk: &Disk, size: u64, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
        let (start, end) = self.slot.range();
        let (from, to) = (start.max(at), end.min(at + plain.len() as u64));
        if from >= to {
            return Ok(());
        }
        if matches!(self.state, State::Waiting) {
            self.state = State::Open(Box::new((disk.open(self.slot, size)?, disk.span(self.slot))));
        }
        let State::Open(open) = &mut self.state else {
            // Written already: only a new attempt (from 0) writes it again.
            return Ok(());
        };
        let (writer, span) = &mut **open;
        let bytes = &plain[(from - at) as usize..(to - at) as usize];
        if let Some(span) = span {
            span.update(bytes);
        }
        writer
            .write(bytes)
            .await
            .map_err(|e| RestoreError::io(disk.path(self.slot.file))(e))?;
        if to == end {
            writer.settle().await;
            let State::Open(open) = std::mem::replace(&mut self.state, State::Waiting) else {
                unreachable!("open above");
            };
            self.state = State::Written(open.1.map(SpanHasher::finish));
        }
        Ok(())
    }
}

impl Targets<'_> {
    /// Keeps `held` until the chunk is done.
    pub(crate) fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// After [`crate::Mirrors::chunk`] succeeded: copies the verified chunk
    /// into the places it did not stream into, one at a time, records it
    /// in the in-flight file digests and checks every file it completed.
    pub(crate) async fn landed(mut self) -> Result<(), RestoreError> {
        for place in &mut self.places {
            let unfinished = match &mut place.state {
                State::Open(open) => {
                    open.0.settle().await;
                    true
                }
                State::Waiting => true,
                State::Written(_) => false,
            };
            if unfinished {
                return Err(RestoreError::Dest {
                    path: self.disk.path(place.slot.file),
                    reason: "a verified chunk ended before this file's part of it was written; the manifest does not fit its chunks, so nothing is recorded as written".into(),
                });
            }
        }
        if !self.rest.is_empty() {
            self.fill_rest().await?;
        }
        for place in self.places {
            if let State::Written(Some(span)) = place.state {
                self.disk.landed(place.slot, span)?;
            }
        }
        Ok(())
    }

    /// Copies each slot in `rest` from the streamed place of the same
    /// range, hashed as it is written (the bytes read back, so the copy is
    /// checked too).
    async fn fill_rest(&mut self) -> Result<(), RestoreError> {
        let mut buf = Vec::new();
        for (first, slot) in std::mem::take(&mut self.rest) {
            let from = self.places[first].slot;
            let path = self.disk.path(from.file);
            let source = self
                .disk
                .root
                .open_read(self.disk.rel(from.file))
                .map_err(RestoreError::io(&path))?;
            buf.resize(STAGE.min(slot.len() as usize), 0);
            let mut writer = self.disk.open(slot, self.size)?;
            let mut span = self.disk.span(slot);
            let to = self.disk.path(slot.file);
            let mut done = 0u64;
            while done < slot.len() {
                let n = buf.len().min((slot.len() - done) as usize);
                source
                    .read_exact_at(&mut buf[..n], from.offset + done)
                    .map_err(RestoreError::io(&path))?;
                if let Some(span) = &mut span {
                    span.update(&buf[..n]);
                }
                writer.write(&buf[..n]).await.map_err(RestoreError::io(&to))?;
                done += n as u64;
            }
            writer.settle().await;
            if let Some(span) = span {
                self.disk.landed(slot, span.finish())?;
            }
        }
        Ok(())
    }
}

/// MiB of memory streaming a chunk of `size` bytes to `slots` takes: its
/// network and hashing state, and a staging buffer ([`STAGE`] and its
/// alignment) for each place that gets the whole chunk through `O_DIRECT`
/// (at most [`FANOUT`] stream at once). Known before the chunk's places are
/// built, so a chunk waiting for room holds nothing.
pub(crate) fn streaming_mib(slots: &[Slot], size: u64) -> u32 {
    let staged = slots
        .iter()
        .filter(|s| s.range() == (0, size))
        .count()
        .min(FANOUT);
    1 + 2 * staged as u32
}

#[async_trait::async_trait]
impl ChunkSink for Targets<'_> {
    async fn expanding(&mut self) -> Result<(), RestoreError> {
        if let Some(h) = &mut self.held {
            h.expand().await;
        }
        Ok(())
    }

    fn hedge_room(&self) -> Option<(Arc<tokio::sync::Semaphore>, u32)> {
        self.held.as_ref().map(Held::hedge_room)
    }

    async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
        if at == 0 {
            // A new attempt writes every place over.
            for p in &mut self.places {
                p.reset().await;
            }
        }
        // Places are sorted by where their range starts: none after the
        // first that starts past this piece can overlap it.
        let end = at + plain.len() as u64;
        for p in self.places.iter_mut().take_while(|p| p.slot.at() < end) {
            p.write(self.disk, self.size, at, plain).await?;
        }
        Ok(())
    }
}

/// Writes the byte range `[start, end)` of a file front to back: the
/// [`ALIGN`]ed interior through `O_DIRECT`, in [`STAGE`]-sized writes from
/// an aligned buffer on a blocking thread (so the runtime goes on
/// receiving while the disk works), and the edges through the page cache.
struct RangeWriter {
    file: Arc<std::fs::File>,
    direct: Option<Arc<std::fs::File>>,
    /// The range and its aligned interior (empty without `O_DIRECT`).
    range: Aligned,
    pos: u64,
    /// Backing store of the aligned staging buffer.
    stage: Vec<u8>,
    staged: usize,
    /// The blocking write in flight, kept here so that an attempt dropped
    /// while awaiting it leaves it to [`RangeWriter::settle`]: it returns
    /// the staging buffer and its result.
    pending: Option<tokio::task::JoinHandle<(Vec<u8>, std::io::Result<()>)>>,
    /// Test hook: how long each blocking write waits before it writes.
    #[cfg(test)]
    slow: std::time::Duration,
}

impl RangeWriter {
    fn new(file: std::fs::File, direct: Option<std::fs::File>, start: u64, len: u64) -> Self {
        let range = Aligned::new(start, len, ALIGN, direct.is_some());
        RangeWriter {
            file: Arc::new(file),
            direct: direct.map(Arc::new),
            range,
            pos: start,
            stage: Vec::new(),
            staged: 0,
            pending: None,
            #[cfg(test)]
            slow: std::time::Duration::ZERO,
        }
    }

    /// Waits for the blocking write in flight, if any, and takes back its
    /// buffer; its result belonged to an attempt that is gone or has
    /// already seen it.
    async fn settle(&mut self) {
        if let Some(pending) = self.pending.as_mut() {
            let (stage, _) = pending.await.expect("a write does not panic");
            self.pending = None;
            self.stage = stage;
        }
    }

    async fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = if let Some(until) = self.range.edge_until(self.pos) {
                let n = (until - self.pos).min(bytes.len() as u64) as usize;
                self.file.write_all_at(&bytes[..n], self.pos)?;
                n
            } else {
                if self.stage.is_empty() {
                    self.stage = vec![0; STAGE + ALIGN as usize];
                }
                let staged = self.staged;
                let n = (STAGE - staged)
                    .min((self.range.last - self.pos) as usize)
                    .min(bytes.len());
                aligned(&mut self.stage)[staged..staged + n].copy_from_slice(&bytes[..n]);
                self.staged += n;
                if self.staged == STAGE || self.pos + n as u64 == self.range.last {
                    let at = self.pos + n as u64 - self.staged as u64;
                    self.flush(at).await?;
                }
                n
            };
            self.pos += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Writes the staged bytes at `at` (aligned) on a blocking thread.
    async fn flush(&mut self, at: u64) -> std::io::Result<()> {
        let (mut stage, len) = (std::mem::take(&mut self.stage), self.staged);
        let (file, direct) = (self.file.clone(), self.direct.clone());
        #[cfg(test)]
        let slow = self.slow;
        let pending = self.pending.insert(tokio::task::spawn_blocking(move || {
            #[cfg(test)]
            std::thread::sleep(slow);
            let out = &aligned(&mut stage)[..len];
            let result = match direct.map(|d| d.write_all_at(out, at)) {
                // The filesystem takes O_DIRECT opens but not these writes.
                Some(Err(e)) if e.kind() == ErrorKind::InvalidInput => file.write_all_at(out, at),
                Some(r) => r,
                None => file.write_all_at(out, at),
            };
            (stage, result)
        }));
        let (stage, result) = pending.await.expect("a write does not panic");
        self.pending = None;
        self.stage = stage;
        self.staged = 0;
        result
    }
}

/// The [`STAGE`] bytes of `buf` (`STAGE + ALIGN` long) that start at an
/// [`ALIGN`]ed address.
fn aligned(buf: &mut [u8]) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(ALIGN as usize);
    &mut buf[skip..skip + STAGE]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `len` bytes at `start` in pieces of `piece`, with and without
    /// O_DIRECT, and reads them back.
    async fn roundtrip(start: u64, len: u64, piece: usize, direct: bool) {
        // Under target/, on a disk filesystem: /tmp may be a tmpfs without O_DIRECT.
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(start + len + 100)
            .unwrap();
        let open = || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let d = direct
                .then(|| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(&path)
                        .ok()
                })
                .flatten();
            RangeWriter::new(file, d, start, len)
        };
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        // A failed first attempt, then a full one.
        let mut w = open();
        w.write(&data[..data.len() / 3]).await.unwrap();
        w.settle().await;
        let mut w = open();
        for p in data.chunks(piece) {
            w.write(p).await.unwrap();
        }
        let back = std::fs::read(&path).unwrap();
        assert!(back[..start as usize].iter().all(|b| *b == 0));
        assert_eq!(&back[start as usize..(start + len) as usize], &data[..]);
        assert!(back[(start + len) as usize..].iter().all(|b| *b == 0));
    }

    /// An attempt dropped while its `O_DIRECT` write is on a blocking
    /// thread (a timeout, a hedge that lost) must not overwrite the next
    /// attempt's bytes: the old write here takes 300 ms to land, the new
    /// attempt is written at once.
    #[tokio::test]
    async fn a_dropped_attempt_cannot_write_after_the_next_one() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let path = dir.path().join("f");
        let len = 2 * STAGE as u64;
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        let open = || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let d = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .ok()?;
            Some(RangeWriter::new(file, Some(d), 0, len))
        };
        let Some(mut w) = open() else {
            eprintln!("no O_DIRECT under target/; nothing to race");
            return;
        };
        w.slow = std::time::Duration::from_millis(300);
        let stale = vec![b'x'; len as usize];
        // The first attempt stalls in its first flush and is dropped there.
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), w.write(&stale)).await;
        assert!(dropped.is_err(), "the slow write should still be in flight");
        // What a place does for the next attempt: settle, then open anew.
        w.settle().await;
        let mut w = open().unwrap();
        let fresh = vec![b'y'; len as usize];
        w.write(&fresh).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let back = std::fs::read(&path).unwrap();
        let stale_at = back.iter().position(|b| *b == b'x');
        assert_eq!(
            stale_at, None,
            "the dropped attempt's bytes landed over the winner's"
        );
    }

    #[tokio::test]
    async fn unaligned_ranges_land_exactly_where_they_belong() {
        for direct in [true, false] {
            for (start, len) in [
                (0, 10),
                (1, 4095),
                (100, 3 << 20),
                (4096, 8192),
                (5000, (2 << 20) + 7),
            ] {
                for piece in [1000, 65536, 1 << 22] {
                    roundtrip(start, len, piece, direct).await;
                }
            }
        }
    }

    /// A chunk in flight holds what streaming it takes of the budget until
    /// it turns out to be compressed, then its whole size (once, however
    /// many attempts announce it), and gives everything back when done.
    #[tokio::test]
    async fn a_chunk_holds_its_streaming_share_until_it_expands() {
        let size = 5 << 20;
        let chunk = qsync_core::manifest::ChunkRef {
            blake3: qsync_core::Digest::of(b"c"),
            size,
        };
        let file = crate::testing::file("f", size, vec![chunk]);
        let manifest = Arc::new(crate::testing::manifest(&[], vec![file]));
        let d = tempfile::tempdir().unwrap();
        let root = Arc::new(Root::create_locked(d.path()).unwrap());
        let disk = Disk::new(manifest.clone(), root, vec![true]);
        let slots: Vec<Slot> = manifest
            .pieces(0)
            .iter()
            .enumerate()
            .map(|(c, p)| Slot::of(0, c, p))
            .collect();
        let budget = Arc::new(tokio::sync::Semaphore::new(20));
        let mut targets = disk.targets(&slots, size);
        // One place gets the whole chunk through O_DIRECT: its staging and the stream's own.
        assert_eq!(streaming_mib(&slots, size), 3);
        let permits = budget.clone().acquire_many_owned(3).await.unwrap();
        targets.hold(Held::new(budget.clone(), permits, 5));
        assert_eq!(budget.available_permits(), 17);
        targets.expanding().await.unwrap();
        assert_eq!(budget.available_permits(), 15);
        targets.expanding().await.unwrap();
        assert_eq!(budget.available_permits(), 15);
        drop(targets);
        assert_eq!(budget.available_permits(), 20);
    }
}
