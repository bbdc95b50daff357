//! Keys rotate without a gap (docs/deploy.md, "Rotate the signing key"):
//! fetchers trust several keys, a publisher signs with two, every reader
//! finds the signature of a key it trusts, rollback protection carries
//! across the change, and garbage collection and the pull-through mirror
//! treat the additional signatures like the primary ones.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use qsync_core::sign::VerifyingKey;
use serde_json::Value;

/// A key pair made with `qsync keygen` in `env`: (secret, public, key id).
fn keypair(env: &Env, name: &str) -> (PathBuf, PathBuf, String) {
    let (sk, pk) = (env.path(&format!("{name}.sec")), env.path(&format!("{name}.pub")));
    let mut c = qsync();
    c.args(["keygen", "--secret-key"])
        .arg(&sk)
        .arg("--public-key")
        .arg(&pk);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "keygen: {err}");
    let id = VerifyingKey::load(pk.to_str().unwrap()).unwrap().id().to_string();
    (sk, pk, id)
}

/// `qsync snapshot --json` of `src` as chain eth into the env's store,
/// signed with each of `secret` in order.
fn snapshot_cmd(env: &Env, src: &Path, secret: &[&Path]) -> Command {
    let mut c = qsync();
    c.arg("snapshot")
        .arg("--source")
        .arg(src)
        .arg("--store")
        .arg(&env.store);
    for sk in secret {
        c.arg("--secret-key").arg(sk);
    }
    c.args(["--chain", "eth", "--json"]);
    c
}

