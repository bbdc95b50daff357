//! Leases in a store: one agent per store and chain at a time, and garbage
//! collection that never runs while a publish does.
//!
//! A lease is a small unsigned object (`locks/publish/<chain>.json`,
//! `locks/gc.json`: separate directories, so no chain name is the GC lease)
//! naming its holder and an expiry. It is taken and renewed with conditional
//! writes, so of two contenders one wins; a holder that crashes stops
//! renewing and its lease lapses after [`TTL`], so the lock survives
//! crashes without an operator. A rerun on the same machine takes over at
//! once the lease of a holder process that no longer runs: the same machine
//! means the same boot id and pid namespace, never just the same hostname,
//! and "no longer runs" means no process with that pid and start time
//! (see [`qsync_core::lease`]); and a long-running agent takes back at
//! once a lease it left itself in an earlier cycle whose release failed
//! (the store was away), instead of waiting it out. Publishers and GC take their own lease
//! first and only then look for the other's (see [`crate::gc`]): whichever
//! looks second sees the first, so a collection never deletes a chunk a
//! running publish has found in the store and is about to reference.
//!
//! A publisher checks, just before it moves a pointer, that the lease is
//! still its own and live ([`check_held`]): one whose renewals failed, or
//! whose lease another agent took, stops without touching the pointer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use qsync_core::lease::{stat_start_time, Machine, MAX_BYTES};
use qsync_core::time::Timestamp;
use qsync_core::{ChainName, ObjectKey};
use qsync_store::{Expect, ObjectSink, PutOptions, StoreError, StoreId};

pub use qsync_core::lease::LeaseBody;

/// How long a lease lasts without renewal (renewed every third of it).
pub const TTL: Duration = Duration::from_secs(3 * 60);

