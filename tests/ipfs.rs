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
    publish_with(env, node, src, &[])
}

fn publish_with(env: &Env, node: &IpfsNode, src: &Path, extra: &[&str]) -> Value {
    let store = format!("ipfs+{}/snapshots", node.api);
    let mut c = env.snapshot_to(src, &store, "eth");
    c.args(extra);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "publish to {store}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A data directory whose chunks (at `--chunk-size 256`) are stored both
/// ways: incompressible files (raw chunks, some one block, some several),
/// compressible ones (zstd chunks), small packed files, an empty file and
/// an empty directory, nested. Returns the bytes that cannot share blocks
/// with raw chunks: the compressible and the packed files'.
fn plain_tree_sample(src: &Path) -> u64 {
    let write = |path: &str, bytes: &[u8]| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        bytes.len() as u64
    };
    write(
        "chaindata/ancient/bodies.0001.cdat",
        &noise((3 << 20) + 12_345, 1),
    );
    write("chaindata/000042.ldb", &noise(1 << 20, 2));
    let log: String = (0..40_000u64)
        .map(|i| {
            format!(
                "block {i} imported hash=0x{:016x}\n",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            )
        })
        .collect();
    let mut unshared = write("logs/LOG", log.as_bytes());
    write("empty", b"");
    for i in 0..5u64 {
        unshared += write(
            &format!("keystore/k{i}/key.json"),
            &noise(700 + 3_000 * i as usize, 10 + i),
        );
    }
    unshared += write("nodekey", b"0123456789abcdef");
    std::fs::create_dir_all(src.join("chaindata/empty-dir")).unwrap();
    unshared
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

#[test]
fn the_plain_tree_gives_every_file_through_the_gateway_and_shares_raw_chunks() {
    let env = Env::new();
    let node = IpfsNode::start();
    let src = env.path("src");
    let unshared = plain_tree_sample(&src);
    let first = publish_with(&env, &node, &src, &["--chunk-size", "256"]);
    let tree = first["ipfs_tree_cid"]
        .as_str()
        .expect("ipfs_tree_cid in the summary")
        .to_string();
    let root = first["ipfs_root_cid"].as_str().unwrap().to_string();

    // Every file, byte for byte, by its path under the tree's CID.
    let sources = files(&src);
    assert_eq!(sources.len(), 10);
    for path in sources.keys() {
        let served = node
            .gateway_get(&format!("{tree}/{path}"))
            .unwrap_or_else(|| panic!("the gateway does not serve {path} under /ipfs/{tree}"));
        assert!(served == std::fs::read(src.join(path)).unwrap(), "{path} differs");
    }
    let empty_dir = node.rpc("ls", &format!("arg=/ipfs/{tree}/chaindata/empty-dir"), None);
    assert_eq!(empty_dir["Objects"][0]["Links"], serde_json::json!([]));
    // `ipfs get` (the RPC API's tar) gives the same files.
    let got = env.path("got");
    std::fs::create_dir(&got).unwrap();
    let tar = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sf -X POST '{}/api/v0/get?arg={tree}' | tar -x -C '{}'",
            node.api,
            got.display()
        ))
        .status()
        .unwrap();
    assert!(tar.success());
    let hashes = |m: std::collections::BTreeMap<String, (u32, String)>| -> Vec<(String, String)> {
        m.into_iter().map(|(p, (_, h))| (p, h)).collect()
    };
    // One directory, named by the CID (in base32).
    let top = std::fs::read_dir(&got).unwrap().next().unwrap().unwrap().path();
    assert_eq!(hashes(files(&top)), hashes(sources.clone()));

    // Every pointer of the run names it; readers that open hints as stores skip it.
    let pointer: Value = serde_json::from_slice(
        &node
            .gateway_get(&format!("{root}/chains/eth/latest.json"))
            .unwrap(),
    )
    .unwrap();
    let hint = format!("ipfs-tree://{tree}");
    assert!(
        pointer["mirrors"]
            .as_array()
            .unwrap()
            .contains(&hint.clone().into()),
        "{pointer}"
    );
    let dest = env.path("restored");
    let mut c = env.restore_cmd(&format!("ipfs://{root}"), "eth", &dest);
    c.args(["--mirror-hints", "--ipfs-gateway", &node.gateway]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), sources);
    assert!(!err.contains("ipfs-tree"), "{err}");
    let mut c = qsync();
    c.args([
        "ls",
        "--from",
        &format!("ipfs://{root}"),
        "--ipfs-gateway",
        &node.gateway,
    ])
    .arg("--public-key")
    .arg(&env.pk);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("plain files at /ipfs/{tree}")), "{out}");

    // Raw chunks are shared: the tree costs the node the compressible and
    // packed files' bytes plus its nodes, not the 4 MiB of incompressible data.
    let extra = node.extra_bytes(&tree, &format!("/ipfs/{root}/chunks"));
    assert!(
        (unshared..unshared + (32 << 10)).contains(&extra),
        "the tree costs {extra} bytes beyond the chunks, for {unshared} bytes that cannot share"
    );

    // Published again unchanged: the same tree, rebuilt in place.
    let second = publish_with(&env, &node, &src, &["--chunk-size", "256"]);
    assert_eq!(second["ipfs_tree_cid"], first["ipfs_tree_cid"], "{second}");
}

