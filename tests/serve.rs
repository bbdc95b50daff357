//! `qsync serve` end to end: the plain tar stream that `curl | tar -x` users
//! rely on reproduces the snapshot exactly (also as .tar.zst and for older
//! versions), and a corrupted chunk breaks the stream instead of delivering
//! bad bytes with a clean end.

mod common;

use std::process::Command;

use common::*;

fn curl_tar(url: &str, dest: &std::path::Path, zst: bool) -> (bool, String) {
    require("curl");
    std::fs::create_dir_all(dest).unwrap();
    let unzip = if zst { "| zstd -dc " } else { "" };
    let script = format!(
        "set -o pipefail; curl -sSf '{url}' {unzip}| tar -x -C '{}'",
        dest.display()
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn published() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 24);
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    env.snapshot(&src, "eth", &[]);
    (env, src)
}

#[test]
fn curl_pipe_tar_reproduces_the_snapshot() {
    let (env, src) = published();
    let pk = env.pk.to_str().unwrap().to_string();
    let server = Server::start_with(&env.store, &["--public-key", &pk]);
    let dest = env.path("untarred");
    let (ok, err) = curl_tar(&format!("{}/tar/eth/latest", server.url), &dest, false);
    assert!(ok, "{err}");
    assert_eq!(tree(&src), tree(&dest));

    let dest = env.path("untarred-zst");
    let (ok, err) = curl_tar(&format!("{}/tar/eth/latest.tar.zst", server.url), &dest, true);
    assert!(ok, "{err}");
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn older_versions_by_number() {
    let (env, src) = published();
    let v1 = files(&src);
    std::fs::write(src.join("new.sst"), noise(1 << 20, 3)).unwrap();
    env.snapshot(&src, "eth", &[]);
    let pk = env.pk.to_str().unwrap().to_string();
    let server = Server::start_with(&env.store, &["--public-key", &pk]);
    let dest = env.path("v1");
    let (ok, err) = curl_tar(&format!("{}/tar/eth/1", server.url), &dest, false);
    assert!(ok, "{err}");
    assert_eq!(v1, files(&dest));
    let (ok, _) = curl_tar(&format!("{}/tar/eth/9", server.url), &env.path("v9"), false);
    assert!(!ok, "a missing version streamed something");
}

#[test]
fn corrupted_chunk_breaks_the_stream() {
    let (env, src) = published();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.manifest_path("eth")).unwrap()).unwrap();
    // Corrupt the last chunk of the last file, deep into the stream.
    let files_list = m["files"].as_array().unwrap();
    let last = files_list
        .iter()
        .rev()
        .find(|f| !f["chunks"].as_array().unwrap().is_empty())
        .unwrap();
    let h = last["chunks"].as_array().unwrap().last().unwrap()["blake3"]
        .as_str()
        .unwrap()
        .to_string();
    let path = env.store.join(format!("chunks/{}/{h}", &h[..2]));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let pk = env.pk.to_str().unwrap().to_string();
    let server = Server::start_with(&env.store, &["--public-key", &pk]);
    let dest = env.path("untarred");
    let (ok, _) = curl_tar(&format!("{}/tar/eth/latest", server.url), &dest, false);
    assert!(!ok, "a corrupt chunk produced a clean stream");
    assert_ne!(files(&src), files(&dest));
}

#[test]
fn tar_needs_a_public_key_and_objects_carry_cache_headers() {
    let (env, _) = published();
    let server = Server::start(&env.store);
    require("curl");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/tar/eth/latest", server.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let out = Command::new("curl")
        .args(["-sI"])
        .arg(format!("{}/chains/eth/latest.json", server.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains("cache-control: public, max-age=60") && head.contains("etag: \""),
        "{head}"
    );
}

#[test]
fn pull_through_cache_serves_repeat_restores_without_upstream() {
    require("curl");
    let (env, src) = published();
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let mirror = Server::start_with(
        &upstream.url,
        &["--cache-dir", cache.to_str().unwrap(), "--cache-size", "1GiB"],
    );
    let chunk_hits = "qsync_serve_requests_total{kind=\"chunk\",status=\"200\"}";

    let first = env.path("first");
    let out = env.restore_cmd(&mirror.url, "eth", &first).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&src), tree(&first));
    let upstream_chunks = metric(&upstream.url, chunk_hits);
    assert!(upstream_chunks > 0);

    let second = env.path("second");
    let out = env.restore_cmd(&mirror.url, "eth", &second).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&src), tree(&second));
    assert_eq!(
        metric(&upstream.url, chunk_hits),
        upstream_chunks,
        "second restore went upstream"
    );
    assert!(metric(&mirror.url, "qsync_serve_cache_hits_total") >= upstream_chunks);
}

