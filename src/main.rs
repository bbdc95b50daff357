//! `qsync`: the command-line front of the qsync crates.
//!
//! Parses flags (each also readable from a `QSYNC_*` environment variable),
//! sets up logging, runs one command and turns its error into one
//! `qsync: error:` line, a `caused by:` line per source, and a documented
//! exit code (see docs/operations.md). The work itself lives in the crates.

mod cli;
mod commands;
mod demo;
mod progress;
mod sample;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator keeps freed multi-MiB chunk buffers in per-thread arenas
/// (its mmap threshold rises after the first large free), which tripled peak
/// RSS in the benchmarks; mimalloc returns them. See docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.verbose {
            0 => "warn,qsync=info",
            1 => "info",
            _ => "debug",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qsync: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(commands::exit_code(&e))
        }
    }
}
