//! Nodes restoring from each other: `qsync serve --data` serves a restored
//! node's files as a store of its snapshot, and `restore --peers-dns` asks
//! such peers for chunks before the origin. Node A restores from the
//! origin; node B restores with A as a peer and the origin as fallback.
//! What A's files no longer hold (a rewritten file, a planted link) and
//! A dying half-way through are taken from the origin, and B still ends
//! up exactly the snapshot.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use common::proxy::{FaultProxy, Faults};
use common::*;
use serde_json::Value;

const CHUNK_BYTES: &str = "qsync_serve_bytes_total{kind=\"chunk\"";

/// A published 24 MiB sample cut into small chunks, its origin, and node A
/// restored from it (state dir `state-a`).
struct Fleet {
    env: Env,
    src: std::path::PathBuf,
    origin: Server,
    a: std::path::PathBuf,
}

fn fleet() -> Fleet {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 24);
    env.snapshot(&src, "eth", &["--chunk-size", "256"]);
    let origin = Server::start(&env.store);
    let a = env.path("node-a");
    let out = restore_as(&env, "state-a", &a, &origin.url, None)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Fleet { env, src, origin, a }
}

fn restore_as(env: &Env, state: &str, dest: &Path, origin: &str, peers: Option<&str>) -> Command {
    let mut c = qsync();
    c.args(["restore", "--from", origin, "--chain", "eth", "--json"])
        .arg("--public-key")
        .arg(&env.pk)
        .arg("--dest")
        .arg(dest)
        .arg("--state-dir")
        .arg(env.path(state));
    if let Some(p) = peers {
        c.args(["--peers-dns", p]);
    }
    c
}

