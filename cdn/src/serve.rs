//! The read-only HTTP origin for a local store (`qsync serve`).
//!
//! Every object is served at its key under `/`, so `qsync restore --from
//! http://HOST:PORT` works against it. Ranges, HEAD and conditional requests
//! come from tower-http's `ServeDir`, which also refuses paths that leave the
//! root. Pull-through caching of remote stores is not part of this module yet.

use std::future::Future;
use std::path::PathBuf;

use axum::Router;
use tokio::net::TcpListener;
use tower_http::services::ServeDir;

/// The router serving the store rooted at `root`.
pub fn app(root: PathBuf) -> Router {
    // 1 MiB reads instead of the default 64 KiB: each read is a hop through
    // tokio's blocking pool, and chunks are megabytes (docs/benchmarks.md).
    let files = ServeDir::new(root)
        .append_index_html_on_directories(false)
        .with_buf_chunk_size(1 << 20);
    Router::new().fallback_service(files)
}

/// Serves `root` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    root: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(root))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpStore;
    use crate::store::ObjectSource;
    use qsync_core::ObjectKey;

    #[tokio::test]
    async fn http_store_reads_what_serve_serves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/aa")).unwrap();
        std::fs::write(dir.path().join("chunks/aa/obj"), b"hello world").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, dir.path().into(), async {
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
            Err(crate::StoreError::TooLarge { .. })
        ));
        let missing = ObjectKey::new("chunks/aa/none").unwrap();
        assert!(s.get(&missing).await.unwrap_err().is_not_found());
        assert_eq!(s.head(&missing).await.unwrap(), None);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
