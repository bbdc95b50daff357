//! The write path's bounds hold whatever the manifest asks: a chunk shared
//! by many files does not open them all at once, and the copies it is
//! filled into are checked like streamed ones.

mod common;

use std::process::Command;

use common::*;

/// 1,500 identical small files are one chunk with 1,500 places, and six
/// identical 3 MiB files put each of their chunks in six places (more than
/// stream at once, so some are filled from the first copy, through
/// `O_DIRECT` where the disk has it). Under `ulimit -n 1024` (soft and hard,
/// so qsync cannot raise it) the restore must complete and be
/// byte-identical; before the bound it failed with "Too many open files".
#[test]
fn one_chunk_in_many_files_restores_under_a_low_open_file_limit() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("same")).unwrap();
    let small = noise(4096, 7);
    for i in 0..1500 {
        std::fs::write(src.join(format!("same/f{i:04}")), &small).unwrap();
    }
    let big = noise(3 << 20, 8);
    for i in 0..6 {
        std::fs::write(src.join(format!("big{i}.sst")), &big).unwrap();
    }
    env.snapshot(&src, "eth", &[]);

    let dest = env.path("dest");
    let restore = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    let mut capped = Command::new("prlimit");
    capped
        .arg("--nofile=1024:1024")
        .arg("--")
        .arg(restore.get_program());
    capped.args(restore.get_args());
    for (k, v) in restore.get_envs() {
        match v {
            Some(v) => capped.env(k, v),
            None => capped.env_remove(k),
        };
    }
    let (code, _, err) = run(capped);
    assert_eq!(code, 0, "restore under ulimit -n 1024 failed: {err}");
    assert!(has_marker(&dest));
    assert_eq!(tree(&src), tree(&dest));
}
