//! The upload side of a publish: each store of a run ([`Target`]), the
//! bounded chunk upload stage ([`Uploader`]) and signed writes. Each store
//! of a run is wrapped once in the retry layer (`qsync_store::retry`),
//! which rides out transient store errors. What to upload, and when the
//! manifest and pointer may be written, is [`crate::publish`]'s business.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use qsync_core::chunk;
use qsync_core::progress::Progress;
use qsync_core::sign::SigningKeys;
use qsync_core::{Digest, ObjectKey};
use qsync_store::retry::Retrying;
use qsync_store::{Expect, ObjectSink, PutOptions, StoreError};
use tokio::sync::Semaphore;

use crate::SnapshotError;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) bytes_uploaded: AtomicU64,
    pub(crate) bytes_new: AtomicU64,
    pub(crate) chunks_uploaded: AtomicU64,
}

/// One store of a run.
pub(crate) struct Target {
    pub(crate) sink: Arc<dyn ObjectSink>,
    pub(crate) counters: Counters,
    /// Set when the store failed; it takes no further part in the run.
    pub(crate) failed: Mutex<Option<SnapshotError>>,
}

impl Target {
    /// `sink` as a store of a run, with nothing uploaded yet, wrapped in
    /// the retry layer ([`Retrying`]): a publish that may have run for hours
    /// rides out a store outage of about a minute. (Probes and leases, which
    /// come first, fail fast instead.)
    pub(crate) fn new(sink: Arc<dyn ObjectSink>) -> Target {
        Target {
            sink: Arc::new(Retrying::new(sink)),
            counters: Counters::default(),
            failed: Mutex::new(None),
        }
    }

    pub(crate) fn live(&self) -> bool {
        self.failed.lock().expect("not poisoned").is_none()
    }

    pub(crate) fn fail(&self, e: SnapshotError) {
        tracing::warn!(
            "{}: {e}; this store keeps its previous snapshot",
            self.sink.location()
        );
        self.failed.lock().expect("not poisoned").get_or_insert(e);
    }

