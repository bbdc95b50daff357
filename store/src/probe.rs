//! Probing a writable store before relying on it: can we list it, write to
//! it, and does it honour conditional writes?
//!
//! Pointer moves and leases are safe only because a conditional write
//! ([`ObjectSink::put_if`]) that finds another version fails. Some
//! S3-compatible servers (older Ceph RGW, moto 4) ignore `If-None-Match` and
//! `If-Match` and answer 200, so two publishers could both "win". The probe
//! creates `probes/<random>.json` on condition that it is absent, then tries
//! the same again (it must conflict) and an overwrite expecting a version
//! that never existed (it must conflict too), and deletes the object.
//! Generic over [`ObjectSink`]: no backend is special-cased. A store only
//! read from gets [`readable`]: reachable, credentials accepted, bucket there.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use qsync_core::{Digest, ObjectKey};

use crate::traits::{Expect, ObjectSink, ObjectSource, PutOptions, StoreError, Version};

/// Checks that `source` can be read, as a reader will read it: fetches the
/// catalog (an absent one is fine, an empty store has none), so an
/// unreachable host, rejected credentials or a missing bucket are named at
/// start instead of on the first client request.
pub async fn readable(source: &dyn ObjectSource) -> Result<(), StoreError> {
    match source.get_limited(&ObjectKey::catalog(), 1 << 20).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a store failed the probe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A conditional write that must fail succeeded.
    #[error("{location} does not honour If-None-Match/If-Match ({what}): two publishers could both win; use a server that does, or pass --lease-only (lease-only = true in the agent configuration) to rely on leases alone")]
    NotHonoured {
        /// The store.
        location: String,
        /// Which condition was ignored.
        what: &'static str,
    },
    /// The store failed (credentials, bucket, permission, network).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A fresh probe key: `probes/<16 hex>.json`, unique per process and call.
fn probe_key() -> ObjectKey {
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}:{}:{}",
        std::time::SystemTime::now(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    ObjectKey::probe(&Digest::of(seed.as_bytes()).to_hex()[..16]).expect("hex is a valid probe tag")
}

/// Checks that `sink` honours conditional writes, leaving nothing behind.
/// A store error (no write permission, say) is returned as it is.
///
/// It reads before it writes: listing `probes/` names a missing bucket or
/// rejected credentials without creating anything, where some servers
/// (s3s-fs) would create a missing bucket on the first PUT and let a
/// publish to a mistyped bucket succeed.
pub async fn conditional_writes(sink: &dyn ObjectSink) -> Result<(), ProbeError> {
    sink.list(&ObjectKey::new("probes").expect("valid key")).await?;
    let key = probe_key();
    let opts = PutOptions::for_key(&key);
    let body = |n: u8| Bytes::from(format!("{{\"qsync_probe\":{n}}}"));
    match sink.put_if(&key, body(1), opts, &Expect::Absent).await {
        // The key is fresh: a conflict is our own first attempt, retried
        // after its answer was lost.
        Err(StoreError::Conflict { .. }) if sink.get_limited(&key, 64).await.is_ok_and(|b| b == body(1)) => {}
        r => r?,
    }
    let not_honoured = |what| ProbeError::NotHonoured {
        location: sink.location(),
        what,
    };
    let verdict = async {
        match sink.put_if(&key, body(2), opts, &Expect::Absent).await {
            Ok(()) => return Err(not_honoured("a second create with If-None-Match: * succeeded")),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let never = Expect::Version(Version(format!(
            "\"{}\"",
            Digest::of(b"no such version").to_hex()
        )));
        match sink.put_if(&key, body(3), opts, &never).await {
            Ok(()) => Err(not_honoured(
                "an overwrite with If-Match of a version that never existed succeeded",
            )),
            Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    let deleted = sink.delete(&key).await;
    verdict?;
    deleted?;
    Ok(())
}

/// What a publish relies on to keep two publishers from both winning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteSafety {
    /// Conditional writes (`If-None-Match`/`If-Match`) and leases: a store
    /// that ignores conditions is refused.
    Conditional,
    /// Leases alone (`--lease-only`, `lease-only = true`): a store that
    /// ignores conditions is a warning; one publisher per chain and store.
    LeaseOnly,
}

impl WriteSafety {
    /// [`WriteSafety::LeaseOnly`] when `lease_only` (the flag) is set.
    pub fn from_lease_only(lease_only: bool) -> Self {
        if lease_only {
            WriteSafety::LeaseOnly
        } else {
            WriteSafety::Conditional
        }
    }
}

/// [`conditional_writes`] for a publish: fails unless the store honours
/// them, or `safety` says the operator accepts leases alone (then a store
/// that ignores them is only a warning).
pub async fn require_conditional_writes(
    sink: &dyn ObjectSink,
    safety: WriteSafety,
) -> Result<(), ProbeError> {
    match conditional_writes(sink).await {
        Err(ProbeError::NotHonoured { location, what }) if safety == WriteSafety::LeaseOnly => {
            tracing::warn!(
                "{location} does not honour conditional writes ({what}); publishing with lease-only safety: run one publisher per chain and store"
            );
            Ok(())
        }
        r => r,
    }
}

/// One line of [`check`]: what was checked and how it went.
#[derive(Debug)]
pub struct Checked {
    /// What was checked.
    pub what: &'static str,
    /// `Ok` with a note, or why it failed.
    pub result: Result<String, String>,
}

/// Contacts `sink` as a publisher will: lists it (credentials, bucket, read
/// permission), then writes, conditionally rewrites and deletes a probe
/// object (write permission, conditional writes). Stops at the first failed
/// step; [`WriteSafety::LeaseOnly`] turns ignored conditional writes into
/// a note.
pub async fn check(sink: &dyn ObjectSink, safety: WriteSafety) -> Vec<Checked> {
    let mut out = Vec::new();
    let listed = sink
        .list(&ObjectKey::new("chains").expect("valid key"))
        .await
        .map(|l| format!("{} objects under chains/", l.len()))
        .map_err(|e| e.to_string());
    let ok = listed.is_ok();
    out.push(Checked {
        what: "credentials and bucket (list)",
        result: listed,
    });
    if !ok {
        return out;
    }
    match conditional_writes(sink).await {
        Ok(()) => {
            out.push(Checked {
                what: "write permission (create and delete a probe object)",
                result: Ok("ok".into()),
            });
            out.push(Checked {
                what: "conditional writes (If-None-Match/If-Match)",
                result: Ok("honoured".into()),
            });
        }
        Err(ProbeError::Store(e)) => out.push(Checked {
            what: "write permission (create and delete a probe object)",
            result: Err(e.to_string()),
        }),
        Err(e @ ProbeError::NotHonoured { .. }) => {
            out.push(Checked {
                what: "write permission (create and delete a probe object)",
                result: Ok("ok".into()),
            });
            out.push(Checked {
                what: "conditional writes (If-None-Match/If-Match)",
                result: if safety == WriteSafety::LeaseOnly {
                    Ok("NOT honoured; accepted because lease-only = true".into())
                } else {
                    Err(e.to_string())
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalStore;
    use crate::traits::{Listed, ObjectMeta, ObjectSource};
    use async_trait::async_trait;

    /// A store that ignores every condition, as some S3 servers do.
    struct Careless(LocalStore);

    #[async_trait]
    impl ObjectSource for Careless {
        fn location(&self) -> String {
            self.0.location()
        }

        fn id(&self) -> crate::StoreId {
            self.0.id()
        }
        async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
            self.0.get(key).await
        }
        async fn get_range(&self, key: &ObjectKey, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
            self.0.get_range(key, range).await
        }
        async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
            self.0.head(key).await
        }
    }

    #[async_trait]
    impl ObjectSink for Careless {
        async fn put(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError> {
            self.0.put(key, body, opts).await
        }
        async fn get_versioned(
            &self,
            key: &ObjectKey,
            limit: u64,
        ) -> Result<Option<(Bytes, Version)>, StoreError> {
            self.0.get_versioned(key, limit).await
        }
        async fn put_if(
            &self,
            key: &ObjectKey,
            body: Bytes,
            opts: PutOptions,
            _: &Expect,
        ) -> Result<(), StoreError> {
            self.0.put(key, body, opts).await
        }
        async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
        async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
            self.0.list(dir).await
        }
    }

    #[tokio::test]
    async fn readable_names_what_cannot_be_read() {
        let d = tempfile::tempdir().unwrap();
        readable(&LocalStore::new(d.path())).await.unwrap();
        let store = crate::testing::MemoryStore::new("upstream");
        readable(&store).await.unwrap();
        let broken = crate::testing::Faulty::new(std::sync::Arc::new(store));
        broken.set(None, crate::testing::Fault::Error);
        let e = readable(&broken).await.unwrap_err();
        assert!(e.to_string().contains("upstream"), "{e}");
    }

    #[tokio::test]
    async fn honoured_ignored_and_lease_only() {
        let d = tempfile::tempdir().unwrap();
        let good = LocalStore::new(d.path());
        conditional_writes(&good).await.unwrap();
        let bad = Careless(LocalStore::new(d.path()));
        let e = conditional_writes(&bad).await.unwrap_err();
        assert!(
            e.to_string().contains("does not honour If-None-Match/If-Match"),
            "{e}"
        );
        require_conditional_writes(&bad, WriteSafety::LeaseOnly)
            .await
            .unwrap();
        assert!(require_conditional_writes(&bad, WriteSafety::Conditional)
            .await
            .is_err());
        let lines = check(&bad, WriteSafety::Conditional).await;
        assert!(lines.last().unwrap().result.is_err(), "{lines:?}");
        assert!(check(&good, WriteSafety::Conditional)
            .await
            .iter()
            .all(|c| c.result.is_ok()));
        // Nothing is left behind.
        assert!(good
            .list(&ObjectKey::new("probes").unwrap())
            .await
            .unwrap()
            .is_empty());
    }
}
