//! Acceptance rules and trust state: what a fetcher (or `qsync serve`'s
//! `/tar`) accepts, and what a fetcher has already accepted, per chain.
//!
//! Snapshots of one chain are ordered across every store by [`rank`]: the
//! signed creation time of the snapshot, then its version. Creation time is
//! set by the publisher and signed in both pointer and manifest; unlike a
//! per-store counter it cannot be made to go backwards by mixing stores (TUF
//! orders its timestamp role the same way). The trust state is kept outside
//! any destination (default `$XDG_STATE_HOME/qsync`), one small JSON file
//! per chain (not per key, so rotating the publisher's key keeps rollback
//! protection). It only moves forward, and only after a restore completes,
//! so a replayed older snapshot (rollback) is refused and a failed restore
//! never raises the bar. Freshness (`expires_at`) is checked here too, so
//! every acceptance rule lives in one place.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::pointer::{Pointer, SnapshotRef};
use crate::time::Timestamp;
use crate::{ChainName, Digest, FormatError};

/// What to do with an expired pointer or manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Refuse it (the default: a freeze attack serves old, validly signed data).
    Refuse,
    /// Accept it with a warning (`--allow-expired`).
    Allow,
}

/// Where `snap` stands among the snapshots of its chain: later is newer.
pub fn rank(snap: &SnapshotRef) -> (Timestamp, u64) {
    (snap.created_at, snap.version)
}

fn expired_check(
    what: &str,
    at: Timestamp,
    now: Timestamp,
    policy: Expired,
) -> Result<Option<String>, FormatError> {
    if at >= now {
        return Ok(None);
    }
    match policy {
        Expired::Refuse => Err(FormatError::expired(what, at)),
        Expired::Allow => Ok(Some(format!(
            "{what} expired at {at}; continuing because of --allow-expired"
        ))),
    }
}

/// Refuses `pointer` if it has expired (or, with [`Expired::Allow`],
/// returns a warning to log).
pub fn check_pointer(
    pointer: &Pointer,
    now: Timestamp,
    policy: Expired,
) -> Result<Option<String>, FormatError> {
    let what = format!(
        "pointer of chain {} (sequence {})",
        pointer.chain, pointer.sequence
    );
    expired_check(&what, pointer.expires_at, now, policy)
}

/// Refuses `manifest` unless it is the snapshot `snap` names for `chain`
/// and has not expired (or, with [`Expired::Allow`], returns a warning).
pub fn check_manifest(
    manifest: &Manifest,
    snap: &SnapshotRef,
    chain: &ChainName,
    now: Timestamp,
    policy: Expired,
) -> Result<Option<String>, FormatError> {
    if &manifest.chain.name != chain
        || manifest.version != snap.version
        || manifest.created_at != snap.created_at
    {
        return Err(FormatError::Invalid(format!(
            "manifest {} is for chain {} version {} (created {}), but the pointer promised chain {chain} version {} (created {}); the store is inconsistent or tampered with",
            snap.manifest_key, manifest.chain.name, manifest.version, manifest.created_at, snap.version, snap.created_at
        )));
    }
    let what = format!("snapshot {} of chain {chain}", snap.version);
    expired_check(&what, manifest.expires_at, now, policy)
}

/// What was last restored for one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trusted {
    /// Always `qsync-trust/2`.
    pub format: String,
    /// Chain name.
    pub chain: ChainName,
    /// Signed creation time of the newest snapshot restored.
    pub created_at: Timestamp,
    /// Its version.
    pub version: u64,
    /// Digest of its manifest.
    pub manifest_blake3: Digest,
    /// minisign key id it was signed with (informational).
    pub key_id: String,
    /// When it was restored.
    pub restored_at: Timestamp,
}

/// `format` of a trust record.
pub const TRUST_FORMAT: &str = "qsync-trust/2";

/// The bar a candidate snapshot must clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Floor {
    /// A record in this format.
    Trusted(Trusted),
    /// Only a version, from a record an older qsync wrote per chain and key
    /// (`<chain>.<KEYID>.json`): versions were counted per store then, so
    /// nothing better is known until the next restore writes a full record.
    Legacy {
        /// Highest version in any legacy record of the chain.
        version: u64,
        /// The file it came from.
        path: PathBuf,
    },
}

/// Largest trust record read (real ones are about 300 bytes).
const MAX_RECORD: u64 = 64 << 10;

