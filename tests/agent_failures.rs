//! The long-running agent's failure paths, each switched on by a file the
//! hooks look at: the pre hook fails, the post hook fails, the source
//! changes while it is read, the store is unreachable, SIGTERM mid-cycle.
//! Each must leave the previous snapshot in place and show in `/metrics`;
//! `/healthz` fails once no cycle succeeded within max-age, and the pointer
//! is re-signed while healthy and not after.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use qsync_core::pointer::Pointer;

fn get(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

/// The value of `name{labels}` in the agent's /metrics.
fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let (_, body) = get(&format!("{base}/metrics"));
    let want = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pointer(store: &Path) -> Pointer {
    Pointer::decode(
        &std::fs::read(store.join("chains/eth/latest.json")).unwrap(),
        "pointer",
    )
    .unwrap()
}

#[test]
fn every_failure_keeps_the_previous_snapshot_and_shows_in_metrics() {
    require("curl");
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    let d = env.dir.path().display().to_string();
    let s = src.display();
    let pre = format!(
        "test ! -e {d}/fail-pre || exit 7
if [ -e {d}/grow ]; then [ -s {s}/grow.log ] || head -c 33554432 /dev/urandom > {s}/grow.log; (while [ -e {d}/grow ]; do echo x >> {s}/grow.log; done) > /dev/null 2>&1 & sleep 0.1; fi
if [ -e {d}/slow ]; then touch {d}/frozen; sleep 3; fi"
    );
    let post = format!("echo x >> {d}/post-runs; test ! -e {d}/fail-post");
    let config = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        &format!(
            r#"schedule = "* * * * * *"
resign = "* * * * * *"
max-age = "5s"
expires-in = "1h"

[chain.freeze]
pre = ["sh", "-c", {pre:?}]
post = ["sh", "-c", {post:?}]
"#
        ),
    );
    let mut agent = qsync();
    agent.args(["agent", "--config"]).arg(&config);
    // Its log goes to a file: the failures below are expected.
    agent.stderr(std::fs::File::create(env.path("agent.log")).unwrap());
    let mut agent = Server::spawn(agent);
    let base = agent.url.clone();
    let long = Duration::from_secs(60);
    let failures = |stage: &str| {
        metric(
            &base,
            "qsync_agent_failures_total",
            &format!("chain=\"eth\",stage=\"{stage}\""),
        )
    };
    let post_runs = || std::fs::read_to_string(format!("{d}/post-runs")).map_or(0, |s| s.lines().count());

    wait("a first successful cycle", long, || {
        metric(&base, "qsync_agent_cycles_total", "chain=\"eth\"") >= 1.0
    });
    assert_eq!(get(&format!("{base}/healthz")).0, 200);
    assert!(metric(&base, "qsync_agent_snapshot_version", "chain=\"eth\"") >= 1.0);
    // While healthy, the pointer is re-signed: its sequence moves on its own.
    wait("a re-sign", long, || {
        metric(&base, "qsync_agent_resigns_total", "chain=\"eth\"") >= 1.0
    });

    // Each failure, twice in a row: between the two, the snapshot the
    // pointer names does not change. (For `read`, a 32 MiB file appended to
    // in a tight loop: no read of it can be consistent.)
    let check = |flag: &str, stage: &str| {
        let flag = format!("{d}/{flag}");
        std::fs::write(&flag, b"").unwrap();
        let f0 = failures(stage);
        let posts = post_runs();
        wait(&format!("a {stage} failure"), long, || failures(stage) > f0);
        let before = pointer(&env.store).current;
        wait(&format!("a second {stage} failure"), long, || {
            failures(stage) > f0 + 1.0
        });
        assert_eq!(
            pointer(&env.store).current,
            before,
            "a failed {stage} moved the pointer"
        );
        assert!(post_runs() > posts, "the post hook ran after the {stage} failure");
        std::fs::remove_file(&flag).unwrap();
        let ok = metric(&base, "qsync_agent_cycles_total", "chain=\"eth\"");
        wait("recovery", long, || {
            metric(&base, "qsync_agent_cycles_total", "chain=\"eth\"") > ok
        });
    };
    check("fail-pre", "freeze");
    check("fail-post", "thaw");
    check("grow", "read");

    // The store unreachable (its directory replaced by a file) long enough
    // for the agent to turn unhealthy; the pointer's expiry then stops moving.
    let away = env.path("store.away");
    let f0 = failures("upload") + failures("lock");
    std::fs::rename(&env.store, &away).unwrap();
    std::fs::write(&env.store, b"not a directory").unwrap();
    wait("a store failure", long, || {
        failures("upload") + failures("lock") > f0
    });
    std::fs::remove_file(&env.store).unwrap();
    std::fs::rename(&away, &env.store).unwrap();
    // Back, but keep the pre hook failing until max-age has passed.
    std::fs::write(format!("{d}/fail-pre"), b"").unwrap();
    wait("/healthz to fail", long, || {
        get(&format!("{base}/healthz")).0 == 503
    });
    let (_, why) = get(&format!("{base}/healthz"));
    assert!(why.contains("eth"), "{why}");
    let stale = pointer(&env.store);
    std::thread::sleep(Duration::from_millis(2500));
    let later = pointer(&env.store);
    assert_eq!(
        later.expires_at, stale.expires_at,
        "a stale source must not be re-signed"
    );
    assert_eq!(metric(&base, "qsync_agent_healthy", "chain=\"eth\""), 0.0);
    std::fs::remove_file(format!("{d}/fail-pre")).unwrap();
    wait("/healthz to recover", long, || {
        get(&format!("{base}/healthz")).0 == 200
    });

    // SIGTERM while frozen: the cycle stops before publishing, the post hook
    // runs, the lease is released and the agent exits cleanly.
    std::fs::write(format!("{d}/slow"), b"").unwrap();
    let frozen = Path::new(&d).join("frozen");
    wait("a slow freeze", long, || frozen.exists());
    let before = pointer(&env.store).current;
    let posts = post_runs();
    let t = Instant::now();
    let status = agent.terminate();
    assert!(status.success(), "agent exit {status:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(post_runs(), posts + 1, "the post hook ran once after SIGTERM");
    assert_eq!(pointer(&env.store).current, before);
    assert!(
        !env.store.join("locks/publish/eth.json").exists(),
        "the lease was released"
    );

    let dest = env.path("restored");
    env.restore("eth", &dest);
    let mut expected = files(&src);
    let mut got = files(&dest);
    // grow.log kept growing after the last snapshot was read.
    expected.remove("grow.log");
    got.remove("grow.log");
    assert_eq!(got, expected);
}
