//! One store out of two: chunks from one source, every other object from
//! another (`serve --data`, where a node's files hold the chunks and a
//! small directory the signed objects), so `/tar` and object requests read
//! them alike.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::ObjectKey;
use qsync_store::local::LocalStore;
use qsync_store::{Body, ObjectMeta, ObjectSource, StoreError, StoreId};

use super::objects::Kind;

/// Chunks from `chunks`, the rest from `rest`.
pub struct ChunksFrom {
    /// Signed objects (and anything else).
    pub rest: LocalStore,
    /// Chunk objects.
    pub chunks: Arc<dyn ObjectSource>,
}

impl ChunksFrom {
    fn pick(&self, key: &ObjectKey) -> &dyn ObjectSource {
        if Kind::of(key.as_str()) == Kind::Chunk {
            self.chunks.as_ref()
        } else {
            &self.rest
        }
    }
}

#[async_trait]
impl ObjectSource for ChunksFrom {
    fn location(&self) -> String {
        format!(
            "{} with chunks from {}",
            self.rest.location(),
            self.chunks.location()
        )
    }

    fn id(&self) -> StoreId {
        self.rest.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.pick(key).get(key).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        self.pick(key).get_limited(key, limit).await
    }

    async fn get_stream(&self, key: &ObjectKey, limit: u64) -> Result<Body, StoreError> {
        self.pick(key).get_stream(key, limit).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.pick(key).get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.pick(key).head(key).await
    }
}