    /// Writes `body` at `key` with its signatures (one per signing key).
    /// Every signature goes first, so a reader that sees the body also
    /// finds the signature of whichever key it trusts. With `expect`, the
    /// body is written only if the object is still as expected.
    pub(crate) async fn put_signed(
        &self,
        key: &ObjectKey,
        body: impl Into<Bytes>,
        signer: &SigningKeys,
        expect: Option<&Expect>,
    ) -> Result<(), StoreError> {
        let body: Bytes = body.into();
        let sigs = signer.sign_all(key, &body);
        let n = body.len() as u64 + sigs.iter().map(|(_, s)| s.len() as u64).sum::<u64>();
        futures::future::try_join_all(sigs.into_iter().map(|(sig_key, sig)| async move {
            let sig_opts = PutOptions::for_key(&sig_key);
            self.sink.put(&sig_key, Bytes::from(sig), sig_opts).await
        }))
        .await?;
        let opts = PutOptions::for_key(key);
        match expect {
            Some(expect) => match self.sink.put_if(key, body.clone(), opts, expect).await {
                // Retried (here or in the backend) after a lost answer, the
                // write can meet its own first attempt: not a conflict.
                Err(StoreError::Conflict { .. })
                    if self
                        .sink
                        .get_limited(key, body.len() as u64)
                        .await
                        .is_ok_and(|now| now == body) => {}
                r => r?,
            },
            None => self.sink.put(key, body, opts).await?,
        }
        self.counters.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Shared state of the chunk upload stage.
pub(crate) struct Uploader {
    pub(crate) targets: Vec<Arc<Target>>,
    pub(crate) seen: Mutex<HashSet<Digest>>,
    /// One permit per chunk in flight.
    pub(crate) slots: Arc<Semaphore>,
    /// One permit per MiB (rounded up) of chunk plaintext in flight.
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) budget_mib: u32,
    /// One permit per chunk being compressed: one per core. More would not
    /// compress faster, and each holds a zstd context and its output
    /// buffer beside the plaintext the budget counts.
    pub(crate) encoders: Arc<Semaphore>,
    pub(crate) level: i32,
    pub(crate) progress: Arc<dyn Progress>,
    /// Chunk uploads not yet awaited.
    pub(crate) uploads: Mutex<tokio::task::JoinSet<Result<(), SnapshotError>>>,
}

impl Uploader {
    /// Makes sure chunk `d` is in every live store. Skips chunks this run
    /// already handled and stores that hold the chunk; compresses once for
    /// all stores that lack it. A store that fails is dropped from the run;
    /// only when none is left does the run fail.
    pub(crate) async fn ensure(&self, d: Digest, plain: Vec<u8>) -> Result<(), SnapshotError> {
        let len = plain.len() as u64;
        if !self.seen.lock().expect("not poisoned").insert(d) {
            self.progress.advance(len);
            return Ok(());
        }
        let key = ObjectKey::chunk(&d);
        // Every store at once: a chunk should wait for the slowest store, not for their sum.
        let live: Vec<&Arc<Target>> = self.targets.iter().filter(|t| t.live()).collect();
        let heads = futures::future::join_all(live.iter().map(|t| t.sink.head(&key))).await;
        let mut lacking = Vec::new();
        for (t, head) in live.into_iter().zip(heads) {
            match head {
                Ok(Some(_)) => {}
                Ok(None) => lacking.push(t.clone()),
                Err(e) => t.fail(e.into()),
            }
        }
        if !lacking.is_empty() {
            let level = self.level;
            // The permit goes with the work: a cancelled upload leaves the
            // blocking task running, and it still holds one.
            let encoding = self.encoders.clone().acquire_owned().await.expect("never closed");
            let (_, stored) = tokio::task::spawn_blocking(move || {
                let _encoding = encoding;
                chunk::encode(plain, level)
            })
            .await
            .expect("encoder does not panic");
            let stored = Bytes::from(stored);
            let stored_len = stored.len() as u64;
            let puts = lacking.iter().map(|t| {
                let stored = stored.clone();
                let key = &key;
                async move {
                    match t.sink.put(key, stored.clone(), PutOptions::for_key(key)).await {
                        Ok(()) => {
                            let c = &t.counters;
                            c.bytes_uploaded.fetch_add(stored_len, Ordering::Relaxed);
                            c.bytes_new.fetch_add(len, Ordering::Relaxed);
                            c.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => t.fail(e.into()),
                    }
                }
            });
            futures::future::join_all(puts).await;
        }
        if !self.targets.iter().any(|t| t.live()) {
            return Err(self.targets[0]
                .failed
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or(SnapshotError::Cancelled));
        }
        self.progress.advance(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::sign::keygen;
    use qsync_store::testing::{FaultySink, MemoryStore, WriteFault};
    use qsync_store::ObjectSource;

    /// Publishing order (docs/format.md §8) with two signing keys: a body
    /// is written only once every one of its signatures is stored, so a
    /// reader trusting either key never meets it without its signature.
    #[tokio::test]
    async fn every_signature_is_stored_before_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut secret = Vec::new();
        for name in ["old", "new"] {
            let s = dir.path().join(format!("{name}.sec"));
            keygen(&s, &dir.path().join(format!("{name}.pub"))).unwrap();
            secret.push(s);
        }
        let signer = SigningKeys::load(&secret).unwrap();
        let key = ObjectKey::new("chains/eth/latest.json").unwrap();
        let body = b"{\"v\":1}".to_vec();
        let sigs: Vec<ObjectKey> = signer.sign_all(&key, &body).into_iter().map(|(k, _)| k).collect();
        assert_eq!(sigs.len(), 2);
        for failing in &sigs {
            let memory = Arc::new(MemoryStore::new("order"));
            let sink = Arc::new(FaultySink::new(memory.clone()));
            sink.fail_writes(failing.as_str(), WriteFault::Refused, None);
            let t = Target::new(sink.clone());
            assert!(t.put_signed(&key, body.clone(), &signer, None).await.is_err());
            assert!(
                memory.head(&key).await.unwrap().is_none(),
                "the body was written though {failing} was not"
            );
            sink.heal();
            t.put_signed(&key, body.clone(), &signer, None).await.unwrap();
            for s in &sigs {
                assert!(memory.head(s).await.unwrap().is_some(), "{s} missing");
            }
        }
    }
}
