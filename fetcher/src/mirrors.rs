//! The `--from` stores of one run, read as one: signed objects may come from
//! any of them (the signature decides), chunks from whichever delivers.
//!
//! A transient failure is retried with backoff on the same mirror; anything
//! else, including a chunk whose bytes do not match its digest, moves on to
//! the next mirror. Chunk requests start at a different mirror each time to
//! spread load. Adaptive mirror ranking is future work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qsync_cdn::signed::get_signed;
use qsync_cdn::{ObjectSource, StoreError};
use qsync_core::manifest::{ChunkRef, Manifest};
use qsync_core::pointer::{Pointer, SnapshotRef};
use qsync_core::sign::VerifyingKey;
use qsync_core::{chunk, ChainName, Digest, FormatError, ObjectKey};

use crate::RestoreError;

/// Attempts per mirror for retryable failures.
const ATTEMPTS: u32 = 3;

/// One or more stores holding the same chain.
pub struct Mirrors {
    sources: Vec<Arc<dyn ObjectSource>>,
    next: AtomicUsize,
}

impl Mirrors {
    /// The mirrors, in preference order. Panics on an empty list.
    pub fn new(sources: Vec<Arc<dyn ObjectSource>>) -> Self {
        assert!(!sources.is_empty(), "at least one mirror");
        Mirrors {
            sources,
            next: AtomicUsize::new(0),
        }
    }

    /// The first mirror (for single-store commands).
    pub fn primary(&self) -> &dyn ObjectSource {
        self.sources[0].as_ref()
    }

    /// Logs a mirror failure. With one mirror the error itself reaches the
    /// operator, so the log line would only repeat it.
    fn note(&self, mirror: &dyn ObjectSource, what: std::fmt::Arguments<'_>) {
        if self.sources.len() > 1 {
            tracing::warn!(mirror = %mirror.location(), "{what}");
        } else {
            tracing::debug!(mirror = %mirror.location(), "{what}");
        }
    }

    fn locations(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.location())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The newest validly signed pointer of `chain` on any mirror.
    pub async fn pointer(&self, chain: &ChainName, vk: &VerifyingKey) -> Result<Pointer, RestoreError> {
        let key = ObjectKey::pointer(chain);
        let mut best: Option<Pointer> = None;
        let mut last_err = None;
        for s in &self.sources {
            match get_signed(s.as_ref(), &key, vk).await {
                Ok(Some(bytes)) => {
                    let p = Pointer::decode(&bytes, &format!("{key} in {}", s.location()))?;
                    if &p.chain != chain {
                        return Err(FormatError::Invalid(format!(
                            "{key} in {} names chain {}, not {chain}; the store is mislabelled",
                            s.location(),
                            p.chain
                        ))
                        .into());
                    }
                    let newer = best
                        .as_ref()
                        .is_none_or(|b| (p.current.version, p.sequence) > (b.current.version, b.sequence));
                    if newer {
                        best = Some(p);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.note(s.as_ref(), format_args!("pointer unusable: {e}"));
                    last_err = Some(e);
                }
            }
        }
        match (best, last_err) {
            (Some(p), _) => Ok(p),
            (None, Some(e)) => Err(e.into()),
            (None, None) => Err(RestoreError::NoSnapshot {
                chain: chain.to_string(),
                locations: self.locations(),
            }),
        }
    }

    /// The manifest `snap` names, verified (signature and digest) and parsed.
    pub async fn manifest(&self, snap: &SnapshotRef, vk: &VerifyingKey) -> Result<Manifest, RestoreError> {
        let key = &snap.manifest_key;
        let mut last: Option<RestoreError> = None;
        for s in &self.sources {
            let what = format!("{key} in {}", s.location());
            let attempt = async {
                let bytes = get_signed(s.as_ref(), key, vk)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        location: s.location(),
                        key: key.to_string(),
                    })?;
                let actual = Digest::of(&bytes);
                if actual != snap.manifest_blake3 {
                    return Err(FormatError::DigestMismatch {
                        what: what.clone(),
                        expected: snap.manifest_blake3,
                        actual,
                    }
                    .into());
                }
                let m = tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &what))
                    .await
                    .expect("decode does not panic")?;
                Ok::<_, RestoreError>(m)
            };
            match attempt.await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.note(s.as_ref(), format_args!("manifest unusable: {e}"));
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one mirror"))
    }

    /// The plaintext of chunk `c`, verified, from the first mirror that has a good copy.
    pub async fn chunk(&self, c: &ChunkRef) -> Result<Vec<u8>, RestoreError> {
        let key = ObjectKey::chunk(&c.blake3);
        let n = self.sources.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<RestoreError> = None;
        for i in 0..n {
            let s = &self.sources[(start + i) % n];
            match fetch_with_retry(s.as_ref(), &key).await {
                Ok(stored) => {
                    let (size, d) = (c.size, c.blake3);
                    let decoded =
                        tokio::task::spawn_blocking(move || chunk::decode(Vec::from(stored), size, &d))
                            .await
                            .expect("decode does not panic");
                    match decoded {
                        Ok(plain) => return Ok(plain),
                        Err(e) => {
                            self.note(s.as_ref(), format_args!("bad copy of {key}: {e}"));
                            last = Some(e.into());
                        }
                    }
                }
                Err(e) => {
                    self.note(s.as_ref(), format_args!("cannot fetch {key}: {e}"));
                    last = Some(e.into());
                }
            }
        }
        Err(last.expect("at least one mirror"))
    }
}

async fn fetch_with_retry(s: &dyn ObjectSource, key: &ObjectKey) -> Result<bytes::Bytes, StoreError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match s.get(key).await {
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::debug!("retrying {key} in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            other => return other,
        }
    }
}
