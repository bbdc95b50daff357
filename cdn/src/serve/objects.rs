//! HTTP semantics for store objects, in front of the file server.
//!
//! Only paths that are valid object keys reach the files (anything with
//! `..`, `%`-escapes, empty segments or other characters is 404), so no path
//! outside the store is reachable however it is encoded. Each object gets a
//! strong ETag and a `Cache-Control` by kind:
//!
//! | kind | ETag | Cache-Control |
//! |---|---|---|
//! | chunk, manifest, every signature | the content address in the key | a year, immutable |
//! | pointer, catalog | BLAKE3 of the current bytes | `--pointer-max-age` |
//! | a signature the pull-through cache has not verified | BLAKE3 of the current bytes | `--pointer-max-age` |
//! | anything else in the directory | none | no-cache |
//!
//! `If-None-Match` with the current ETag answers 304 without reading the
//! object. Ranges, HEAD and bodies come from `ServeDir`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use qsync_core::{Digest, ObjectKey};
use qsync_store::CacheClass;

use super::ServeState;

/// What a key names, for caching and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `chunks/...`
    Chunk,
    /// `chains/<chain>/manifests/...`
    Manifest,
    /// `chains/<chain>/latest.json`, `catalog.json`
    Pointer,
    /// `<pointer or catalog>.sigs/<b3>[.<KEYID>].minisig`: named by what it
    /// signs (with the key id for an additional signature of a key rotation).
    Signature,
    /// Anything else.
    Other,
}

impl Kind {
    /// The kind of `key` (a manifest's signature, primary or additional,
    /// has the manifest's kind: both are written once and never change).
    pub fn of(key: &str) -> Kind {
        let key = key.strip_suffix(".minisig").unwrap_or(key);
        if key.contains(".sigs/") {
            Kind::Signature
        } else if key.starts_with("chunks/") {
            Kind::Chunk
        } else if key.starts_with("chains/") && key.contains("/manifests/") {
            Kind::Manifest
        } else if key == "catalog.json" || (key.starts_with("chains/") && key.ends_with("/latest.json")) {
            Kind::Pointer
        } else {
            Kind::Other
        }
    }

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Chunk => "chunk",
            Kind::Manifest => "manifest",
            Kind::Pointer => "pointer",
            Kind::Signature => "signature",
            Kind::Other => "other",
        }
    }
}

/// Middleware for object requests: key validation, ETag, 304, Cache-Control, metrics.
pub async fn headers(State(st): State<Arc<ServeState>>, req: Request, next: Next) -> Response {
    let Some(key) = req
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| ObjectKey::new(p).ok())
    else {
        st.metrics.record("invalid", StatusCode::NOT_FOUND, 0);
        return (StatusCode::NOT_FOUND, "not an object key\n").into_response();
    };
    let kind = Kind::of(key.as_str());
    if let Some(cache) = &st.cfg.pull_through {
        if let Err(e) = cache.ensure(&key).await {
            let status = match &e {
                e if e.is_not_found() => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!("{e}");
            st.metrics.record(kind.label(), status, 0);
            let msg = if status == StatusCode::NOT_FOUND {
                "not found\n"
            } else {
                "upstream failed or served a corrupt copy\n"
            };
            return (status, msg).into_response();
        }
    }
    // An upstream signature not (yet) verified must not be pinned for a year
    // by clients and CDNs: the next fetch may bring the good one.
    let unverified = st.cfg.pull_through.as_ref().is_some_and(|c| !c.is_verified(&key));
    let (etag, cache) = match kind {
        Kind::Chunk | Kind::Manifest | Kind::Signature if !unverified => {
            let name = key.as_str().rsplit('/').next().expect("keys are non-empty");
            (
                Some(format!("\"{name}\"")),
                CacheClass::Immutable.cache_control(st.cfg.pointer_max_age),
            )
        }
        Kind::Pointer | Kind::Chunk | Kind::Manifest | Kind::Signature => {
            // Pointers and signatures are small; hash them so the tag changes with the content.
            let etag = st
                .store
                .get(&key)
                .await
                .ok()
                .map(|b| format!("\"{}\"", Digest::of(&b)));
            (etag, CacheClass::Mutable.cache_control(st.cfg.pointer_max_age))
        }
        Kind::Other => (None, "no-cache".to_string()),
    };
    let etag = etag.and_then(|e| HeaderValue::from_str(&e).ok());
    let cache = HeaderValue::from_str(&cache).expect("ASCII");
    if let Some(tag) = &etag {
        let matches = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || t.trim() == tag.to_str().unwrap_or_default());
        if matches {
            st.metrics.record(kind.label(), StatusCode::NOT_MODIFIED, 0);
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().insert(header::ETAG, tag.clone());
            resp.headers_mut().insert(header::CACHE_CONTROL, cache);
            return resp;
        }
    }
    let mut resp = match &st.cfg.objects {
        Some(objects) => from_source(objects.as_ref(), &key, req.method()).await,
        None => next.run(req).await,
    };
    let status = resp.status();
    if status.is_success() {
        if let Some(tag) = etag {
            resp.headers_mut().insert(header::ETAG, tag);
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, cache);
    }
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    st.metrics.record(kind.label(), status, bytes);
    resp
}

