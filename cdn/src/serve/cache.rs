//! Pull-through caching for `qsync serve --store <remote URL> --cache-dir DIR`.
//!
//! A miss fetches the object from the upstream store once, however many
//! clients ask at the same time (one in-flight fetch per key), with at most
//! `--upstream-concurrency` upstream requests. Content-addressed objects are
//! verified before they are cached: a chunk must hash (after bounded
//! decompression) to the digest in its key, a manifest's BLAKE3 must start
//! with the prefix in its name; a bad copy is neither cached nor served.
//! Pointers and the catalog are cached for `--pointer-max-age`.
//!
//! A signature is cached as immutable only once it has verified, under a
//! `--public-key` given to serve, over its object: a manifest's over the
//! cached (digest-checked) manifest, a pointer's or the catalog's
//! `.sigs/<b3>.minisig` over the body whose BLAKE3 is `<b3>` (the cached one
//! or upstream's current one). Additional signatures of a key rotation
//! (`.<KEYID>.minisig`) are signatures like the others. Any other signature (no key, no matching body,
//! or one that does not verify) is kept at most `--pointer-max-age` and
//! served with that max-age, so one bad upstream response cannot poison the
//! cache for good. Objects adopted from disk at start are unverified until
//! refetched. The cache is bounded by `--cache-size`, evicting least
//! recently used objects.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::sign::TrustedKeys;
use qsync_core::{chunk, Digest, ObjectKey};
use tokio::sync::Semaphore;

use super::objects::Kind;
use qsync_store::local::LocalStore;
use qsync_store::{CacheClass, ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError};

/// Largest chunk plaintext any valid manifest allows (FastCDC's maximum).
const MAX_CHUNK_PLAIN: u64 = 16 << 20;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct CacheStats {
    /// Requests answered from the cache.
    pub hits: AtomicU64,
    /// Requests that went upstream.
    pub misses: AtomicU64,
    /// Objects evicted.
    pub evictions: AtomicU64,
    /// Failed upstream requests.
    pub upstream_errors: AtomicU64,
    /// Upstream copies that failed verification.
    pub upstream_corrupt: AtomicU64,
    /// Microseconds spent in successful upstream requests.
    pub upstream_micros: AtomicU64,
}

/// Objects used this recently are not evicted: a request may be between
/// `ensure` and reading the file. The size limit is soft during bursts.
const EVICTION_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Lru {
    /// key -> (size, last use order, last use time)
    entries: HashMap<String, (u64, u64, Option<Instant>)>,
    total: u64,
    tick: u64,
}

/// A cache directory in front of an upstream store.
pub struct PullThrough {
    upstream: Arc<dyn ObjectSource>,
    local: LocalStore,
    max_bytes: u64,
    mutable_max_age: Duration,
    /// Objects used this recently are not evicted ([`EVICTION_GRACE`]).
    eviction_grace: Duration,
    lru: Mutex<Lru>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    slots: Semaphore,
    /// Pinned keys that signatures are checked against before they are immutable.
    public_keys: Option<TrustedKeys>,
    /// Cached signature keys that verified over their object.
    verified: Mutex<HashSet<String>>,
    /// Counters.
    pub stats: CacheStats,
}

/// Whether `key` names a detached signature.
fn is_signature(key: &ObjectKey) -> bool {
    key.as_str().ends_with(".minisig")
}

impl PullThrough {
    /// A cache of `upstream` in `dir`, at most `max_bytes`; objects already
    /// in `dir` are adopted (oldest first for eviction).
    pub fn open(
        upstream: Arc<dyn ObjectSource>,
        dir: &Path,
        max_bytes: u64,
        mutable_max_age: Duration,
        upstream_concurrency: usize,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        scan(dir, dir, &mut found)?;
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut lru = Lru::default();
        for (key, size, _) in found {
            lru.tick += 1;
            lru.total += size;
            lru.entries.insert(key, (size, lru.tick, None));
        }
        Ok(PullThrough {
            upstream,
            local: LocalStore::new(dir),
            max_bytes,
            mutable_max_age,
            eviction_grace: EVICTION_GRACE,
            lru: Mutex::new(lru),
            flights: Mutex::new(HashMap::new()),
            slots: Semaphore::new(upstream_concurrency.max(1)),
            public_keys: None,
            verified: Mutex::new(HashSet::new()),
            stats: CacheStats::default(),
        })
    }

