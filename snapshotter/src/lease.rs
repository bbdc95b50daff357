//! Leases in a store: one agent per store and chain at a time, and garbage
//! collection that never runs while a publish does.
//!
//! A lease is a small unsigned object (`locks/<chain>.json`, `locks/gc.json`)
//! naming its holder and an expiry. It is taken and renewed with conditional
//! writes, so of two contenders one wins; a holder that crashes stops
//! renewing and its lease lapses after [`TTL`], so the lock survives
//! crashes without an operator; a rerun on the same host takes over at once
//! the lease of a holder process that no longer exists. Publishers and GC take their own lease
//! first and only then look for the other's (see [`crate::gc`]): whichever
//! looks second sees the first, so a collection never deletes a chunk a
//! running publish has found in the store and is about to reference.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qsync_cdn::{Expect, ObjectSink, PutOptions, StoreError};
use qsync_core::time::Timestamp;
use qsync_core::ObjectKey;
use serde::{Deserialize, Serialize};

/// How long a lease lasts without renewal (renewed every third of it).
pub const TTL: Duration = Duration::from_secs(3 * 60);

/// The body of a lease object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseBody {
    /// Who holds it: host, process and a random tag.
    pub holder: String,
    /// What for.
    pub purpose: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// Why a lease was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds it.
    #[error("{key} in {location} is held by {holder} ({purpose}) until {expires_at}; another agent is working on this store. Stop it, or wait for the lease to lapse if it crashed")]
    Held {
        /// Store.
        location: String,
        /// Lease key.
        key: String,
        /// Holder.
        holder: String,
        /// Its purpose.
        purpose: String,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LeaseError {
    fn held(sink: &dyn ObjectSink, key: &ObjectKey, by: LeaseBody) -> LeaseError {
        LeaseError::Held {
            location: sink.location(),
            key: key.to_string(),
            holder: by.holder,
            purpose: by.purpose,
            expires_at: by.expires_at,
        }
    }
}

/// A lease this process holds; renewed in the background until released.
pub struct Lease {
    sink: Arc<dyn ObjectSink>,
    key: ObjectKey,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn holder_id() -> String {
    format!("{}:{}:{:08x}", hostname(), std::process::id(), fastrand::u32(..))
}

/// Whether `holder` names a process on this host that no longer runs: a
/// publisher killed here (SIGKILL, OOM, power loss) whose rerun need not
/// wait for its lease to lapse.
fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok_and(|p| p != std::process::id())
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads the lease at `key`: its body (`None` when absent or unreadable,
/// which counts as free) and its version.
async fn read(sink: &dyn ObjectSink, key: &ObjectKey) -> Result<(Option<LeaseBody>, Expect), StoreError> {
    Ok(match sink.get_versioned(key, 64 << 10).await? {
        None => (None, Expect::Absent),
        Some((bytes, version)) => (serde_json::from_slice(&bytes).ok(), Expect::Version(version)),
    })
}

/// The lease at `key`, if one is there and has not expired.
pub async fn live(sink: &dyn ObjectSink, key: &ObjectKey) -> Result<Option<LeaseBody>, StoreError> {
    let (body, _) = read(sink, key).await?;
    Ok(body.filter(|b| b.expires_at > Timestamp::now()))
}

impl Lease {
    /// Takes the lease at `key` for `purpose`, unless someone else holds a
    /// live one.
    pub async fn acquire(
        sink: Arc<dyn ObjectSink>,
        key: ObjectKey,
        purpose: &str,
    ) -> Result<Lease, LeaseError> {
        let holder = holder_id();
        let body = |purpose: &str, holder: &str| LeaseBody {
            holder: holder.into(),
            purpose: purpose.into(),
            expires_at: Timestamp::now().plus(TTL),
        };
        let (current, expect) = read(sink.as_ref(), &key).await?;
        if let Some(c) =
            current.filter(|c| c.expires_at > Timestamp::now() && !holder_is_dead_here(&c.holder))
        {
            return Err(LeaseError::held(sink.as_ref(), &key, c));
        }
        let mine = body(purpose, &holder);
        let bytes = Bytes::from(serde_json::to_vec(&mine).expect("serialisable"));
        match sink.put_if(&key, bytes, PutOptions::for_key(&key), &expect).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                // Someone took it between our read and write.
                let (now, _) = read(sink.as_ref(), &key).await?;
                return Err(LeaseError::held(sink.as_ref(), &key, now.unwrap_or(mine)));
            }
            Err(e) => return Err(e.into()),
        }
        let renew = {
            let (sink, key, holder, purpose) =
                (sink.clone(), key.clone(), holder.clone(), purpose.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TTL / 3).await;
                    match read(sink.as_ref(), &key).await {
                        Ok((Some(c), expect)) if c.holder == holder => {
                            let bytes = Bytes::from(
                                serde_json::to_vec(&body(&purpose, &holder)).expect("serialisable"),
                            );
                            if let Err(e) = sink.put_if(&key, bytes, PutOptions::for_key(&key), &expect).await
                            {
                                tracing::warn!("renewing the lease {key}: {e}");
                            }
                        }
                        Ok(_) => {
                            tracing::error!(
                                "the lease {key} in {} was taken over; another agent may be running",
                                sink.location()
                            );
                            return;
                        }
                        Err(e) => tracing::warn!("renewing the lease {key}: {e}"),
                    }
                }
            })
        };
        Ok(Lease {
            sink,
            key,
            holder,
            renew,
        })
    }

    /// Stops renewing and removes the lease (if it is still ours).
    pub async fn release(self) {
        self.renew.abort();
        if let Ok((Some(c), _)) = read(self.sink.as_ref(), &self.key).await {
            if c.holder == self.holder {
                if let Err(e) = self.sink.delete(&self.key).await {
                    tracing::warn!("releasing the lease {}: {e}; it lapses in {TTL:?}", self.key);
                }
            }
        }
    }
}

