//! What qsync publishes is checkable with stock tools, without trusting
//! qsync: `minisign -V` accepts the signatures and `b3sum` reproduces the
//! manifest's file digests.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn minisign_verifies_pointer_manifest_and_catalog() {
    require("minisign");
    require("b3sum");
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 8);
    env.snapshot(&src, "eth", &[]);
    // Objects rewritten in place have one signature per version, named by
    // the BLAKE3 of the signed bytes.
    let versioned_sig = |obj: &std::path::Path| {
        let out = Command::new("b3sum").arg("--no-names").arg(obj).output().unwrap();
        assert!(out.status.success());
        let hex = String::from_utf8(out.stdout).unwrap();
        let name = obj.file_name().unwrap().to_str().unwrap();
        obj.with_file_name(format!("{name}.sigs/{}.minisig", hex.trim()))
    };
    let manifest = env.manifest_path("eth");
    let manifest_sig = manifest.with_file_name(format!(
        "{}.minisig",
        manifest.file_name().unwrap().to_str().unwrap()
    ));
    let pointer = env.pointer_path("eth");
    let catalog = env.store.join("catalog.json");
    for (obj, sig) in [
        (pointer.clone(), versioned_sig(&pointer)),
        (catalog.clone(), versioned_sig(&catalog)),
        (manifest, manifest_sig),
    ] {
        let out = Command::new("minisign")
            .arg("-V")
            .arg("-p")
            .arg(&env.pk)
            .arg("-m")
            .arg(&obj)
            .arg("-x")
            .arg(&sig)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "minisign -V {}: {}{}",
            obj.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Signature and comment signature verified"),
            "{text}"
        );
    }
}

#[test]
fn b3sum_matches_manifest_file_digests() {
    require("b3sum");
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 8);
    env.snapshot(&src, "eth", &[]);
    let m: Value = serde_json::from_slice(&std::fs::read(env.manifest_path("eth")).unwrap()).unwrap();
    let files = m["files"].as_array().unwrap();
    assert!(files.len() > 100);
    let sums = b3sums(&src, files.iter().map(|f| f["path"].as_str().unwrap()));
    for f in files {
        assert_eq!(
            sums[f["path"].as_str().unwrap()],
            f["blake3"].as_str().unwrap(),
            "{}",
            f["path"]
        );
    }
}

#[test]
fn chunk_objects_are_zstd_frames_or_raw_and_keyed_by_plaintext_digest() {
    require("zstd");
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 8);
    // A log that compresses, beside the sample's incompressible tables.
    let log: String = (0..60_000).map(|i| format!("block {i} imported\n")).collect();
    std::fs::write(src.join("node.log"), log).unwrap();
    env.snapshot(&src, "eth", &[]);
    let (mut raw, mut framed) = (0, 0);
    for dir in std::fs::read_dir(env.store.join("chunks")).unwrap() {
        for obj in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = obj.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let plain = if bytes.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
                framed += 1;
                let out = Command::new("zstd").args(["-dc"]).arg(&path).output().unwrap();
                assert!(out.status.success());
                out.stdout
            } else {
                raw += 1;
                bytes
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(blake3::hash(&plain).to_hex().as_str(), name);
        }
    }
    assert!(raw > 0 && framed > 0, "raw {raw}, zstd {framed}");
}
