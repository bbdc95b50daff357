//! Reading source files as one stream of bytes: cut into content-defined
//! chunks as it is read once, each chunk and each whole file hashed on the
//! way, and every file proved unchanged from listing to its last byte (a
//! file the node changes while it is read fails the run: no snapshot mixes
//! two states of it).
//!
//! A large file is a stream of one file. Small files are read as one
//! stream in manifest order, the pack (format 2): their chunks follow
//! bytes, not files, so a directory of a million small files is about one
//! object per chunk size, not a million objects, and one changed file
//! changes about one chunk (content-defined cuts find their place again
//! after it).
//!
//! A stream of many files is read ahead ([`prefetch`]): a second thread
//! asks the kernel to start reading the next files while this one hashes
//! and cuts, so the disk works on many small files at once instead of one
//! at a time.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use qsync_core::chunk::ChunkerParams;
use qsync_core::Digest;
use rustix::fs::OFlags;
use tokio::sync::mpsc;

use crate::scan::{Listed, Scan};
use crate::SnapshotError;

/// Blocking: cuts the concatenation of the listed files `which` into
/// chunks and sends them with their digests; sets each file's digest in
/// its listing entry after checking that it did not change while it was
/// read. The listing is shared with the other reads under a lock taken
/// only per file, so the digests go straight into the table (a million
/// files' digests held aside were 32 MB).
pub(crate) fn read_stream(
    listing: &Mutex<Scan>,
    which: &[u32],
    params: &ChunkerParams,
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
) -> Result<(), SnapshotError> {
    let (opened, over) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|scope| {
        if which.len() > 1 {
            scope.spawn(|| prefetch(listing, which, &opened, &over));
        }
        // Set however the read ends, a panic included: the scope waits for
        // the prefetch, which would otherwise wait for a reader that is gone.
        let _over = Over(&over);
        read_files(listing, which, params, tx, &opened)
    })
}

/// Tells the prefetch the read is over when dropped.
struct Over<'a>(&'a AtomicBool);

impl Drop for Over<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How a source file is opened, by the reader and the read-ahead alike:
/// not waiting for a writer, should a FIFO have replaced the file, nor
/// following a link put in its place (the scan refuses links; the
/// reader's stat refuses a FIFO). Links in its directories are followed:
/// the stat then refuses whatever they lead to.
const SOURCE_OPEN: OFlags = OFlags::NONBLOCK.union(OFlags::NOCTTY).union(OFlags::NOFOLLOW);

/// Files the prefetch may be ahead of the reader, and bytes.
const AHEAD_FILES: usize = 1024;
const AHEAD_BYTES: u64 = 64 << 20;

/// Asks the kernel to read the files `which` into the page cache ahead of
/// the reader (`opened`: how many it has opened), at most [`AHEAD_FILES`]
/// files and [`AHEAD_BYTES`] ahead, until the read is `over`. Small files
/// read one after another each wait for the disk (3.8 of 9 s of a 50,000-
/// file snapshot from a cold cache); asked ahead, their reads are in
/// flight together. Only a hint: the reader opens and checks every file
/// itself, so what happens here (a file gone, replaced, unreadable) does
/// not matter; a file is opened as the reader opens it ([`SOURCE_OPEN`]).
fn prefetch(listing: &Mutex<Scan>, which: &[u32], opened: &AtomicUsize, over: &AtomicBool) {
    use rustix::fs::{fadvise, open, Advice, Mode};
    // `sizes[k % AHEAD_FILES]`: the size of the k-th file asked for.
    let mut sizes = vec![0u64; AHEAD_FILES];
    let (mut next, mut ahead) = (0usize, 0u64);
    let mut passed = 0;
    while next < which.len() && !over.load(Ordering::Relaxed) {
        let reader = opened.load(Ordering::Relaxed);
        while passed < reader.min(next) {
            ahead -= sizes[passed % AHEAD_FILES];
            passed += 1;
        }
        if next < reader {
            // Behind the reader: nothing asked for is ahead of it.
            (next, passed) = (reader, reader);
            continue;
        }
        if next >= passed + AHEAD_FILES || ahead >= AHEAD_BYTES {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let (path, size) = {
            let l = listing.lock().expect("not poisoned");
            let f = which[next] as usize;
            (l.path(f), l.files[f].size)
        };
        if let Ok(fd) = open(
            &path,
            SOURCE_OPEN | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = fadvise(&fd, 0, None, Advice::WillNeed);
        }
        sizes[next % AHEAD_FILES] = size;
        ahead += size;
        next += 1;
    }
}

/// [`read_stream`]'s reading: counts the files it opened in `opened`.
fn read_files(
    listing: &Mutex<Scan>,
    which: &[u32],
    params: &ChunkerParams,
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
    opened: &AtomicUsize,
) -> Result<(), SnapshotError> {
    let mut stream = Files {
        listing,
        files: which,
        next: 0,
        opened,
        open: None,
        failed: None,
    };
    let mut stopped = None;
    for c in params.chunks(&mut stream) {
        let (_, data) = match c {
            Ok(c) => c,
            Err(e) => {
                stopped = Some(e);
                break;
            }
        };
        if tx.blocking_send((Digest::of(&data), data)).is_err() {
            break; // the upload side failed; its error is reported
        }
    }
    match (stream.failed.take(), stopped) {
        (Some(e), _) => Err(e),
        (None, Some(e)) => Err(stream.io(e)),
        (None, None) => Ok(()),
    }
}

/// The listed files `files` read front to back as one [`Read`].
struct Files<'a> {
    listing: &'a Mutex<Scan>,
    files: &'a [u32],
    /// The next file to open.
    next: usize,
    /// `next`, for the prefetch.
    opened: &'a AtomicUsize,
    /// The file being read: its handle, digest so far, bytes read and
    /// bytes listed (its stat when opened was the listed one).
    open: Option<(File, blake3::Hasher, u64, Listed)>,
    /// Why reading stopped, in its own type (the chunker sees an `io::Error`).
    failed: Option<SnapshotError>,
}