/// Node B restored from `origin` with the peers at `peers`
/// (`--peers-dns`) and `extra` flags; it must succeed and be the
/// snapshot. Returns its `--json` summary.
fn restore_b(f: &Fleet, origin: &str, peers: &str, extra: &[&str]) -> Value {
    let b = f.env.path("node-b");
    let mut c = restore_as(&f.env, "state-b", &b, origin, Some(peers));
    c.args(extra);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(files(&b), files(&f.src), "node B is not the snapshot");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `qsync serve --data` of node A.
fn serve_a(f: &Fleet) -> Server {
    serve_data(f, &f.a, "state-a").0
}

fn mirror(report: &Value, peer: bool) -> Vec<&Value> {
    report["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["peer"].as_bool().unwrap_or(false) == peer)
        .collect()
}

#[test]
fn a_node_restores_from_its_peer_and_takes_from_the_origin_only_what_the_peer_lacks() {
    require("curl");
    let f = fleet();
    // Node A runs on: it rewrites a file in place (compaction) and someone
    // plants a link to a file outside its data directory.
    let (rewritten, linked) = {
        let by_size = files_by_size(&f.a, 0);
        (by_size.last().unwrap().clone(), by_size[0].clone())
    };
    let path = f.a.join(&rewritten);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // The link names an identical copy: only not following it keeps the
    // peer from serving a file outside its directory.
    let secret = f.env.path("secret");
    std::fs::copy(f.a.join(&linked), &secret).unwrap();
    std::fs::remove_file(f.a.join(&linked)).unwrap();
    std::os::unix::fs::symlink(&secret, f.a.join(&linked)).unwrap();

    let peer = serve_a(&f);
    let port = peer.url.rsplit(':').next().unwrap();
    let before = metric(&f.origin.url, CHUNK_BYTES);
    // A name, not an address: resolved as --peers-dns does in a cluster.
    // Where `localhost` is also ::1, that peer refuses (the server listens
    // on 127.0.0.1 only): the checks below add up every peer.
    let report = restore_b(&f, &f.origin.url, &format!("localhost:{port}"), &[]);

    // What the origin served for B's chunks, by its own count, against what
    // the peer served: under a tenth of the snapshot.
    let from_origin = metric(&f.origin.url, CHUNK_BYTES) - before;
    let from_peer = metric(&peer.url, CHUNK_BYTES);
    let total: u64 = report["bytes_total"].as_u64().unwrap();
    eprintln!(
        "node B: the origin served {from_origin} of {total} bytes ({:.1} %), the peer {from_peer}",
        100.0 * from_origin as f64 / total as f64
    );
    assert!(
        from_peer > total / 2,
        "peer served {from_peer} of {total}: {report}"
    );
    assert!(
        from_origin * 10 < total,
        "the origin served {from_origin} of {total} bytes to node B: {report}"
    );
    // The rewritten file's chunk and the linked file's came from the origin.
    assert!(from_origin > 0, "{report}");
    assert!(
        mirror(&report, false)[0]["chunks"].as_u64().unwrap() >= 2,
        "{report}"
    );
    // What a peer lacks is ordinary: no errors, no cooldown, no slowdown.
    let p = mirror(&report, true)
        .into_iter()
        .find(|p| p["chunks"].as_u64() > Some(0))
        .expect("a peer that served");
    assert_eq!(
        (p["corrupt"].as_u64(), p["errors"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    assert!(
        metric(
            &peer.url,
            "qsync_serve_requests_total{kind=\"chunk\",status=\"404\""
        ) > 0,
        "the peer never answered 404 for what its files no longer hold"
    );
}

#[test]
fn killing_the_peer_half_way_leaves_the_restore_to_the_origin() {
    let f = fleet();
    let mut peer = serve_a(&f);
    // The peer answers the first half of B's chunk requests; the next one
    // waits at the gate until the peer is dead.
    let gate = FaultProxy::start(&peer.url, Faults::default(), 1);
    let chunks = std::fs::read_dir(f.env.store.join("chunks"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count() as u64)
        .sum::<u64>();
    gate.gate.pass.store(chunks / 2, Ordering::SeqCst);
    let port = gate.url.rsplit(':').next().unwrap();
    let b = f.env.path("node-b");
    let mut restore = restore_as(
        &f.env,
        "state-b",
        &b,
        &f.origin.url,
        Some(&format!("127.0.0.1:{port}")),
    );
    let child = restore
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while gate.gate.held.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed().as_secs() < 60,
            "B never asked the peer for half the chunks"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    peer.terminate();
    gate.gate.open.store(true, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(files(&b), files(&f.src));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer_chunks = mirror(&report, true)[0]["chunks"].as_u64().unwrap();
    let origin_chunks = mirror(&report, false)[0]["chunks"].as_u64().unwrap();
    assert!(peer_chunks <= chunks / 2 && peer_chunks > 0, "{report}");
    assert!(origin_chunks >= chunks - peer_chunks, "{report}");
}

/// `qsync serve --data` of `dir` with state dir `state`; its stderr (where
/// it says why it serves nothing) collected as it runs.
fn serve_data(f: &Fleet, dir: &Path, state: &str) -> (Server, std::sync::Arc<std::sync::Mutex<String>>) {
    serve_data_with(f, dir, state, &[])
}

/// [`serve_data`] with `extra` flags.
fn serve_data_with(
    f: &Fleet,
    dir: &Path,
    state: &str,
    extra: &[&str],
) -> (Server, std::sync::Arc<std::sync::Mutex<String>>) {
    use std::io::BufRead;
    let mut c = qsync();
    c.args(["serve", "--listen", "127.0.0.1:0", "--chain", "eth", "--data"])
        .arg(dir)
        .arg("--public-key")
        .arg(&f.env.pk)
        .arg("--state-dir")
        .arg(f.env.path(state))
        .args(extra)
        .stderr(std::process::Stdio::piped());
    let mut child = c.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (e, stderr) = (err.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            e.lock().unwrap().push_str(&line);
        }
    });
    (Server::adopt(child), err)
}

fn status(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into()
}

#[test]
fn a_directory_without_a_complete_restore_or_its_signed_objects_is_served_as_nothing_and_says_why() {
    require("curl");
    let f = fleet();
    let chunk = std::fs::read_dir(f.env.store.join("chunks"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let chunk_key = chunk.strip_prefix(&f.env.store).unwrap().display().to_string();
    let probe = |server: &Server| {
        [
            status(&format!("{}/chains/eth/latest.json", server.url)),
            status(&format!("{}/{chunk_key}", server.url)),
        ]
    };
    let until = |err: &std::sync::Mutex<String>, what: &str| {
        let started = std::time::Instant::now();
        while !err.lock().unwrap().contains(what) {
            assert!(
                started.elapsed().as_secs() < 30,
                "never said {what:?}: {}",
                err.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // The real thing serves both.
    let (good, _) = serve_data(&f, &f.a, "state-a");
    assert_eq!(probe(&good), ["200", "200"]);
    // Another state dir: nothing kept there; it runs, answers 404, and the
    // log says what to do.
    let (other, err) = serve_data(&f, &f.a, "state-other");
    until(&err, "older qsync");
    assert_eq!(probe(&other), ["404", "404"]);
    // A directory no restore completed.
    let empty = f.env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let (none, err) = serve_data(&f, &empty, "state-a");
    until(&err, "no complete qsync restore");
    assert_eq!(probe(&none), ["404", "404"]);
    // A kept signature edited: nothing verifies, nothing is served.
    let kept = f.env.path("state-a/peer/eth");
    let snap = std::fs::read_dir(&kept).unwrap().next().unwrap().unwrap().path();
    let manifests = snap.join("chains/eth/manifests");
    for e in std::fs::read_dir(&manifests).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".minisig") {
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 10] ^= 1;
            std::fs::write(&p, b).unwrap();
        }
    }
    let (tampered, err) = serve_data(&f, &f.a, "state-a");
    until(&err, "signature");
    assert_eq!(probe(&tampered), ["404", "404"]);
}

#[test]
fn a_peer_serving_corrupt_chunks_is_demoted_and_the_origin_serves_the_rest() {
    let f = fleet();
    let peer = serve_a(&f);
    // A compromised node, or whatever the name resolves to: every chunk
    // it serves has a byte flipped.
    let corrupt = Faults {
        corrupt: 1000,
        ..Faults::default()
    };
    let hostile = FaultProxy::start(&peer.url, corrupt, 5);
    let port = hostile.url.rsplit(':').next().unwrap();
    let report = restore_b(&f, &f.origin.url, &format!("127.0.0.1:{port}"), &[]);
    let p = mirror(&report, true)[0];
    assert_eq!(
        (p["demoted"].as_bool(), p["chunks"].as_u64()),
        (Some(true), Some(0)),
        "{report}"
    );
    assert!(p["corrupt"].as_u64().unwrap() >= 1, "{report}");
}

#[test]
fn the_origins_token_never_reaches_a_peer() {
    let f = fleet();
    let token = f.env.path("tokens");
    std::fs::write(&token, "origin-secret\n").unwrap();
    let origin = Server::start_with(&f.env.store, &["--token-file", token.to_str().unwrap()]);
    let peer = serve_a(&f);
    let watch = FaultProxy::start(&peer.url, Faults::default(), 2);
    let port = watch.url.rsplit(':').next().unwrap();
    restore_b(
        &f,
        &origin.url,
        &format!("127.0.0.1:{port}"),
        &["--http-token", "origin-secret"],
    );
    assert!(watch.count(|c| &c.requests) > 0, "the peer was never asked");
    assert_eq!(
        watch.count(|c| &c.authorized),
        0,
        "a peer was sent the origin's token"
    );
}

#[test]
fn two_destinations_of_one_chain_keep_their_own_signed_objects() {
    require("curl");
    let f = fleet();
    // A second destination on the same host, same state dir, restored to
    // a newer snapshot after node A.
    std::fs::write(f.src.join("newer"), b"v2").unwrap();
    f.env.snapshot(&f.src, "eth", &["--chunk-size", "256"]);
    let other = f.env.path("node-a2");
    let out = restore_as(&f.env, "state-a", &other, &f.origin.url, None)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A still serves its own snapshot (version 1), the other its own.
    let manifest_of = |version: u64| {
        let dir = f.env.store.join("chains/eth/manifests");
        let name = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| n.starts_with(&format!("{version:012}-")) && !n.ends_with(".minisig"))
            .unwrap();
        format!("chains/eth/manifests/{name}")
    };
    let (a, _) = serve_data(&f, &f.a, "state-a");
    let (a2, _) = serve_data(&f, &other, "state-a");
    assert_eq!(status(&format!("{}/{}", a.url, manifest_of(1))), "200");
    assert_eq!(status(&format!("{}/{}", a2.url, manifest_of(2))), "200");
}

#[test]
fn after_a_rollback_to_an_older_version_the_peer_serves_no_pointer_naming_the_latest() {
    require("curl");
    let f = fleet();
    std::fs::write(f.src.join("newer"), b"v2").unwrap();
    f.env.snapshot(&f.src, "eth", &["--chunk-size", "256"]);
    let old = f.env.path("node-old");
    let mut c = restore_as(&f.env, "state-a", &old, &f.origin.url, None);
    c.args(["--snapshot-version", "1"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (peer, _) = serve_data(&f, &old, "state-a");
    // The pointer names version 2, which this node does not hold: not kept.
    assert_eq!(status(&format!("{}/chains/eth/latest.json", peer.url)), "404");
    let manifest = std::fs::read_dir(f.env.store.join("chains/eth/manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("000000000001-") && !n.ends_with(".minisig"))
        .unwrap();
    assert_eq!(
        status(&format!("{}/chains/eth/manifests/{manifest}", peer.url)),
        "200"
    );
}

#[test]
fn a_malformed_peer_name_is_an_error_not_a_restore_without_peers() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    env.snapshot(&src, "eth", &[]);
    // The origin works: a malformed name must not be shrugged off as "no
    // peers" while the restore goes ahead.
    for bad in ["peers:http", ":8080", "fe80::1:8080"] {
        let mut c = qsync();
        c.args(["restore", "--chain", "eth", "--from"])
            .arg(&env.store)
            .arg("--public-key")
            .arg(&env.pk)
            .arg("--dest")
            .arg(env.path("dest"))
            .arg("--state-dir")
            .arg(&env.state)
            .args(["--peers-dns", bad]);
        let (code, _, err) = run(c);
        assert_ne!(code, 0, "{bad}");
        assert!(err.contains("--peers-dns"), "{bad}: {err}");
        assert!(!env.path("dest").exists(), "{bad}: the restore went ahead");
    }
}

/// A kept signature changed after the restore kept it (a bad disk, a
/// hand edit, anything writing the state dir) is not handed to peers: the
/// additional signatures of a key rotation, which loading the directory
/// does not otherwise check, are each checked against the trusted keys.
#[test]
fn a_kept_signature_that_no_longer_verifies_is_not_served() {
    require("curl");
    let f = fleet();
    let (new_sk, new_pk) = (f.env.path("new.sec"), f.env.path("new.pub"));
    let mut c = qsync();
    c.args(["keygen", "--secret-key"])
        .arg(&new_sk)
        .arg("--public-key")
        .arg(&new_pk);
    assert_eq!(run(c).0, 0);
    // Version 2 signed by both keys; node A, trusting both, keeps both.
    std::fs::write(f.src.join("newer"), b"v2").unwrap();
    f.env.snapshot(
        &f.src,
        "eth",
        &["--chunk-size", "256", "--secret-key", new_sk.to_str().unwrap()],
    );
    let mut c = restore_as(&f.env, "state-a", &f.a, &f.origin.url, None);
    c.arg("--public-key").arg(&new_pk);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut additional = Vec::new();
    let mut stack = vec![f.env.path("state-a").join("peer")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if name.contains("/manifests/")
                && name.matches('.').count() >= 4
                && name.ends_with(".minisig")
            {
                additional.push(p);
            }
        }
    }
    assert_eq!(
        additional.len(),
        1,
        "one additional signature kept: {additional:?}"
    );
    let kept = &additional[0];
    let name = kept.to_string_lossy().to_string();
    let url = |peer: &Server| format!("{}/{}", peer.url, &name[name.find("chains/").unwrap()..]);
    let both = ["--public-key", new_pk.to_str().unwrap()];
    let (peer, _) = serve_data_with(&f, &f.a, "state-a", &both);
    assert_eq!(status(&url(&peer)), "200");
    drop(peer);
    let mut sig = std::fs::read(kept).unwrap();
    let at = sig.len() / 2;
    sig[at] ^= 0x01;
    std::fs::write(kept, sig).unwrap();
    let (peer, _) = serve_data_with(&f, &f.a, "state-a", &both);
    assert_eq!(
        status(&url(&peer)),
        "404",
        "a signature that no longer verifies was served"
    );
}
