//! A store wrapper that misbehaves on purpose: [`Faulty`] passes reads to
//! the store it wraps, except for keys a [`Fault`] was set on, which fail,
//! stall, arrive corrupted or arrive late. [`FaultySink`] wraps a writable
//! store and fails writes under chosen key prefixes (a store that goes away
//! halfway through a publish), passing everything else through.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use qsync_core::manifest::Manifest;
use qsync_core::{ChainName, ObjectKey};

use crate::traits::{
    Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, Roots, StoreError, Version,
};

/// How a read misbehaves.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Fails with a retryable transport error.
    Error,
    /// Fails as if the object were absent.
    Missing,
    /// Never answers (until the caller's timeout).
    Stall,
    /// Answers with the object's bytes, one flipped.
    Corrupt,
    /// Answers correctly after this long.
    Latency(Duration),
}

/// `inner` with faults on chosen keys (or on every key), counting reads.
pub struct Faulty {
    inner: Arc<dyn ObjectSource>,
    faults: Mutex<HashMap<Option<ObjectKey>, Fault>>,
    reads: AtomicU64,
}

impl Faulty {
    /// `inner`, behaving until told otherwise.
    pub fn new(inner: Arc<dyn ObjectSource>) -> Self {
        Faulty {
            inner,
            faults: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
        }
    }

    /// Reads of `key` (every key when `None`) misbehave as `fault`.
    pub fn set(&self, key: Option<&ObjectKey>, fault: Fault) {
        self.faults
            .lock()
            .expect("not poisoned")
            .insert(key.cloned(), fault);
    }

    /// Reads (get, range, head) asked of this store so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn fault_for(&self, key: &ObjectKey) -> Option<Fault> {
        let faults = self.faults.lock().expect("not poisoned");
        faults
            .get(&Some(key.clone()))
            .or_else(|| faults.get(&None))
            .cloned()
    }

    /// Applies the fault set for `key` before a read; `true` when the
    /// answer must be corrupted.
    async fn before(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.fault_for(key) {
            None => Ok(false),
            Some(Fault::Error) => Err(StoreError::Transport {
                location: self.location(),
                key: key.to_string(),
                source: "injected fault: connection reset".into(),
            }),
            Some(Fault::Missing) => Err(StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            }),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::Corrupt) => Ok(true),
            Some(Fault::Latency(d)) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
        }
    }
}

fn flip(body: Bytes) -> Bytes {
    if body.is_empty() {
        return Bytes::from_static(b"\0");
    }
    let mut b = BytesMut::from(&body[..]);
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    b.freeze()
}

#[async_trait]
impl ObjectSource for Faulty {
    fn location(&self) -> String {
        format!("faulty:{}", self.inner.location())
    }

    fn id(&self) -> crate::StoreId {
        self.inner.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let corrupt = self.before(key).await?;
        let body = self.inner.get(key).await?;
        Ok(if corrupt { flip(body) } else { body })
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let corrupt = self.before(key).await?;
        let body = self.inner.get_range(key, range).await?;
        Ok(if corrupt { flip(body) } else { body })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.before(key).await?;
        self.inner.head(key).await
    }
}

/// How a write misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Refused (write permission revoked mid-publish): not retryable, so a
    /// test does not wait out retries.
    Refused,
    /// A transient error (a connection reset) that a retry rides out.
    Transient,
}

/// `inner`, whose writes under chosen key prefixes fail, for good or a
/// given number of times. Reads, deletes and listings pass through.
pub struct FaultySink {
    inner: Arc<dyn ObjectSink>,
    /// Key prefix, the fault, and how many more times (`None`: for good).
    failing: Mutex<Vec<(String, WriteFault, Option<u32>)>>,
    /// Roots of its own, whose plain tree fails (instead of the inner
    /// store's capability).
    failing_tree: Option<FailingTree>,
}

/// Roots whose every plain tree fails, as an IPFS node refusing `dag/put`
/// would; roots themselves work.
pub struct FailingTree;

#[async_trait]
impl Roots for FailingTree {
    async fn snapshot_root(&self) -> Result<String, StoreError> {
        Ok("bafyfailingtreeroot".into())
    }

    async fn plain_tree(&self, _: &ChainName, _: &Manifest) -> Result<String, StoreError> {
        Err(StoreError::Transport {
            location: "mem://failing-tree".into(),
            key: "dag/put".into(),
            source: "the node refused the tree's nodes".into(),
        })
    }

