//! `qsync serve`: a read-only HTTP origin for a local store.
//!
//! Every object is served at its key under `/`, so `qsync restore --from
//! http://HOST:PORT` works against it, with the HTTP a CDN or a fleet of
//! fetchers expects ([`objects`]): strong ETags from the content address,
//! `Cache-Control` by object kind, 304s, single ranges, and nothing outside
//! the store reachable. `/tar/<chain>/<version>` streams a plain tar of a
//! snapshot, signature-checked and assembled from verified chunks ([`tar`]),
//! for tools that only know `curl | tar -x`. Optional bearer tokens and
//! client networks guard private mirrors ([`access`]); `/healthz` (a real
//! probe of the store directory) and `/metrics` serve probes and Prometheus
//! ([`metrics`]). In front of a remote store, objects are fetched once,
//! verified and kept in a bounded local cache ([`cache`]). Connections are
//! served by [`listen`], which bounds what a slow or hostile client can hold.

pub mod access;
pub mod cache;
pub mod listen;
pub mod metrics;
pub mod objects;
pub mod tar;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use qsync_core::sign::TrustedKeys;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;

use qsync_store::local::LocalStore;
use qsync_store::ObjectSource;

/// How `qsync serve` behaves.
#[derive(Clone)]
pub struct ServeConfig {
    /// Store directory (the cache directory in pull-through mode).
    pub root: PathBuf,
    /// Pull-through cache of a remote store, filling `root`.
    pub pull_through: Option<Arc<cache::PullThrough>>,
    /// Where every object comes from instead of files under `root`
    /// (`serve --data`: a restored node, `root` being its directory).
    pub objects: Option<Arc<dyn ObjectSource>>,
    /// Keys that tar streams are checked against (a signature by any of
    /// them is accepted); without them `/tar` is off.
    pub public_keys: Option<TrustedKeys>,
    /// Bearer tokens accepted; empty means no token needed.
    pub tokens: Vec<String>,
    /// Client networks allowed; empty means any.
    pub allow: Vec<access::Cidr>,
    /// `max-age` for pointers and the catalog (rewritten in place).
    pub pointer_max_age: Duration,
    /// Longest time to produce response headers for an object.
    pub request_timeout: Duration,
    /// Connection limits (header and send timeouts, connection cap).
    pub limits: listen::Limits,
    /// Chunk bytes all `/tar` streams together may hold (shared fairly, FIFO).
    pub tar_memory: usize,
    /// Decides whether a snapshot has expired (the system clock; tests fix it).
    pub clock: qsync_core::time::Clock,
}

impl ServeConfig {
    /// Serves `root` openly, with a 60 s pointer max-age, a 60 s timeout,
    /// default connection limits and 256 MiB for tar streams.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServeConfig {
            root: root.into(),
            pull_through: None,
            objects: None,
            public_keys: None,
            tokens: Vec::new(),
            allow: Vec::new(),
            pointer_max_age: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            limits: listen::Limits::default(),
            tar_memory: 256 << 20,
            clock: Default::default(),
        }
    }
}

/// Shared state of the app.
pub struct ServeState {
    cfg: ServeConfig,
    /// Where objects come from: the directory, or the pull-through cache.
    store: Arc<dyn ObjectSource>,
    metrics: metrics::Metrics,
    /// Chunk bytes `/tar` streams may still take (of `cfg.tar_memory`).
    tar_budget: Arc<Semaphore>,
}

/// How long `/healthz` waits for the store directory to answer.
const HEALTH_PROBE: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 when the store directory answers a stat within
/// [`HEALTH_PROBE`] on the blocking pool (the pool every object read needs),
/// 503 otherwise.
async fn healthz(State(st): State<Arc<ServeState>>) -> Response {
    let root = st.cfg.root.clone();
    let probe = tokio::task::spawn_blocking(move || std::fs::metadata(root).map(|m| m.is_dir()));
    let why = match tokio::time::timeout(HEALTH_PROBE, probe).await {
        Ok(Ok(Ok(true))) => return "ok\n".into_response(),
        Ok(Ok(Ok(false))) => "the store path is not a directory".to_string(),
        Ok(Ok(Err(e))) => format!("the store directory is unreadable: {e}"),
        Ok(Err(e)) => format!("the probe failed: {e}"),
        Err(_) => format!("the store did not answer within {HEALTH_PROBE:?}"),
    };
    tracing::warn!("/healthz: {why} ({})", st.cfg.root.display());
    (StatusCode::SERVICE_UNAVAILABLE, format!("unavailable: {why}\n")).into_response()
}