/// An object from `source` (`serve --data`: a node's kept signed objects,
/// and chunks read from its files and hashed), or 404 when it cannot serve
/// it. HEAD asks only for the size.
async fn from_source(
    source: &dyn qsync_store::ObjectSource,
    key: &ObjectKey,
    method: &axum::http::Method,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let (len, body) = if method == axum::http::Method::HEAD {
        match source.head(key).await {
            Ok(Some(meta)) => (meta.size, axum::body::Body::empty()),
            Ok(None) => return not_found(),
            Err(e) => return failed(e),
        }
    } else {
        match source.get(key).await {
            Ok(body) => (body.len() as u64, axum::body::Body::from(body)),
            Err(e) if e.is_not_found() => return not_found(),
            Err(e) => return failed(e),
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

fn failed(e: qsync_store::StoreError) -> Response {
    tracing::warn!("{e}");
    (StatusCode::INTERNAL_SERVER_ERROR, "could not read the object\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{app, ServeConfig};
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::Request;
    use std::net::SocketAddr;
    use tower::ServiceExt;

    fn store() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let hex = Digest::of(b"chunk").to_hex();
        std::fs::create_dir_all(d.path().join(format!("chunks/{}", &hex[..2]))).unwrap();
        std::fs::write(
            d.path().join(format!("chunks/{}/{hex}", &hex[..2])),
            b"0123456789",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("chains/eth")).unwrap();
        std::fs::write(d.path().join("chains/eth/latest.json"), b"{\"v\":1}").unwrap();
        std::fs::write(d.path().join("secret.txt"), b"outside").unwrap();
        d
    }

    #[test]
    fn additional_signatures_are_signatures_like_the_primary_ones() {
        use qsync_core::sign::KeyId;
        let id: KeyId = "0123456789ABCDEF".parse().unwrap();
        let c = qsync_core::ChainName::new("eth").unwrap();
        let d = Digest::of(b"x");
        let m = ObjectKey::manifest(&c, 1, &d, true);
        for object in [ObjectKey::pointer(&c), ObjectKey::catalog(), m] {
            let primary = Kind::of(object.signature_for(b"x").as_str());
            assert_eq!(
                Kind::of(object.signature_by(b"x", id).as_str()),
                primary,
                "{object}"
            );
            assert!(matches!(primary, Kind::Signature | Kind::Manifest), "{object}");
        }
    }

    fn chunk_path() -> String {
        let hex = Digest::of(b"chunk").to_hex();
        format!("/chunks/{}/{hex}", &hex[..2])
    }

    async fn send(cfg: ServeConfig, req: Request<Body>) -> Response {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        app(cfg).layer(MockConnectInfo(peer)).oneshot(req).await.unwrap()
    }

    fn get(uri: &str) -> axum::http::request::Builder {
        Request::builder().uri(uri)
    }

    #[tokio::test]
    async fn chunks_are_immutable_with_content_etag_and_304() {
        let d = store();
        let cfg = ServeConfig::new(d.path());
        let resp = send(cfg.clone(), get(&chunk_path()).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let etag = resp.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", Digest::of(b"chunk").to_hex()));
        assert!(resp.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        let again = get(&chunk_path())
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        let resp = send(cfg, again).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(resp.headers()[header::ETAG].to_str().unwrap(), etag);
    }

    #[tokio::test]
    async fn pointer_etag_follows_content_and_cache_is_short() {
        let d = store();
        let cfg = ServeConfig::new(d.path());
        let first = send(
            cfg.clone(),
            get("/chains/eth/latest.json").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(first.headers()[header::CACHE_CONTROL], "public, max-age=60");
        let tag1 = first.headers()[header::ETAG].clone();
        std::fs::write(d.path().join("chains/eth/latest.json"), b"{\"v\":2}").unwrap();
        let req = get("/chains/eth/latest.json")
            .header(header::IF_NONE_MATCH, tag1.clone())
            .body(Body::empty());
        let second = send(cfg, req.unwrap()).await;
        assert_eq!(second.status(), StatusCode::OK, "stale ETag answered 304");
        assert_ne!(second.headers()[header::ETAG], tag1);
    }

    #[tokio::test]
    async fn single_ranges_and_unsatisfiable_ranges() {
        let d = store();
        let cfg = ServeConfig::new(d.path());
        let req = get(&chunk_path())
            .header(header::RANGE, "bytes=2-4")
            .body(Body::empty())
            .unwrap();
        let resp = send(cfg.clone(), req).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        let body = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], b"234");
        let req = get(&chunk_path())
            .header(header::RANGE, "bytes=50-")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(cfg, req).await.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    }

    #[tokio::test]
    async fn nothing_outside_object_keys_is_reachable() {
        let d = store();
        let sub = d.path().join("store");
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = ServeConfig::new(&sub);
        for uri in [
            "/../secret.txt",
            "/chunks/..%2f..%2fsecret.txt",
            "/%2e%2e/secret.txt",
            "/chunks%2F..%2F..%2Fsecret.txt",
            "//secret.txt",
            "/chunks/./x",
            "/",
        ] {
            let resp = send(cfg.clone(), get(uri).body(Body::empty()).unwrap()).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{uri}");
        }
    }

    #[tokio::test]
    async fn tokens_and_networks_guard_everything_but_healthz() {
        let d = store();
        let mut cfg = ServeConfig::new(d.path());
        cfg.tokens = vec!["s3cret".into()];
        let resp = send(cfg.clone(), get(&chunk_path()).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let ok = get(&chunk_path())
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty());
        assert_eq!(send(cfg.clone(), ok.unwrap()).await.status(), StatusCode::OK);
        let wrong = get(&chunk_path())
            .header(header::AUTHORIZATION, "Bearer s3creT")
            .body(Body::empty());
        assert_eq!(
            send(cfg.clone(), wrong.unwrap()).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(cfg.clone(), get("/healthz").body(Body::empty()).unwrap())
                .await
                .status(),
            StatusCode::OK
        );

        cfg.tokens.clear();
        cfg.allow = vec!["10.0.0.0/8".parse().unwrap()];
        let resp = send(cfg.clone(), get(&chunk_path()).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        cfg.allow.push("127.0.0.0/8".parse().unwrap());
        assert_eq!(
            send(cfg, get(&chunk_path()).body(Body::empty()).unwrap())
                .await
                .status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn metrics_count_requests_and_denials() {
        let d = store();
        let mut cfg = ServeConfig::new(d.path());
        cfg.tokens = vec!["t".into()];
        let router = app(cfg).layer(MockConnectInfo("127.0.0.1:1".parse::<SocketAddr>().unwrap()));
        let auth = |uri: &str| {
            get(uri)
                .header(header::AUTHORIZATION, "Bearer t")
                .body(Body::empty())
                .unwrap()
        };
        router.clone().oneshot(auth(&chunk_path())).await.unwrap();
        router
            .clone()
            .oneshot(get(&chunk_path()).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let resp = router.oneshot(auth("/metrics")).await.unwrap();
        let text = String::from_utf8(
            axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(
            text.contains("qsync_serve_requests_total{kind=\"chunk\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("qsync_serve_bytes_total{kind=\"chunk\",status=\"200\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("qsync_serve_denied_total{status=\"401\"} 1"),
            "{text}"
        );
    }
}
