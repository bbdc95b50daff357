//! `--metrics-file`: the outcome of one restore in Prometheus text format,
//! for node-exporter's textfile collector. Written atomically (temporary
//! file, then rename) so the collector never reads half a file.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use qsync_core::ChainName;
use qsync_fetcher::dest::Marker;
use qsync_fetcher::{MirrorReport, RestoreSummary};
use qsync_store::prometheus;

/// What one run did.
pub struct Run {
    success: bool,
    skipped: bool,
    duration: Duration,
    version: Option<u64>,
    height: Option<u64>,
    bytes_fetched: u64,
    bytes_reused: u64,
    mirrors: Vec<MirrorReport>,
}

impl Run {
    /// Init mode found the destination complete and recent.
    pub fn skipped(m: &Marker) -> Run {
        Run {
            success: true,
            skipped: true,
            duration: Duration::ZERO,
            version: Some(m.version),
            height: m.height,
            bytes_fetched: 0,
            bytes_reused: 0,
            mirrors: Vec::new(),
        }
    }

    /// A restore ran; `summary` is `None` when it failed.
    pub fn finished(summary: Option<&RestoreSummary>, mirrors: Vec<MirrorReport>, duration: Duration) -> Run {
        Run {
            success: summary.is_some(),
            skipped: false,
            duration,
            version: summary.map(|s| s.version),
            height: summary.and_then(|s| s.height),
            bytes_fetched: summary.map_or(0, |s| s.bytes_fetched),
            bytes_reused: summary.map_or(0, |s| s.bytes_reused),
            mirrors,
        }
    }
}

/// Renders `run` for `chain`.
pub fn render(chain: &ChainName, run: &Run) -> String {
    let mut out = String::new();
    let labels = prometheus::labels(&[("chain", chain.as_str())]);
    let mut gauge = |name: &str, help: &str, value: f64| {
        prometheus::family(&mut out, name, "gauge", help, [(labels.clone(), value)]);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    gauge(
        "qsync_restore_success",
        "1 if the last restore run succeeded.",
        f64::from(u8::from(run.success)),
    );
    gauge(
        "qsync_restore_skipped",
        "1 if init mode found the destination complete and recent.",
        f64::from(u8::from(run.skipped)),
    );
    gauge(
        "qsync_restore_last_run_timestamp_seconds",
        "When the last restore run ended.",
        now,
    );
    gauge(
        "qsync_restore_duration_seconds",
        "Duration of the last restore run.",
        run.duration.as_secs_f64(),
    );
    gauge(
        "qsync_restore_bytes_fetched",
        "Bytes fetched from mirrors by the last run.",
        run.bytes_fetched as f64,
    );
    gauge(
        "qsync_restore_bytes_reused",
        "Bytes already in place and kept by the last run.",
        run.bytes_reused as f64,
    );
    if let Some(v) = run.version {
        gauge(
            "qsync_restore_version",
            "Snapshot version in the destination.",
            v as f64,
        );
    }
    if let Some(h) = run.height {
        gauge(
            "qsync_restore_height",
            "Block height of the snapshot in the destination.",
            h as f64,
        );
    }
    for (name, help, pick) in [
        (
            "qsync_restore_mirror_bytes",
            "Bytes of chunks received per mirror.",
            0,
        ),
        ("qsync_restore_mirror_errors", "Failed requests per mirror.", 1),
        (
            "qsync_restore_mirror_corrupt",
            "Corrupt copies served per mirror.",
            2,
        ),
    ] {
        if run.mirrors.is_empty() {
            continue;
        }
        let samples = run.mirrors.iter().map(|m| {
            let l = prometheus::labels(&[("chain", chain.as_str()), ("mirror", &m.location)]);
            (l, [m.bytes, m.errors, m.corrupt][pick] as f64)
        });
        prometheus::family(&mut out, name, "gauge", help, samples);
    }
    out
}

/// Writes the metrics of `run` to `path` atomically.
pub fn write(path: &Path, chain: &ChainName, run: &Run) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, render(chain, run))
        .with_context(|| format!("writing metrics to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing metrics to {}", path.display()))
}
