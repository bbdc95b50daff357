//! Publishing to a real IPFS node (js-ipfs, networking off) and restoring
//! from `ipfs://<root CID>` through its gateway and through its RPC API;
//! CIDs checked by the node's own `add --only-hash`; a gateway serving
//! corrupt chunks; an unreachable node.

mod common;

use std::path::Path;

use common::ipfs::IpfsNode;
use common::proxy::{FaultProxy, Faults};
use common::*;
use qsync_store::ObjectSource;
use serde_json::Value;

fn publish(env: &Env, node: &IpfsNode, src: &Path) -> Value {
    let store = format!("ipfs+{}/snapshots", node.api);
    let (code, out, err) = run(env.snapshot_to(src, &store, "eth"));
    assert_eq!(code, 0, "publish to {store}: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn publish_then_restore_through_gateway_and_api() {
    let env = Env::new();
    let node = IpfsNode::start();
    let src = env.path("src");
    sample(&src, 4);
    let first = publish(&env, &node, &src);
    let root = first["ipfs_root_cid"]
        .as_str()
        .expect("ipfs_root_cid in the summary")
        .to_string();
    let from = format!("ipfs://{root}");

    let dest = env.path("via-gateway");
    let mut c = env.restore_cmd(&from, "eth", &dest);
    c.args(["--ipfs-gateway", &node.gateway]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&dest), tree(&src));

    let dest = env.path("via-api");
    let mut c = env.restore_cmd(&from, "eth", &dest);
    c.args(["--ipfs-api", &node.api]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&dest), tree(&src));

    // The node's own hashing agrees with the CID the directory links a chunk under.
    let pointer: Value = serde_json::from_slice(
        &std::process::Command::new("curl")
            .args([
                "-sf",
                &format!("{}/ipfs/{root}/chains/eth/latest.json", node.gateway),
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(pointer["chain"], "eth");
    let listing = node.rpc("ls", &format!("arg=/ipfs/{root}/chunks"), None);
    let shard = listing["Objects"][0]["Links"][0]["Name"]
        .as_str()
        .unwrap()
        .to_string();
    let listing = node.rpc("ls", &format!("arg=/ipfs/{root}/chunks/{shard}"), None);
    let link = &listing["Objects"][0]["Links"][0];
    let (name, linked_cid) = (link["Name"].as_str().unwrap(), link["Hash"].as_str().unwrap());
    let bytes = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!("{}/ipfs/{root}/chunks/{shard}/{name}", node.gateway),
        ])
        .output()
        .unwrap()
        .stdout;
    let file = env.path("chunk.bin");
    std::fs::write(&file, &bytes).unwrap();
    let hashed = node.rpc("add", "only-hash=true&cid-version=1&raw-leaves=true", Some(&file));
    assert_eq!(hashed["Hash"].as_str().unwrap(), linked_cid);

    // Unchanged data is not added again.
    let second = publish(&env, &node, &src);
    assert_eq!(second["chunks_uploaded"], 0, "{second}");
    assert_eq!(second["version"], 2);

    // Retention will unpin retired roots through the store.
    let pinned = |cid: &str| {
        node.rpc("pin/ls", "type=recursive", None)["Keys"]
            .get(cid)
            .is_some()
    };
    assert!(pinned(&root), "the published root is not pinned");
    let store = qsync_store::ipfs::IpfsStore::new(&node.api, "snapshots").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Sizes through the API come from files/stat, the same for MFS and /ipfs paths.
    let by_cid = qsync_store::ipfs::open_cid(&root, &node.gateway, Some(&node.api)).unwrap();
    let catalog = qsync_core::ObjectKey::catalog();
    let (in_mfs, in_root) = rt.block_on(async { (store.head(&catalog).await, by_cid.head(&catalog).await) });
    assert!(in_mfs.unwrap().is_some());
    assert_eq!(
        in_root.unwrap().unwrap().size,
        rt.block_on(by_cid.get(&catalog)).unwrap().len() as u64
    );
    rt.block_on(store.unpin(&root)).unwrap();
    assert!(!pinned(&root), "unpin left the root pinned");

    // A publish elsewhere records the IPFS copy in its pointer, as a hint.
    let mut c = env.snapshot_cmd(&src, "eth", &[]);
    c.args(["--mirror-hint", &from]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run({
        let mut c = qsync();
        c.args(["ls", "--from", env.store.to_str().unwrap(), "--public-key"])
            .arg(&env.pk);
        c
    });
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("also at {from} (unverified hint)")),
        "{out}"
    );

    // With the local store's chunks gone, --mirror-hints finds them on IPFS.
    std::fs::remove_dir_all(env.store.join("chunks")).unwrap();
    let dest = env.path("via-hint");
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.args(["--mirror-hints", "--ipfs-gateway", &node.gateway]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&dest), tree(&src));
    assert!(out.contains(&format!("{}/ipfs/{root}/", node.gateway)), "{out}");
}

