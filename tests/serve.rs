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
