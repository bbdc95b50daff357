//! The destination is hostile ground: whoever else can write DEST (the node,
//! another tenant) while qsync runs, often as root, must not be able to make
//! qsync write, truncate or chmod anything outside DEST, hang it, exhaust
//! its memory, or make a resumed restore complete with data the snapshot
//! does not hold.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MARKER: &str = ".qsync-restore.json";
const PARTIAL: &str = ".qsync-restore.partial.json";
const JOURNAL: &str = ".qsync-restore.journal";
const INDEX: &str = ".qsync-restore.index.json";

/// A store holding a small hand-made snapshot of chain "eth" (version 1).
fn published() -> Env {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("db/sub")).unwrap();
    std::fs::write(src.join("db/a.sst"), noise(3 << 20, 1)).unwrap();
    std::fs::write(src.join("db/sub/b.log"), "log line\n".repeat(10_000)).unwrap();
    std::fs::write(src.join("top"), noise(100_000, 2)).unwrap();
    env.snapshot(&src, "eth", &[]);
    env
}

/// Runs `c` (stdin closed, output captured) in at most `limit`; a run
/// still going after that is killed and reported as a hang. The child's
/// address space is capped at 4 GiB so reading an endless file fails
/// instead of taking the machine's memory.
fn run_capped(c: Command, limit: Duration) -> (i32, String, String) {
    let mut capped = Command::new("prlimit");
    capped.arg("--as=4294967296").arg("--").arg(c.get_program());
    capped.args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => capped.env(k, v),
            None => capped.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        capped.current_dir(d);
    }
    run_bounded(capped, limit, "qsync")
}

/// Restores from the local store with `extra` flags, bounded in time.
fn restore(env: &Env, dest: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", dest);
    c.args(extra);
    run_capped(c, Duration::from_secs(120))
}

/// A file outside every destination with recognisable contents.
fn precious(env: &Env, name: &str) -> (PathBuf, Vec<u8>) {
    let dir = env.path("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let bytes = format!("precious {name}, not qsync's to touch\n")
        .repeat(50)
        .into_bytes();
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn assert_untouched(outside: &[(PathBuf, Vec<u8>)], when: &str) {
    let changed: Vec<String> = outside
        .iter()
        .filter(|(p, b)| std::fs::read(p).ok().as_ref() != Some(b))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        changed.is_empty(),
        "{when}: files outside DEST changed: {changed:?}"
    );
}

fn assert_regular(dest: &Path, name: &str) {
    let m = std::fs::symlink_metadata(dest.join(name)).unwrap();
    assert!(m.is_file(), "{name} is not a regular file after the restore");
}

#[test]
fn symlinks_at_qsync_names_and_data_paths_are_never_followed() {
    let env = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);
    // A new snapshot so the top-up rewrites files, the index and the markers.
    std::fs::write(env.path("src/db/a.sst"), noise(3 << 20, 7)).unwrap();
    std::fs::write(env.path("src/top"), noise(100_001, 8)).unwrap();
    env.snapshot(&env.path("src"), "eth", &[]);

    let names = [
        MARKER,
        ".qsync-restore.json.tmp",
        PARTIAL,
        ".qsync-restore.partial.json.tmp",
        JOURNAL,
        INDEX,
        ".qsync-restore.index.json.tmp",
        "top",
        "db/a.sst",
    ];
    let mut outside = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (target, bytes) = precious(&env, &format!("f{i}"));
        let _ = std::fs::remove_file(dest.join(name));
        symlink(&target, dest.join(name)).unwrap();
        outside.push((target, bytes));
    }
    // A directory of the snapshot swapped for a link to a directory outside.
    let outdir = env.path("outside/dir");
    std::fs::create_dir_all(&outdir).unwrap();
    let (inner, bytes) = (outdir.join("b.log"), b"outside log".to_vec());
    std::fs::write(&inner, &bytes).unwrap();
    outside.push((inner, bytes));
    std::fs::remove_dir_all(dest.join("db/sub")).unwrap();
    symlink(&outdir, dest.join("db/sub")).unwrap();

    // The links replaced the markers, so DEST no longer looks like ours.
    let (code, _, err) = restore(&env, &dest, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_untouched(&outside, "after the top-up");
    assert_eq!(files(&env.path("src")), files(&dest));
    assert_regular(&dest, MARKER);
    assert_regular(&dest, INDEX);

    // And again, now that DEST is ours: links at the names a top-up writes.
    for (i, name) in [
        PARTIAL,
        ".qsync-restore.partial.json.tmp",
        JOURNAL,
        ".qsync-restore.index.json.tmp",
        ".qsync-restore.json.tmp",
    ]
    .iter()
    .enumerate()
    {
        let (target, bytes) = precious(&env, &format!("g{i}"));
        let _ = std::fs::remove_file(dest.join(name));
        symlink(&target, dest.join(name)).unwrap();
        outside.push((target, bytes));
    }
    let (code, _, err) = restore(&env, &dest, &[]);
    assert_eq!(code, 0, "{err}");
    assert_untouched(&outside, "after the second top-up");
    assert_eq!(files(&env.path("src")), files(&dest));
}

