//! Retry as one layer over a store: [`Retrying`] wraps any writable store
//! and tries each operation again, with doubling pauses, while it fails
//! with a transient error ([`StoreError::is_retryable`]). Backends retry a
//! single request themselves (the S3 SDK, for one); this rides out a longer
//! outage (about a minute by default) instead of failing a publish that may
//! have run for hours over one chunk. Pipelines wrap a store once and call
//! it plainly, as rustic and opendal layer their retries.
//!
//! A conditional write retried after its answer was lost can meet its own
//! first attempt and report [`StoreError::Conflict`]; callers that care tell
//! the two apart by reading the object (see `qsync_snapshotter::upload`).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::ObjectKey;

use crate::traits::{
    Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, Roots, StoreError, Version,
};

/// `inner`, with transient errors retried.
pub struct Retrying {
    inner: Arc<dyn ObjectSink>,
    first_pause: Duration,
    retries: u32,
}

impl Retrying {
    /// `inner` with 7 retries, pausing 0.5 s, then 1 s, 2 s ... (about a
    /// minute in all).
    pub fn new(inner: Arc<dyn ObjectSink>) -> Self {
        Self::with_schedule(inner, Duration::from_millis(500), 7)
    }

    /// `inner` with `retries` retries, the first after `first_pause`, each
    /// pause twice the one before.
    pub fn with_schedule(inner: Arc<dyn ObjectSink>, first_pause: Duration, retries: u32) -> Self {
        Retrying {
            inner,
            first_pause,
            retries,
        }
    }

    async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let mut pause = self.first_pause;
        for _ in 0..self.retries {
            match op().await {
                Err(e) if e.is_retryable() => {
                    tracing::warn!("{e}; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                r => return r,
            }
        }
        op().await
    }
}

#[async_trait]
impl ObjectSource for Retrying {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn id(&self) -> crate::StoreId {
        self.inner.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.run(|| self.inner.get(key)).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        self.run(|| self.inner.get_limited(key, limit)).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run(|| self.inner.get_range(key, range.clone())).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.run(|| self.inner.head(key)).await
    }
}

#[async_trait]
impl ObjectSink for Retrying {
    async fn put(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        self.run(|| self.inner.put(key, body.clone(), opts)).await
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        self.run(|| self.inner.get_versioned(key, limit)).await
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        self.run(|| self.inner.put_if(key, body.clone(), opts, expect))
            .await
    }

    fn roots(&self) -> Option<&dyn Roots> {
        self.inner.roots()
    }

    fn edge(&self) -> Option<crate::Edge<'_>> {
        self.inner.edge()
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.run(|| self.inner.delete(key)).await
    }

    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        self.run(|| self.inner.list(dir)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FaultySink, MemoryStore, WriteFault};

    /// Puts one chunk through [`Retrying`] (3 retries) over a store whose
    /// chunk writes fail with `fault`, `times` times; the store behind it.
    async fn put_through(fault: WriteFault, times: u32) -> (Result<(), StoreError>, Arc<MemoryStore>) {
        let key = ObjectKey::new("chunks/ab/cd").unwrap();
        let memory = Arc::new(MemoryStore::new("flaky"));
        let faulty = FaultySink::new(memory.clone());
        faulty.fail_writes("chunks/", fault, Some(times));
        let r = Retrying::with_schedule(Arc::new(faulty), Duration::from_millis(1), 3);
        let result = r
            .put(&key, Bytes::from_static(b"x"), PutOptions::for_key(&key))
            .await;
        (result, memory)
    }

    #[tokio::test]
    async fn transient_errors_are_ridden_out_and_permanent_ones_are_not() {
        let key = ObjectKey::new("chunks/ab/cd").unwrap();
        let (r, memory) = put_through(WriteFault::Transient, 3).await;
        r.unwrap();
        assert_eq!(memory.get(&key).await.unwrap(), Bytes::from_static(b"x"));
        // More transient failures than retries: the last error comes back.
        assert!(put_through(WriteFault::Transient, 4)
            .await
            .0
            .unwrap_err()
            .is_retryable());
        // A refusal is not retried: the second attempt would have succeeded.
        let (r, memory) = put_through(WriteFault::Refused, 1).await;
        assert!(matches!(r, Err(StoreError::Refused { .. })));
        assert!(memory.head(&key).await.unwrap().is_none());
    }
}