#[test]
fn corrupt_gateway_fails_over_or_fails_clean() {
    let env = Env::new();
    let node = IpfsNode::start();
    let src = env.path("src");
    sample(&src, 2);
    let root = publish(&env, &node, &src)["ipfs_root_cid"]
        .as_str()
        .unwrap()
        .to_string();
    let from = format!("ipfs://{root}");
    let every_chunk_corrupt = Faults {
        corrupt: 1000,
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&node.gateway, every_chunk_corrupt, 5);

    // Only the corrupting gateway: refused, nothing looks complete.
    let dest = env.path("dest");
    let mut c = env.restore_cmd(&from, "eth", &dest);
    c.args(["--ipfs-gateway", &proxy.url]);
    let (code, _, err) = run(c);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(!has_marker(&dest));
    assert!(proxy.count(|c| &c.corrupted) > 0);

    // With a second mirror (the node's gateway, not through the proxy), the restore fails over.
    let mut c = env.restore_cmd(&from, "eth", &dest);
    c.args(["--ipfs-gateway", &proxy.url]);
    c.args(["--from", &format!("{}/ipfs/{root}", node.gateway)]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tree(&dest), tree(&src));
    // Every chunk came from the honest gateway; the corrupting one delivered none.
    let r: Value = serde_json::from_str(&out).unwrap();
    let mirror = |needle: &str| {
        r["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["location"].as_str().unwrap().contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no mirror {needle} in {r}"))
    };
    assert_eq!(mirror(&proxy.url)["chunks"], 0, "{r}");
    assert_eq!(mirror(&node.gateway)["chunks"], r["chunks_fetched"], "{r}");
}

#[test]
fn unreachable_node_is_named() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run(env.snapshot_to(&src, &format!("ipfs+{api}"), "eth"));
    assert_ne!(code, 0);
    assert!(err.contains(&api) && err.contains("is the node running"), "{err}");

    let mut c = env.restore_cmd(
        "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "eth",
        &env.path("d"),
    );
    c.args(["--ipfs-gateway", &api]);
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("{api}/ipfs/")), "{err}");
    assert!(!has_marker(&env.path("d")));
}

#[test]
fn agent_cycles_on_ipfs_collect_garbage_and_unpin_retired_roots() {
    let env = Env::new();
    let node = IpfsNode::start();
    let src = env.path("src");
    sample(&src, 3);
    let config = env.agent_config(
        "eth",
        &src,
        &[format!("ipfs+{}/agent", node.api)],
        "[chain.retention]\nkeep-last = 1\ngc-grace = \"0s\"",
    );
    let cycle = || env.cycle(&config, "eth", |_| {});
    let chunks_in_mfs = || -> usize {
        let shards = node.rpc("files/ls", "arg=/agent/chunks&long=true", None);
        shards["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["Name"].as_str().unwrap();
                let l = node.rpc("files/ls", &format!("arg=/agent/chunks/{name}&long=true"), None);
                l["Entries"].as_array().map_or(0, |e| e.len())
            })
            .sum()
    };
    let pinned = |cid: &str| {
        node.rpc("pin/ls", "type=recursive", None)["Keys"]
            .get(cid)
            .is_some()
    };

    let first = cycle();
    let root1 = first["ipfs_root_cid"].as_str().unwrap().to_string();
    let chunks1 = chunks_in_mfs();
    assert_eq!(chunks1 as u64, first["chunks_uploaded"].as_u64().unwrap());
    mutate(&src, 30, None);
    let second = cycle();
    let root2 = second["ipfs_root_cid"].as_str().unwrap().to_string();
    let gc = &second["stores"][0]["gc"];
    assert!(gc["chunks_deleted"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(
        chunks_in_mfs() as u64,
        chunks1 as u64 + second["chunks_uploaded"].as_u64().unwrap() - gc["chunks_deleted"].as_u64().unwrap(),
        "GC unlinked exactly what it reported, through files/ls and files/rm"
    );
    assert!(pinned(&root2), "the new root is pinned");
    assert!(!pinned(&root1), "the retired root was unpinned");
    let dest = env.path("restored");
    let mut c = env.restore_cmd(&format!("ipfs://{root2}"), "eth", &dest);
    c.args(["--ipfs-gateway", &node.gateway]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), files(&src));
}
