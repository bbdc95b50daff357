//! The allocator's settings: glibc's malloc, told to hand every block of
//! 4 MiB or more straight back to the OS when it is freed.
//!
//! By default glibc raises its mmap threshold after the first large free
//! (up to 32 MiB), so multi-MiB chunk buffers then come from its per-thread
//! arenas, which keep them: snapshot RSS tripled. mimalloc, used before for
//! that reason, kept other memory instead: its purge delay (259-279 MiB for
//! a 20 GiB snapshot, where heaptrack found 103 MiB live) and partly used
//! pages of every size class in every thread (a million-file restore
//! peaked at 283-287 MiB beside a 190 MiB heap). A fixed threshold
//! (`glibc.malloc.mmap_threshold`) stops the raise, so chunk-sized blocks
//! are mapped and unmapped; 4 MiB, because at 256 KiB the 1 MiB staging
//! and 256 KiB inflate buffers were mapped afresh for every chunk and a
//! 20 GiB restore took a third longer. Two arenas
//! (`glibc.malloc.arena_max`) bound what small blocks strand across
//! threads, and transparent huge pages on mapped blocks
//! (`glibc.malloc.hugetlb=1`) take most page faults out of fresh chunk
//! buffers. The same runs peaked at 136 and 243 MiB, within a tenth of
//! mimalloc's time on 20 GiB and within noise elsewhere
//! (docs/benchmarks.md, "Memory").
//!
//! glibc reads its tunables from the environment once, at start, so a
//! process started without them replaces itself, before doing anything
//! else, with the same program and arguments and the setting added:
//! `exec`, which keeps the process id (what an init system, a shell waiting
//! on it or a test sending signals sees). A setting the operator gave is
//! kept; a failed `exec` (no `/proc/self/exe`, say) only costs the memory.
//! The re-executed process takes its own setting out of its environment
//! again once glibc has read it: programs qsync starts (freeze hooks that
//! restart the node, `--verify-command`) get the environment the operator
//! gave, not two malloc arenas.

use std::os::unix::process::CommandExt;

/// The environment variable glibc reads its tunables from.
const TUNABLES: &str = "GLIBC_TUNABLES";

/// Marks the process [`settle`] re-executed, so that it knows the
/// tunables are its own to remove.
const SETTLED: &str = "QSYNC_ALLOCATOR_SETTLED";

/// What qsync sets unless the environment already sets [`TUNABLES`].
const SETTINGS: &str = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1";

/// Re-executes this process with [`SETTINGS`] in its environment, unless
/// it sets glibc's tunables already; returns only when nothing was done.
pub fn settle() {
    if std::env::var_os(SETTLED).is_some() {
        // glibc has read them; no child inherits them. One thread yet.
        std::env::remove_var(SETTLED);
        std::env::remove_var(TUNABLES);
        return;
    }
    if std::env::var_os(TUNABLES).is_some() {
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
    cmd.env(TUNABLES, SETTINGS).env(SETTLED, "1");
    // Only returns on failure; then carry on with the defaults.
    let _ = cmd.exec();
}
