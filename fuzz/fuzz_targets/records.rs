//! Fuzzes the parsers of the records a fetcher keeps inside a destination
//! (`qsync_core::records`): the completion and in-progress markers, the
//! resume journal and the file index. A destination is writable by others,
//! so each of these is hostile input to the next restore.
//!
//! The first byte chooses the record; the rest is its bytes.
//!
//! Invariants: nothing panics; a marker that parses has the marker format
//! and re-serialises to bytes that parse to the same marker; what a journal
//! records (chunks done, last stats) survives being written back as lines
//! and parsed again, and its `torn` flag says exactly whether the last line
//! lacks its newline; an index round-trips through `write_index`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsync_core::records::{
    journal_limit, parse_index, parse_journal, parse_marker, write_index, JournalLine, MARKER_FORMAT,
};
use qsync_core::Digest;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(m) = parse_marker(bytes) else {
                return;
            };
            assert_eq!(m.format, MARKER_FORMAT);
            let again = parse_marker(&m.to_bytes()).expect("a written marker parses");
            assert_eq!(again.to_bytes(), m.to_bytes());
        }
        1 => {
            // The journal must name this manifest; the seeds do.
            let manifest = Digest([0x11; 32]);
            let limit = journal_limit(16, 256);
            let Ok(state) = parse_journal(bytes, &manifest, limit) else {
                return;
            };
            assert_eq!(state.torn, !bytes.ends_with(b"\n"), "torn flag");
            let mut text = JournalLine::Header { manifest }.to_line();
            let mut files: Vec<_> = state.done.keys().copied().collect();
            files.sort_unstable();
            for f in files {
                let c = state.done[&f].as_ref().map(|set| {
                    let mut c: Vec<u32> = set.iter().copied().collect();
                    c.sort_unstable();
                    c
                });
                let st = state.stats.get(&f).copied();
                text.push_str(&JournalLine::Done { f, c, st }.to_line());
            }
            let again =
                parse_journal(text.as_bytes(), &manifest, u64::MAX).expect("a written journal parses");
            assert_eq!(again.done, state.done, "chunks done changed on rewrite");
            assert_eq!(again.stats, state.stats, "stats changed on rewrite");
            assert!(!again.torn);
        }
        _ => {
            let Ok(index) = parse_index(bytes, 1 << 20) else {
                return;
            };
            let mut written = Vec::new();
            write_index(&mut written, index.iter().map(|(p, e)| (p.as_str(), e.clone()))).expect("writes to memory");
            let again = parse_index(&written, u64::MAX).expect("a written index parses");
            assert_eq!(again, index);
        }
    }
});
