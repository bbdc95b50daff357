//! Small files are packed (format 2): stored objects follow bytes, not
//! files; a changed small file costs about one chunk to publish and to
//! top up; restored files are exactly the source (b3sum agrees with the
//! manifest); and a reader refuses a manifest format it does not know,
//! saying what to do.

mod common;

use std::path::Path;

use common::*;
use qsync_core::manifest::Manifest;
use serde_json::Value;

fn small_files(dir: &Path, count: u64) -> Value {
    let out = qsync()
        .args(["sample", "generate", "--small-files", &count.to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn manifest(env: &Env) -> Manifest {
    Manifest::decode(&std::fs::read(env.manifest_path("eth")).unwrap(), "manifest").unwrap()
}

#[test]
fn objects_follow_bytes_and_a_changed_small_file_costs_about_one_chunk() {
    let env = Env::new();
    let src = env.path("src");
    let made = small_files(&src, 3000);
    let bytes = made["bytes_total"].as_u64().unwrap();
    let first = env.snapshot(&src, "eth", &[]);
    let objects = env.chunk_objects().len() as u64;
    assert!(
        objects <= bytes / (1 << 20) + 4,
        "{objects} objects for {bytes} bytes in 3000 files"
    );
    assert_eq!(first["chunks_total"].as_u64().unwrap(), objects, "{first}");
    let m = manifest(&env);
    assert_eq!(m.format, "qsync-manifest/2");
    assert!(m.files.iter().all(|f| f.packed && f.chunks.is_empty()));

    let dest = env.path("dest");
    env.restore("eth", &dest);
    assert_eq!(tree(&src), tree(&dest));

    // Three files rewritten: a chunk or two each to publish and to fetch.
    let out = qsync()
        .args(["sample", "mutate", "--percent", "0.1", "--seed", "5", "--dir"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = env.snapshot(&src, "eth", &[]);
    let uploaded = second["chunks_uploaded"].as_u64().unwrap();
    assert!((1..=6).contains(&uploaded), "{second}");
    let topup = env.restore("eth", &dest);
    let fetched = topup["chunks_fetched"].as_u64().unwrap();
    assert!((1..=uploaded).contains(&fetched), "{topup}");
    assert!(
        topup["bytes_fetched"].as_u64().unwrap() <= 6 * (16 << 20),
        "{topup}"
    );
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn restored_packed_files_are_what_b3sum_and_the_manifest_say() {
    require("b3sum");
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 400);
    std::fs::write(src.join("large.sst"), noise(3 << 20, 3)).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    env.restore("eth", &dest);
    let m = manifest(&env);
    assert!(m.files.iter().any(|f| !f.packed && !f.chunks.is_empty()));
    let sums = b3sums(&dest, m.files.iter().map(|f| f.path.as_ref()));
    for f in &m.files {
        assert_eq!(sums[&*f.path], f.blake3.to_hex(), "{}", f.path);
    }
}

/// A manifest of a format this qsync does not know, validly signed, is
/// refused before anything is written, naming the format and the fix.
#[test]
fn a_manifest_format_from_the_future_is_refused_with_what_to_do() {
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 20);
    env.snapshot(&src, "eth", &[]);
    let mut m = manifest(&env);
    m.format = "qsync-manifest/3".into();
    let (stored, compressed) = m.encode();
    let chain = qsync_core::ChainName::new("eth").unwrap();
    let key =
        qsync_core::ObjectKey::manifest(&chain, m.version, &qsync_core::Digest::of(&stored), compressed);
    let sk = qsync_core::sign::SigningKey::load(&env.sk).unwrap();
    std::fs::write(
        env.store.join(format!("{}.minisig", key.as_str())),
        sk.sign(&key, &stored),
    )
    .unwrap();
    std::fs::write(env.store.join(key.as_str()), &stored).unwrap();
    env.resign_pointer(&env.store, "eth", |p| {
        p.current.manifest_key = key.clone();
        p.current.manifest_blake3 = qsync_core::Digest::of(&stored);
        p.current.manifest_size = stored.len() as u64;
    });
    let dest = env.path("dest");
    let (code, _, err) = run(env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest));
    assert_ne!(code, 0);
    assert!(
        err.contains("\"qsync-manifest/3\"") && err.contains("upgrade qsync"),
        "{err}"
    );
    assert!(!has_marker(&dest));
    assert!(!dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none());
}

/// Found in review: a chunk of tens of thousands of tiny files gave a
/// place (about 2 KiB, with a hasher) to every file and matched ranges by
/// scanning every place for every place. 20,000 files of 1-64 bytes are
/// one pack chunk; they restore exactly.
#[test]
fn a_chunk_of_twenty_thousand_tiny_files_restores() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
    }
    for i in 0..20_000u64 {
        let body = noise(1 + (i % 64) as usize, i);
        std::fs::write(src.join(format!("d{:02}/{i:05}", i % 20)), body).unwrap();
    }
    let s = env.snapshot(&src, "eth", &[]);
    assert_eq!(s["chunks_total"], 1, "{s}");
    let dest = env.path("dest");
    env.restore("eth", &dest);
    assert_eq!(files(&src), files(&dest));
}

/// The agent's record of the last cycle (skip-unchanged) reuses the pack
/// only when every packed file is as it was, and reads it again when one
/// changed, vanished or appeared; every cycle restores to its source.
#[test]
fn an_agent_cycle_reuses_the_pack_only_while_every_packed_file_is_unchanged() {
    let env = Env::new();
    let src = env.path("src");
    small_files(&src, 200);
    std::fs::write(src.join("large.sst"), noise(3 << 20, 4)).unwrap();
    let cfg = env.agent_config("eth", &src, &[env.store.display().to_string()], "");
    let all = files(&src).len() as u64;
    let blob = |n: u32| src.join(format!("chains/sample/blobs/{:02x}/0/{n:08}.blob", n % 256));
    type Step<'a> = (&'a str, u64, Box<dyn Fn() + 'a>);
    let steps: [Step; 5] = [
        ("first", 0, Box::new(|| {})),
        ("nothing changed", all, Box::new(|| {})),
        // Only the large file is taken as known: the pack is read again.
        (
            "a small file rewritten",
            1,
            Box::new(|| std::fs::write(blob(7), b"rewritten").unwrap()),
        ),
        (
            "a small file deleted",
            1,
            Box::new(|| std::fs::remove_file(blob(8)).unwrap()),
        ),
        (
            "a small file added",
            1,
            Box::new(|| std::fs::write(src.join("new.txt"), b"new").unwrap()),
        ),
    ];
    for (i, (what, unchanged, change)) in steps.iter().enumerate() {
        change();
        let r = env.cycle(&cfg, "eth", |_| {});
        assert_eq!(r["files_unchanged"], *unchanged, "{what}: {r}");
        let dest = env.path(&format!("dest-{i}"));
        env.restore("eth", &dest);
        assert_eq!(files(&src), files(&dest), "{what}");
    }
    assert_eq!(all, 201, "200 small files and one large");
}