    async fn retire_root(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

impl FaultySink {
    /// `inner`, behaving until told otherwise.
    pub fn new(inner: Arc<dyn ObjectSink>) -> Self {
        FaultySink {
            inner,
            failing: Mutex::new(Vec::new()),
            failing_tree: None,
        }
    }

    /// `inner`, with roots whose plain tree always fails.
    pub fn with_failing_tree(inner: Arc<dyn ObjectSink>) -> Self {
        FaultySink {
            failing_tree: Some(FailingTree),
            ..FaultySink::new(inner)
        }
    }

    /// Writes of keys starting with `prefix` fail with `fault`: the next
    /// `times` of them, or every one from now on when `times` is `None`.
    pub fn fail_writes(&self, prefix: &str, fault: WriteFault, times: Option<u32>) {
        self.failing
            .lock()
            .expect("not poisoned")
            .push((prefix.into(), fault, times));
    }

    /// Every write succeeds again.
    pub fn heal(&self) {
        self.failing.lock().expect("not poisoned").clear();
    }

    fn check(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let mut failing = self.failing.lock().expect("not poisoned");
        let Some((_, fault, left)) = failing
            .iter_mut()
            .find(|(p, _, left)| key.as_str().starts_with(p.as_str()) && *left != Some(0))
        else {
            return Ok(());
        };
        if let Some(n) = left {
            *n -= 1;
        }
        Err(match fault {
            WriteFault::Refused => StoreError::Refused {
                location: self.inner.location(),
                key: key.to_string(),
                code: "AccessDenied".into(),
                hint: "injected fault: write permission revoked".into(),
            },
            WriteFault::Transient => StoreError::Transport {
                location: self.inner.location(),
                key: key.to_string(),
                source: "injected fault: connection reset".into(),
            },
        })
    }
}

#[async_trait]
impl ObjectSource for FaultySink {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn id(&self) -> crate::StoreId {
        self.inner.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.inner.head(key).await
    }
}

#[async_trait]
impl ObjectSink for FaultySink {
    fn roots(&self) -> Option<&dyn Roots> {
        match &self.failing_tree {
            Some(t) => Some(t),
            None => self.inner.roots(),
        }
    }

    fn edge(&self) -> Option<crate::Edge<'_>> {
        self.inner.edge()
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.put(key, body, opts).await
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        self.inner.get_versioned(key, limit).await
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.put_if(key, body, opts, expect).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        self.inner.list(dir).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;
    use crate::traits::{ObjectSink, PutOptions};

    #[tokio::test]
    async fn each_fault_shows_as_a_reader_would_see_it() {
        let memory = Arc::new(MemoryStore::new("m"));
        let (key, other) = (
            ObjectKey::new("chunks/ab/cd").unwrap(),
            ObjectKey::new("chunks/ab/ef").unwrap(),
        );
        for k in [&key, &other] {
            memory
                .put(k, Bytes::from_static(b"payload"), PutOptions::for_key(k))
                .await
                .unwrap();
        }
        let f = Faulty::new(memory);
        async fn get_in_time(
            f: &Faulty,
            k: &ObjectKey,
        ) -> Result<Result<Bytes, StoreError>, tokio::time::error::Elapsed> {
            tokio::time::timeout(Duration::from_millis(200), f.get(k)).await
        }
        f.set(Some(&key), Fault::Error);
        assert!(get_in_time(&f, &key).await.unwrap().unwrap_err().is_retryable());
        // A fault on one key leaves the others alone.
        assert_eq!(
            get_in_time(&f, &other).await.unwrap().unwrap(),
            Bytes::from_static(b"payload")
        );
        f.set(Some(&key), Fault::Missing);
        assert!(get_in_time(&f, &key).await.unwrap().unwrap_err().is_not_found());
        f.set(Some(&key), Fault::Corrupt);
        let bad = get_in_time(&f, &key).await.unwrap().unwrap();
        assert_eq!(bad.len(), 7);
        assert_ne!(bad, Bytes::from_static(b"payload"));
        f.set(Some(&key), Fault::Stall);
        assert!(get_in_time(&f, &key).await.is_err(), "a stalled read answered");
        f.set(Some(&key), Fault::Latency(Duration::from_millis(20)));
        assert_eq!(
            get_in_time(&f, &key).await.unwrap().unwrap(),
            Bytes::from_static(b"payload")
        );
        assert_eq!(f.reads(), 6);
    }
}