impl Files<'_> {
    /// The listing's number for the file being read, or the last one opened.
    fn current(&self) -> usize {
        self.files[self.next.saturating_sub(1)] as usize
    }

    fn listing(&self) -> std::sync::MutexGuard<'_, Scan> {
        self.listing.lock().expect("not poisoned")
    }

    fn io(&self, source: std::io::Error) -> SnapshotError {
        SnapshotError::Source {
            path: self.listing().path(self.current()),
            source,
        }
    }

    /// Keeps `e` as the reason and hands the chunker an error to stop on.
    fn fail(&mut self, e: SnapshotError) -> std::io::Error {
        let text = e.to_string();
        self.failed = Some(e);
        std::io::Error::other(text)
    }

    fn changed(&self, what: String) -> SnapshotError {
        SnapshotError::FileChanged {
            path: self.listing().path(self.current()),
            what,
        }
    }

    /// Opens the next file, checking it is the one listed.
    fn open_next(&mut self) -> Result<(), SnapshotError> {
        let f = self.files[self.next] as usize;
        self.next += 1;
        self.opened.store(self.next, Ordering::Relaxed);
        // One short hold of the lock the other reads share, and no I/O under it.
        let (path, listed) = {
            let l = self.listing();
            (l.path(f), l.listed(f))
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(i32::try_from(SOURCE_OPEN.bits()).expect("open flags fit"))
            .open(path)
            .map_err(|e| self.io(e))?;
        let opened = file.metadata().map_err(|e| self.io(e))?;
        if Listed::of(&opened) != listed {
            return Err(self.changed("it was replaced or modified between listing and opening".into()));
        }
        self.open = Some((file, blake3::Hasher::new(), 0, listed));
        Ok(())
    }

    /// Finishes the open file: it must still be as listed (so as it was
    /// opened), and as long as listed.
    fn close(&mut self) -> Result<(), SnapshotError> {
        let (file, whole, read, listed) = self.open.take().expect("a file is open");
        let after = Listed::of(&file.metadata().map_err(|e| self.io(e))?);
        if after != listed || read != listed.size {
            return Err(self.changed(format!(
                "size {} -> {}, read {read} bytes, mtime {} -> {}",
                listed.size, after.size, listed.stat.mtime_ns, after.stat.mtime_ns
            )));
        }
        let f = self.current();
        self.listing().files[f].blake3 = whole.finalize().into();
        Ok(())
    }
}

