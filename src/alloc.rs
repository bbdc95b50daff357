//! The allocator and its settings.
//!
//! mimalloc returns freed multi-MiB chunk buffers to the OS, where glibc's
//! per-thread arenas kept them (its mmap threshold rises after the first
//! large free) and tripled peak RSS. But mimalloc 3 waits before it does:
//! 1 s, times 10 for its arenas. A restore frees hundreds of MiB a second,
//! so a 50,000-file restore from a directory store peaked at 547 MiB of
//! RSS by default and 270 MiB with the delay cut to 10 ms; over HTTP,
//! 220-243 MiB by default, 186 MiB at 100 ms. Purging sooner costs
//! `madvise` calls: at once, a tenth of a restore's time. 300 ms (the
//! restore's setting here) was as fast as the default and peaked at
//! 150-160 MiB instead of 181 (docs/benchmarks.md, "Memory"). A snapshot
//! (and the agent, which runs snapshots for weeks) purges at once: at
//! 300 ms its peak grew with the data (245, 380, 544 MiB at 2, 8, 20 GiB),
//! at once it is 150-170, 215-225 and 290 MiB, with no time lost that two
//! runs each could show, on large files or on 50,000 small ones.
//!
//! mimalloc reads its settings from the environment once, before `main`,
//! and changing them later takes a call the workspace does not allow
//! (`unsafe`). So a process started without them replaces itself, before
//! doing anything else, with the same program and arguments and the
//! settings added: `exec`, which keeps the process id (what an init
//! system, a shell waiting on it or a test sending signals sees).
//! Settings the operator gave are kept; a failed `exec` (no
//! `/proc/self/exe`, say) only costs the memory.

use std::os::unix::process::CommandExt;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What qsync sets unless the environment already does, for a process
/// started with `args` (program name first).
fn settings(args: &[std::ffi::OsString]) -> [(&'static str, &'static str); 2] {
    // The command: the first argument that is not a flag (a global flag's
    // value before it only makes this the restore's setting).
    let command = args
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'));
    let snapshots = command.is_some_and(|c| c == "snapshot" || c == "agent");
    let delay = if snapshots { "0" } else { "300" };
    [
        ("MIMALLOC_PURGE_DELAY", delay),
        ("MIMALLOC_ARENA_PURGE_MULT", "1"),
    ]
}

/// Re-executes this process with [`settings`] in its environment, unless
/// they are all there already; returns only when nothing was done.
pub fn settle() {
    let all: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let missing: Vec<_> = settings(&all)
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args);
    for (name, value) in missing {
        cmd.env(name, value);
    }
    // Only returns on failure; then carry on with the defaults.
    let _ = cmd.exec();
}

#[cfg(test)]
mod tests {
    use super::settings;

    fn delay(args: &[&str]) -> &'static str {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        settings(&args)[0].1
    }

    #[test]
    fn snapshots_purge_at_once_and_everything_else_after_300_ms() {
        assert_eq!(delay(&["qsync", "snapshot", "--source", "x"]), "0");
        assert_eq!(delay(&["qsync", "-v", "agent", "--config", "c"]), "0");
        assert_eq!(delay(&["qsync", "restore", "--from", "snapshot"]), "300");
        assert_eq!(delay(&["qsync", "serve"]), "300");
        assert_eq!(delay(&["qsync"]), "300");
    }
}