/// The router for `cfg`.
pub fn app(cfg: ServeConfig) -> Router {
    // 1 MiB reads instead of the default 64 KiB: each read is a hop through
    // tokio's blocking pool, and chunks are megabytes (docs/benchmarks.md).
    let files = ServeDir::new(&cfg.root)
        .append_index_html_on_directories(false)
        .with_buf_chunk_size(1 << 20);
    let timeout = cfg.request_timeout;
    let store: Arc<dyn ObjectSource> = match (&cfg.pull_through, &cfg.objects) {
        (Some(p), _) => p.clone(),
        (None, Some(objects)) => objects.clone(),
        (None, None) => Arc::new(LocalStore::new(&cfg.root)),
    };
    let budget = cfg.tar_memory.clamp(16 << 20, u32::MAX as usize);
    let state = Arc::new(ServeState {
        store,
        tar_budget: Arc::new(Semaphore::new(budget)),
        cfg: ServeConfig {
            tar_memory: budget,
            ..cfg
        },
        metrics: metrics::Metrics::default(),
    });
    let objects = Router::new()
        .fallback_service(files)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            objects::headers,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::handler))
        .route("/tar/{chain}/{name}", get(tar::handler))
        .merge(objects)
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::check))
        .with_state(state)
}

/// Serves `cfg` on `listener` until `shutdown` resolves (in-flight requests
/// finish), within `cfg.limits`.
pub async fn serve(
    listener: TcpListener,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = cfg.limits;
    listen::serve_router(listener, app(cfg), limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::ObjectKey;
    use qsync_store::http::HttpStore;

    async fn healthz_status(cfg: ServeConfig) -> axum::http::StatusCode {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .uri("/healthz")
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        app(cfg)
            .layer(axum::extract::connect_info::MockConnectInfo(peer))
            .oneshot(req)
            .await
            .unwrap()
            .status()
    }

    /// With every blocking thread taken, no object can be read: /healthz says so.
    #[test]
    fn healthz_fails_when_the_blocking_pool_is_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(healthz_status(ServeConfig::new(dir.path())).await, StatusCode::OK);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let stuck = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)));
            let started = std::time::Instant::now();
            let status = healthz_status(ServeConfig::new(dir.path())).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(started.elapsed() < Duration::from_secs(10));
            tx.send(()).unwrap();
            stuck.await.unwrap().unwrap();
            let gone = ServeConfig::new(dir.path().join("missing"));
            assert_eq!(healthz_status(gone).await, StatusCode::SERVICE_UNAVAILABLE);
        });
    }

    #[tokio::test]
    async fn http_store_reads_what_serve_serves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/aa")).unwrap();
        std::fs::write(dir.path().join("chunks/aa/obj"), b"hello world").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, ServeConfig::new(dir.path()), async {
            let _ = rx.await;
        }));
        let s = HttpStore::new(&format!("http://{addr}")).unwrap();
        let k = ObjectKey::new("chunks/aa/obj").unwrap();
        assert_eq!(&s.get(&k).await.unwrap()[..], b"hello world");
        assert_eq!(&s.get_range(&k, 6..11).await.unwrap()[..], b"world");
        assert_eq!(s.head(&k).await.unwrap().unwrap().size, 11);
        assert_eq!(&s.get_limited(&k, 11).await.unwrap()[..], b"hello world");
        assert!(matches!(
            s.get_limited(&k, 10).await,
            Err(qsync_store::StoreError::TooLarge { .. })
        ));
        let missing = ObjectKey::new("chunks/aa/none").unwrap();
        assert!(s.get(&missing).await.unwrap_err().is_not_found());
        assert_eq!(s.head(&missing).await.unwrap(), None);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
