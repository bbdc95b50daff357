//! Trust across mirrors and stores: one chain published to several stores
//! is one lineage, and a fetcher given several mirrors restores the newest
//! valid snapshot any of them offers, by signed creation time, whatever
//! each store's version counter says. Stale, expired, trickling and
//! mislabelled mirrors never decide the outcome and never abort it.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `qsync restore --json` from every store in `from` into `dest`.
fn restore_from(env: &Env, from: &[&str], dest: &Path, extra: &[&str]) -> (i32, Option<Value>, String) {
    let mut c = env.restore_cmd(from[0], "eth", dest);
    for f in &from[1..] {
        c.args(["--from", f]);
    }
    c.args(extra);
    let (code, out, err) = run(c);
    (code, serde_json::from_str(&out).ok(), err)
}

/// Writes `tag` into a small source tree and publishes it to `store`.
fn publish(env: &Env, store: &Path, tag: &str, extra: &[&str]) -> Value {
    let src = env.path(&format!("src-{tag}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("state.db"), noise(300_000, tag.len() as u64 + 7)).unwrap();
    std::fs::write(src.join("TAG"), tag).unwrap();
    let mut c = env.snapshot_to(&src, store.to_str().unwrap(), "eth");
    c.args(extra);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "snapshot {tag}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Snapshot creation times have one-second resolution.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn a_stale_store_with_a_higher_counter_never_wins() {
    let env = Env::new();
    let (stale, fresh) = (env.path("stale"), env.path("fresh"));
    for tag in ["old-1", "old-2", "old-3"] {
        publish(&env, &stale, tag, &[]);
    }
    next_second();
    let newest = publish(&env, &fresh, "new", &[]);
    assert_eq!(newest["version"], 1, "a fresh store counts from one");

    // First use, both stores: the newest snapshot by creation time wins,
    // and the summary says which mirror named it.
    let dest = env.path("dest");
    let (code, s, err) = restore_from(
        &env,
        &[stale.to_str().unwrap(), fresh.to_str().unwrap()],
        &dest,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(dest.join("TAG")).unwrap(), "new");
    let s = s.unwrap();
    assert_eq!(s["pointer_from"], fresh.to_str().unwrap(), "{s}");
    assert_eq!(s["mirrors"][0]["pointer"], "older", "{s}");
    assert_eq!(s["mirrors"][1]["pointer"], "chosen", "{s}");

    // The stale store alone is a rollback now, though its counter is higher.
    let (code, _, err) = restore_from(&env, &[stale.to_str().unwrap()], &env.path("dest2"), &[]);
    assert_eq!(code, 3, "stale store accepted: {err}");
    assert!(err.contains("rollback refused"), "{err}");
    // And the fresh store is still accepted.
    let (code, _, err) = restore_from(&env, &[fresh.to_str().unwrap()], &env.path("dest3"), &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn one_publish_to_several_stores_is_one_lineage() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    publish(&env, &a, "one", &[]);
    publish(&env, &a, "two", &[]);
    next_second();
    let src = env.path("src-three");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("TAG"), "three").unwrap();
    let stores = [a.display().to_string(), b.display().to_string()];
    let config = env.agent_config("eth", &src, &stores, "[chain.retention]\ngc = false\n");
    let report = env.cycle(&config, "eth", |_| {});
    let pointer = |store: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(store.join("chains/eth/latest.json")).unwrap()).unwrap()
    };
    let (pa, pb) = (pointer(&a), pointer(&b));
    assert_eq!(pa["current"]["version"], 3, "{report}");
    assert_eq!(
        pb["current"]["version"], 3,
        "a new store joins the lineage: {report}"
    );
    assert_eq!(pa["current"]["manifest_blake3"], pb["current"]["manifest_blake3"]);
    assert_eq!(pa["current"]["created_at"], pb["current"]["created_at"]);
}

#[test]
fn an_expired_candidate_that_outranks_a_fresh_one_is_skipped() {
    let env = Env::new();
    let (fresh, expiring) = (env.path("fresh"), env.path("expiring"));
    publish(&env, &fresh, "fresh", &[]);
    next_second();
    publish(&env, &expiring, "newer-but-expiring", &[]);
    env.resign_pointer(&expiring, "eth", |p| p.expires_at = an_hour_ago());
    let dest = env.path("dest");
    let (code, s, err) = restore_from(
        &env,
        &[expiring.to_str().unwrap(), fresh.to_str().unwrap()],
        &dest,
        &[],
    );
    assert_eq!(code, 0, "an expired candidate failed the restore: {err}");
    assert_eq!(std::fs::read_to_string(dest.join("TAG")).unwrap(), "fresh");
    let s = s.unwrap();
    assert_eq!(s["mirrors"][0]["pointer"], "expired", "{s}");
    assert!(err.contains("skipping"), "the skip is not reported: {err}");
}

/// An HTTP server that answers every request with a body it trickles one
/// byte every half second (a stalled CDN edge); stops after `limit`.
fn trickler(limit: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            std::thread::spawn(move || {
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n{");
                for _ in 0..limit.as_millis() / 500 {
                    std::thread::sleep(Duration::from_millis(500));
                    if conn.write_all(b" ").is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_trickling_mirror_does_not_stall_the_pointer() {
    let env = Env::new();
    let store = env.path("store");
    publish(&env, &store, "good", &[]);
    let slow = trickler(Duration::from_secs(150));
    let dest = env.path("dest");
    let mut c = env.restore_cmd(&slow, "eth", &dest);
    c.args(["--from", store.to_str().unwrap(), "--timeout", "3s"]);
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    // Bound the test: the old sequential fetch waited on the trickle for minutes.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("restore still waiting on the trickling mirror after 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(dest.join("TAG")).unwrap(), "good");
}

#[test]
fn a_signed_pointer_of_another_chain_marks_only_that_mirror_bad() {
    let env = Env::new();
    let (good, bad) = (env.path("good"), env.path("bad"));
    publish(&env, &good, "eth-data", &[]);
    // `bad` serves the validly signed pointer of chain dot at eth's path.
    let src = env.path("src-dot");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("TAG"), "dot").unwrap();
    let (code, _, err) = run(env.snapshot_to(&src, bad.to_str().unwrap(), "dot"));
    assert_eq!(code, 0, "{err}");
    next_second();
    let (dot, eth) = (bad.join("chains/dot"), bad.join("chains/eth"));
    std::fs::create_dir_all(eth.join("latest.json.sigs")).unwrap();
    std::fs::copy(dot.join("latest.json"), eth.join("latest.json")).unwrap();
    for sig in std::fs::read_dir(dot.join("latest.json.sigs")).unwrap() {
        let sig = sig.unwrap();
        std::fs::copy(sig.path(), eth.join("latest.json.sigs").join(sig.file_name())).unwrap();
    }
    let dest = env.path("dest");
    let (code, s, err) = restore_from(&env, &[bad.to_str().unwrap(), good.to_str().unwrap()], &dest, &[]);
    assert_eq!(code, 0, "another chain's pointer aborted the restore: {err}");
    assert_eq!(std::fs::read_to_string(dest.join("TAG")).unwrap(), "eth-data");
    let s = s.unwrap();
    assert_eq!(s["mirrors"][0]["demoted"], true, "{s}");
    assert!(
        s["mirrors"][0]["pointer"]
            .as_str()
            .unwrap()
            .contains("names chain dot"),
        "{s}"
    );
}
