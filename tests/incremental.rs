//! Deduplication: a second snapshot after a node advanced by ~5 % uploads at
//! most 1.1x the changed bytes plus the manifest, pointer and signatures; an
//! unchanged source uploads no chunks at all.

mod common;

use common::*;

#[test]
fn second_snapshot_uploads_about_the_changed_bytes() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 128);
    let first = env.snapshot(&src, "eth", &[]);
    assert_eq!(first["chunks_uploaded"], first["chunks_total"]);

    let changed = mutate(&src, 5, None)["bytes_changed"].as_u64().unwrap();
    let total = first["bytes_total"].as_u64().unwrap();
    assert!(
        changed > total / 25 && changed < total / 15,
        "mutation changed {changed} of {total}"
    );

    let second = env.snapshot(&src, "eth", &[]);
    let overhead = ["chains/eth/latest.json", "catalog.json"]
        .iter()
        .map(|k| env.store.join(k))
        .chain([env.manifest_path("eth")])
        .map(|p| std::fs::metadata(p).unwrap().len() + 400) // + its .minisig
        .sum::<u64>();
    let uploaded = second["bytes_uploaded"].as_u64().unwrap();
    assert!(
        uploaded as f64 <= changed as f64 * 1.1 + overhead as f64,
        "uploaded {uploaded} for {changed} changed bytes (+{overhead} metadata)"
    );
    assert_eq!(second["version"], 2);

    let third = env.snapshot(&src, "eth", &[]);
    assert_eq!(third["chunks_uploaded"], 0);
    assert_eq!(third["bytes_new"], 0);
}