/// The directory holding trust records.
pub struct TrustStore {
    dir: PathBuf,
}

/// Holds a chain's trust record for one run; released on drop.
#[derive(Debug)]
pub struct TrustLock {
    _file: File,
}

impl TrustStore {
    /// Opens (without creating) the state directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TrustStore { dir: dir.into() }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `$XDG_STATE_HOME/qsync`, else `$HOME/.local/state/qsync`.
    pub fn default_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty());
        xdg.map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .map(|d| d.join("qsync"))
    }

    /// The record of `chain`.
    pub fn file(&self, chain: &ChainName) -> PathBuf {
        self.dir.join(format!("{chain}.json"))
    }

    fn io(&self, what: &str, e: std::io::Error) -> FormatError {
        FormatError::Invalid(format!("{what} in state dir {}: {e}", self.dir.display()))
    }

    /// Takes the chain's trust lock (`<chain>.lock`), waiting while another
    /// run holds it; `waiting` is called once before the wait. Blocking.
    pub fn lock(&self, chain: &ChainName, waiting: impl FnOnce()) -> Result<TrustLock, FormatError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io("creating", e))?;
        let path = self.dir.join(format!("{chain}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.io("opening the lock", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                waiting();
                file.lock().map_err(|e| self.io("locking", e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(self.io("locking", e)),
        }
        Ok(TrustLock { _file: file })
    }

    /// The bar for `chain`, if any restore of it completed here.
    pub fn load(&self, chain: &ChainName) -> Result<Option<Floor>, FormatError> {
        let path = self.file(chain);
        match read_record(&path) {
            Ok(Some(bytes)) => {
                let t: Trusted = serde_json::from_slice(&bytes).map_err(|e| {
                    FormatError::Invalid(format!(
                        "trust state {} is unreadable ({e}); delete it only if you accept any snapshot the stores offer",
                        path.display()
                    ))
                })?;
                if t.format != TRUST_FORMAT || &t.chain != chain {
                    return Err(FormatError::Invalid(format!(
                        "trust state {} is format {:?} of chain {}, not {TRUST_FORMAT:?} of {chain}; delete it only if you accept any snapshot the stores offer",
                        path.display(),
                        t.format,
                        t.chain
                    )));
                }
                return Ok(Some(Floor::Trusted(t)));
            }
            Ok(None) => {}
            Err(e) => return Err(self.io(&format!("reading {}", path.display()), e)),
        }
        Ok(self.legacy(chain))
    }

    /// The highest version in records of older qsync versions
    /// (`<chain>.<KEYID>.json`).
    fn legacy(&self, chain: &ChainName) -> Option<Floor> {
        #[derive(Deserialize)]
        struct Old {
            version: u64,
        }
        let prefix = format!("{chain}.");
        let entries = std::fs::read_dir(&self.dir).ok()?;
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".json"))
                    .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .filter_map(|e| {
                let bytes = read_record(&e.path()).ok()??;
                let old: Old = serde_json::from_slice(&bytes).ok()?;
                Some((old.version, e.path()))
            })
            .max_by_key(|(v, _)| *v)
            .map(|(version, path)| Floor::Legacy { version, path })
    }

    /// Refuses `snap` of `chain` if it is older than what was already
    /// restored here (a stale mirror or a replay).
    pub fn check_rollback(&self, chain: &ChainName, snap: &SnapshotRef) -> Result<(), FormatError> {
        let refuse = |had: String, path: &Path| {
            FormatError::Invalid(format!(
                "rollback refused: the stores offer snapshot {} of chain {chain} created {}, but {had} was already restored here; a mirror is stale or replaying old data. Use another mirror, or remove {} to accept it deliberately",
                snap.version,
                snap.created_at,
                path.display()
            ))
        };
        match self.load(chain)? {
            None => Ok(()),
            Some(Floor::Legacy { version, path }) if snap.version < version => {
                Err(refuse(format!("version {version}"), &path))
            }
            Some(Floor::Legacy { .. }) => Ok(()),
            Some(Floor::Trusted(t)) => {
                let had = (t.created_at, t.version);
                let path = self.file(chain);
                let what = || {
                    format!(
                        "snapshot {} created {} (on {})",
                        t.version, t.created_at, t.restored_at
                    )
                };
                if rank(snap) < had {
                    return Err(refuse(what(), &path));
                }
                if rank(snap) == had && snap.manifest_blake3 != t.manifest_blake3 {
                    return Err(FormatError::Invalid(format!(
                        "snapshot {} of chain {chain} created {} has manifest {}, but a snapshot with the same version and creation time and manifest {} was restored here: two publishers are signing different data under one name. Check the publishers, or remove {} to accept it deliberately",
                        snap.version,
                        snap.created_at,
                        snap.manifest_blake3,
                        t.manifest_blake3,
                        path.display()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Records that `snap` of `chain` (signed by `key_id`) was restored.
    /// Never moves backwards; durable (file and directory synced) on return.
    pub fn advance(&self, chain: &ChainName, snap: &SnapshotRef, key_id: &str) -> Result<(), FormatError> {
        if let Some(Floor::Trusted(t)) = self.load(chain)? {
            if (t.created_at, t.version) > rank(snap) {
                return Ok(());
            }
        }
        let record = Trusted {
            format: TRUST_FORMAT.into(),
            chain: chain.clone(),
            created_at: snap.created_at,
            version: snap.version,
            manifest_blake3: snap.manifest_blake3,
            key_id: key_id.into(),
            restored_at: Timestamp::now(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io("creating", e))?;
        let path = self.file(chain);
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&record).expect("serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| self.io(&format!("writing {}", path.display()), e))
    }
}

/// A record's bytes: `None` when absent; refused when it is not a regular
/// file or is larger than any real record.
fn read_record(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.len() > MAX_RECORD {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of at most {MAX_RECORD} bytes",
            path.display()
        )));
    }
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_RECORD + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectKey;

    fn snap(version: u64, created: u64, tag: &[u8]) -> SnapshotRef {
        let chain = ChainName::new("eth").unwrap();
        let d = Digest::of(tag);
        SnapshotRef {
            version,
            manifest_key: ObjectKey::manifest(&chain, version, &d, false),
            manifest_blake3: d,
            manifest_size: 1,
            created_at: Timestamp(created),
            height: None,
            files: 0,
            bytes: 0,
        }
    }

    #[test]
    fn rollback_is_judged_by_creation_time_across_stores() {
        let d = tempfile::tempdir().unwrap();
        let t = TrustStore::new(d.path());
        let eth = ChainName::new("eth").unwrap();
        t.check_rollback(&eth, &snap(10, 100, b"a")).unwrap();
        // A fresh store's version 2 is newer than a stale store's version 10.
        t.advance(&eth, &snap(2, 200, b"b"), "K").unwrap();
        assert!(t.check_rollback(&eth, &snap(10, 100, b"a")).is_err());
        t.check_rollback(&eth, &snap(3, 300, b"c")).unwrap();
        t.check_rollback(&eth, &snap(2, 200, b"b")).unwrap();
        let e = t
            .check_rollback(&eth, &snap(2, 200, b"x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("two publishers"), "{e}");
        // Never moves backwards.
        t.advance(&eth, &snap(10, 100, b"a"), "K").unwrap();
        assert!(t.check_rollback(&eth, &snap(10, 100, b"a")).is_err());
    }

    #[test]
    fn legacy_records_still_bound_versions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("eth.0123456789ABCDEF.json"),
            br#"{"chain":"eth","key_id":"0123456789ABCDEF","pointer_sequence":9,"version":7,"manifest_blake3":"0000000000000000000000000000000000000000000000000000000000000000","restored_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let t = TrustStore::new(d.path());
        let eth = ChainName::new("eth").unwrap();
        assert!(t.check_rollback(&eth, &snap(6, 500, b"a")).is_err());
        t.check_rollback(&eth, &snap(7, 500, b"a")).unwrap();
    }

    #[test]
    fn a_second_lock_waits() {
        let d = tempfile::tempdir().unwrap();
        let t = TrustStore::new(d.path());
        let eth = ChainName::new("eth").unwrap();
        let held = t.lock(&eth, || panic!("nobody holds it")).unwrap();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = waited.clone();
        let dir = d.path().to_path_buf();
        let other = std::thread::spawn(move || {
            TrustStore::new(dir)
                .lock(&ChainName::new("eth").unwrap(), || {
                    w.store(true, std::sync::atomic::Ordering::SeqCst)
                })
                .map(drop)
        });
        while !waited.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        drop(held);
        other.join().unwrap().unwrap();
    }
}
