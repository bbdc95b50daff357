//! Fuzzes `Manifest::decode` on raw JSON and on zstd frames of it: the
//! manifest is the largest object a fetcher parses and every path in it is
//! later joined onto the destination directory.
//!
//! The first byte chooses how the rest is fed: as stored bytes (which may
//! themselves start with the zstd magic), or compressed into one zstd frame
//! first so the fuzzer explores the JSON behind the zstd path too.
//!
//! Invariants, checked here independently of manifest.rs: a manifest that
//! decodes has only paths that are safe to join onto a destination
//! (relative, no empty, `.` or `..` segment, no NUL, not one of qsync's
//! reserved names, none listed twice, none under a file), every file's
//! chunks are 1..=max_size bytes and add up to its size, and it round-trips
//! through `encode`.
#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use qsync_core::manifest::{Manifest, MANIFEST_FORMAT, MANIFEST_FORMAT_PACKED, RESERVED_NAMES};

fn check_path(path: &str) {
    assert!(
        !path.is_empty() && !path.starts_with('/') && !path.contains('\0'),
        "{path:?}"
    );
    assert!(!RESERVED_NAMES.contains(&path), "{path:?} is reserved");
    for seg in path.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{path:?}");
    }
    // What a restore does with it: it must stay under the destination.
    let joined = Path::new("/dest").join(path);
    assert!(joined.starts_with("/dest"), "{path:?}");
    assert!(
        joined
            .components()
            .skip(2)
            .all(|c| matches!(c, Component::Normal(_))),
        "{path:?} has a component that is not a plain name"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stored = if mode & 1 == 1 {
        zstd::bulk::compress(rest, 1).expect("compressing in memory")
    } else {
        rest.to_vec()
    };
    let Ok(m) = Manifest::decode(&stored, "fuzz") else {
        return;
    };
    assert!(
        m.format == MANIFEST_FORMAT || m.format == MANIFEST_FORMAT_PACKED,
        "{}",
        m.format
    );
    if m.format == MANIFEST_FORMAT {
        assert!(m.pack.is_empty() && m.files.iter().all(|f| !f.packed));
    }
    let files: HashSet<&str> = m.files.iter().map(|f| f.path.as_ref()).collect();
    assert_eq!(files.len(), m.files.len(), "a file is listed twice");
    let mut seen = files.clone();
    for d in &m.directories {
        check_path(&d.path);
        assert!(seen.insert(&d.path), "{:?} is listed twice", d.path);
    }
    for f in &m.files {
        check_path(&f.path);
        let mut parent = f.path.as_ref();
        while let Some((p, _)) = parent.rsplit_once('/') {
            assert!(!files.contains(p), "{:?} lies under the file {p:?}", f.path);
            parent = p;
        }
        let mut sum = 0u64;
        for c in &f.chunks {
            assert!((1..=u64::from(m.chunker.max_size)).contains(&c.size), "{c:?}");
            sum = sum.checked_add(c.size).expect("chunk sizes overflow");
        }
        if f.packed {
            assert!(f.chunks.is_empty() && f.size > 0, "{:?}", f.path);
        } else {
            assert_eq!(sum, f.size, "{:?}: chunks do not add up", f.path);
        }
    }
    for c in &m.pack {
        assert!((1..=u64::from(m.chunker.max_size)).contains(&c.size), "{c:?}");
    }
    // Every file's pieces lie inside their chunks and cover the file
    // exactly, front to back: what restore, tar and verify rely on.
    for i in 0..m.files.len() {
        let pieces = m.pieces(i);
        assert_eq!(pieces.len(), m.piece_count(i));
        let mut at = 0u64;
        for p in &pieces {
            assert_eq!(p.offset, at, "{:?}: pieces leave a gap", m.files[i].path);
            assert!(p.len > 0 && p.at + p.len <= p.chunk.size, "{p:?}");
            at += p.len;
        }
        assert_eq!(at, m.files[i].size, "{:?}: pieces do not cover it", m.files[i].path);
    }
    for d in &m.directories {
        let mut parent = d.path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            assert!(!files.contains(p), "{:?} lies under the file {p:?}", d.path);
            parent = p;
        }
    }
    let _ = (m.total_bytes(), m.chunk_refs());
    let (bytes, _) = m.encode();
    assert_eq!(
        Manifest::decode(&bytes, "re-encoded").expect("an encoded manifest decodes"),
        m
    );
});
