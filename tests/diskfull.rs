//! A destination on a small filesystem (a tmpfs mounted for the test): the
//! free-space preflight refuses before writing when it can tell, and when it
//! cannot (sparse files hide the need) the restore fails cleanly on ENOSPC,
//! with a message saying what to do and no completion marker.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Mounts a tmpfs of `mib` MiB at `dir`; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn tmpfs_or_skip(dir: &Path, mib: u64) -> Option<Tmpfs> {
    let t = Tmpfs::mount(dir, mib);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    assert!(
        t.is_some() || !root,
        "running as root but could not mount a tmpfs"
    );
    if t.is_none() {
        eprintln!("skipped: mounting a tmpfs needs root (scripts/test.sh runs as root in CI)");
    }
    t
}

#[test]
fn preflight_refuses_before_writing() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 48);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("small");
    let Some(_fs) = tmpfs_or_skip(&dest, 32) else {
        return;
    };
    let (code, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("free") && err.contains("--dest"), "{err}");
    assert!(!has_marker(&dest));
    // Only qsync's own markers (and directories) exist: no data was written.
    let data: Vec<_> = files(&dest).into_keys().collect();
    assert!(data.is_empty(), "preflight failure wrote {data:?}");
}

#[test]
fn filling_up_mid_restore_fails_cleanly() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.sst"), noise(150 << 20, 1)).unwrap();
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("small");
    let Some(_fs) = tmpfs_or_skip(&dest, 100) else {
        return;
    };
    // A sparse file of the right length: preflight sees no growth to reserve.
    std::fs::File::create(dest.join("big.sst"))
        .unwrap()
        .set_len(150 << 20)
        .unwrap();
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.arg("--force");
    let (code, _, err) = run(c);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("filesystem is full") && err.contains("--dest"),
        "{err}"
    );
    assert!(!has_marker(&dest));
}
