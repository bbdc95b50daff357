//! Snapshot -> restore round trips through the real binary: byte-identical
//! trees with modes, over a directory store and over HTTP, top-ups that fetch
//! only what changed, and the destination ownership rules.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn fixture(root: &Path) {
    let p = |r: &str| root.join(r);
    std::fs::create_dir_all(p("db/deep/er/est")).unwrap();
    std::fs::create_dir_all(p("empty-dir")).unwrap();
    std::fs::write(p("db/big.sst"), noise(20 << 20, 1)).unwrap();
    std::fs::write(p("db/deep/er/est/tiny"), b"x").unwrap();
    std::fs::write(p("db/empty"), b"").unwrap();
    std::fs::write(p("db/text.log"), "height 123 ok\n".repeat(50_000)).unwrap();
    std::fs::write(p("db/dup-a"), noise(3 << 20, 7)).unwrap();
    std::fs::write(p("db/dup-b"), noise(3 << 20, 7)).unwrap();
    std::fs::write(p("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(p("secret"), b"s").unwrap();
    std::fs::write(p("readonly"), b"r").unwrap();
    std::fs::set_permissions(p("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(p("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(p("readonly"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(p("db/deep"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

/// A store holding the fixture as chain "eth"; returns the env and the source.
fn published() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    fixture(&src);
    env.snapshot(&src, "eth", &[]);
    (env, src)
}

#[test]
fn round_trip_is_byte_identical_from_directory_and_http() {
    let env = Env::new();
    let src = env.path("src");
    fixture(&src);
    let s = env.snapshot(&src, "eth", &["--height", "123", "--block-hash", "0xabc"]);
    assert_eq!(s["version"], 1);
    assert_eq!(s["files"], 9);
    // dup-a and dup-b share chunks: stored once.
    assert!(s["chunks_uploaded"].as_u64().unwrap() < s["chunks_total"].as_u64().unwrap());

    let dest = env.path("dest");
    let r = env.restore("eth", &dest);
    assert_eq!(r["version"], 1);
    assert_eq!(tree(&src), tree(&dest));
    assert!(has_marker(&dest));
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".qsync-restore.json")).unwrap()).unwrap();
    assert_eq!(marker["chain"], "eth");
    assert_eq!(marker["height"], 123);
    assert!(!dest.join(".qsync-restore.partial.json").exists());

    let server = Server::start(&env.store);
    let dest2 = env.path("dest-http");
    let out = env.restore_cmd(&server.url, "eth", &dest2).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&src), tree(&dest2));
}

#[test]
fn top_up_fetches_only_changes_and_removes_extras() {
    let (env, src) = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);

    // The source advances: one file rewritten, one added, one deleted.
    std::fs::write(src.join("db/text.log"), "height 124 ok\n".repeat(50_000)).unwrap();
    std::fs::write(src.join("db/new.sst"), noise(1 << 20, 9)).unwrap();
    std::fs::remove_file(src.join("db/dup-b")).unwrap();
    let s = env.snapshot(&src, "eth", &[]);
    assert_eq!(s["version"], 2);
    // Local damage in the destination is repaired too.
    std::fs::write(dest.join("stray.tmp"), b"junk").unwrap();
    std::fs::create_dir_all(dest.join("stray-dir/x")).unwrap();

    let r = env.restore("eth", &dest);
    assert_eq!(r["version"], 2);
    assert_eq!(tree(&src), tree(&dest));
    // Both files are small, so packed: their chunk brings its few small
    // neighbours along.
    let changed = 700_000 + (1 << 20);
    assert!(
        r["bytes_fetched"].as_u64().unwrap() <= changed + (64 << 10),
        "{r}"
    );
    assert!(r["bytes_reused"].as_u64().unwrap() >= 20 << 20, "{r}");
    assert!(r["removed"].as_u64().unwrap() >= 3, "{r}");
}

#[test]
fn top_up_repairs_what_the_node_changed_and_verify_existing_rechecks_all() {
    let (env, src) = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);

    // The node appended to one file (its mtime moves): a plain top-up repairs it.
    let log = dest.join("db/text.log");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    let r = env.restore("eth", &dest);
    assert_eq!(tree(&src), tree(&dest));
    assert!(
        r["bytes_fetched"].as_u64().unwrap() <= 700_000 + (64 << 10),
        "{r}"
    );

    // A write in place that restores size and mtime still moves the inode's
    // change time, which the index also compares: the top-up repairs it.
    let big = dest.join("db/big.sst");
    let mtime = std::fs::metadata(&big).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"rot", 12345).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let repaired = env.restore("eth", &dest);
    assert!(repaired["bytes_fetched"].as_u64().unwrap() > 0, "{repaired}");
    assert_eq!(tree(&src), tree(&dest));
    // Rot below the filesystem keeps even the change time; only
    // --verify-existing, which hashes every file, sees it. Here it finds
    // nothing to fetch.
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.arg("--verify-existing");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bytes_fetched"], 0, "{r}");
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn non_empty_destination_needs_force() {
    let (env, src) = published();
    let dest = env.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("precious"), b"operator data").unwrap();

    let (code, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");
    assert!(
        dest.join("precious").exists(),
        "refused restore touched the destination"
    );
    assert!(!has_marker(&dest));

    let mut forced = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    forced.arg("--force");
    let (code, _, err) = run(forced);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn a_restore_of_another_chain_is_not_overwritten_silently() {
    let (env, src) = published();
    env.snapshot(&src, "bsc", &[]);
    let dest = env.path("dest");
    env.restore("eth", &dest);
    let (code, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "bsc", &dest));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("chain eth"), "{err}");
    assert!(has_marker(&dest), "refusal must not touch the existing restore");
}