#[test]
fn hard_link_to_a_file_outside_is_replaced_not_written_through() {
    let env = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);
    // The node (or another tenant) hard-links a restored file to a backup
    // outside DEST; the restored bytes are the same, so nothing looks off.
    let backup = env.path("backup.sst");
    std::fs::copy(dest.join("db/a.sst"), &backup).unwrap();
    std::fs::remove_file(dest.join("db/a.sst")).unwrap();
    std::fs::hard_link(&backup, dest.join("db/a.sst")).unwrap();
    let before = std::fs::read(&backup).unwrap();
    let mode_before = std::fs::metadata(&backup).unwrap().permissions();

    std::fs::write(env.path("src/db/a.sst"), noise(3 << 20, 9)).unwrap();
    env.snapshot(&env.path("src"), "eth", &[]);
    let (code, _, err) = restore(&env, &dest, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(&backup).unwrap() == before,
        "the top-up wrote through the hard link into the backup outside DEST"
    );
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions(), mode_before);
    assert_eq!(files(&env.path("src")), files(&dest));
}

#[test]
fn fifo_and_dev_zero_at_qsync_names_neither_hang_nor_exhaust_memory() {
    let env = published();
    let plants: [[(&str, bool); 4]; 2] = [
        [(MARKER, true), (PARTIAL, false), (JOURNAL, false), (INDEX, true)],
        [(MARKER, false), (PARTIAL, true), (JOURNAL, true), (INDEX, false)],
    ];
    for (round, plant) in plants.iter().enumerate() {
        let dest = env.path(&format!("dest{round}"));
        std::fs::create_dir_all(&dest).unwrap();
        for (name, fifo) in plant {
            if *fifo {
                let ok = Command::new("mkfifo").arg(dest.join(name)).status().unwrap();
                assert!(ok.success());
            } else {
                symlink("/dev/zero", dest.join(name)).unwrap();
            }
        }
        let (code, _, err) = restore(&env, &dest, &["--force"]);
        assert_eq!(code, 0, "round {round}: {err}");
        assert_eq!(files(&env.path("src")), files(&dest), "round {round}");
        assert_regular(&dest, MARKER);
        assert_regular(&dest, INDEX);
        assert!(!dest.join(PARTIAL).exists() && !dest.join(JOURNAL).exists());
        // A top-up with the index now an endless file still completes.
        std::fs::remove_file(dest.join(INDEX)).unwrap();
        symlink("/dev/zero", dest.join(INDEX)).unwrap();
        let (code, _, err) = restore(&env, &dest, &[]);
        assert_eq!(code, 0, "round {round}, top-up: {err}");
        assert_eq!(files(&env.path("src")), files(&dest), "round {round}");
    }
}

