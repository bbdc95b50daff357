//! The store traits every backend implements, and their error type.

use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use qsync_core::manifest::Manifest;
use qsync_core::{ChainName, ObjectKey};

/// An object's bytes as they arrive.
pub type Body = BoxStream<'static, Result<Bytes, StoreError>>;

/// `pieces` of `key` in the store at `location`, as a [`Body`] of at most
/// `limit` bytes: refused before reading when `declared` (a
/// `Content-Length`) is already longer, and failed as soon as the pieces
/// would run past it, so a hostile store cannot make a reader buffer or
/// write more than the signed parent declares.
pub(crate) fn bounded<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    pieces: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    declared: Option<u64>,
    limit: u64,
    location: String,
    key: String,
) -> Result<Body, StoreError> {
    let too_large = move |location: String, key: String| StoreError::TooLarge { location, key, limit };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(location, key));
    }
    let mut seen = 0u64;
    Ok(pieces
        .map(move |piece| {
            let piece = piece.map_err(|e| StoreError::Transport {
                location: location.clone(),
                key: key.clone(),
                source: e.into(),
            })?;
            seen += piece.len() as u64;
            if seen > limit {
                return Err(too_large(location.clone(), key.clone()));
            }
            Ok(piece)
        })
        .boxed())
}

/// Gathers a body into one buffer (`capacity`: its expected length).
pub(crate) async fn collect(mut body: Body, capacity: u64) -> Result<Bytes, StoreError> {
    let mut buf = BytesMut::with_capacity(capacity.min(64 << 20) as usize);
    while let Some(piece) = body.next().await {
        buf.extend_from_slice(&piece?);
    }
    // A body of unknown length grew by doubling: hold what it is, not up
    // to twice that (a million files' manifest is 47 MB).
    if buf.capacity() - buf.len() > buf.len() / 8 + 4096 {
        return Ok(Bytes::copy_from_slice(&buf));
    }
    Ok(buf.freeze())
}

/// Metadata of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Stored length in bytes.
    pub size: u64,
}

/// An object as a store listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: ObjectKey,
    /// Stored length in bytes.
    pub size: u64,
    /// When it was last written, where the backend records it (IPFS MFS does not).
    pub modified: Option<std::time::SystemTime>,
}

/// How long caches may keep an object; backends that speak HTTP turn this
/// into `Cache-Control`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheClass {
    /// Content-addressed or never rewritten: chunks, manifests, their signatures.
    Immutable,
    /// Rewritten in place: pointers, the catalog and their signatures.
    Mutable,
}

impl CacheClass {
    /// The `Cache-Control` value of this class, the one policy for S3
    /// uploads and `qsync serve`: a year and `immutable` for objects that
    /// never change under their key, `pointer_max_age` for objects rewritten
    /// in place (so a new snapshot reaches readers through caches within it).
    pub fn cache_control(self, pointer_max_age: std::time::Duration) -> String {
        match self {
            CacheClass::Immutable => "public, max-age=31536000, immutable".into(),
            CacheClass::Mutable => format!("public, max-age={}", pointer_max_age.as_secs()),
        }
    }
}

/// Options for [`ObjectSink::put`].
#[derive(Clone, Copy, Debug)]
pub struct PutOptions {
    /// Cache class of the object.
    pub cache: CacheClass,
}

/// The version of a stored object as its store tells it apart (an S3 ETag,
/// the BLAKE3 of a local file); only compared for equality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// What [`ObjectSink::put_if`] expects to find at the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No object.
    Absent,
    /// The object at this version.
    Version(Version),
}

impl PutOptions {
    /// The options every object at `key` is written with.
    pub fn for_key(key: &ObjectKey) -> PutOptions {
        let cache = if key.is_mutable() {
            CacheClass::Mutable
        } else {
            CacheClass::Immutable
        };
        PutOptions { cache }
    }
}

/// Why a store operation failed. Every variant names the store and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist.
    #[error("{location}: {key} not found")]
    NotFound {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
    },
    /// Local file-system failure.
    #[error("{location}: {key}: {source}")]
    Io {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("{location}: {key}: HTTP {status}{hint}")]
    Http {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// HTTP status.
        status: u16,
        /// What to check, for statuses with a usual cause.
        hint: &'static str,
    },
    /// Connection, TLS or timeout failure.
    #[error("{location}: {key}: {source}; check the URL and that the server is reachable")]
    Transport {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// Underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A write to a store that cannot be written.
    #[error("{location} is read-only; publish to a directory path, file:// URL or s3:// bucket instead")]
    ReadOnly {
        /// Store location.
        location: String,
    },
    /// An object larger than what its signed parent declares.
    #[error("{location}: {key} is larger than the {limit} bytes allowed for it; the mirror serves the wrong object, use another mirror")]
    TooLarge {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// The limit.
        limit: u64,
    },
    /// An object whose bytes do not match its content address.
    #[error("{location}: {key} is corrupt ({reason}); it was not cached or served")]
    Corrupt {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// What did not match.
        reason: String,
    },
    /// A conditional write found another version than it expected.
    #[error("{location}: {key} was changed by another writer meanwhile; nothing was overwritten")]
    Conflict {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
    },
    /// The store refused the request for a reason the operator must fix
    /// (credentials, permission, region, a missing bucket).
    #[error("{location}: {key}: {code}; {hint}")]
    Refused {
        /// Store location.
        location: String,
        /// Object key.
        key: String,
        /// The store's error code.
        code: String,
        /// What to check.
        hint: String,
    },
    /// A store URL that cannot be used.
    #[error("store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong and what is supported.
        reason: String,
    },
}