#[test]
fn restore_is_configurable_by_environment_alone() {
    let (env, src) = published();
    let dest = env.path("dest");
    let out = qsync()
        .arg("restore")
        .env("QSYNC_FROM", &env.store)
        .env("QSYNC_PUBLIC_KEY", &env.pk)
        .env("QSYNC_CHAIN", "eth")
        .env("QSYNC_DEST", &dest)
        .env("QSYNC_STATE_DIR", &env.state)
        .env("QSYNC_JSON", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["chain"], "eth");
    assert_eq!(tree(&src), tree(&dest));
}

/// A destination that already is the snapshot, as the last restore left
/// it, is recognised from its directories and one stat per file: the
/// rerun writes nothing (not even its markers). Anything out of place (a
/// stray file, a directory's mode, a file swapped for a link) sends it the
/// full way, which repairs it.
#[test]
fn a_complete_destination_is_left_untouched_and_anything_amiss_is_repaired() {
    let (env, src) = published();
    let dest = env.path("dest");
    env.restore("eth", &dest);
    let marker = dest.join(".qsync-restore.json");
    let index = dest.join(".qsync-restore.index.json");
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (marker_at, index_at) = (stamp(&marker), stamp(&index));

    let r = env.restore("eth", &dest);
    assert_eq!(
        (r["bytes_fetched"].as_u64(), r["removed"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(stamp(&marker), marker_at, "the marker was rewritten");
    assert_eq!(stamp(&index), index_at, "the index was rewritten");

    // A stray file, a loosened directory, a file replaced by a link to
    // another with the same bytes outside: each is noticed and repaired.
    let outside = env.path("outside-tiny");
    std::fs::write(&outside, b"x").unwrap();
    type Damage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let damage: [Damage; 4] = [
        // A restore killed after its marker but before removing its
        // journal (found by chaos): the rerun must finish that, not skip.
        (
            "journal",
            Box::new(|| std::fs::write(dest.join(".qsync-restore.journal"), b"torn").unwrap()),
        ),
        (
            "stray",
            Box::new(|| std::fs::write(dest.join("db/stray"), b"?").unwrap()),
        ),
        (
            "mode",
            Box::new(|| {
                std::fs::set_permissions(dest.join("db/deep"), std::fs::Permissions::from_mode(0o777))
                    .unwrap()
            }),
        ),
        (
            "link",
            Box::new(|| {
                let tiny = dest.join("db/deep/er/est/tiny");
                std::fs::remove_file(&tiny).unwrap();
                std::os::unix::fs::symlink(&outside, &tiny).unwrap();
            }),
        ),
    ];
    for (what, damage) in damage {
        let before = stamp(&marker);
        damage();
        let r = env.restore("eth", &dest);
        assert_eq!(tree(&src), tree(&dest), "{what}: not repaired: {r}");
        assert!(stamp(&marker) > before, "{what}: took the fast path");
        assert!(
            !dest.join(".qsync-restore.journal").exists(),
            "{what}: journal left"
        );
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"x");
}
