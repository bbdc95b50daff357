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
