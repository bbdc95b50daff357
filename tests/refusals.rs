//! Every way a store can lie must be refused with a clear message, a
//! non-zero exit, and no completion marker in the destination.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// A store with one small snapshot of chain "eth".
fn published() -> Env {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/a.sst"), noise(3 << 20, 1)).unwrap();
    std::fs::write(src.join("db/b.log"), "log line\n".repeat(10_000)).unwrap();
    env.snapshot(&src, "eth", &[]);
    env
}

/// Restores into a fresh destination and asserts a refusal mentioning `needle`.
fn assert_refused(env: &Env, needle: &str, code: i32) {
    let dest = env.path("dest-refused");
    let _ = std::fs::remove_dir_all(&dest);
    let (got, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest));
    assert_eq!(got, code, "expected exit {code}: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(err.contains("qsync: error: restoring chain eth"), "{err}");
    assert!(!has_marker(&dest), "a refused restore left a completion marker");
}

/// Signs `file` with minisign (the stock tool) using `sk`, storing the
/// signature where format v1 puts it.
fn minisign_sign(sk: &Path, file: &Path) {
    require("minisign");
    let name = file.file_name().unwrap().to_str().unwrap();
    let sig = if name == "latest.json" || name == "catalog.json" {
        let dir = file.with_file_name(format!("{name}.sigs"));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{}.minisig", b3(&std::fs::read(file).unwrap())))
    } else {
        file.with_file_name(format!("{name}.minisig"))
    };
    let out = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(sk)
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(&sig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "minisign -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn flipped_byte_in_a_chunk() {
    let env = published();
    let chunk = env.chunk_objects().swap_remove(0);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    assert_refused(&env, "fetch it from another mirror", 3);
}

#[test]
fn edited_manifest() {
    let env = published();
    let path = env.manifest_path("eth");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"mode\":420", "\"mode\":511");
    std::fs::write(&path, text).unwrap();
    assert_refused(&env, "signature rejected", 3);
}

#[test]
fn pointer_signed_by_another_key() {
    let env = published();
    let (sk2, pk2) = (env.path("other.sec"), env.path("other.pub"));
    assert!(qsync()
        .args(["keygen", "--secret-key"])
        .arg(&sk2)
        .arg("--public-key")
        .arg(&pk2)
        .status()
        .unwrap()
        .success());
    minisign_sign(&sk2, &env.pointer_path("eth"));
    assert_refused(&env, "signature rejected", 3);
}

#[test]
fn replayed_older_pointer_is_a_rollback() {
    let env = published();
    let ptr = env.pointer_path("eth");
    let old_ptr = std::fs::read(&ptr).unwrap();
    std::fs::write(env.path("src/db/c.sst"), noise(1 << 20, 3)).unwrap();
    assert_eq!(env.snapshot(&env.path("src"), "eth", &[])["version"], 2);
    env.restore("eth", &env.path("dest-v2"));
    // A mirror replays the version-1 pointer, validly signed (its signature
    // is still in the store) but old.
    std::fs::write(&ptr, old_ptr).unwrap();
    assert_refused(&env, "rollback refused", 3);
}

#[test]
fn expired_pointer_unless_allowed() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    env.snapshot(&src, "eth", &[]);
    env.resign_pointer(&env.store, "eth", |p| p.expires_at = an_hour_ago());
    assert_refused(&env, "expired", 3);
    let dest = env.path("dest-allowed");
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.arg("--allow-expired");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--allow-expired"), "no warning: {err}");
    assert!(has_marker(&dest));
}

/// Publishes an edited copy of the current manifest, validly signed by the
/// publisher's key (with the stock minisign), and points the pointer at it.
fn publish_modified_manifest(env: &Env, edit: impl FnOnce(&mut Value)) {
    let mpath = env.manifest_path("eth");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let key = format!("chains/eth/manifests/000000000001-{}.json", &b3(&bytes)[..16]);
    let evil = env.store.join(&key);
    std::fs::write(&evil, &bytes).unwrap();
    minisign_sign(&env.sk, &evil);

    let ptr = env.pointer_path("eth");
    let mut p: Value = serde_json::from_slice(&std::fs::read(&ptr).unwrap()).unwrap();
    p["current"]["manifest_key"] = key.into();
    p["current"]["manifest_blake3"] = b3(&bytes).into();
    p["current"]["manifest_size"] = bytes.len().into();
    std::fs::write(&ptr, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    minisign_sign(&env.sk, &ptr);
}

#[test]
fn expired_snapshot_behind_a_fresh_pointer() {
    let env = published();
    publish_modified_manifest(&env, |m| m["expires_at"] = "2020-01-01T00:00:00Z".into());
    assert_refused(&env, "snapshot 1 of chain eth (from", 3);
}

/// Every chunk verifies, but the file they make is not the one the
/// manifest names: the whole-file check (assembled as the chunks land)
/// refuses it.
#[test]
fn file_whose_chunks_do_not_make_its_digest_is_refused() {
    let env = published();
    publish_modified_manifest(&env, |m| {
        let files = m["files"].as_array_mut().unwrap();
        let sst = files.iter().position(|f| f["path"] == "db/a.sst").unwrap();
        let log = files.iter().position(|f| f["path"] == "db/b.log").unwrap();
        files[sst]["blake3"] = files[log]["blake3"].clone();
    });
    assert_refused(&env, "restored file", 3);
}

#[test]
fn signed_manifest_with_parent_path_is_refused() {
    let env = published();
    publish_modified_manifest(&env, |m| m["files"][0]["path"] = "../escaped".into());
    assert_refused(&env, "would escape", 3);
    assert!(!env.path("escaped").exists());
}

#[test]
fn signed_manifest_with_absolute_path_is_refused() {
    let env = published();
    let target = env.path("abs-target");
    publish_modified_manifest(&env, |m| m["files"][0]["path"] = target.to_str().unwrap().into());
    assert_refused(&env, "would escape", 3);
    assert!(!target.exists());
}

#[test]
fn symlink_in_destination_is_not_followed() {
    let env = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);
    // Someone replaces db/ with a link to a directory outside.
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir_all(dest.join("db")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("db")).unwrap();
    env.restore("eth", &dest);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through a symlink"
    );
    assert!(std::fs::symlink_metadata(dest.join("db")).unwrap().is_dir());
    assert_eq!(files(&env.path("src")), files(&dest));
}

#[test]
fn oversized_object_is_refused_without_reading_it_all() {
    let env = published();
    // A mirror serves 64 MiB where the manifest promises a chunk of at most 3 MiB.
    let chunk = env.chunk_objects().swap_remove(0);
    std::fs::write(&chunk, noise(64 << 20, 2)).unwrap();
    let server = Server::start(&env.store);
    let dest = env.path("dest-oversized");
    let (code, _, err) = run(env.restore_cmd(&server.url, "eth", &dest));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("larger than") && err.contains("use another mirror"),
        "{err}"
    );
    assert!(!has_marker(&dest));
}

#[test]
fn wrong_chain_or_missing_store_says_what_to_check() {
    let env = published();
    let (code, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "polkadot", &env.path("d")));
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("no snapshot of chain polkadot") && err.contains("--chain"),
        "{err}"
    );
    let (code, _, err) = run(env.restore_cmd("http://127.0.0.1:9", "eth", &env.path("d")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:9") && err.contains("reachable"), "{err}");
}