    /// Protects objects used within `grace` from eviction instead of
    /// [`EVICTION_GRACE`] (tests use zero and an hour instead of waiting).
    pub fn with_eviction_grace(mut self, grace: Duration) -> Self {
        self.eviction_grace = grace;
        self
    }

    /// Checks signatures against `keys` before caching them as immutable
    /// (without a key every signature is short-lived).
    pub fn with_public_keys(mut self, keys: Option<TrustedKeys>) -> Self {
        self.public_keys = keys;
        self
    }

    /// Whether `key` may be served as immutable: true for everything but
    /// signatures that have not verified since they were fetched.
    pub fn is_verified(&self, key: &ObjectKey) -> bool {
        !is_signature(key) || self.verified.lock().expect("not poisoned").contains(key.as_str())
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        self.local.root()
    }

    /// Bytes currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.lru.lock().expect("not poisoned").total
    }

    fn fresh(&self, key: &ObjectKey, kind: Kind) -> bool {
        let Ok(m) = std::fs::metadata(self.dir().join(key.as_str())) else {
            return false;
        };
        let short_lived = kind == Kind::Pointer || !self.is_verified(key);
        match short_lived {
            true => m
                .modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age <= self.mutable_max_age),
            _ => true,
        }
    }

    /// Marks `key` as just used, which protects it from eviction for the
    /// grace period; false when it is not cached.
    fn touch(&self, key: &ObjectKey) -> bool {
        let mut lru = self.lru.lock().expect("not poisoned");
        lru.tick += 1;
        let tick = lru.tick;
        match lru.entries.get_mut(key.as_str()) {
            Some(e) => {
                e.1 = tick;
                e.2 = Some(Instant::now());
                true
            }
            None => false,
        }
    }

    fn flight(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights
            .lock()
            .expect("not poisoned")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Makes sure `key` is in the cache (fetching and verifying it on a miss).
    pub async fn ensure(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let kind = Kind::of(key.as_str());
        if kind == Kind::Other {
            return Err(StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            });
        }
        // Touch first: once touched, the entry cannot be evicted before it is served.
        if self.touch(key) && self.fresh(key, kind) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let flight = self.flight(key.as_str());
        let _one_fetch = flight.lock().await;
        if self.touch(key) && self.fresh(key, kind) {
            // Another request fetched it while this one waited.
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch(key, kind).await;
        self.flights.lock().expect("not poisoned").remove(key.as_str());
        result
    }

    async fn fetch(&self, key: &ObjectKey, kind: Kind) -> Result<(), StoreError> {
        let limit = match kind {
            _ if key.as_str().ends_with(".minisig") => 16 << 10,
            Kind::Chunk => chunk::stored_limit(MAX_CHUNK_PLAIN),
            Kind::Manifest => 1 << 30,
            _ => qsync_core::pointer::MAX_BYTES,
        };
        let body = {
            let _slot = self.slots.acquire().await.expect("semaphore open");
            let started = Instant::now();
            match self.upstream.get_limited(key, limit).await {
                Ok(b) => {
                    self.stats
                        .upstream_micros
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    b
                }
                Err(e) => {
                    if !e.is_not_found() {
                        self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        };
        if let Err(reason) = verify(key, kind, &body) {
            self.stats.upstream_corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "upstream {} served a corrupt {key}: {reason}",
                self.upstream.location()
            );
            return Err(StoreError::Corrupt {
                location: self.upstream.location(),
                key: key.to_string(),
                reason,
            });
        }
        let size = body.len() as u64;
        let immutable = if is_signature(key) {
            self.verified.lock().expect("not poisoned").remove(key.as_str());
            let ok = self.signature_verifies(key, &body).await;
            if !ok {
                tracing::warn!(
                    "signature {key} from upstream {} is not verified against --public-key; caching it for --pointer-max-age only",
                    self.upstream.location()
                );
            }
            ok
        } else {
            kind != Kind::Pointer
        };
        let cache = if immutable {
            CacheClass::Immutable
        } else {
            CacheClass::Mutable
        };
        self.local.put(key, body, PutOptions { cache }).await?;
        if immutable && is_signature(key) {
            self.verified
                .lock()
                .expect("not poisoned")
                .insert(key.to_string());
        }
        self.admit(key, size).await;
        Ok(())
    }

    /// Whether `sig` (fetched for the signature key `key`, primary or
    /// additional) verifies under a pinned key over the object it signs.
    async fn signature_verifies(&self, key: &ObjectKey, sig: &[u8]) -> bool {
        let (Some(keys), Some(of)) = (&self.public_keys, key.signature_of()) else {
            return false;
        };
        let object = of.object;
        let body = match of.version {
            // A pointer or the catalog: the version whose BLAKE3 names the signature.
            Some(want) => {
                let limit = qsync_core::pointer::MAX_BYTES;
                match self.local.get_limited(&object, limit).await {
                    Ok(b) if Digest::of(&b) == want => Some(b),
                    _ => {
                        let _slot = self.slots.acquire().await.expect("semaphore open");
                        self.upstream
                            .get_limited(&object, limit)
                            .await
                            .ok()
                            .filter(|b| Digest::of(b) == want)
                    }
                }
            }
            // A manifest: its cached copy, whose digest was checked on the way in.
            None => match Box::pin(self.ensure(&object)).await {
                Ok(()) => self.local.get(&object).await.ok(),
                Err(_) => None,
            },
        };
        body.is_some_and(|body| keys.verify(&object, &body, sig).is_ok())
    }

    /// Accounts for a newly cached object and evicts the least recently used
    /// others while over the size limit.
    async fn admit(&self, key: &ObjectKey, size: u64) {
        let victims = {
            let mut lru = self.lru.lock().expect("not poisoned");
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((old, _, _)) = lru
                .entries
                .insert(key.to_string(), (size, tick, Some(Instant::now())))
            {
                lru.total -= old;
            }
            lru.total += size;
            let mut victims = Vec::new();
            while lru.total > self.max_bytes {
                let idle = |used: &Option<Instant>| used.is_none_or(|t| t.elapsed() > self.eviction_grace);
                let oldest = lru
                    .entries
                    .iter()
                    .filter(|(k, (_, _, used))| k.as_str() != key.as_str() && idle(used))
                    .min_by_key(|(_, (_, t, _))| *t)
                    .map(|(k, _)| k.clone());
                let Some(k) = oldest else { break };
                let (s, _, _) = lru.entries.remove(&k).expect("present");
                lru.total -= s;
                victims.push(k);
            }
            victims
        };
        for k in victims {
            // Under the victim's fetch lock, and only if nobody cached it again meanwhile.
            let flight = self.flight(&k);
            let _one = flight.lock().await;
            let cached_again = self.lru.lock().expect("not poisoned").entries.contains_key(&k);
            if let (false, Ok(k)) = (cached_again, ObjectKey::new(k)) {
                self.verified.lock().expect("not poisoned").remove(k.as_str());
                let _ = self.local.delete(&k).await;
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Checks what can be checked without a public key.
fn verify(key: &ObjectKey, kind: Kind, body: &[u8]) -> Result<(), String> {
    let name = key.as_str().rsplit('/').next().unwrap_or_default();
    if name.ends_with(".minisig") {
        return Ok(());
    }
    match kind {
        Kind::Chunk => {
            let digest: Digest = name.parse().map_err(|e: qsync_core::FormatError| e.to_string())?;
            chunk::verify_stored(body, &digest, MAX_CHUNK_PLAIN).map_err(|e| e.to_string())
        }
        Kind::Manifest => {
            let prefix = name
                .split('-')
                .nth(1)
                .and_then(|p| p.split('.').next())
                .unwrap_or_default();
            let actual = Digest::of(body).to_hex();
            if prefix.len() == 16 && actual.starts_with(prefix) {
                Ok(())
            } else {
                Err(format!("BLAKE3 {actual} does not start with {prefix}"))
            }
        }
        _ => Ok(()),
    }
}

fn scan(root: &Path, dir: &Path, out: &mut Vec<(String, u64, SystemTime)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            scan(root, &e.path(), out)?;
        } else if !e.file_name().to_string_lossy().ends_with(".qsync-tmp") {
            if let Ok(rel) = e.path().strip_prefix(root) {
                let key = rel.to_string_lossy().into_owned();
                out.push((key, m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectSource for PullThrough {
    fn location(&self) -> String {
        format!(
            "{} (cached in {})",
            self.upstream.location(),
            self.dir().display()
        )
    }

    fn id(&self) -> qsync_store::StoreId {
        self.upstream.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.ensure(key).await?;
        self.local.get(key).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        self.ensure(key).await?;
        self.local.get_limited(key, limit).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.ensure(key).await?;
        self.local.get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        match self.ensure(key).await {
            Ok(()) => self.local.head(key).await,
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::Digest;
    use qsync_store::testing::MemoryStore;

    /// An upstream holding `n` raw chunks of 64 KiB; their keys.
    async fn upstream(n: u8) -> (Arc<MemoryStore>, Vec<ObjectKey>) {
        use qsync_store::ObjectSink;
        let store = Arc::new(MemoryStore::new("upstream"));
        let mut keys = Vec::new();
        for i in 0..n {
            let plain = vec![i; 64 << 10];
            let key = ObjectKey::chunk(&Digest::of(&plain));
            store
                .put(&key, plain.into(), qsync_store::PutOptions::for_key(&key))
                .await
                .unwrap();
            keys.push(key);
        }
        (store, keys)
    }

    /// Least recently used objects go once the cache is over its size and
    /// they are idle; objects in use within the grace period stay (the
    /// size is a soft limit during a burst). Decided with the grace passed
    /// in, instead of a test sleeping through it.
    #[tokio::test]
    async fn evicts_idle_objects_beyond_its_size_and_spares_busy_ones() {
        let (store, keys) = upstream(6).await;
        let limit = 3 * (64 << 10);
        let dir = tempfile::tempdir().unwrap();
        let cache = PullThrough::open(store.clone(), dir.path(), limit, Duration::from_secs(1), 4)
            .unwrap()
            .with_eviction_grace(Duration::ZERO);
        for k in &keys {
            cache.ensure(k).await.unwrap();
        }
        assert_eq!(cache.stats.evictions.load(Ordering::Relaxed), 3);
        assert!(cache.cached_bytes() <= limit);
        assert!(!dir.path().join(keys[0].as_str()).exists(), "the oldest was kept");
        assert!(
            dir.path().join(keys[5].as_str()).exists(),
            "the newest was evicted"
        );

        let dir = tempfile::tempdir().unwrap();
        let busy = PullThrough::open(store, dir.path(), limit, Duration::from_secs(1), 4)
            .unwrap()
            .with_eviction_grace(Duration::from_secs(3600));
        for k in &keys {
            busy.ensure(k).await.unwrap();
        }
        assert_eq!(busy.stats.evictions.load(Ordering::Relaxed), 0);
        assert_eq!(busy.cached_bytes(), 6 * (64 << 10));
    }
}
