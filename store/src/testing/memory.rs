//! An in-memory store: every operation of [`ObjectSink`], conditional
//! writes included, over a map guarded by one lock.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::ObjectKey;

use crate::traits::{Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError, Version};

struct Object {
    body: Bytes,
    version: u64,
    modified: SystemTime,
}

/// Objects in memory, named `mem://<name>`.
pub struct MemoryStore {
    name: String,
    objects: Mutex<HashMap<ObjectKey, Object>>,
    /// Versions handed out so far (each write gets the next).
    writes: AtomicU64,
}

impl MemoryStore {
    /// An empty store called `name` (its location is `mem://<name>`).
    pub fn new(name: &str) -> Self {
        MemoryStore {
            name: name.into(),
            objects: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
        }
    }

    /// The keys it holds, sorted.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = self
            .objects
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn not_found(&self, key: &ObjectKey) -> StoreError {
        StoreError::NotFound {
            location: self.location(),
            key: key.to_string(),
        }
    }

    fn write(&self, key: &ObjectKey, body: Bytes, expect: Option<&Expect>) -> Result<(), StoreError> {
        let mut objects = self.objects.lock().expect("not poisoned");
        let current = objects.get(key).map(|o| Version(o.version.to_string()));
        let holds = match (expect, &current) {
            (None, _) | (Some(Expect::Absent), None) => true,
            (Some(Expect::Version(want)), Some(have)) => want == have,
            _ => false,
        };
        if !holds {
            return Err(StoreError::Conflict {
                location: self.location(),
                key: key.to_string(),
            });
        }
        let version = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        objects.insert(
            key.clone(),
            Object {
                body,
                version,
                modified: SystemTime::now(),
            },
        );
        Ok(())
    }
}

#[async_trait]
impl ObjectSource for MemoryStore {
    fn location(&self) -> String {
        format!("mem://{}", self.name)
    }

    fn id(&self) -> crate::StoreId {
        crate::StoreId::unlisted(&self.name)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let objects = self.objects.lock().expect("not poisoned");
        objects
            .get(key)
            .map(|o| o.body.clone())
            .ok_or_else(|| self.not_found(key))
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let body = self.get(key).await?;
        let end = range.end.min(body.len() as u64) as usize;
        let start = (range.start as usize).min(end);
        Ok(body.slice(start..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        let objects = self.objects.lock().expect("not poisoned");
        Ok(objects.get(key).map(|o| ObjectMeta {
            size: o.body.len() as u64,
        }))
    }
}

#[async_trait]
impl ObjectSink for MemoryStore {
    async fn put(&self, key: &ObjectKey, body: Bytes, _: PutOptions) -> Result<(), StoreError> {
        self.write(key, body, None)
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        let objects = self.objects.lock().expect("not poisoned");
        match objects.get(key) {
            None => Ok(None),
            Some(o) if o.body.len() as u64 > limit => Err(StoreError::TooLarge {
                location: self.location(),
                key: key.to_string(),
                limit,
            }),
            Some(o) => Ok(Some((o.body.clone(), Version(o.version.to_string())))),
        }
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        _: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        self.write(key, body, Some(expect))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.objects.lock().expect("not poisoned").remove(key);
        Ok(())
    }

    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let prefix = format!("{dir}/");
        let objects = self.objects.lock().expect("not poisoned");
        Ok(objects
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(&prefix))
            .map(|(k, o)| Listed {
                key: k.clone(),
                size: o.body.len() as u64,
                modified: Some(o.modified),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes_hold_like_a_real_store() {
        let s = MemoryStore::new("a");
        let key = ObjectKey::new("chains/eth/latest.json").unwrap();
        let opts = PutOptions::for_key(&key);
        s.put_if(&key, Bytes::from_static(b"1"), opts, &Expect::Absent)
            .await
            .unwrap();
        let again = s
            .put_if(&key, Bytes::from_static(b"2"), opts, &Expect::Absent)
            .await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })));
        let (_, v) = s.get_versioned(&key, 10).await.unwrap().unwrap();
        s.put_if(&key, Bytes::from_static(b"3"), opts, &Expect::Version(v.clone()))
            .await
            .unwrap();
        let stale = s
            .put_if(&key, Bytes::from_static(b"4"), opts, &Expect::Version(v))
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
        assert_eq!(s.get(&key).await.unwrap(), Bytes::from_static(b"3"));
        assert_eq!(s.list(&ObjectKey::new("chains").unwrap()).await.unwrap().len(), 1);
        s.delete(&key).await.unwrap();
        assert!(s.get(&key).await.unwrap_err().is_not_found());
    }
}