fn snapshot(env: &Env, src: &Path, secret: &[&Path]) -> Value {
    let (code, out, err) = run(snapshot_cmd(env, src, secret));
    assert_eq!(code, 0, "snapshot signed by {secret:?} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A `qsync restore --json` of eth from the env's store into `dest`,
/// trusting each of `public`, with its own trust state in `state`.
fn restore_cmd(env: &Env, dest: &Path, state: &Path, public: &[&Path]) -> Command {
    let mut c = qsync();
    c.args(["restore", "--chain", "eth", "--json", "--from"])
        .arg(&env.store);
    for pk in public {
        c.arg("--public-key").arg(pk);
    }
    c.arg("--dest").arg(dest).arg("--state-dir").arg(state);
    c
}

fn restore(env: &Env, dest: &Path, state: &Path, public: &[&Path]) -> Value {
    let (code, out, err) = run(restore_cmd(env, dest, state, public));
    assert_eq!(code, 0, "restore trusting {public:?} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A small source directory.
fn source(env: &Env) -> PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/a.sst"), noise(2 << 20, 1)).unwrap();
    std::fs::write(src.join("db/b.log"), "log line\n".repeat(5_000)).unwrap();
    src
}

/// The pointer's current bytes and the store-relative keys of the
/// current manifest and pointer version.
fn current(env: &Env) -> (Vec<u8>, String, String) {
    let pointer = std::fs::read(env.pointer_path("eth")).unwrap();
    let p: Value = serde_json::from_slice(&pointer).unwrap();
    let manifest = p["current"]["manifest_key"].as_str().unwrap().to_string();
    let b3 = blake3::hash(&pointer).to_hex().to_string();
    (pointer, manifest, format!("chains/eth/latest.json.sigs/{b3}"))
}

#[test]
fn restore_trusts_any_of_several_public_keys() {
    let env = Env::new();
    let (new_sk, new_pk, _) = keypair(&env, "new");
    let src = source(&env);
    // Signed by the new key only; the fetcher trusts the old one and the new one.
    snapshot(&env, &src, &[&new_sk]);
    let r = restore(&env, &env.path("dest"), &env.path("state"), &[&env.pk, &new_pk]);
    assert_eq!(r["version"], 1);
    assert_eq!(files(&env.path("dest")), files(&src));
    // The same through the environment, comma-separated, as in a pod spec.
    let mut c = restore_cmd(&env, &env.path("dest-env"), &env.path("state-env"), &[]);
    c.env(
        "QSYNC_PUBLIC_KEY",
        format!("{},{}", env.pk.display(), new_pk.display()),
    );
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "QSYNC_PUBLIC_KEY=OLD,NEW: {err}");
    assert_eq!(files(&env.path("dest-env")), files(&src));
    // The signing key first: neither the first nor the last key alone is
    // what is trusted.
    let r = restore(
        &env,
        &env.path("dest-rev"),
        &env.path("state-rev"),
        &[&new_pk, &env.pk],
    );
    assert_eq!(r["version"], 1);
    assert_eq!(files(&env.path("dest-rev")), files(&src));
}

#[test]
fn a_snapshot_signed_by_two_keys_restores_for_fetchers_of_either_key() {
    let env = Env::new();
    let (new_sk, new_pk, new_id) = keypair(&env, "new");
    let src = source(&env);
    snapshot(&env, &src, &[&env.sk, &new_sk]);
    let (pointer, manifest, pointer_sigs) = current(&env);

    // The old key's signatures are where they always were, the new key's beside them.
    for (primary, extra) in [
        (
            format!("{manifest}.minisig"),
            format!("{manifest}.{new_id}.minisig"),
        ),
        (
            format!("{pointer_sigs}.minisig"),
            format!("{pointer_sigs}.{new_id}.minisig"),
        ),
    ] {
        assert!(env.store.join(&primary).is_file(), "{primary} missing");
        assert!(env.store.join(&extra).is_file(), "{extra} missing");
    }
    // Stock minisign checks the additional signature with the new key.
    require("minisign");
    let pointer_file = env.path("latest.json");
    std::fs::write(&pointer_file, &pointer).unwrap();
    for (object, sig) in [
        (env.store.join(&manifest), format!("{manifest}.{new_id}.minisig")),
        (pointer_file, format!("{pointer_sigs}.{new_id}.minisig")),
    ] {
        let out = Command::new("minisign")
            .arg("-V")
            .arg("-p")
            .arg(&new_pk)
            .arg("-m")
            .arg(&object)
            .arg("-x")
            .arg(env.store.join(&sig))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "minisign -V {sig}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A fetcher that trusts only the new key, and one that trusts only the old.
    for (name, pk) in [("new", &new_pk), ("old", &env.pk)] {
        let dest = env.path(&format!("dest-{name}"));
        restore(&env, &dest, &env.path(&format!("state-{name}")), &[pk]);
        assert_eq!(files(&dest), files(&src), "trusting the {name} key");
    }
    // `ls` and `verify` with the new key alone.
    for cmd in ["ls", "verify"] {
        let mut c = qsync();
        c.args([cmd, "--chain", "eth", "--json", "--from"])
            .arg(&env.store)
            .arg("--public-key")
            .arg(&new_pk);
        let (code, _, err) = run(c);
        assert_eq!(code, 0, "qsync {cmd} with the new key: {err}");
    }
}

#[test]
fn a_fetcher_trusting_neither_key_is_refused_naming_the_key_ids() {
    let env = Env::new();
    let (new_sk, _, _) = keypair(&env, "new");
    let (_, c_pk, c_id) = keypair(&env, "c");
    let (_, d_pk, d_id) = keypair(&env, "d");
    let old_id = VerifyingKey::load(env.pk.to_str().unwrap())
        .unwrap()
        .id()
        .to_string();
    let src = source(&env);
    snapshot(&env, &src, &[&env.sk, &new_sk]);
    let dest = env.path("dest");
    let (code, _, err) = run(restore_cmd(&env, &dest, &env.path("state"), &[&c_pk, &d_pk]));
    assert_eq!(code, 3, "{err}");
    for (what, id) in [
        ("the key that signed", &old_id),
        ("a trusted key", &c_id),
        ("a trusted key", &d_id),
    ] {
        assert!(
            err.contains(id.as_str()),
            "the error does not name {what} {id}: {err}"
        );
    }
    assert!(err.contains("--public-key"), "no next step: {err}");
    assert!(!has_marker(&dest));
}

#[test]
fn rollback_protection_holds_across_a_key_change() {
    let env = Env::new();
    let (new_sk, new_pk, new_id) = keypair(&env, "new");
    let src = source(&env);
    let state = env.path("state");
    let both = [env.pk.as_path(), new_pk.as_path()];
    // Version 1 under the old key alone; its pointer is kept to replay later.
    snapshot(&env, &src, &[&env.sk]);
    let old_pointer = std::fs::read(env.pointer_path("eth")).unwrap();
    restore(&env, &env.path("dest"), &state, &both);
    // The rotation: both keys, then the new key alone.
    std::fs::write(src.join("db/c.sst"), noise(1 << 20, 3)).unwrap();
    snapshot(&env, &src, &[&env.sk, &new_sk]);
    std::fs::write(src.join("db/d.sst"), noise(1 << 20, 4)).unwrap();
    assert_eq!(snapshot(&env, &src, &[&new_sk])["version"], 3);
    assert_eq!(restore(&env, &env.path("dest"), &state, &both)["version"], 3);
    let record: Value = serde_json::from_slice(&std::fs::read(state.join("eth.json")).unwrap()).unwrap();
    assert_eq!(record["key_id"], new_id.as_str(), "{record}");

    // A mirror replays version 1, validly signed by the old key, which is
    // still trusted: refused as a rollback all the same.
    std::fs::write(env.pointer_path("eth"), &old_pointer).unwrap();
    let dest = env.path("dest-replayed");
    let (code, _, err) = run(restore_cmd(&env, &dest, &state, &both));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("rollback refused"), "{err}");
    assert!(!has_marker(&dest));
    // Only the trust state refused it: a host that never restored takes it.
    assert_eq!(
        restore(&env, &dest, &env.path("state-fresh"), &both)["version"],
        1
    );
}

/// Version 1 published under the env's (old) key alone, version 2 under
/// both, the new one first when `new_first`. Returns the new public key,
/// version 1's manifest key and the new key's id.
fn rotate(env: &Env, new_first: bool) -> (PathBuf, String, String) {
    let (new_sk, new_pk, new_id) = keypair(env, "new");
    let src = source(env);
    snapshot(env, &src, &[&env.sk]);
    let v1_manifest = current(env).1;
    std::fs::write(src.join("db/c.sst"), noise(1 << 20, 3)).unwrap();
    let keys: [&Path; 2] = if new_first {
        [&new_sk, &env.sk]
    } else {
        [&env.sk, &new_sk]
    };
    snapshot(env, &src, &keys);
    (new_pk, v1_manifest, new_id)
}

#[test]
fn after_one_publish_with_both_keys_everything_kept_verifies_under_the_new_key() {
    let env = Env::new();
    let (new_pk, v1_manifest, new_id) = rotate(&env, false);
    // The catalog and version 1's manifest, written under the old key
    // alone, now carry the new key's signature too.
    assert!(env
        .store
        .join(format!("{v1_manifest}.{new_id}.minisig"))
        .is_file());
    let new_only = |cmd: &[&str]| {
        let mut c = qsync();
        c.args(cmd).arg("--public-key").arg(&new_pk);
        run(c)
    };
    let store = env.store.to_str().unwrap();
    // The runbook's checks: the catalog and every kept manifest verify
    // under the new key alone.
    let (code, out, err) = new_only(&["ls", "--json", "--from", store]);
    assert_eq!(code, 0, "ls of the whole store with the new key: {err}");
    assert!(out.contains("\"eth\""), "{out}");
    let (code, _, err) = new_only(&["gc", "--dry-run", "--json", "--store", store]);
    assert_eq!(code, 0, "gc --dry-run with the new key: {err}");
    // A deliberate rollback to version 1 by a fetcher of the new key.
    let dest = env.path("dest");
    let mut c = restore_cmd(&env, &dest, &env.path("state"), &[&new_pk]);
    c.args(["--snapshot-version", "1"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["version"], 1);
}

#[test]
fn keys_listed_new_first_still_add_the_new_keys_signature_to_what_the_old_one_signed() {
    let env = Env::new();
    // The new key first: version 1's primary signature is the old key's,
    // which must not count as the new key's.
    let (new_pk, v1_manifest, new_id) = rotate(&env, true);
    assert!(env
        .store
        .join(format!("{v1_manifest}.{new_id}.minisig"))
        .is_file());
    let dest = env.path("dest");
    let mut c = restore_cmd(&env, &dest, &env.path("state"), &[&new_pk]);
    c.args(["--snapshot-version", "1"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "version 1 under the new key alone: {err}");
}

#[test]
fn a_damaged_pointer_signature_is_reported_as_such_not_as_a_key_change() {
    let env = Env::new();
    let src = source(&env);
    snapshot(&env, &src, &[&env.sk]);
    let sigs = env.store.join("chains/eth/latest.json.sigs");
    let sig = std::fs::read_dir(&sigs).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&sig).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // The signature line, one base64 character changed: still a minisign
    // file by the same key, no longer a valid signature.
    let mut sig_line: Vec<char> = lines[1].chars().collect();
    let i = sig_line.len() / 2;
    sig_line[i] = if sig_line[i] == 'A' { 'B' } else { 'A' };
    lines[1] = sig_line.into_iter().collect();
    std::fs::write(&sig, lines.join("\n") + "\n").unwrap();
    std::fs::write(src.join("db/c.sst"), noise(1 << 20, 3)).unwrap();
    let (code, _, err) = run(snapshot_cmd(&env, &src, &[&env.sk]));
    assert_ne!(code, 0);
    assert!(err.contains("latest.json"), "{err}");
    assert!(
        !err.contains("--secret-key OLD"),
        "a damaged signature diagnosed as a key change: {err}"
    );
}

#[test]
fn a_publisher_that_switches_keys_at_once_is_refused_and_told_to_sign_with_both() {
    let env = Env::new();
    let (new_sk, _, _) = keypair(&env, "new");
    let src = source(&env);
    snapshot(&env, &src, &[&env.sk]);
    let before = std::fs::read(env.pointer_path("eth")).unwrap();
    let (code, _, err) = run(snapshot_cmd(&env, &src, &[&new_sk]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--secret-key OLD --secret-key NEW"), "{err}");
    assert_eq!(
        std::fs::read(env.pointer_path("eth")).unwrap(),
        before,
        "the pointer moved"
    );
    // With both keys it goes on, and then with the new one alone.
    snapshot(&env, &src, &[&env.sk, &new_sk]);
    assert_eq!(snapshot(&env, &src, &[&new_sk])["version"], 3);
}

/// Every file under `dir`, relative.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn gc_leaves_a_dual_signed_store_restorable_by_either_key() {
    let env = Env::new();
    let (new_sk, new_pk, new_id) = keypair(&env, "new");
    let src = source(&env);
    // The agent signing with both keys (the configuration's list form),
    // keeping one snapshot and collecting at once after each cycle.
    let cfg = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        "[chain.retention]\nkeep-last = 1\ngc-grace = \"0s\"",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("secret-key = {:?}", env.sk.display().to_string()),
        &format!(
            "secret-key = [{:?}, {:?}]",
            env.sk.display().to_string(),
            new_sk.display().to_string()
        ),
    );
    assert!(text.contains(&new_sk.display().to_string()), "{text}");
    std::fs::write(&cfg, text).unwrap();
    for i in 1..=3u64 {
        std::fs::write(src.join("db/c.sst"), noise(1 << 20, 10 + i)).unwrap();
        let r = env.cycle(&cfg, "eth", |_| {});
        assert_eq!(r["version"], i);
        assert!(r["stores"][0]["gc"].is_object(), "{r}");
    }
    // A collection trusting the new key alone: every kept manifest and
    // pointer verifies under it.
    let mut c = qsync();
    c.args(["gc", "--json", "--grace", "0s", "--store"])
        .arg(&env.store)
        .arg("--public-key")
        .arg(&new_pk);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "gc with the new key: {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["manifests_kept"], 1, "{report}");

    // Exactly the current snapshot's manifest with both its signatures, and
    // both signatures of the current pointer version: none left behind,
    // none live deleted.
    let (_, manifest, pointer_sigs) = current(&env);
    let name = |k: &str| k.rsplit('/').next().unwrap().to_string();
    let mut want = vec![
        name(&manifest),
        format!("{}.minisig", name(&manifest)),
        format!("{}.{new_id}.minisig", name(&manifest)),
    ];
    want.sort();
    assert_eq!(listing(&env.store.join("chains/eth/manifests")), want);
    let mut want = vec![
        format!("{}.minisig", name(&pointer_sigs)),
        format!("{}.{new_id}.minisig", name(&pointer_sigs)),
    ];
    want.sort();
    assert_eq!(listing(&env.store.join("chains/eth/latest.json.sigs")), want);

    for (name, pk) in [("new", &new_pk), ("old", &env.pk)] {
        let dest = env.path(&format!("dest-{name}"));
        assert_eq!(
            restore(&env, &dest, &env.path(&format!("state-{name}")), &[pk])["version"],
            3
        );
        assert_eq!(files(&dest), files(&src), "trusting the {name} key");
    }
}

#[test]
fn a_pull_through_mirror_trusting_the_new_key_caches_its_signatures_for_good() {
    require("curl");
    let env = Env::new();
    let (new_sk, new_pk, new_id) = keypair(&env, "new");
    let src = source(&env);
    snapshot(&env, &src, &[&env.sk, &new_sk]);
    let (_, manifest, pointer_sigs) = current(&env);
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let mirror = Server::start_with(
        &upstream.url,
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--public-key",
            new_pk.to_str().unwrap(),
        ],
    );
    let head = |key: &str| {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "15"])
            .arg(format!("{}/{key}", mirror.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    for key in [
        format!("{manifest}.{new_id}.minisig"),
        format!("{pointer_sigs}.{new_id}.minisig"),
    ] {
        let h = head(&key);
        assert!(h.starts_with("http/1.1 200"), "{key}: {h}");
        assert!(
            h.contains("immutable"),
            "{key} verified under the new key but stayed short-lived: {h}"
        );
    }
    // The old key's signature is not one this mirror can verify.
    let h = head(&format!("{manifest}.minisig"));
    assert!(h.starts_with("http/1.1 200") && !h.contains("immutable"), "{h}");
    // A fetcher trusting the new key restores through the mirror.
    let dest = env.path("dest");
    let mut c = qsync();
    c.args(["restore", "--chain", "eth", "--json", "--from", &mirror.url])
        .arg("--public-key")
        .arg(&new_pk)
        .arg("--dest")
        .arg(&dest)
        .arg("--state-dir")
        .arg(env.path("state"));
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), files(&src));
}
