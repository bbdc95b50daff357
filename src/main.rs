//! `qsync`: the command-line front of the qsync crates.
//!
//! Parses flags (each also readable from a `QSYNC_*` environment variable),
//! sets up logging, runs one command and turns its error into one
//! `qsync: error:` line, a `caused by:` line per source, and a documented
//! exit code (see docs/operations.md). The work itself lives in the crates.

mod alloc;
mod cli;
mod commands;
mod demo;
mod fleet;
mod init;
mod metrics_file;
mod progress;
mod sample;

use std::process::ExitCode;

use clap::Parser;

/// Raises the open-file soft limit to the hard limit: `serve` holds a
/// descriptor per connection and restores a few per file in flight, and the
/// usual soft limit (1024) is far below what the hard limit allows.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("could not raise the open-file limit to its hard limit: {e}");
        }
    }
}

fn main() -> ExitCode {
    alloc::settle();
    let cli = cli::Cli::parse();
    let init = matches!(&cli.command, cli::Command::Restore(a) if a.init);
    let json_logs = match cli.log_format {
        cli::LogFormat::Json => true,
        cli::LogFormat::Text => false,
        cli::LogFormat::Auto => init && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.verbose {
            // The AWS SDK warns about every credential or region source it
            // tries and skips (IMDS off-cloud); a real failure reaches the error.
            0 => "warn,qsync=info,aws_config=error",
            1 => "info,aws_config=warn",
            _ => "debug",
        })
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json_logs {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    raise_open_file_limit();
    // Few blocking threads: each keeps its own allocator cache of multi-MiB
    // chunk buffers, and tokio's default (512) let peak RSS grow with the
    // length of a run (docs/benchmarks.md). The work they do is CPU- and
    // disk-bound, so more threads than this buy nothing on any machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            let code = commands::exit_code(&e);
            if json_logs {
                let why = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
                tracing::error!(exit_code = code, "{why}");
            } else if init {
                // Init containers: one line, so `kubectl logs` shows the whole reason.
                let why = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
                eprintln!("qsync: error: {why}");
            } else {
                eprintln!("qsync: error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(code)
        }
    }
}
