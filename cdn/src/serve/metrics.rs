//! Counters for `/metrics`, in Prometheus text format: requests and bytes
//! by object kind and status, and denied requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::ServeState;
use qsync_store::prometheus::{family, labels, CONTENT_TYPE};

/// (object kind, HTTP status) -> (requests, body bytes).
type Table = BTreeMap<(&'static str, u16), (u64, u64)>;

/// Request counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Table>,
    denied: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    /// Counts one answered request of `kind`.
    pub fn record(&self, kind: &'static str, status: StatusCode, bytes: u64) {
        let mut m = self.requests.lock().expect("not poisoned");
        let e = m.entry((kind, status.as_u16())).or_default();
        e.0 += 1;
        e.1 += bytes;
    }

    /// Adds streamed bytes (tar) to `kind`'s 200 row.
    pub fn add_bytes(&self, kind: &'static str, bytes: u64) {
        self.requests
            .lock()
            .expect("not poisoned")
            .entry((kind, 200))
            .or_default()
            .1 += bytes;
    }

    /// Counts a denied request.
    pub fn denied(&self, status: StatusCode) {
        *self
            .denied
            .lock()
            .expect("not poisoned")
            .entry(status.as_u16())
            .or_default() += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self.requests.lock().expect("not poisoned").clone();
        let by = |kind: &str, status: u16| labels(&[("kind", kind), ("status", &status.to_string())]);
        family(
            &mut out,
            "qsync_serve_requests_total",
            "counter",
            "Requests answered, by object kind and status.",
            requests.iter().map(|((k, st), (n, _))| (by(k, *st), *n as f64)),
        );
        family(
            &mut out,
            "qsync_serve_bytes_total",
            "counter",
            "Response body bytes, by object kind and status.",
            requests.iter().map(|((k, st), (_, b))| (by(k, *st), *b as f64)),
        );
        let denied = self.denied.lock().expect("not poisoned").clone();
        family(
            &mut out,
            "qsync_serve_denied_total",
            "counter",
            "Requests refused by --allow (403) or --token-file (401).",
            denied
                .iter()
                .map(|(st, n)| (labels(&[("status", &st.to_string())]), *n as f64)),
        );
        out
    }
}

/// `GET /metrics`.
pub async fn handler(State(st): State<Arc<ServeState>>) -> impl IntoResponse {
    let mut text = st.metrics.render();
    if let Some(c) = &st.cfg.pull_through {
        let s = &c.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
        for (name, help, kind, v) in [
            (
                "qsync_serve_cache_hits_total",
                "Objects served from the cache.",
                "counter",
                load(&s.hits),
            ),
            (
                "qsync_serve_cache_misses_total",
                "Objects fetched from upstream.",
                "counter",
                load(&s.misses),
            ),
            (
                "qsync_serve_cache_evictions_total",
                "Objects evicted from the cache.",
                "counter",
                load(&s.evictions),
            ),
            (
                "qsync_serve_cache_bytes",
                "Bytes in the cache.",
                "gauge",
                c.cached_bytes() as f64,
            ),
            (
                "qsync_serve_upstream_errors_total",
                "Failed upstream requests.",
                "counter",
                load(&s.upstream_errors),
            ),
            (
                "qsync_serve_upstream_corrupt_total",
                "Upstream copies that failed verification.",
                "counter",
                load(&s.upstream_corrupt),
            ),
            (
                "qsync_serve_upstream_seconds_total",
                "Time spent in successful upstream requests.",
                "counter",
                load(&s.upstream_micros) / 1e6,
            ),
        ] {
            family(&mut text, name, kind, help, [(String::new(), v)]);
        }
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}