/// Why a lease was not taken, or is no longer held.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The lease this run took is no longer its own (taken over, deleted or
    /// lapsed), or was never taken: the pointer must not move.
    #[error("the lease {key} in {location} is no longer held by this run ({now}); the pointer was not moved. Another agent may be publishing this chain to this store: make sure only one runs, then run again")]
    Lost {
        /// Store.
        location: String,
        /// Lease key.
        key: String,
        /// What the store holds instead.
        now: String,
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

/// The leases this process holds, by (store, lease key): what
/// [`check_held`] compares the store's lease with.
static HELD: Mutex<Option<HashMap<(StoreId, ObjectKey), String>>> = Mutex::new(None);

fn held_map<T>(f: impl FnOnce(&mut HashMap<(StoreId, ObjectKey), String>) -> T) -> T {
    f(HELD
        .lock()
        .expect("not poisoned")
        .get_or_insert_with(HashMap::new))
}

/// Holders whose lease write this process has in flight: written (or
/// about to be) but not yet in [`HELD`]. Without them, a second task of
/// this process could read the first's fresh lease in that window, find no
/// live `Lease` for it, and take it over.
static WRITING: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `holder` in [`WRITING`] while this lives.
struct Writing(String);

impl Writing {
    fn new(holder: &str) -> Writing {
        WRITING.lock().expect("not poisoned").push(holder.into());
        Writing(holder.into())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.lock().expect("not poisoned").retain(|h| *h != self.0);
    }
}

/// Whether a [`Lease`] alive in this process is `holder`, or one whose
/// write is in flight. A lease that names this very process but neither
/// was left by an earlier attempt of ours whose release failed (the store
/// was away): ours to take over, not another agent's to wait out.
fn held_here(holder: &str) -> bool {
    WRITING.lock().expect("not poisoned").iter().any(|h| h == holder)
        || held_map(|m| m.values().any(|h| h == holder))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn holder_id() -> String {
    format!("{}:{}:{:08x}", hostname(), std::process::id(), fastrand::u32(..))
}

/// The start time of the process now running as `pid`, if one does.
fn start_time_of(pid: u32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This process as a lease records it; `None` where `/proc` does not tell
/// (then our leases are only taken over once they lapse, and we take over
/// no live lease early).
fn this_machine() -> Option<Machine> {
    let pid = std::process::id();
    Some(Machine {
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()?
            .trim()
            .to_string(),
        pid_ns: std::fs::read_link("/proc/self/ns/pid")
            .ok()?
            .to_string_lossy()
            .into_owned(),
        pid,
        start_time: start_time_of(pid)?,
    })
}

/// Reads the lease at `key`: its body (`None` when absent or unreadable,
/// which counts as free) and its version.
async fn read(sink: &dyn ObjectSink, key: &ObjectKey) -> Result<(Option<LeaseBody>, Expect), StoreError> {
    Ok(match sink.get_versioned(key, MAX_BYTES).await? {
        None => (None, Expect::Absent),
        Some((bytes, version)) => (LeaseBody::parse(&bytes), Expect::Version(version)),
    })
}

/// The lease at `key`, if one is there and has not expired.
pub async fn live(sink: &dyn ObjectSink, key: &ObjectKey) -> Result<Option<LeaseBody>, StoreError> {
    let (body, _) = read(sink, key).await?;
    Ok(body.filter(|b| b.is_live(Timestamp::now())))
}

/// Fails unless this process holds `chain`'s publish lease in `sink`: the
/// lease object there names this run's holder and has not lapsed. Called
/// just before a pointer moves.
pub async fn check_held(sink: &dyn ObjectSink, chain: &ChainName) -> Result<(), LeaseError> {
    let key = ObjectKey::publish_lock(chain);
    let lost = |now: String| LeaseError::Lost {
        location: sink.location(),
        key: key.to_string(),
        now,
    };
    let Some(ours) = held_map(|m| m.get(&(sink.id(), key.clone())).cloned()) else {
        return Err(lost("this run never took it".into()));
    };
    match read(sink, &key).await? {
        (Some(b), _) if b.holder == ours && b.is_live(Timestamp::now()) => Ok(()),
        (Some(b), _) if b.holder == ours => {
            Err(lost(format!("it lapsed at {}: renewing it failed", b.expires_at)))
        }
        (Some(b), _) => Err(lost(format!(
            "now held by {} ({}) until {}",
            b.holder, b.purpose, b.expires_at
        ))),
        (None, Expect::Absent) => Err(lost("it was deleted".into())),
        (None, _) => Err(lost("it was overwritten with something unreadable".into())),
    }
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
        let machine = this_machine();
        let body = {
            let machine = machine.clone();
            move |purpose: &str, holder: &str| LeaseBody {
                holder: holder.into(),
                purpose: purpose.into(),
                expires_at: Timestamp::now().plus(TTL),
                machine: machine.clone(),
            }
        };
        let (current, expect) = read(sink.as_ref(), &key).await?;
        let abandoned = |c: &LeaseBody| {
            machine.as_ref().is_some_and(|me| {
                c.abandoned_for(me, start_time_of)
                    || (c.machine.as_ref() == Some(me) && !held_here(&c.holder))
            })
        };
        if let Some(c) = current.filter(|c| c.is_live(Timestamp::now()) && !abandoned(c)) {
            return Err(LeaseError::held(sink.as_ref(), &key, c));
        }
        let mine = body(purpose, &holder);
        let bytes = Bytes::from(serde_json::to_vec(&mine).expect("serialisable"));
        let _writing = Writing::new(&holder);
        match sink.put_if(&key, bytes, PutOptions::for_key(&key), &expect).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                // Someone took it between our read and write.
                let (now, _) = read(sink.as_ref(), &key).await?;
                return Err(LeaseError::held(sink.as_ref(), &key, now.unwrap_or(mine)));
            }
            Err(e) => return Err(e.into()),
        }
        held_map(|m| m.insert((sink.id(), key.clone()), holder.clone()));
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

    /// Forgets this lease in the process's record of held leases.
    fn forget(&self) {
        held_map(|m| {
            let k = (self.sink.id(), self.key.clone());
            if m.get(&k) == Some(&self.holder) {
                m.remove(&k);
            }
        });
    }

    /// Stops renewing and removes the lease (if it is still ours).
    pub async fn release(self) {
        self.renew.abort();
        self.forget();
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
    let key = ObjectKey::publish_lock(chain);
    let lease = Lease::acquire(sink.clone(), key, &format!("publish {chain}")).await?;
    let gc = ObjectKey::gc_lock();
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
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_store::local::LocalStore;

    async fn put_lease(sink: &Arc<dyn ObjectSink>, key: &ObjectKey, body: &LeaseBody) {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
        sink.put(key, bytes, PutOptions::for_key(key)).await.unwrap();
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_lapsed_leases_are_taken() {
        let d = tempfile::tempdir().unwrap();
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(d.path()));
        let key = ObjectKey::publish_lock(&ChainName::new("eth").unwrap());
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
            machine: None,
        };
        put_lease(&sink, &key, &stale).await;
        assert!(live(sink.as_ref(), &key).await.unwrap().is_none());
        Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap()
            .release()
            .await;
        // Killed on this machine: its process is gone, so the lease is taken at once.
        let me = this_machine().expect("/proc tells who we are");
        let dead = LeaseBody {
            holder: format!("{}:{}:0", hostname(), u32::MAX - 1),
            purpose: "publish eth".into(),
            expires_at: Timestamp::now().plus(TTL),
            machine: Some(Machine {
                pid: u32::MAX - 1,
                ..me.clone()
            }),
        };
        put_lease(&sink, &key, &dead).await;
        Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap()
            .release()
            .await;
        // Left by this very process, whose release failed while the store
        // was away: no live `Lease` here holds it, so it is taken at once.
        let left = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap();
        drop(left);
        assert!(live(sink.as_ref(), &key).await.unwrap().is_some());
        let again = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap();
        // While that one is alive, this process's lease is held.
        let e = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LeaseError::Held { .. }), "{e}");
        again.release().await;
        // One whose write another task of this process has in flight (not
        // yet recorded as held) is held too, not taken over.
        let racing = LeaseBody {
            holder: "ours-in-flight".into(),
            purpose: "gc".into(),
            expires_at: Timestamp::now().plus(TTL),
            machine: Some(me.clone()),
        };
        put_lease(&sink, &key, &racing).await;
        let writing = Writing::new("ours-in-flight");
        let e = Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LeaseError::Held { .. }), "{e}");
        drop(writing);
        Lease::acquire(sink.clone(), key.clone(), "publish eth")
            .await
            .unwrap()
            .release()
            .await;
        // The same from a machine with our hostname but another boot: held.
        let elsewhere = LeaseBody {
            machine: Some(Machine {
                boot_id: "another-boot".into(),
                pid: u32::MAX - 1,
                ..me
            }),
            ..dead
        };
        put_lease(&sink, &key, &elsewhere).await;
        let e = Lease::acquire(sink, key, "publish eth").await.err().unwrap();
        assert!(matches!(e, LeaseError::Held { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_publisher_notices_its_lease_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(d.path()));
        let chain = ChainName::new("eth").unwrap();
        let e = check_held(sink.as_ref(), &chain).await.unwrap_err();
        assert!(e.to_string().contains("never took it"), "{e}");
        let lease = acquire_for_publish(sink.clone(), &chain).await.unwrap();
        check_held(sink.as_ref(), &chain).await.unwrap();
        let key = ObjectKey::publish_lock(&chain);
        let usurper = LeaseBody {
            holder: "elsewhere:7:0".into(),
            purpose: "publish eth".into(),
            expires_at: Timestamp::now().plus(TTL),
            machine: None,
        };
        put_lease(&sink, &key, &usurper).await;
        let e = check_held(sink.as_ref(), &chain).await.unwrap_err();
        assert!(e.to_string().contains("elsewhere:7:0"), "{e}");
        lease.release().await;
        // Releasing left the usurper's lease alone.
        assert_eq!(live(sink.as_ref(), &key).await.unwrap(), Some(usurper));
    }
}
