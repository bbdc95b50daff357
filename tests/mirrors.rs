//! Restores from several mirrors through a fault-injecting proxy: errors,
//! resets, stalls and corrupted bodies on one mirror never break a restore
//! while another mirror works, the summary shows the failover, and when
//! every mirror serves corrupt data the restore fails cleanly, with no marker.

mod common;

use common::proxy::{FaultProxy, Faults};
use common::*;
use serde_json::Value;

fn published() -> (Env, Server) {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 64);
    env.snapshot(&src, "eth", &["--chunk-size", "256"]);
    let server = Server::start(&env.store);
    (env, server)
}

fn restore_from(env: &Env, from: &[&str], dest: &std::path::Path) -> (i32, Option<Value>, String) {
    let mut c = env.restore_cmd(from[0], "eth", dest);
    for f in &from[1..] {
        c.args(["--from", f]);
    }
    c.args(["--timeout", "2s", "--deadline", "60s"]);
    let (code, out, err) = run(c);
    (code, serde_json::from_str(&out).ok(), err)
}

#[test]
fn a_faulty_mirror_fails_over_to_a_good_one() {
    let (env, server) = published();
    let faults = Faults {
        error: 150,
        reset: 100,
        stall: 50,
        corrupt: 100,
    };
    let proxy = FaultProxy::start(&server.url, faults, 7);
    let dest = env.path("dest");
    let (code, summary, err) = restore_from(&env, &[&proxy.url, &server.url], &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&env.path("src")), tree(&dest));
    let s = summary.unwrap();
    let (bad, good) = (&s["mirrors"][0], &s["mirrors"][1]);
    assert!(bad["errors"].as_u64().unwrap() > 0, "{s}");
    assert!(good["chunks"].as_u64().unwrap() > 0, "{s}");
    let faults_seen = proxy.count(|c| &c.errors) + proxy.count(|c| &c.resets) + proxy.count(|c| &c.corrupted);
    assert!(faults_seen > 0, "the proxy injected nothing");
    if proxy.count(|c| &c.corrupted) > 0 {
        assert_eq!(bad["demoted"], true, "{s}");
    }
}

#[test]
fn errors_resets_and_stalls_alone_are_retried_not_fatal() {
    let (env, server) = published();
    // No corruption: the faulty mirror stays in use, its failures retried.
    let faults = Faults {
        error: 200,
        reset: 150,
        stall: 30,
        corrupt: 0,
    };
    let (p1, p2) = (
        FaultProxy::start(&server.url, faults, 3),
        FaultProxy::start(&server.url, faults, 11),
    );
    let dest = env.path("dest");
    let (code, summary, err) = restore_from(&env, &[&p1.url, &p2.url], &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&env.path("src")), tree(&dest));
    let s = summary.unwrap();
    let errors: u64 = (0..2).map(|i| s["mirrors"][i]["errors"].as_u64().unwrap()).sum();
    assert!(errors > 0, "{s}");
    assert!(
        s["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["demoted"] == false),
        "{s}"
    );
}

#[test]
fn every_mirror_corrupt_fails_cleanly_without_marker() {
    let (env, server) = published();
    let all = Faults {
        corrupt: 1000,
        ..Faults::default()
    };
    let (p1, p2) = (
        FaultProxy::start(&server.url, all, 5),
        FaultProxy::start(&server.url, all, 9),
    );
    let dest = env.path("dest");
    let (code, _, err) = restore_from(&env, &[&p1.url, &p2.url], &dest);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("corrupt") || err.contains("BLAKE3"), "{err}");
    assert!(!has_marker(&dest));
    assert!(p1.count(|c| &c.corrupted) > 0 && p2.count(|c| &c.corrupted) > 0);
}

#[test]
fn a_dead_mirror_is_skipped() {
    let (env, server) = published();
    let dest = env.path("dest");
    let (code, summary, err) = restore_from(&env, &["http://127.0.0.1:9", &server.url], &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&env.path("src")), tree(&dest));
    let s = summary.unwrap();
    assert_eq!(s["mirrors"][0]["chunks"], 0, "{s}");
    assert!(s["mirrors"][1]["chunks"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn a_stalled_restore_says_so_in_its_json_logs_and_carries_on_when_the_mirror_does() {
    use std::io::BufRead;
    use std::sync::atomic::Ordering;
    let (env, server) = published();
    let gate = FaultProxy::start(&server.url, Faults::default(), 3);
    gate.gate.pass.store(4, Ordering::SeqCst);
    let dest = env.path("dest");
    let mut c = env.restore_cmd(&gate.url, "eth", &dest);
    c.args([
        "--timeout",
        "1s",
        "--deadline",
        "120s",
        "--progress-interval",
        "200ms",
    ])
    .env("QSYNC_LOG_FORMAT", "json")
    .env_remove("RUST_LOG")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut progress, mut stalled) = (None::<Value>, None::<Value>);
    let mut rest = Vec::new();
    for line in lines.map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            rest.push(line);
            continue;
        };
        let fields = &v["fields"];
        if fields["bytes_per_second"].is_u64() && fields["bytes_done"].as_u64() > Some(0) {
            progress.get_or_insert(v.clone());
        }
        if fields["stalled_seconds"].is_u64() {
            stalled = Some(v.clone());
            // The mirror recovers: the restore goes on by itself.
            gate.gate.open.store(true, Ordering::SeqCst);
        }
        rest.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", rest.join("\n"));
    let progress =
        progress.unwrap_or_else(|| panic!("no progress line with bytes done:\n{}", rest.join("\n")));
    assert!(progress["fields"]["eta_seconds"].is_u64(), "{progress}");
    assert_eq!(progress["fields"]["stage"], "restore", "{progress}");
    let stalled = stalled.expect("the stall was never logged");
    assert_eq!(stalled["level"], "WARN", "{stalled}");
    assert!(
        stalled["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("--timeout"),
        "{stalled}"
    );
    assert!(gate.gate.held.load(Ordering::SeqCst) > 0);
    assert!(has_marker(&dest));
}
