//! Progress reporting for the binary: a bar on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use qsync_core::progress::{NoProgress, Progress};

/// A progress bar on stderr.
struct Bar(Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, stage: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(stage.to_string());
        *self.0.lock().expect("not poisoned") = Some(bar);
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &*self.0.lock().expect("not poisoned") {
            b.inc(bytes);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }
}

/// Logs each stage's start and end.
struct Log;

impl Progress for Log {
    fn start(&self, stage: &str, total: u64) {
        tracing::info!("{stage}: {total} bytes to process");
    }
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Log lines at a steady interval while a stage runs: bytes done, rate and
/// ETA, and a warning once no byte has arrived for longer than `stall`
/// (for pods, whose logs are the only window on a restore).
pub struct Ticker {
    state: Arc<Mutex<Stage>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stage {
    name: Option<String>,
    total: u64,
    done: u64,
    started: Option<std::time::Instant>,
    last_byte: Option<std::time::Instant>,
}

impl Ticker {
    /// Starts the ticker (on the current tokio runtime).
    pub fn start(every: std::time::Duration, stall: std::time::Duration) -> Arc<Ticker> {
        let state: Arc<Mutex<Stage>> = Arc::default();
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut warned_at: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                // Copied out: a log write that blocks must not hold up the
                // chunk tasks reporting progress.
                let (name, total, done, started, last) = {
                    let st = s.lock().expect("not poisoned");
                    let (Some(name), Some(started), Some(last)) = (st.name.clone(), st.started, st.last_byte)
                    else {
                        continue;
                    };
                    (name, st.total, st.done, started, last)
                };
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let eta = (rate > 0.0).then(|| ((total - done.min(total)) as f64 / rate).round() as u64);
                let percent = if total == 0 {
                    100.0
                } else {
                    100.0 * done as f64 / total as f64
                };
                tracing::info!(
                    stage = %name,
                    bytes_done = done,
                    bytes_total = total,
                    bytes_per_second = rate.round() as u64,
                    eta_seconds = eta,
                    "{name}: {done} of {total} bytes ({percent:.1}%), {:.1} MB/s, ETA {}",
                    rate / 1e6,
                    eta.map_or("unknown".to_string(), |e| format!("{e}s"))
                );
                let quiet = last.elapsed();
                // Only the fetch waits on mirrors; hashing a huge file may
                // rightly take longer than --timeout between two advances.
                let fetching = name == "restore";
                if fetching && quiet > stall && warned_at.is_none_or(|w| w.elapsed() >= stall) {
                    warned_at = Some(std::time::Instant::now());
                    tracing::warn!(
                        stage = %name,
                        stalled_seconds = quiet.as_secs(),
                        bytes_done = done,
                        "{name} stalled: no chunk has completed for {}s, longer than --timeout {}s; the mirrors are slow, unreachable or failing (each chunk is retried on every mirror until --deadline)",
                        quiet.as_secs(),
                        stall.as_secs()
                    );
                } else if quiet <= stall {
                    warned_at = None;
                }
            }
        });
        Arc::new(Ticker { state, task })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Progress for Ticker {
    fn start(&self, stage: &str, total: u64) {
        Log.start(stage, total);
        let now = std::time::Instant::now();
        *self.state.lock().expect("not poisoned") = Stage {
            name: Some(stage.to_string()),
            total,
            done: 0,
            started: Some(now),
            last_byte: Some(now),
        };
    }
    fn advance(&self, bytes: u64) {
        let mut st = self.state.lock().expect("not poisoned");
        st.done += bytes;
        st.last_byte = Some(std::time::Instant::now());
    }
    fn finish(&self) {
        *self.state.lock().expect("not poisoned") = Stage::default();
    }
}

/// For a restore: on a terminal a bar (nothing when `quiet`), otherwise
/// a [`Ticker`] every `every` (never for `every` of zero), warning of a
/// stall after `stall`.
pub fn for_restore(quiet: bool, every: std::time::Duration, stall: std::time::Duration) -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        for_terminal(quiet)
    } else if every.is_zero() {
        Arc::new(NoProgress)
    } else {
        Ticker::start(every, stall)
    }
}

/// A bar when stderr is a terminal, log lines otherwise, nothing when `quiet`.
pub fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
    if quiet {
        Arc::new(NoProgress)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bar(Mutex::new(None)))
    } else {
        Arc::new(Log)
    }
}