#[test]
fn corrupt_upstream_chunk_is_neither_cached_nor_served() {
    require("curl");
    let (env, _) = published();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.manifest_path("eth")).unwrap()).unwrap();
    let h = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["chunks"][0]["blake3"].as_str())
        .unwrap()
        .to_string();
    let key = format!("chunks/{}/{h}", &h[..2]);
    let mut bytes = std::fs::read(env.store.join(&key)).unwrap();
    bytes[0] ^= 1;
    std::fs::write(env.store.join(&key), bytes).unwrap();
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let mirror = Server::start_with(&upstream.url, &["--cache-dir", cache.to_str().unwrap()]);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/{key}", mirror.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    assert!(!cache.join(&key).exists(), "a corrupt chunk was cached");
    assert_eq!(metric(&mirror.url, "qsync_serve_upstream_corrupt_total"), 1);
    // 502 is transient to a fetcher (the upstream may be repaired): it retries until --deadline.
    let dest = env.path("dest");
    let mut c = env.restore_cmd(&mirror.url, "eth", &dest);
    c.args(["--timeout", "2s", "--deadline", "3s"]);
    let (code, _, err) = run(c);
    assert_ne!(code, 0, "{err}");
    assert!(!has_marker(&dest));
}

/// A cache far smaller than the snapshot still serves every restore in
/// full (which objects go when is `cache::tests`, with the grace passed in).
#[test]
fn a_cache_smaller_than_the_snapshot_serves_every_restore() {
    let (env, src) = published();
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let args = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--cache-size",
        "4MiB",
        "--pointer-max-age",
        "1s",
    ];
    let mirror = Server::start_with(&upstream.url, &args);
    for name in ["first", "second"] {
        let dest = env.path(name);
        let out = env.restore_cmd(&mirror.url, "eth", &dest).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(tree(&src), tree(&dest));
    }
    assert!(metric(&mirror.url, "qsync_serve_cache_misses_total") > 0);
}

#[test]
fn private_mirror_needs_the_token_and_qsync_restore_can_send_it() {
    let (env, src) = published();
    let tokens = env.path("tokens");
    std::fs::write(&tokens, "# fleet token\ns3cret-fleet\n").unwrap();
    let server = Server::start_with(&env.store, &["--token-file", tokens.to_str().unwrap()]);
    let dest = env.path("dest");
    let (code, _, err) = run(env.restore_cmd(&server.url, "eth", &dest));
    assert_ne!(code, 0);
    assert!(err.contains("401") && err.contains("refused access"), "{err}");
    let mut c = env.restore_cmd(&server.url, "eth", &dest);
    c.env("QSYNC_HTTP_TOKEN", "s3cret-fleet");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn concurrent_misses_make_one_upstream_fetch() {
    require("curl");
    let (env, _) = published();
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let mirror = Server::start_with(&upstream.url, &["--cache-dir", cache.to_str().unwrap()]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.manifest_path("eth")).unwrap()).unwrap();
    let big = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|f| f["size"].as_u64().unwrap())
        .unwrap();
    let h = big["chunks"][0]["blake3"].as_str().unwrap();
    let url = format!("{}/chunks/{}/{h}", mirror.url, &h[..2]);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null"])
                .arg(&url)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        metric(
            &upstream.url,
            "qsync_serve_requests_total{kind=\"chunk\",status=\"200\"}"
        ),
        1
    );
    assert_eq!(metric(&mirror.url, "qsync_serve_cache_misses_total"), 1);
}

#[test]
fn sigterm_stops_serve_cleanly() {
    let (env, _) = published();
    let mut server = Server::start(&env.store);
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

/// Regression (issue 15): a pull-through mirror whose upstream cannot be
/// read started anyway and failed every client request; it now checks the
/// upstream at start and names it.
#[test]
fn a_mirror_whose_upstream_cannot_be_read_does_not_start() {
    let env = Env::new();
    let cache = env.path("cache");
    let c = Server::command("http://127.0.0.1:9", &["--cache-dir", cache.to_str().unwrap()]);
    let (code, _, err) = run_bounded(c, std::time::Duration::from_secs(30), "serve");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("checking the upstream store http://127.0.0.1:9"),
        "{err}"
    );
}
