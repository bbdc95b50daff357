//! Trust state: what a fetcher has already accepted, per chain and key.
//!
//! Kept outside any destination (default `$XDG_STATE_HOME/qsync`), one small
//! JSON file per chain and key id. It only moves forward, and only after a
//! restore completes, so a replayed older pointer (rollback) is refused, and a
//! failed restore never raises the bar. Freshness (`expires_at`) is checked
//! here too, so all acceptance rules live in one place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pointer::Pointer;
use crate::sign::VerifyingKey;
use crate::time::Timestamp;
use crate::{ChainName, Digest, FormatError};

/// What was last accepted for one chain under one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// Chain name.
    pub chain: ChainName,
    /// minisign key id.
    pub key_id: String,
    /// Highest pointer sequence accepted.
    pub pointer_sequence: u64,
    /// Highest snapshot version restored.
    pub version: u64,
    /// Digest of that snapshot's manifest.
    pub manifest_blake3: Digest,
    /// When it was restored.
    pub restored_at: Timestamp,
}

/// The directory holding trust records.
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// Opens (without creating) the state directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TrustStore { dir: dir.into() }
    }

    /// `$XDG_STATE_HOME/qsync`, else `$HOME/.local/state/qsync`.
    pub fn default_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty());
        xdg.map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .map(|d| d.join("qsync"))
    }

    fn file(&self, chain: &ChainName, key: &VerifyingKey) -> PathBuf {
        self.dir.join(format!("{chain}.{}.json", key.id()))
    }

    /// The record for `chain` under `key`, if any.
    pub fn load(&self, chain: &ChainName, key: &VerifyingKey) -> Result<Option<Trusted>, FormatError> {
        let path = self.file(chain, key);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                FormatError::Invalid(format!(
                    "trust state {} is unreadable ({e}); delete it only if you accept any version the store offers",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FormatError::Invalid(format!("reading trust state {}: {e}", path.display()))),
        }
    }

    /// Refuses `pointer` if it is expired (unless `allow_expired`) or older
    /// than what was accepted before. Returns warnings to log.
    pub fn check(
        &self,
        pointer: &Pointer,
        key: &VerifyingKey,
        now: Timestamp,
        allow_expired: bool,
    ) -> Result<Vec<String>, FormatError> {
        let mut warnings = Vec::new();
        let what = format!(
            "pointer of chain {} (sequence {})",
            pointer.chain, pointer.sequence
        );
        if pointer.expires_at < now {
            if !allow_expired {
                return Err(FormatError::expired(&what, pointer.expires_at));
            }
            warnings.push(format!(
                "{what} expired at {}; continuing because of --allow-expired",
                pointer.expires_at
            ));
        }
        if let Some(t) = self.load(&pointer.chain, key)? {
            if pointer.current.version < t.version || pointer.sequence < t.pointer_sequence {
                return Err(FormatError::Invalid(format!(
                    "rollback refused: the store offers {what} naming version {}, but version {} (pointer sequence {}) was already restored here on {}; a mirror is stale or replaying old data. Use another mirror, or remove {} to accept it deliberately",
                    pointer.current.version, t.version, t.pointer_sequence, t.restored_at,
                    self.file(&pointer.chain, key).display()
                )));
            }
        }
        Ok(warnings)
    }

    /// Records that `pointer`'s snapshot was restored. Never moves backwards.
    pub fn advance(&self, pointer: &Pointer, key: &VerifyingKey) -> Result<(), FormatError> {
        let io = |e: std::io::Error| {
            FormatError::Invalid(format!("writing trust state in {}: {e}", self.dir.display()))
        };
        let old = self.load(&pointer.chain, key)?;
        let record = Trusted {
            chain: pointer.chain.clone(),
            key_id: key.id(),
            pointer_sequence: old
                .as_ref()
                .map_or(0, |t| t.pointer_sequence)
                .max(pointer.sequence),
            version: old.as_ref().map_or(0, |t| t.version).max(pointer.current.version),
            manifest_blake3: pointer.current.manifest_blake3,
            restored_at: Timestamp::now(),
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let path = self.file(&pointer.chain, key);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&record).expect("serialises")).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
