//! The plain tree: a UnixFS directory of a snapshot's files as the source
//! node had them, kept in the store's MFS directory at `trees/<chain>`, so
//! that `ipfs get CID` or `GATEWAY/ipfs/CID/path/to/file` gives the files
//! with no qsync at all.
//!
//! A file's bytes are linked from the chunk objects the store already
//! holds, never read from the source again (which may have moved on since
//! it was read). A chunk stored raw *is* its plaintext, added with the
//! same leaves, so the file links that object's own DAG and costs no new
//! data block. A chunk stored compressed cannot share anything: its
//! plaintext is decoded from the object and added. Packed files are
//! stretches of pack chunks and are added whole. A file of several chunks
//! gets dag-pb file nodes linking its chunks' DAGs, and each directory one
//! dag-pb node (a HAMT past 256 KiB), written with `dag/put` deepest first
//! (the bytes are in [`super::unixfs`]): one call per directory, where
//! building it in MFS took one per file and, on js-ipfs, grew slower with
//! every entry. Only the top directory is linked into MFS.
//!
//! Every leaf of a file sits at one depth: js-ipfs 0.66's exporter walks
//! a file breadth first and hands back a shallow leaf before the leaves of
//! a deeper sibling, so a chunk stored as one raw block (up to 256 KiB)
//! next to larger chunks is wrapped in a one-link node. Memory: at most
//! [`MEMORY_MIB`] of compressed chunks and their plaintext at once, plus
//! one packed file and the pack chunk it is cut from.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use qsync_core::manifest::{ChunkRef, FileEntry, Manifest};
use qsync_core::{chunk, ChainName, Digest, ObjectKey};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{number, unixfs, IpfsStore, LEAF, V1};
use crate::traits::{ObjectSource, StoreError};

/// Most links in one file node, as the UnixFS importers lay files out.
const MAX_LINKS: usize = 174;
/// Files worked on at once, and chunks of one file.
const FILES_AT_ONCE: usize = 4;
const CHUNKS_AT_ONCE: usize = 4;
/// MiB of compressed chunk objects and their plaintext held at once.
const MEMORY_MIB: u32 = 64;
/// A directory whose node would pass this many bytes is sharded (a HAMT),
/// as Kubo shards the directories it adds.
const SHARD_AT: usize = 256 << 10;

/// A run of a file's bytes as a UnixFS file DAG (one raw leaf, or a dag-pb
/// node whose leaves all lie `depth` links down).
#[derive(Clone, Debug)]
struct Part {
    cid: String,
    /// Plaintext bytes.
    size: u64,
    /// Bytes of every block of the DAG (the `Tsize` of a link to it).
    tsize: u64,
    depth: u32,
}

#[derive(Deserialize)]
struct Put {
    #[serde(rename = "Cid")]
    cid: Link,
}

#[derive(Deserialize)]
struct Link {
    #[serde(rename = "/")]
    cid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BlockStat {
    /// A number from js-ipfs and Kubo alike.
    size: serde_json::Value,
}

impl IpfsStore {
    /// The MFS directory of `chain`'s plain tree.
    fn tree_dir(&self, chain: &ChainName) -> String {
        format!("{}/trees/{chain}", self.read.root)
    }

