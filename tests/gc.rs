//! Retention and garbage collection: many agent cycles keep the store
//! bounded while every kept snapshot still verifies and the current one
//! restores, a collection running in a loop beside the publishes loses
//! nothing, and `qsync gc` deletes only what no kept snapshot needs.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use qsync_core::manifest::Manifest;
use qsync_core::pointer::Pointer;
use serde_json::Value;

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    total
}

/// Checks every snapshot the pointer keeps: its manifest is there and every
/// chunk it references is in the store and decodes to its digest. Returns
/// the number of snapshots kept.
fn verify_kept(store: &Path, chain: &str) -> usize {
    let p = Pointer::decode(
        &std::fs::read(store.join(format!("chains/{chain}/latest.json"))).unwrap(),
        "pointer",
    )
    .unwrap();
    let mut kept = 0;
    for snap in std::iter::once(&p.current).chain(&p.history) {
        let bytes = std::fs::read(store.join(snap.manifest_key.as_str()))
            .unwrap_or_else(|e| panic!("manifest of kept version {} is gone: {e}", snap.version));
        let m = Manifest::decode(&bytes, "manifest").unwrap();
        for c in m.all_chunks() {
            let key = qsync_core::ObjectKey::chunk(&c.blake3);
            let stored = std::fs::read(store.join(key.as_str()))
                .unwrap_or_else(|e| panic!("version {} lost chunk {key}: {e}", snap.version));
            qsync_core::chunk::decode(&stored, c.size, &c.blake3).unwrap();
        }
        kept += 1;
    }
    kept
}

fn gc_cmd(env: &Env, extra: &[&str]) -> Command {
    let mut c = qsync();
    c.args(["gc", "--json", "--store"])
        .arg(&env.store)
        .arg("--public-key")
        .arg(&env.pk)
        .args(extra);
    c
}

#[test]
fn many_cycles_stay_bounded_and_gc_racing_publishes_loses_nothing() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 8);
    let cfg = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        "[chain.retention]\nkeep-last = 2\ngc-grace = \"0s\"",
    );

    let first = env.cycle(&cfg, "eth", |_| {});
    let base = du(&env.store);
    assert_eq!(first["version"], 1);

    // A collector in a loop beside the publishes, as another chain's agent
    // or an operator's `qsync gc` would be.
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (stop, store, pk) = (stop.clone(), env.store.clone(), env.pk.clone());
        std::thread::spawn(move || {
            let (mut runs, mut deferred) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let mut c = qsync();
                c.args(["gc", "--json", "--grace", "0s", "--store"])
                    .arg(&store)
                    .arg("--public-key")
                    .arg(&pk);
                let (code, out, err) = run(c);
                assert_eq!(code, 0, "gc failed: {err}");
                let r: Value = serde_json::from_str(&out).unwrap();
                runs += 1;
                deferred += usize::from(r.get("deferred").is_some());
            }
            (runs, deferred)
        })
    };
    let mut sizes = vec![base];
    let mut most_uploaded = 0;
    for i in 2..=7u64 {
        mutate(&src, 20, Some(i));
        let r = env.cycle(&cfg, "eth", |_| {});
        most_uploaded = most_uploaded.max(r["stores"][0]["summary"]["bytes_uploaded"].as_u64().unwrap());
        assert_eq!(r["version"], i);
        assert!(
            r["stores"][0]["gc"].is_object(),
            "the cycle collects garbage: {r}"
        );
        assert!(verify_kept(&env.store, "eth") <= 2);
        sizes.push(du(&env.store));
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, deferred) = collector.join().unwrap();
    assert!(runs > 0);
    eprintln!("store sizes {sizes:?}; concurrent gc runs {runs}, deferred {deferred}");

    assert_eq!(verify_kept(&env.store, "eth"), 2, "keep-last = 2");
    let manifests = std::fs::read_dir(env.store.join("chains/eth/manifests"))
        .unwrap()
        .count();
    assert_eq!(manifests, 4, "two manifests and their signatures remain");
    // Without collection the store would keep all six cycles' uploads
    // (20 % of the tables, and the pack of small files each time); with
    // it, about the current data plus one cycle's.
    let last = *sizes.last().unwrap();
    assert!(
        last < base + 2 * most_uploaded,
        "store grew from {base} to {last} bytes, cycles uploaded at most {most_uploaded}"
    );
    let dest = env.path("restored");
    env.restore("eth", &dest);
    assert_eq!(files(&dest), files(&src));
    // Old pointer signatures went too (only the current one is left).
    let sigs = std::fs::read_dir(env.store.join("chains/eth/latest.json.sigs"))
        .unwrap()
        .count();
    assert_eq!(sigs, 1);
}

