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
//! Two bounds hold whatever the manifest says. A chunk streams into at
//! most [`FANOUT`] places; once it is verified, the rest are copied one at
//! a time from the first place's file, so one chunk shared by thousands of
//! identical files costs a handful of descriptors, not thousands. And an
//! attempt that was dropped (a timeout, a hedge that lost) cannot write
//! after the next one: a place's pending blocking write is awaited before
//! the place is written again.

use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
#[cfg(test)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use qsync_core::filehash::{FileHasher, SpanHasher};
use qsync_core::manifest::Manifest;
use qsync_core::span::Aligned;
use qsync_core::{Digest, FormatError};

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

/// Where one chunk goes: a file (by index into the manifest) and an offset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) file: u32,
    pub(crate) chunk: u32,
    pub(crate) offset: u64,
}

/// A file hashed in flight: its digest so far (until checked) and how many
/// chunk places are still to land.
type Filling = (Option<FileHasher>, usize);

/// The destination files of one restore, as the fetch loop writes them.
pub(crate) struct Disk {
    /// Every file is opened through the destination's [`Root`], by its
    /// manifest path; `paths` name them in messages.
    root: Arc<Root>,
    rels: Vec<String>,
    paths: Arc<Vec<PathBuf>>,
    sizes: Vec<u64>,
    digests: Vec<Digest>,
    /// Cleared on the first file that refuses `O_DIRECT`.
    direct: AtomicBool,
    /// Per file written entirely by this run: its digest so far, and how
    /// many chunk places are still to land.
    /// The hasher is dropped once the file is checked.
    hashing: Vec<Option<Mutex<Filling>>>,
}

impl Disk {
    /// `whole[i]`: file `i` is written entirely by this run, so its digest
    /// can be assembled in flight.
    pub(crate) fn new(
        manifest: &Manifest,
        root: Arc<Root>,
        paths: Arc<Vec<PathBuf>>,
        whole: &[bool],
    ) -> Self {
        let hashing = manifest
            .files
            .iter()
            .zip(whole)
            .map(|(f, w)| w.then(|| Mutex::new((Some(FileHasher::new(f.size)), f.chunks.len()))))
            .collect();
        Disk {
            root,
            rels: manifest.files.iter().map(|f| f.path.clone()).collect(),
            paths,
            sizes: manifest.files.iter().map(|f| f.size).collect(),
            digests: manifest.files.iter().map(|f| f.blake3).collect(),
            direct: AtomicBool::new(true),
            hashing,
        }
    }

    /// Whether file `i`'s digest is assembled in flight.
    pub(crate) fn hashes(&self, i: usize) -> bool {
        self.hashing[i].is_some()
    }

    /// Opens the first [`FANOUT`] places a chunk of `size` bytes goes; the
    /// others are opened one at a time by [`Targets::landed`].
    pub(crate) fn targets(&self, slots: &[Slot], size: u64) -> Result<Targets<'_>, RestoreError> {
        let (streamed, rest) = slots.split_at(slots.len().min(FANOUT));
        let places = streamed
            .iter()
            .map(|s| self.place(*s, size))
            .collect::<Result<_, RestoreError>>()?;
        Ok(Targets {
            disk: self,
            places,
            rest: rest.to_vec(),
            size,
        })
    }

    /// Opens one place for writing `size` bytes.
    fn place(&self, slot: Slot, size: u64) -> Result<Place<'_>, RestoreError> {
        let path = &self.paths[slot.file as usize];
        let rel = &self.rels[slot.file as usize];
        let file = self
            .root
            .open_write(rel, rustix::fs::OFlags::empty())
            .map_err(RestoreError::io(path))?;
        let direct = self.open_direct(rel, path)?;
        Ok(Place {
            writer: RangeWriter::new(file, direct, slot.offset, size),
            path,
            span: None,
            slot,
        })
    }

    /// Starts (or starts over) `place`'s in-flight digest, for a file
    /// hashed in flight.
    fn start_span(&self, place: &mut Place<'_>) {
        let file_len = self.sizes[place.slot.file as usize];
        place.span = self
            .hashes(place.slot.file as usize)
            .then(|| SpanHasher::new(place.slot.offset, place.writer.len(), file_len));
    }

    fn open_direct(&self, rel: &str, path: &Path) -> Result<Option<std::fs::File>, RestoreError> {
        if !self.direct.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match self.root.open_write(rel, rustix::fs::OFlags::DIRECT) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                tracing::debug!(
                    "{}: no O_DIRECT here ({e}); writing through the page cache",
                    path.display()
                );
                self.direct.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(RestoreError::io(path)(e)),
        }
    }

    /// Which files had their digest checked as they filled.
    pub(crate) fn checked(&self) -> Vec<bool> {
        let done = |h: &Mutex<Filling>| h.lock().expect("not poisoned").1 == 0;
        self.hashing
            .iter()
            .map(|h| h.as_ref().is_some_and(done))
            .collect()
    }

    /// Records that a chunk landed (verified) in `slot`; when that was the
    /// last piece of a file hashed in flight, checks the file's digest.
    fn landed(&self, slot: Slot, span: SpanHasher) -> Result<(), RestoreError> {
        let Some(state) = &self.hashing[slot.file as usize] else {
            return Ok(());
        };
        let mut state = state.lock().expect("not poisoned");
        let hasher = state
            .0
            .as_mut()
            .expect("a file is checked once, after its last chunk");
        hasher.add(span.finish());
        state.1 -= 1;
        if state.1 > 0 {
            return Ok(());
        }
        let (path, want) = (&self.paths[slot.file as usize], self.digests[slot.file as usize]);
        let assembled = state.0.take().and_then(|h| h.finish());
        match assembled {
            Some(actual) if actual == want => Ok(()),
            Some(actual) => Err(FormatError::DigestMismatch {
                what: format!("restored file {}", path.display()),
                expected: want,
                actual,
            }
            .into()),
            None => Err(RestoreError::Dest {
                path: path.clone(),
                reason: "every chunk landed but the file's digest could not be assembled; this is a qsync bug, rerun with --verify-existing".into(),
            }),
        }
    }
}