impl Read for Files<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.failed.is_some() {
            return Err(std::io::Error::other("reading stopped"));
        }
        loop {
            let Some((file, whole, read, listed)) = &mut self.open else {
                if self.next == self.files.len() {
                    return Ok(0);
                }
                if let Err(e) = self.open_next() {
                    return Err(self.fail(e));
                }
                continue;
            };
            // Never past the listed size: a file that grew fails at close.
            let left = listed.size - *read;
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            if want == 0 {
                if let Err(e) = self.close() {
                    return Err(self.fail(e));
                }
                continue;
            }
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    // Shorter than listed: close names the change.
                    if let Err(e) = self.close() {
                        return Err(self.fail(e));
                    }
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = self.io(e);
                    return Err(self.fail(e));
                }
            };
            whole.update(&buf[..n]);
            *read += n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(dir: &std::path::Path, names: &[(&str, &[u8])]) -> Scan {
        for (name, body) in names {
            std::fs::write(dir.join(name), body).unwrap();
        }
        crate::scan::scan(dir).unwrap()
    }

    fn read_all(listing: Scan) -> (Result<Vec<Digest>, SnapshotError>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let all: Vec<u32> = (0..listing.files.len() as u32).collect();
        let listing = Mutex::new(listing);
        let r = read_stream(&listing, &all, &ChunkerParams::with_average_kib(256).unwrap(), tx);
        let mut stream = Vec::new();
        while let Ok((d, c)) = rx.try_recv() {
            assert_eq!(Digest::of(&c), d);
            stream.extend(c);
        }
        let digests = listing
            .into_inner()
            .unwrap()
            .files
            .iter()
            .map(|f| f.blake3)
            .collect();
        (r.map(|()| digests), stream)
    }

    #[test]
    fn files_are_one_stream_with_a_digest_each() {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let files = listed(
            d.path(),
            &[("a", b"alpha"), ("b", &big), ("c", b""), ("d", b"delta")],
        );
        let (r, stream) = read_all(files);
        let digests = r.unwrap();
        assert_eq!(
            digests,
            [&b"alpha"[..], &big, b"", b"delta"].map(Digest::of).to_vec()
        );
        assert_eq!(stream, [&b"alpha"[..], &big, b"delta"].concat());
    }

    #[test]
    fn a_file_changed_after_listing_fails_the_stream_and_is_named() {
        let d = tempfile::tempdir().unwrap();
        let files = listed(d.path(), &[("a", b"alpha"), ("b", b"bravo")]);
        std::fs::write(d.path().join("b"), b"bravo, longer now").unwrap();
        let (r, _) = read_all(files);
        let e = r.unwrap_err();
        assert!(
            matches!(e, SnapshotError::FileChanged { ref path, .. } if path.ends_with("b")),
            "{e}"
        );
    }

    /// A listed file replaced by a FIFO before it is read (by whoever can
    /// write the node's data directory) fails the stream, naming it: it
    /// must not hang the snapshot, nor the agent's next cycles, waiting for
    /// a writer. The read ahead opens it too.
    #[test]
    fn a_file_replaced_by_a_fifo_fails_the_stream_instead_of_hanging() {
        let d = tempfile::tempdir().unwrap();
        let files = listed(d.path(), &[("a", b"alpha"), ("b", b"bravo"), ("c", b"charlie")]);
        std::fs::remove_file(d.path().join("b")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(d.path().join("b"))
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_all(files).0.map(|_| ())));
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("reading a FIFO hung the stream");
        let e = r.unwrap_err();
        assert!(
            matches!(e, SnapshotError::FileChanged { ref path, .. } if path.ends_with("b")),
            "{e}"
        );
    }

    /// A reader that panics (a poisoned listing here) while the read-ahead
    /// waits at its bound ends the read with the panic: the read-ahead is
    /// told the read is over however it ends, instead of the scope waiting
    /// for it forever.
    #[test]
    fn a_reader_that_panics_does_not_leave_the_read_ahead_waiting() {
        let d = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..3000).map(|i| format!("f{i:04}")).collect();
        let body = vec![7u8; 1024];
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &body[..])).collect();
        let listing = std::sync::Arc::new(Mutex::new(listed(d.path(), &files)));
        let all: Vec<u32> = (0..3000).collect();
        let (tx, mut rx) = mpsc::channel(1);
        let (done_tx, done) = std::sync::mpsc::channel();
        let reading = listing.clone();
        std::thread::spawn(move || {
            let params = ChunkerParams::with_average_kib(64).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read_stream(&reading, &all, &params, tx)
            }));
            let _ = done_tx.send(r.is_err());
        });
        // The reader is held at its first chunks; the read-ahead runs to
        // its bound of 1,024 files and waits there.
        let first = rx.blocking_recv().expect("a first chunk");
        assert!(!first.1.is_empty());
        std::thread::sleep(std::time::Duration::from_millis(500));
        let poison = listing.clone();
        let _ = std::thread::spawn(move || {
            let _held = poison.lock().unwrap();
            panic!("poisoning the listing");
        })
        .join();
        // Let the reader go on: its next file's lock panics.
        std::thread::spawn(move || while rx.blocking_recv().is_some() {});
        let panicked = done
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the read hung after its reader panicked");
        assert!(panicked);
    }
}
