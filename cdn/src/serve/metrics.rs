//! Counters for `/metrics`, in Prometheus text format: requests and bytes
//! by object kind and status, and denied requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::ServeState;

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
        out.push_str("# HELP qsync_serve_requests_total Requests answered, by object kind and status.\n# TYPE qsync_serve_requests_total counter\n");
        for ((kind, status), (n, _)) in &requests {
            let _ = writeln!(
                out,
                "qsync_serve_requests_total{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP qsync_serve_bytes_total Response body bytes, by object kind and status.\n# TYPE qsync_serve_bytes_total counter\n");
        for ((kind, status), (_, b)) in &requests {
            let _ = writeln!(
                out,
                "qsync_serve_bytes_total{{kind=\"{kind}\",status=\"{status}\"}} {b}"
            );
        }
        out.push_str("# HELP qsync_serve_denied_total Requests refused by --allow (403) or --token-file (401).\n# TYPE qsync_serve_denied_total counter\n");
        for (status, n) in self.denied.lock().expect("not poisoned").iter() {
            let _ = writeln!(out, "qsync_serve_denied_total{{status=\"{status}\"}} {n}");
        }
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
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
