//! Fuzzes the reading of trust records (`TrustStore::load` and the rollback
//! check built on it): the files under the state directory that hold, per
//! chain, the newest snapshot this host restored. Anything else on the host
//! may have written them, so a torn, hostile or legacy record must be
//! refused or read, never crash the fetcher or lower the bar.
//!
//! The input is written to a temporary state directory (on /dev/shm when it
//! exists, to keep it fast) as the record of chain `eth`: bit 0 of the first
//! byte chooses the current file name or a legacy `<chain>.<KEYID>.json`,
//! bit 1 whether a restore is then recorded over it with `advance`.
//!
//! Invariants: a current record that loads is of chain `eth` in the current
//! format; the snapshot it names passes the rollback check and an older one
//! is refused; a legacy record's version bounds the rollback check; after
//! `advance` the record loads and its rank never went backwards.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qsync_core::pointer::SnapshotRef;
use qsync_core::time::Timestamp;
use qsync_core::trust::{rank, Floor, TrustStore, TRUST_FORMAT};
use qsync_core::{ChainName, Digest, ObjectKey};

fn state_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("qsync-fuzz-trust")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary state directory")
    })
    .path()
}

fn snap(chain: &ChainName, version: u64, created_at: Timestamp, d: Digest) -> SnapshotRef {
    SnapshotRef {
        version,
        manifest_key: ObjectKey::manifest(chain, version, &d, false),
        manifest_blake3: d,
        manifest_size: 1,
        created_at,
        height: None,
        files: 0,
        bytes: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else {
        return;
    };
    let dir = state_dir();
    let chain = ChainName::new("eth").expect("valid chain");
    let store = TrustStore::new(dir);
    let current = store.file(&chain);
    let legacy = dir.join("eth.0123456789ABCDEF.json");
    for f in [&current, &legacy] {
        let _ = std::fs::remove_file(f);
    }
    let target = if mode & 1 == 0 { &current } else { &legacy };
    std::fs::write(target, record).expect("writing the record");

    let floor = store.load(&chain);
    let d = Digest::of(record);
    match &floor {
        Ok(Some(Floor::Trusted(t))) => {
            assert_eq!(t.format, TRUST_FORMAT);
            assert_eq!(t.chain, chain);
            let same = snap(&chain, t.version, t.created_at, t.manifest_blake3);
            store
                .check_rollback(&chain, &same)
                .expect("the recorded snapshot itself is accepted");
            if let Some(v) = t.version.checked_sub(1) {
                let older = snap(&chain, v, t.created_at, d);
                assert!(
                    store.check_rollback(&chain, &older).is_err(),
                    "an older snapshot passed"
                );
            }
        }
        Ok(Some(Floor::Legacy { version, .. })) => {
            assert_eq!(mode & 1, 1, "a current record was read as legacy");
            if let Some(v) = version.checked_sub(1) {
                // Legacy floors bound versions whatever the creation time (year 2100 here).
                let older = snap(&chain, v, Timestamp(4_102_444_800), d);
                assert!(
                    store.check_rollback(&chain, &older).is_err(),
                    "an older version passed"
                );
            }
        }
        Ok(None) => assert_eq!(mode & 1, 1, "a current record file was not read"),
        Err(_) => {}
    }

    if mode & 2 != 0 && floor.is_ok() {
        let s = snap(&chain, u64::from(mode), Timestamp(u64::from(mode) << 20), d);
        store
            .advance(&chain, &s, "0123456789ABCDEF")
            .expect("advance over a readable record");
        match store.load(&chain).expect("the advanced record loads") {
            Some(Floor::Trusted(t)) => {
                assert!(
                    (t.created_at, t.version) >= rank(&s),
                    "advance did not record the restore"
                );
                if let Ok(Some(Floor::Trusted(before))) = &floor {
                    assert!(
                        (t.created_at, t.version) >= (before.created_at, before.version),
                        "the bar went down"
                    );
                }
            }
            other => panic!("after advance the record is {other:?}"),
        }
    }
});
