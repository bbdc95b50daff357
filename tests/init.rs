//! Init-container mode, configured by environment variables alone: a fresh
//! destination is restored; a complete, recent one is left alone without
//! touching the network; a stale one is topped up; a failing --verify-cmd
//! leaves no marker; failures are one log line; metrics land in a textfile.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `qsync restore` configured like a Kubernetes init container: env only.
fn init_cmd(env: &Env, from: &str, dest: &Path) -> Command {
    let mut c = qsync();
    c.arg("restore")
        .env_remove("RUST_LOG")
        .env("QSYNC_INIT", "1")
        .env("QSYNC_FROM", from)
        .env(
            "QSYNC_PUBLIC_KEY",
            std::fs::read_to_string(&env.pk).unwrap().lines().nth(1).unwrap(),
        )
        .env("QSYNC_CHAIN", "eth")
        .env("QSYNC_DEST", dest)
        .env("QSYNC_STATE_DIR", &env.state)
        .env("QSYNC_METRICS_FILE", env.path("qsync.prom"))
        .env("QSYNC_TIMEOUT", "2s")
        .env("QSYNC_DEADLINE", "5s");
    c
}

fn metrics(env: &Env) -> String {
    std::fs::read_to_string(env.path("qsync.prom")).unwrap()
}

fn published() -> Env {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 16);
    env.snapshot(&src, "eth", &["--height", "1000"]);
    env
}

#[test]
fn fresh_then_recent_without_network_then_stale_top_up() {
    let env = published();
    let dest = env.path("dest");
    let (code, _, err) = run(init_cmd(&env, env.store.to_str().unwrap(), &dest));
    assert_eq!(code, 0, "{err}");
    assert!(has_marker(&dest));
    assert_eq!(files(&env.path("src")), files(&dest));
    let m = metrics(&env);
    assert!(m.contains("qsync_restore_success{chain=\"eth\"} 1"), "{m}");
    assert!(m.contains("qsync_restore_height{chain=\"eth\"} 1000"), "{m}");
    assert!(
        m.contains("qsync_restore_mirror_bytes{chain=\"eth\",mirror="),
        "{m}"
    );

    // Complete and recent: every mirror is down, and that is fine.
    let (code, _, err) = run(init_cmd(&env, "http://127.0.0.1:9", &dest));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to do"), "{err}");
    assert!(metrics(&env).contains("qsync_restore_skipped{chain=\"eth\"} 1"));

    // Stale: a newer snapshot exists and the restore is older than --max-age.
    std::fs::write(env.path("src/new.sst"), noise(1 << 20, 4)).unwrap();
    env.snapshot(&env.path("src"), "eth", &["--height", "2000"]);
    // The restore was written an hour ago.
    let marker_path = dest.join(".qsync-restore.json");
    let mut marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
    marker["written_at"] = an_hour_ago().to_string().into();
    std::fs::write(&marker_path, serde_json::to_vec(&marker).unwrap()).unwrap();
    let mut c = init_cmd(&env, env.store.to_str().unwrap(), &dest);
    c.env("QSYNC_MAX_AGE", "1s");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&env.path("src")), files(&dest));
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".qsync-restore.json")).unwrap()).unwrap();
    assert_eq!(marker["version"], 2);
    let m = metrics(&env);
    assert!(
        m.contains("qsync_restore_bytes_reused{chain=\"eth\"} 16777216"),
        "{m}"
    );
}

#[test]
fn failing_verify_cmd_leaves_no_marker_and_one_log_line() {
    let env = published();
    let dest = env.path("dest");
    let mut c = init_cmd(&env, env.store.to_str().unwrap(), &dest);
    c.env(
        "QSYNC_VERIFY_CMD",
        "echo \"head $QSYNC_HEIGHT is not what the node says\" >&2; exit 3",
    );
    c.env("QSYNC_LOG_FORMAT", "text");
    let (code, _, err) = run(c);
    assert_eq!(code, 6, "{err}");
    assert!(!has_marker(&dest));
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("--verify-cmd") && lines[0].contains("head 1000 is not what the node says"),
        "{err}"
    );
    assert!(metrics(&env).contains("qsync_restore_success{chain=\"eth\"} 0"));

    // A check that passes (it sees the restored data) lets the marker through.
    let mut c = init_cmd(&env, env.store.to_str().unwrap(), &dest);
    c.env(
        "QSYNC_VERIFY_CMD",
        "test \"$QSYNC_CHAIN\" = eth && test -f \"$QSYNC_DEST/chains/sample/db/full/CURRENT\"",
    );
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(has_marker(&dest));
}

#[test]
fn init_failure_is_one_json_line_when_not_on_a_terminal() {
    let env = published();
    let dest = env.path("dest");
    let (code, _, err) = run(init_cmd(&env, "http://127.0.0.1:9", &dest));
    assert_ne!(code, 0);
    assert!(!has_marker(&dest));
    let errors: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .filter(|v| v["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    let msg = errors[0]["fields"]["message"].as_str().unwrap();
    assert!(
        msg.contains("restoring chain eth") && msg.contains("127.0.0.1:9"),
        "{msg}"
    );
}