    /// Builds the plain tree of `manifest`, links it at [`Self::tree_dir`]
    /// in place of the one there, and returns its CID.
    pub(super) async fn build_tree(
        &self,
        chain: &ChainName,
        manifest: &Manifest,
    ) -> Result<String, StoreError> {
        let memory = Semaphore::new(MEMORY_MIB as usize);
        // Futures made up front: a stream mapping through a closure over
        // borrowed entries is not `Send` for every lifetime, as the
        // async trait needs.
        let files: Vec<_> = (manifest.files.iter().filter(|f| !f.packed))
            .map(|f| {
                let memory = &memory;
                async move { Ok::<_, StoreError>((f.path.as_ref(), self.file(f, memory).await?)) }
            })
            .collect();
        let mut parts: Vec<(&str, Part)> = futures::stream::iter(files)
            .buffer_unordered(FILES_AT_ONCE)
            .try_collect()
            .await?;
        parts.extend(self.packed(manifest).await?);

        // Every directory's entries, by path ("" is the top).
        let mut dirs: BTreeMap<&str, Vec<(&str, Part)>> = BTreeMap::new();
        dirs.insert("", Vec::new());
        for d in &manifest.directories {
            dirs.insert(&d.path, Vec::new());
        }
        for (path, part) in parts {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            dirs.entry(dir).or_default().push((name, part));
        }
        // Every ancestor too, should a manifest not list one.
        let listed: Vec<&str> = dirs.keys().copied().collect();
        for dir in listed {
            let mut at = dir;
            while let Some((parent, _)) = at.rsplit_once('/') {
                dirs.entry(parent).or_default();
                at = parent;
            }
        }
        // Deepest first, each level's directories a few at once, each then
        // an entry of its parent.
        let mut levels: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for dir in dirs.keys() {
            let depth = if dir.is_empty() {
                0
            } else {
                dir.matches('/').count() + 1
            };
            levels.entry(depth).or_default().push(dir);
        }
        let mut top = None;
        for (_, level) in levels.into_iter().rev() {
            let made: Vec<_> = (level.into_iter())
                .map(|dir| {
                    let entries = dirs.remove(dir).unwrap_or_default();
                    async move { Ok::<_, StoreError>((dir, self.directory(entries, dir).await?)) }
                })
                .collect();
            let made: Vec<(&str, Part)> = futures::stream::iter(made)
                .buffer_unordered(FILES_AT_ONCE)
                .try_collect()
                .await?;
            for (dir, part) in made {
                match dir.rsplit_once('/') {
                    _ if dir.is_empty() => top = Some(part),
                    Some((parent, name)) => dirs.entry(parent).or_default().push((name, part)),
                    None => dirs.entry("").or_default().push((dir, part)),
                }
            }
        }
        let top = top.expect("the top directory is made last");

        // Linked into the store's directory, so that the store's root keeps it.
        let tree = self.tree_dir(chain);
        self.remove(&tree).await?;
        self.mkdir(&tree[..tree.rfind('/').expect("a parent")]).await?;
        self.place(&tree, &top).await?;
        let stat = self.rpc().stat(&tree, &tree).await?;
        Ok(stat.map_or(top.cid, |s| s.hash))
    }

    async fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        let args = [("arg", path), ("parents", "true"), V1];
        self.rpc().call("files/mkdir", &args, None, path).await.map(drop)
    }