#[test]
fn a_directory_too_large_for_one_block_is_sharded_in_the_plain_tree() {
    let env = Env::new();
    let node = IpfsNode::start();
    let src = env.path("src");
    let dir = src.join("chaindata");
    std::fs::create_dir_all(&dir).unwrap();
    // 920 links of 291 bytes (a name, a CID): past the 256 KiB a directory node may take.
    let name = |i: usize| format!("{i:06}-{}.ldb", "x".repeat(244));
    for i in 0..920 {
        std::fs::write(
            dir.join(name(i)),
            if i % 100 == 0 {
                vec![i as u8; 3]
            } else {
                Vec::new()
            },
        )
        .unwrap();
    }
    std::fs::write(src.join("top"), b"top").unwrap();
    let tree = publish(&env, &node, &src)["ipfs_tree_cid"]
        .as_str()
        .unwrap()
        .to_string();

    // One node of 920 links would pass 256 KiB; the shard's top node links buckets.
    let big = node.rpc("files/stat", &format!("arg=/ipfs/{tree}/chaindata"), None);
    assert!(big["Blocks"].as_u64().unwrap() <= 256, "{big}");
    let block = node.rpc(
        "block/stat",
        &format!("arg={}", big["Hash"].as_str().unwrap()),
        None,
    );
    assert!(block["Size"].as_u64().unwrap() < 256 << 10, "{block}");
    let listed = node.rpc("ls", &format!("arg=/ipfs/{tree}/chaindata"), None);
    assert_eq!(listed["Objects"][0]["Links"].as_array().unwrap().len(), 920);
    // The node's own importer, asked to shard the same directory, makes the same one.
    let mut add = std::process::Command::new("curl");
    add.args(["-sf", "-X", "POST", "-m", "60"]);
    for i in 0..920 {
        add.arg("-F").arg(format!(
            "file=@{};filename=chaindata/{};type=application/octet-stream",
            dir.join(name(i)).display(),
            name(i)
        ));
    }
    let added = add
        .arg(format!(
            "{}/api/v0/add?cid-version=1&raw-leaves=true&wrap-with-directory=true&shard-split-threshold=1&pin=false",
            node.api
        ))
        .output()
        .unwrap();
    assert!(added.status.success());
    // The last line is the wrapping directory (js-ipfs names sharded ones "").
    let wrapper: Value =
        serde_json::from_str(String::from_utf8(added.stdout).unwrap().lines().last().unwrap()).unwrap();
    let listed = node.rpc(
        "ls",
        &format!("arg=/ipfs/{}", wrapper["Hash"].as_str().unwrap()),
        None,
    );
    let theirs = &listed["Objects"][0]["Links"][0];
    assert_eq!(theirs["Name"], "chaindata");
    assert_eq!(theirs["Hash"], big["Hash"], "{theirs}");
    for i in [0, 1, 100, 919] {
        let served = node
            .gateway_get(&format!("{tree}/chaindata/{}", name(i)))
            .unwrap();
        assert_eq!(served, std::fs::read(dir.join(name(i))).unwrap(), "{}", name(i));
    }
    assert_eq!(node.gateway_get(&format!("{tree}/top")).unwrap(), b"top");
}