#[test]
fn gc_deletes_only_garbage_and_refuses_what_it_cannot_verify() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    env.snapshot(&src, "eth", &[]);
    mutate(&src, 20, Some(3));
    env.snapshot(&src, "eth", &[]);
    // Garbage: a chunk no manifest references and a manifest no pointer names
    // (what a failed publish leaves).
    let orphan = qsync_core::Digest::of(b"orphan");
    let orphan_path = env.store.join(qsync_core::ObjectKey::chunk(&orphan).as_str());
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"orphan").unwrap();
    let stray = env
        .store
        .join("chains/eth/manifests/000000000099-0000000000000000.json");
    std::fs::write(&stray, b"{}").unwrap();
    let chunks_before = env.chunk_objects().len();

    // Young garbage is kept through the grace period.
    let (code, out, err) = run(gc_cmd(&env, &["--grace", "1h"]));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["chunks_deleted"].as_u64(), r["chunks_in_grace"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    assert!(orphan_path.exists());

    // A dry run lists, deletes nothing.
    let (code, out, _) = run(gc_cmd(&env, &["--grace", "0s", "--dry-run"]));
    assert_eq!(code, 0);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["chunks_deleted"], 1, "{r}");
    assert_eq!(r["manifests_deleted"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["manifests_kept"], 2);
    assert!(orphan_path.exists() && stray.exists());

    // A live publish lease defers the collection.
    let lease = env.store.join("locks/publish/other.json");
    std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
    let until = qsync_core::time::Timestamp::now().plus(std::time::Duration::from_secs(600));
    std::fs::write(
        &lease,
        format!(r#"{{"holder":"elsewhere:1:0","purpose":"publish other","expires_at":"{until}"}}"#),
    )
    .unwrap();
    let (_, out, _) = run(gc_cmd(&env, &["--grace", "0s"]));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(
        r["deferred"]
            .as_str()
            .unwrap()
            .contains("locks/publish/other.json"),
        "{r}"
    );
    assert!(orphan_path.exists());
    std::fs::remove_file(&lease).unwrap();

    // Under another key the pointers do not verify: nothing is deleted.
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let (code, _, _) = run({
        let mut c = qsync();
        c.args(["keygen", "--secret-key"])
            .arg(other.join("k.sec"))
            .arg("--public-key")
            .arg(other.join("k.pub"));
        c
    });
    assert_eq!(code, 0);
    let (code, _, err) = run({
        let mut c = qsync();
        c.args(["gc", "--grace", "0s", "--store"])
            .arg(&env.store)
            .arg("--public-key")
            .arg(other.join("k.pub"));
        c
    });
    assert_ne!(code, 0);
    assert!(err.contains("signature") || err.contains("key"), "{err}");
    assert!(orphan_path.exists());

    let (code, _, err) = run(gc_cmd(&env, &["--grace", "0s"]));
    assert_eq!(code, 0, "{err}");
    assert!(!orphan_path.exists() && !stray.exists());
    assert_eq!(env.chunk_objects().len(), chunks_before - 1);
    let dest = env.path("restored");
    env.restore("eth", &dest);
    assert_eq!(files(&dest), files(&src));
}

/// Sets the modification time of everything under `dir` back by `hours`:
/// objects uploaded that long ago.
fn age(dir: &Path, hours: u32) {
    let out = Command::new("find")
        .arg(dir)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            &format!("{hours} hours ago"),
            "{}",
            "+",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_restore_on_the_previous_pointer_keeps_its_chunks_through_the_grace_period() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 4);
    let cfg = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        "[chain.retention]\nkeep-last = 1\ngc-grace = \"1h\"",
    );
    let first = env.cycle(&cfg, "eth", |_| {});
    assert_eq!(first["version"], 1);
    // The first snapshot was uploaded long before the next cycle: its
    // objects are all older than the grace period.
    age(&env.store, 2);
    // A fetcher reads the first pointer now, and is still restoring when
    // the second cycle retires that snapshot.
    let old_manifest = env.manifest_path("eth");
    let m = Manifest::decode(&std::fs::read(&old_manifest).unwrap(), "manifest").unwrap();
    mutate(&src, 50, Some(2));
    let second = env.cycle(&cfg, "eth", |_| {});
    assert_eq!(second["version"], 2);
    let gc = &second["stores"][0]["gc"];
    assert!(gc.is_object() && gc["deferred"].is_null(), "{second}");
    assert!(
        old_manifest.exists(),
        "the manifest the previous pointer named was deleted at once: {gc}"
    );
    let mut only_old = Vec::new();
    let current = Manifest::decode(&std::fs::read(env.manifest_path("eth")).unwrap(), "manifest").unwrap();
    let now: std::collections::HashSet<_> = current.all_chunks().map(|c| c.blake3).collect();
    for c in m.all_chunks() {
        let key = qsync_core::ObjectKey::chunk(&c.blake3);
        let stored = std::fs::read(env.store.join(key.as_str())).unwrap_or_else(|e| {
            panic!("a restore of version 1 that started before the cycle lost chunk {key}: {e}; gc: {gc}")
        });
        qsync_core::chunk::decode(&stored, c.size, &c.blake3).unwrap();
        if !now.contains(&c.blake3) {
            only_old.push(env.store.join(key.as_str()));
        }
    }
    assert!(!only_old.is_empty(), "the mutation changed some chunks");
    // The store says when it first saw version 1 unkept.
    let retired: Value =
        serde_json::from_slice(&std::fs::read(env.store.join("gc/retired.json")).unwrap()).unwrap();
    let key = old_manifest.strip_prefix(&env.store).unwrap().to_str().unwrap();
    assert!(retired["manifests"][key].is_string(), "{retired}");

    // Once the grace period has run out (here: a collection with none),
    // the retired snapshot and the chunks only it needed go.
    let (code, out, err) = run(gc_cmd(&env, &["--grace", "0s"]));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["manifests_deleted"].as_array().unwrap().len(), 1, "{r}");
    assert!(!old_manifest.exists());
    assert!(only_old.iter().all(|p| !p.exists()), "{r}");
    assert_eq!(verify_kept(&env.store, "eth"), 1);
    let dest = env.path("restored");
    env.restore("eth", &dest);
    assert_eq!(files(&dest), files(&src));
}