    /// Removes `path` from MFS, with everything under it; absent is fine.
    async fn remove(&self, path: &str) -> Result<(), StoreError> {
        let args = [("arg", path), ("recursive", "true"), V1];
        match self.rpc().call("files/rm", &args, None, path).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Links `part` into MFS at `path`.
    async fn place(&self, path: &str, part: &Part) -> Result<(), StoreError> {
        let from = format!("/ipfs/{}", part.cid);
        let args = [("arg", from.as_str()), ("arg", path), V1];
        self.rpc().call("files/cp", &args, None, path).await.map(drop)
    }

    /// Directory `dir` of `entries`: one node, or a sharded directory (a
    /// HAMT) when one node would pass [`SHARD_AT`].
    async fn directory(&self, entries: Vec<(&str, Part)>, dir: &str) -> Result<Part, StoreError> {
        // As Kubo estimates a directory node: its names and binary CIDs.
        let estimate: usize = entries.iter().map(|(name, _)| 36 + name.len()).sum();
        let mut entries: Vec<(String, Part)> = (entries.into_iter())
            .map(|(name, p)| (name.to_string(), p))
            .collect();
        if estimate >= SHARD_AT {
            return self.shard(unixfs::layout(entries), dir).await;
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let links = entries.iter().map(|(name, p)| link(name, p)).collect();
        let children: u64 = entries.iter().map(|(_, p)| p.tsize).sum();
        let (cid, bytes) = self.put(unixfs::DIRECTORY.to_vec(), links, dir).await?;
        Ok(Part {
            cid,
            size: 0,
            tsize: bytes + children,
            depth: 0,
        })
    }

    /// Writes `shard` and the shards below it, deepest first.
    fn shard<'a>(
        &'a self,
        shard: unixfs::Shard<Part>,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Part, StoreError>> {
        Box::pin(async move {
            let (mut links, mut children) = (Vec::new(), 0);
            let slots: Vec<u8> = shard.slots.keys().copied().collect();
            for (at, slot) in shard.slots {
                let (name, part) = match slot {
                    unixfs::Slot::Entry(name, part) => (format!("{at:02X}{name}"), part),
                    unixfs::Slot::Shard(sub) => (format!("{at:02X}"), self.shard(sub, dir).await?),
                };
                children += part.tsize;
                links.push(link(&name, &part));
            }
            let (cid, bytes) = self.put(unixfs::shard(slots.into_iter()), links, dir).await?;
            Ok(Part {
                cid,
                size: 0,
                tsize: bytes + children,
                depth: 0,
            })
        })
    }

    /// A file chunked on its own: its chunks' DAGs under file nodes.
    async fn file(&self, f: &FileEntry, memory: &Semaphore) -> Result<Part, StoreError> {
        let chunks: Vec<_> = f.chunks.iter().map(|c| self.chunk(c, memory)).collect();
        let parts = futures::stream::iter(chunks)
            .buffered(CHUNKS_AT_ONCE)
            .try_collect()
            .await?;
        self.join(parts, &f.path).await
    }

    /// The DAG of chunk `c`'s plaintext: the stored object's own when it is
    /// stored raw, otherwise its decoded plaintext, added.
    async fn chunk(&self, c: &ChunkRef, memory: &Semaphore) -> Result<Part, StoreError> {
        let key = ObjectKey::chunk(&c.blake3);
        let stat = self.rpc().stat(&self.path(&key), key.as_str()).await?;
        let stat = stat.ok_or_else(|| StoreError::NotFound {
            location: self.location(),
            key: key.to_string(),
        })?;
        // A zstd frame is stored only when it is at least 1/32 smaller than
        // its plaintext (format.md §3): an object of the plaintext's size is
        // the plaintext.
        if number(&stat.size) == Some(c.size) {
            return Ok(Part {
                cid: stat.hash,
                size: c.size,
                tsize: number(&stat.cumulative_size).unwrap_or(c.size),
                depth: u32::from(stat.blocks.unwrap_or(0) > 0),
            });
        }
        let mib = c
            .size
            .saturating_mul(2)
            .div_ceil(1 << 20)
            .clamp(1, MEMORY_MIB.into()) as u32;
        let _held = memory.acquire_many(mib).await.expect("semaphore open");
        let plain = self.plaintext(c).await?;
        self.add(plain, key.as_str()).await
    }

    /// Chunk `c`'s plaintext, decoded from its object and verified.
    async fn plaintext(&self, c: &ChunkRef) -> Result<Bytes, StoreError> {
        let key = ObjectKey::chunk(&c.blake3);
        let stored = self.read.get_limited(&key, c.size).await?;
        let (size, digest) = (c.size, c.blake3);
        let plain = tokio::task::spawn_blocking(move || {
            chunk::decode(&stored, size, &digest).map(|p| Bytes::from(p.into_owned()))
        })
        .await
        .expect("decoder does not panic");
        plain.map_err(|e| StoreError::Corrupt {
            location: self.location(),
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Adds `body` as a file of its own.
    async fn add(&self, body: Bytes, what: &str) -> Result<Part, StoreError> {
        let size = body.len() as u64;
        let added = self.rpc().add(body, what).await?;
        Ok(Part {
            cid: added.hash,
            size,
            tsize: number(&added.size).unwrap_or(size),
            depth: u32::from(size > LEAF),
        })
    }

    /// One file of `parts` end to end: the part itself when there is one,
    /// otherwise file nodes over them, every leaf at one depth.
    async fn join(&self, mut parts: Vec<Part>, what: &str) -> Result<Part, StoreError> {
        let Some(depth) = parts.iter().map(|p| p.depth).max() else {
            return self.add(Bytes::new(), what).await;
        };
        for p in parts.iter_mut() {
            while p.depth < depth {
                *p = self.node(std::slice::from_ref(p), what).await?;
            }
        }
        while parts.len() > 1 {
            let mut up = Vec::with_capacity(parts.len().div_ceil(MAX_LINKS));
            for group in parts.chunks(MAX_LINKS) {
                up.push(self.node(group, what).await?);
            }
            parts = up;
        }
        Ok(parts.pop().expect("one part left"))
    }

    /// A dag-pb file node over `children` (of one depth).
    async fn node(&self, children: &[Part], what: &str) -> Result<Part, StoreError> {
        let size = children.iter().map(|c| c.size).sum();
        let data = unixfs::file(size, children.iter().map(|c| c.size));
        let links = children.iter().map(|c| link("", c)).collect();
        let (cid, bytes) = self.put(data, links, what).await?;
        Ok(Part {
            cid,
            size,
            tsize: bytes + children.iter().map(|c| c.tsize).sum::<u64>(),
            depth: children[0].depth + 1,
        })
    }

    /// Writes the dag-pb node of UnixFS `data` and `links` with `dag/put`,
    /// from its dag-json form, which js-ipfs and Kubo both take; its CID
    /// and the length of its block.
    async fn put(
        &self,
        data: Vec<u8>,
        links: Vec<serde_json::Value>,
        what: &str,
    ) -> Result<(String, u64), StoreError> {
        let data = base64::engine::general_purpose::STANDARD_NO_PAD.encode(data);
        let node = serde_json::json!({"Data": {"/": {"bytes": data}}, "Links": links});
        let part = reqwest::multipart::Part::bytes(serde_json::to_vec(&node).expect("JSON serialises"))
            .file_name("node")
            .mime_str("application/json")
            .expect("valid MIME type");
        let form = reqwest::multipart::Form::new().part("file", part);
        let args = [
            ("store-codec", "dag-pb"),
            ("input-codec", "dag-json"),
            ("pin", "false"),
        ];
        let answer = self.rpc().call("dag/put", &args, Some(form), what).await?;
        let refused = |command: &str, e: serde_json::Error| StoreError::Refused {
            location: self.location(),
            key: what.into(),
            code: command.into(),
            hint: format!("unexpected answer ({e}); is this a Kubo-compatible RPC API?"),
        };
        let cid = serde_json::from_slice::<Put>(&answer)
            .map_err(|e| refused("dag/put", e))?
            .cid
            .cid;
        let answer = self
            .rpc()
            .call("block/stat", &[("arg", &cid)], None, what)
            .await?;
        let stat: BlockStat = serde_json::from_slice(&answer).map_err(|e| refused("block/stat", e))?;
        Ok((cid, number(&stat.size).unwrap_or(0)))
    }

    /// Adds every packed file, cut from the pack chunks in manifest order
    /// (each pack chunk is read once), a few adds at once.
    async fn packed<'m>(&self, manifest: &'m Manifest) -> Result<Vec<(&'m str, Part)>, StoreError> {
        let mut held: Option<(Digest, Bytes)> = None;
        let (mut adding, mut parts) = (FuturesUnordered::new(), Vec::new());
        for (i, f) in manifest.files.iter().enumerate().filter(|(_, f)| f.packed) {
            let mut bytes = Vec::with_capacity(f.size as usize);
            for piece in manifest.pieces(i) {
                let plain = match &held {
                    Some((d, plain)) if *d == piece.chunk.blake3 => plain,
                    _ => {
                        &held
                            .insert((piece.chunk.blake3, self.plaintext(&piece.chunk).await?))
                            .1
                    }
                };
                bytes.extend_from_slice(&plain[piece.at as usize..(piece.at + piece.len) as usize]);
            }
            if Digest::of(&bytes) != f.blake3 {
                return Err(StoreError::Corrupt {
                    location: self.location(),
                    key: f.path.to_string(),
                    reason: "the packed file cut from the pack chunks does not match its digest".into(),
                });
            }
            if adding.len() == FILES_AT_ONCE {
                parts.push(adding.next().await.expect("not empty")?);
            }
            let path = f.path.as_ref();
            adding
                .push(async move { Ok::<_, StoreError>((path, self.add(Bytes::from(bytes), path).await?)) });
        }
        while let Some(r) = adding.next().await {
            parts.push(r?);
        }
        Ok(parts)
    }
}

/// A dag-json link named `name` to `part`.
fn link(name: &str, part: &Part) -> serde_json::Value {
    serde_json::json!({"Hash": {"/": part.cid}, "Name": name, "Tsize": part.tsize})
}
