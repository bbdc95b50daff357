//! A store in a local directory: each key is a file under the root.
//!
//! Writes go to a temporary file in the target directory, are fsynced, then
//! renamed into place and the directory fsynced, so a crash leaves either the
//! old object or the complete new one. Leftover `*.qsync-tmp` files from a
//! crash are ignored by readers. Conditional writes hold an exclusive lock on
//! the object's directory while they compare and rename, so they exclude
//! each other across processes; a version is the BLAKE3 of the file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::ObjectKey;

use crate::traits::{Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError, Version};

/// A directory store.
pub struct LocalStore {
    root: PathBuf,
    edge: Option<std::sync::Arc<dyn crate::EdgeCache>>,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            edge: None,
        }
    }

    /// The store with `edge` in front of it: a CDN whose origin serves
    /// the directory (`qsync serve --store`), objects at `/KEY`.
    pub fn with_edge(mut self, edge: Option<std::sync::Arc<dyn crate::EdgeCache>>) -> Self {
        self.edge = edge;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io_err(&self, key: &ObjectKey, source: std::io::Error) -> StoreError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            }
        } else {
            StoreError::Io {
                location: self.location(),
                key: key.to_string(),
                source,
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || f(path))
            .await
            .map_err(|e| self.io_err(key, std::io::Error::other(e)))?
            .map_err(|e| self.io_err(key, e))
    }
}

fn read_limited(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() > limit {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

fn version_of(body: &[u8]) -> Version {
    Version(blake3::hash(body).to_hex().to_string())
}

/// Compares the object at `path` with `expect` and, if it matches, replaces
/// it; `Ok(false)` on a mismatch.
fn compare_and_write(path: &Path, body: &[u8], expect: &Expect) -> std::io::Result<bool> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::open(dir)?;
    lock.lock()?;
    let current = match std::fs::read(path) {
        Ok(b) => Some(version_of(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let matches = match expect {
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current.as_ref() == Some(v),
    };
    if matches {
        write_atomically(path, body)?;
    }
    Ok(matches)
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    // Unique per process and call: two tasks may store the same chunk at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.qsync-tmp",
        path.file_name()
            .expect("object paths have a name")
            .to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl ObjectSource for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn id(&self) -> crate::StoreId {
        crate::StoreUrl::Local(self.root.clone()).id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.blocking(key, |p| std::fs::read(p).map(Bytes::from)).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        match self.blocking(key, move |p| read_limited(&p, limit)).await? {
            Some(b) => Ok(Bytes::from(b)),
            None => Err(StoreError::TooLarge {
                location: self.location(),
                key: key.to_string(),
                limit,
            }),
        }
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.blocking(key, move |p| {
            let mut f = std::fs::File::open(p)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = Vec::with_capacity((range.end - range.start) as usize);
            f.take(range.end - range.start).read_to_end(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        match self.blocking(key, std::fs::metadata).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len() })),
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl ObjectSink for LocalStore {
    fn edge(&self) -> Option<crate::Edge<'_>> {
        let cache = self.edge.as_deref()?;
        Some(crate::Edge { cache, prefix: "" })
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, _: PutOptions) -> Result<(), StoreError> {
        self.blocking(key, move |p| write_atomically(&p, &body)).await
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        match self.get_limited(key, limit).await {
            Ok(b) => Ok(Some((b.clone(), version_of(&b)))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        _: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        let expect = expect.clone();
        if self
            .blocking(key, move |p| compare_and_write(&p, &body, &expect))
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                location: self.location(),
                key: key.to_string(),
            })
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self.blocking(key, std::fs::remove_file).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let prefix = dir.as_str().to_string();
        match self.blocking(dir, move |p| list_dir(&p, &prefix)).await {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            r => r,
        }
    }
}

/// Objects under `path` (the directory of key `prefix`), recursively. Names
/// that are not object keys (temporary files of writes in progress) are skipped.
fn list_dir(path: &Path, prefix: &str) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut todo = vec![(path.to_path_buf(), prefix.to_string())];
    while let Some((dir, prefix)) = todo.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let key = format!("{prefix}/{name}");
            let m = entry.metadata()?;
            if m.is_dir() {
                todo.push((entry.path(), key));
            } else if let Ok(key) = ObjectKey::new(key) {
                out.push(Listed {
                    key,
                    size: m.len(),
                    modified: m.modified().ok(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traits::CacheClass;

    #[tokio::test]
    async fn put_get_range_head_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let k = ObjectKey::new("chunks/ab/abc").unwrap();
        assert_eq!(s.head(&k).await.unwrap(), None);
        assert!(s.get(&k).await.unwrap_err().is_not_found());
        let opts = PutOptions {
            cache: CacheClass::Immutable,
        };
        s.put(&k, Bytes::from_static(b"0123456789"), opts).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"0123456789"));
        assert_eq!(s.get_range(&k, 2..5).await.unwrap(), Bytes::from_static(b"234"));
        assert_eq!(s.head(&k).await.unwrap(), Some(ObjectMeta { size: 10 }));
        s.delete(&k).await.unwrap();
        s.delete(&k).await.unwrap();
        assert_eq!(s.head(&k).await.unwrap(), None);
    }

    #[tokio::test]
    async fn conditional_writes_let_one_writer_win() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(LocalStore::new(dir.path()));
        let k = ObjectKey::new("chains/eth/latest.json").unwrap();
        let opts = PutOptions {
            cache: CacheClass::Mutable,
        };
        s.put_if(&k, Bytes::from_static(b"v1"), opts, &Expect::Absent)
            .await
            .unwrap();
        let err = s
            .put_if(&k, Bytes::from_static(b"x"), opts, &Expect::Absent)
            .await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        let (body, v1) = s.get_versioned(&k, 100).await.unwrap().unwrap();
        assert_eq!(body, Bytes::from_static(b"v1"));
        // Eight writers expect v1; exactly one replaces it.
        let writers = (0..8).map(|i| {
            let (s, k, v1) = (s.clone(), k.clone(), v1.clone());
            tokio::spawn(async move {
                s.put_if(&k, Bytes::from(format!("w{i}")), opts, &Expect::Version(v1))
                    .await
            })
        });
        let won = futures::future::join_all(writers)
            .await
            .into_iter()
            .filter(|r| r.as_ref().unwrap().is_ok())
            .count();
        assert_eq!(won, 1);
        assert!(s
            .get_versioned(&ObjectKey::new("nope").unwrap(), 1)
            .await
            .unwrap()
            .is_none());
    }
}