/// Takes `chain`'s lease in `sink` for a publish, then waits (up to
/// [`TTL`]) while a garbage collection holds the store.
pub async fn acquire_for_publish(
    sink: Arc<dyn ObjectSink>,
    chain: &qsync_core::ChainName,
) -> Result<Lease, LeaseError> {
    let key = ObjectKey::lock(chain.as_str()).expect("chain names are valid key segments");
    let lease = Lease::acquire(sink.clone(), key, &format!("publish {chain}")).await?;
    let gc = ObjectKey::lock("gc").expect("valid key");
    let waited = std::time::Instant::now();
    loop {
        match live(sink.as_ref(), &gc).await {
            Ok(None) => return Ok(lease),
            Ok(Some(b)) if waited.elapsed() >= TTL => {
                lease.release().await;
                return Err(LeaseError::held(sink.as_ref(), &gc, b));
            }
            Ok(Some(b)) => {
                tracing::info!(
                    "waiting for a garbage collection in {} ({})",
                    sink.location(),
                    b.holder
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                lease.release().await;
                return Err(e.into());
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_cdn::local::LocalStore;

    #[tokio::test]
    async fn one_holder_at_a_time_and_lapsed_leases_are_taken() {
        let d = tempfile::tempdir().unwrap();
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(d.path()));
        let key = ObjectKey::lock("eth").unwrap();
        let a = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap();
        let e = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("held by"), "{e}");
        a.release().await;
        let b = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap();
        // A crashed holder: its lease is left behind, expired.
        drop(b);
        let stale = LeaseBody {
            holder: "gone:1:0".into(),
            purpose: "publish eth".into(),
            expires_at: Timestamp(Timestamp::now().0 - 1),
        };
        sink.put(
            &key,
            Bytes::from(serde_json::to_vec(&stale).unwrap()),
            PutOptions::for_key(&key),
        )
        .await
        .unwrap();
        assert!(live(sink.as_ref(), &key).await.unwrap().is_none());
        Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap()
            .release()
            .await;
        // Killed on this host: its process is gone, so the lease is taken at once.
        let dead = LeaseBody {
            holder: format!("{}:{}:0", hostname(), u32::MAX - 1),
            purpose: "publish eth".into(),
            expires_at: Timestamp::now().plus(TTL),
        };
        sink.put(
            &key,
            Bytes::from(serde_json::to_vec(&dead).unwrap()),
            PutOptions::for_key(&key),
        )
        .await
        .unwrap();
        Lease::acquire(sink, key, "publish eth")
            .await
            .unwrap()
            .release()
            .await;
    }
}
