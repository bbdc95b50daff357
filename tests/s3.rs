//! Publishing to and restoring from a real S3 server (s3s-fs, which checks
//! SigV4 signatures) on loopback: round trips over S3 and over plain HTTP,
//! incremental uploads, `qsync serve` pulling through from S3, clear errors
//! for wrong credentials and missing buckets, faults injected between qsync and the
//! server, and a publish killed with SIGKILL.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::moto::Moto;
use common::proxy::{FaultProxy, Faults};
use common::s3::*;
use common::*;
use serde_json::Value;

fn snapshot_cmd(env: &Env, endpoint: &str, url: &str, src: &Path) -> Command {
    let mut c = env.snapshot_to(src, url, "eth");
    aws_env(&mut c, endpoint);
    c
}

fn snapshot(env: &Env, endpoint: &str, url: &str, src: &Path) -> Value {
    let (code, out, err) = run(snapshot_cmd(env, endpoint, url, src));
    assert_eq!(code, 0, "snapshot to {url} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

fn restore(env: &Env, endpoint: &str, from: &str, dest: &Path) -> Value {
    let mut c = env.restore_cmd(from, "eth", dest);
    aws_env(&mut c, endpoint);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "restore from {from} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn publish_and_restore_through_s3_and_plain_http() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let src = env.path("src");
    sample(&src, 24);
    let url = s3.url("snapshots/mainnet");
    let first = snapshot(&env, &s3.endpoint, &url, &src);
    assert_eq!(first["chunks_uploaded"], first["chunks_total"], "{first}");

    let dest = env.path("dest-s3");
    restore(&env, &s3.endpoint, &url, &dest);
    assert_eq!(tree(&dest), tree(&src));

    // The same bucket read anonymously over HTTP, as from a public bucket or a CDN.
    let public = s3.anonymous();
    let http = format!("{}/{BUCKET}/snapshots/mainnet", public.endpoint);
    let dest = env.path("dest-http");
    restore(&env, &s3.endpoint, &http, &dest);
    assert_eq!(tree(&dest), tree(&src));

    // Cache-Control as a CDN needs it.
    let chunk = std::fs::read_dir(s3.dir("snapshots/mainnet/chunks"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chunk_key = chunk
        .strip_prefix(&s3.root)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for (key, want) in [
        (chunk_key.as_str(), "public, max-age=31536000, immutable"),
        (
            &*format!("{BUCKET}/snapshots/mainnet/chains/eth/latest.json"),
            "public, max-age=60",
        ),
    ] {
        let out = Command::new("curl")
            .args(["-sfI", &format!("{}/{key}", public.endpoint)])
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(head.contains(&format!("cache-control: {want}")), "{key}: {head}");
    }

    // A second snapshot after the node moved on uploads only new chunks.
    mutate(&src, 5, None);
    let before = s3.chunk_count("snapshots/mainnet");
    let second = snapshot(&env, &s3.endpoint, &url, &src);
    let uploaded = second["chunks_uploaded"].as_u64().unwrap();
    assert_eq!(second["version"], 2);
    assert!(
        uploaded > 0 && uploaded < second["chunks_total"].as_u64().unwrap() / 3,
        "{second}"
    );
    assert_eq!(s3.chunk_count("snapshots/mainnet"), before + uploaded as usize);
    restore(&env, &s3.endpoint, &url, &env.path("dest-s3"));
    assert_eq!(tree(&env.path("dest-s3")), tree(&src));
}

#[test]
fn serve_pulls_through_from_s3() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let src = env.path("src");
    sample(&src, 4);
    let url = s3.url("origin");
    snapshot(&env, &s3.endpoint, &url, &src);
    let cache = env.path("cache");
    let mut serve = Server::command(&url, &["--cache-dir", cache.to_str().unwrap()]);
    aws_env(&mut serve, &s3.endpoint);
    let server = Server::spawn(serve);
    let dest = env.path("dest");
    restore(&env, &s3.endpoint, &server.url, &dest);
    assert_eq!(tree(&dest), tree(&src));
    assert!(cache.join("chunks").exists(), "nothing was cached");
}

#[test]
fn wrong_credentials_and_missing_bucket_are_named() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let src = env.path("src");
    sample(&src, 2);

    let mut c = snapshot_cmd(&env, &s3.endpoint, &s3.url("p"), &src);
    c.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(
        err.contains(BUCKET) && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(err.contains("credentials were rejected"), "{err}");
    assert_eq!(s3.chunk_count("p"), 0, "a refused publish wrote chunks");

    // A mistyped bucket, on both servers: s3s-fs creates a missing bucket
    // on the first PUT (so a publish that wrote before it read would
    // "succeed" into a new bucket), moto refuses the PUT.
    let moto = Moto::current();
    for endpoint in [&s3.endpoint, &moto.endpoint] {
        let (code, out, err) = run(snapshot_cmd(&env, endpoint, "s3://no-such-bucket/p", &src));
        assert_ne!(code, 0, "{endpoint}: {out} {err}");
        assert!(
            err.contains("bucket no-such-bucket does not exist"),
            "{endpoint}: {err}"
        );
        assert!(
            !s3.root.join("no-such-bucket").exists(),
            "the refused publish created the bucket"
        );

        let mut c = env.restore_cmd("s3://no-such-bucket/p", "eth", &env.path("dest"));
        aws_env(&mut c, endpoint);
        let (code, _, err) = run(c);
        assert_ne!(code, 0);
        assert!(
            err.contains("bucket no-such-bucket does not exist"),
            "{endpoint}: {err}"
        );
    }
}

#[test]
fn publish_and_restore_survive_a_faulty_network() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let src = env.path("src");
    sample(&src, 24);
    // Corrupted bodies are the mirror tests' business: with one mirror a
    // corrupt copy is refused, not retried (TLS rules out bit flips in flight).
    let faults = Faults {
        error: 120,
        reset: 80,
        stall: 15,
        corrupt: 0,
    };
    let proxy = FaultProxy::start(&s3.endpoint, faults, 17);
    let url = s3.url("faulty");
    // Small chunks: about a hundred chunk requests each way for the faults to hit.
    let mut c = snapshot_cmd(&env, &proxy.url, &url, &src);
    c.args(["--chunk-size", "256"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(proxy.count(|c| &c.requester_pays), 0);
    // The reader pays for its requests, as a requester-pays bucket demands.
    let dest = env.path("dest");
    let mut c = env.restore_cmd(&url, "eth", &dest);
    aws_env(&mut c, &proxy.url).args(["--request-payer", "requester"]);
    let before = proxy.count(|c| &c.requests);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&dest), tree(&src));
    let restore_requests = proxy.count(|c| &c.requests) - before;
    assert!(restore_requests >= 80, "{restore_requests} requests");
    assert_eq!(
        proxy.count(|c| &c.requester_pays),
        restore_requests,
        "requests without x-amz-request-payer"
    );
    for (what, n) in [
        ("503s", proxy.count(|c| &c.errors)),
        ("resets", proxy.count(|c| &c.resets)),
        ("stalls", proxy.count(|c| &c.stalls)),
    ] {
        assert!(n > 0, "the proxy injected no {what}; the test proved nothing");
    }
}

#[test]
fn publish_killed_with_sigkill_leaves_the_old_snapshot_and_resumes() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let src = env.path("src");
    sample(&src, 8);
    let url = s3.url("killed");
    snapshot(&env, &s3.endpoint, &url, &src);
    let pointer = std::fs::read(s3.dir("killed/chains/eth/latest.json")).unwrap();

    // New data, published by a run that dies part-way through its uploads.
    std::fs::write(src.join("big-new-file"), noise(48 << 20, 9)).unwrap();
    let before = s3.chunk_count("killed");
    let mut child = snapshot_cmd(&env, &s3.endpoint, &url, &src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while s3.chunk_count("killed") < before + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no chunk was uploaded"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the publish ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Uploads whose bodies were all sent land after the client is gone:
    // count once the server has written them.
    let mut partial = s3.chunk_count("killed");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = s3.chunk_count("killed");
        if now == partial {
            break;
        }
        partial = now;
    }
    assert_eq!(
        std::fs::read(s3.dir("killed/chains/eth/latest.json")).unwrap(),
        pointer,
        "the killed run moved the pointer"
    );

    // The old snapshot still stands and restores.
    let dest = env.path("dest");
    let r = restore(&env, &s3.endpoint, &url, &dest);
    assert_eq!(r["version"], 1);
    assert!(!dest.join("big-new-file").exists());

    // The rerun uploads exactly the chunks the killed run did not.
    let second = snapshot(&env, &s3.endpoint, &url, &src);
    assert_eq!(second["version"], 2);
    let uploaded = second["chunks_uploaded"].as_u64().unwrap() as usize;
    assert_eq!(s3.chunk_count("killed"), partial + uploaded, "{second}");
    assert!(partial > before, "nothing was uploaded before the kill");
    restore(&env, &s3.endpoint, &url, &dest);
    assert_eq!(tree(&dest), tree(&src));
}