impl StoreError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Transport { .. } => true,
            StoreError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }

    /// Whether the object is simply absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A store objects can be read from.
#[async_trait]
pub trait ObjectSource: Send + Sync + 'static {
    /// Where this store is, for error messages and logs.
    fn location(&self) -> String;
    /// Which store this is, for records kept between runs.
    fn id(&self) -> crate::StoreId;
    /// The whole object.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError>;
    /// The whole object, refusing (without reading it all) one longer than
    /// `limit` bytes: readers pass what the signed manifest or pointer
    /// declares, so a hostile store cannot exhaust memory.
    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        let body = self.get(key).await?;
        if body.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                location: self.location(),
                key: key.to_string(),
                limit,
            });
        }
        Ok(body)
    }
    /// The object as it arrives, in pieces, failing (without reading on)
    /// once it runs past `limit` bytes like [`ObjectSource::get_limited`]:
    /// restores hash and write a chunk while the rest is still on the wire.
    /// The default hands on the whole object as one piece.
    async fn get_stream(&self, key: &ObjectKey, limit: u64) -> Result<Body, StoreError> {
        let body = self.get_limited(key, limit).await?;
        Ok(futures::stream::once(async move { Ok(body) }).boxed())
    }
    /// Bytes `range` of the object.
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// The object's metadata, or `None` when it does not exist.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError>;
}

/// A store objects can be written to.
#[async_trait]
pub trait ObjectSink: ObjectSource {
    /// Stores `body` at `key`, atomically: readers see the old object or the
    /// whole new one, never a part. Returns once the object is durable.
    async fn put(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError>;
    /// The object (refused unread beyond `limit` bytes) and its version, or
    /// `None` when it does not exist.
    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError>;
    /// Stores `body` at `key` like [`ObjectSink::put`], but only if the object
    /// is still as `expect` says; otherwise fails with
    /// [`StoreError::Conflict`] and changes nothing. Of two writers that
    /// expect the same version, at most one succeeds. A request retried
    /// after its answer was lost can report a conflict with its own first
    /// attempt; callers that retry tell the two apart by reading the object.
    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError>;
    /// The store's [`Roots`] capability, where it has one (IPFS MFS);
    /// `None` for stores whose location already names their contents.
    /// Pipelines ask for the capability, never for the backend.
    fn roots(&self) -> Option<&dyn Roots> {
        None
    }
    /// The [`Edge`] cache in front of this store, where one was configured
    /// (CloudFront before an S3 bucket or a `qsync serve` origin); `None`
    /// when readers reach the store directly.
    fn edge(&self) -> Option<Edge<'_>> {
        None
    }
    /// Removes the object; absent objects are not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError>;
    /// Every object whose key lies under `dir/`, in no particular order.
    /// Retention and garbage collection use it; readers never list.
    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError>;
}

/// An optional capability of a writable store whose contents as a whole
/// have a name of their own that must be kept alive: an IPFS directory's
/// root CID, pinned. Such a store can also name the snapshot's files
/// themselves, as a directory any client of the store's network reads
/// without qsync (the plain tree).
#[async_trait]
pub trait Roots: Send + Sync {
    /// After a publish: the name of the store as it now is, kept available
    /// (IPFS: the directory's CID, pinned recursively).
    async fn snapshot_root(&self) -> Result<String, StoreError>;
    /// Before the pointer is written: builds the plain tree of `manifest`
    /// (a directory of its files, their bytes taken from the chunk objects
    /// the store holds, every one of which must already be there) and
    /// returns its name; the next [`Roots::snapshot_root`] keeps it with
    /// the store (IPFS: the tree's CID, linked at `trees/<chain>`).
    async fn plain_tree(&self, chain: &ChainName, manifest: &Manifest) -> Result<String, StoreError>;
    /// Lets go of a root [`Roots::snapshot_root`] returned earlier, once a
    /// newer root holds everything still kept (IPFS: unpin it, so the
    /// node's repository GC can reclaim what only it held).
    async fn retire_root(&self, root: &str) -> Result<(), StoreError>;
}

/// A cache between a store and its readers (a CDN) that must be told
/// which objects were rewritten in place, so it stops serving their old
/// bytes before their max-age runs out. Implemented outside this crate
/// (CloudFront invalidation is in `qsync-cdn`) and handed to a store
/// through [`crate::StoreOptions::edge_cache`].
#[async_trait]
pub trait EdgeCache: Send + Sync + std::fmt::Debug {
    /// Makes the cache forget `paths` (each starting with `/`, as the
    /// cache's readers request them); returns the cache's ID for the request.
    async fn invalidate(&self, paths: Vec<String>) -> Result<String, StoreError>;
}

/// A store's [`EdgeCache`] with the path at which the cache serves the
/// store's objects: what a pipeline sees, in keys, never in backends.
#[derive(Clone, Copy, Debug)]
pub struct Edge<'a> {
    /// The cache.
    pub cache: &'a dyn EdgeCache,
    /// What comes before a key in the cache's paths (an S3 bucket's prefix).
    pub prefix: &'a str,
}

impl Edge<'_> {
    /// Invalidates the cached copies of `keys`.
    pub async fn invalidate(&self, keys: &[String]) -> Result<String, StoreError> {
        let paths = keys.iter().map(|k| format!("/{}{k}", self.prefix)).collect();
        self.cache.invalidate(paths).await
    }
}