#[test]
fn state_dir_inside_dest_by_dot_dot_is_refused() {
    let env = published();
    // By hand, not restore_cmd: that one passes its own --state-dir.
    let mut c = qsync();
    c.args([
        "restore",
        "--from",
        env.store.to_str().unwrap(),
        "--chain",
        "eth",
        "--json",
    ])
    .arg("--public-key")
    .arg(&env.pk)
    .args(["--dest", "x/../dd", "--state-dir", "dd/state"])
    .current_dir(env.dir.path());
    let (code, _, err) = run_capped(c, Duration::from_secs(60));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("lies inside the destination"), "{err}");
    assert!(
        !env.path("dd/state").exists(),
        "trust state was written inside DEST"
    );
}

/// A 96 MiB sample served over HTTP, so restores at `--concurrency 1` take
/// long enough to be caught mid-flight.
fn served() -> (Env, Server) {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 96);
    env.snapshot(&src, "eth", &[]);
    let server = Server::start(&env.store);
    (env, server)
}

#[test]
fn second_restore_into_the_same_dest_fails_at_once() {
    let (env, server) = served();
    let dest = env.path("dest");
    let mut first = env.start_planned_restore(&server.url, &dest);
    let (code, _, err) = run_capped(
        env.restore_cmd(&server.url, "eth", &dest),
        Duration::from_secs(60),
    );
    let still_running = first.try_wait().unwrap().is_none();
    assert_eq!(code, 4, "second restore: {err}");
    assert!(
        err.contains("another qsync restore is running into") && err.contains(dest.to_str().unwrap()),
        "{err}"
    );
    assert!(
        still_running,
        "the first restore did not outlive the refusal of the second"
    );
    assert!(first.wait().unwrap().success(), "the first restore failed");
    assert_eq!(tree(&env.path("src")), tree(&dest));
    assert!(has_marker(&dest));
}

/// Chunk indices the journal in `dest` records per file.
fn journaled(dest: &Path) -> std::collections::HashMap<usize, HashSet<usize>> {
    let text = std::fs::read_to_string(dest.join(JOURNAL)).unwrap_or_default();
    let mut done: std::collections::HashMap<usize, HashSet<usize>> = Default::default();
    for line in text.lines().skip(1).filter(|l| l.ends_with('}')) {
        let rec: Value = serde_json::from_str(line).unwrap();
        let Some(f) = rec["f"].as_u64() else { continue };
        let set = done.entry(f as usize).or_default();
        if let Some(c) = rec["c"].as_array() {
            set.extend(c.iter().map(|i| i.as_u64().unwrap() as usize));
        }
    }
    done
}

#[test]
fn journaled_file_changed_in_place_with_same_size_is_hashed_on_resume() {
    let (env, server) = served();
    let dest = env.path("dest");
    let m: Value = serde_json::from_slice(&std::fs::read(env.manifest_path("eth")).unwrap()).unwrap();
    let whole = |done: &std::collections::HashMap<usize, HashSet<usize>>| {
        done.iter()
            .find(|(f, c)| {
                let n = m["files"][**f]["chunks"].as_array().unwrap().len();
                n > 0 && c.len() == n && m["files"][**f]["size"].as_u64().unwrap() > 100
            })
            .map(|(f, _)| *f)
    };
    let mut child = env.start_planned_restore(&server.url, &dest);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut victim = None;
    while victim.is_none() && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        victim = whole(&journaled(&dest));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "restore finished before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let victim = victim
        .or_else(|| whole(&journaled(&dest)))
        .expect("no file was journaled whole");
    let rel = m["files"][victim]["path"].as_str().unwrap();
    // Changed in place, size kept: only the contents differ.
    let path = dest.join(rel);
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&[0xA5; 100]).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);

    let (code, _, err) = run_capped(
        env.restore_cmd(&server.url, "eth", &dest),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        tree(&env.path("src")),
        tree(&dest),
        "{rel} changed in place was kept"
    );
}