/// The places one chunk goes: the first [`FANOUT`] open for writing as
/// it streams in, the `rest` filled from the first once it is verified.
pub(crate) struct Targets<'a> {
    disk: &'a Disk,
    places: Vec<Place<'a>>,
    rest: Vec<Slot>,
    size: u64,
}

struct Place<'a> {
    writer: RangeWriter,
    path: &'a Path,
    /// The in-flight digest of this chunk at its offset in the file.
    span: Option<SpanHasher>,
    slot: Slot,
}

impl Targets<'_> {
    /// After [`crate::Mirrors::chunk`] succeeded: copies the verified chunk
    /// into the places it did not stream into, one at a time, records it
    /// in the in-flight file digests and checks every file it completed.
    pub(crate) async fn landed(mut self) -> Result<(), RestoreError> {
        for place in &mut self.places {
            place.writer.settle().await;
        }
        if !self.rest.is_empty() {
            self.fill_rest().await?;
        }
        for place in self.places {
            if let Some(span) = place.span {
                self.disk.landed(place.slot, span)?;
            }
        }
        Ok(())
    }

    /// Copies the chunk from the first place's file into every slot in
    /// `rest`, each hashed as it is written (the bytes read back, so the
    /// copy is checked too).
    async fn fill_rest(&mut self) -> Result<(), RestoreError> {
        let first = self.places[0].slot;
        let (rel, path) = (
            &self.disk.rels[first.file as usize],
            &self.disk.paths[first.file as usize],
        );
        let source = self.disk.root.open_read(rel).map_err(RestoreError::io(path))?;
        let mut buf = vec![0u8; STAGE.min(self.size as usize)];
        for slot in std::mem::take(&mut self.rest) {
            let mut place = self.disk.place(slot, self.size)?;
            self.disk.start_span(&mut place);
            let mut done = 0u64;
            while done < self.size {
                let n = buf.len().min((self.size - done) as usize);
                source
                    .read_exact_at(&mut buf[..n], first.offset + done)
                    .map_err(RestoreError::io(path))?;
                if let Some(span) = &mut place.span {
                    span.update(&buf[..n]);
                }
                place
                    .writer
                    .write(&buf[..n])
                    .await
                    .map_err(RestoreError::io(place.path))?;
                done += n as u64;
            }
            if let Some(span) = place.span {
                self.disk.landed(slot, span)?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ChunkSink for Targets<'_> {
    async fn write(&mut self, at: u64, plain: &[u8]) -> Result<(), RestoreError> {
        for p in &mut self.places {
            if at == 0 {
                // A new attempt: start this place's digest and writes over,
                // once a dropped attempt's last write is done.
                p.writer.restart().await;
                self.disk.start_span(p);
            }
            if let Some(span) = &mut p.span {
                span.update(plain);
            }
            p.writer.write(plain).await.map_err(RestoreError::io(p.path))?;
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
    start: u64,
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
            start,
            range,
            pos: start,
            stage: Vec::new(),
            staged: 0,
            pending: None,
            #[cfg(test)]
            slow: std::time::Duration::ZERO,
        }
    }

    fn len(&self) -> u64 {
        self.range.end - self.start
    }

    /// Starts the range over, after any write a dropped attempt left.
    async fn restart(&mut self) {
        self.settle().await;
        self.pos = self.start;
        self.staged = 0;
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
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(start + len + 100).unwrap();
        let d = direct
            .then(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .ok()
            })
            .flatten();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let mut w = RangeWriter::new(file, d, start, len);
        // A failed first attempt, then a full one.
        w.write(&data[..data.len() / 3]).await.unwrap();
        w.restart().await;
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
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(len).unwrap();
        let Ok(d) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        else {
            eprintln!("no O_DIRECT under target/; nothing to race");
            return;
        };
        let mut w = RangeWriter::new(file, Some(d), 0, len);
        w.slow = std::time::Duration::from_millis(300);
        let stale = vec![b'x'; len as usize];
        // The first attempt stalls in its first flush and is dropped there.
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(50), w.write(&stale)).await;
        assert!(dropped.is_err(), "the slow write should still be in flight");
        w.slow = std::time::Duration::ZERO;
        w.restart().await;
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
}
