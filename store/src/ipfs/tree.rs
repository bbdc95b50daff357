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
//! gets dag-pb file nodes linking its chunks' DAGs (`dag/put`); the
//! directories are made with MFS (`files/mkdir`, `files/cp`).
//!
//! Every leaf of a file sits at one depth: js-ipfs 0.66's exporter walks
//! a file breadth first and hands back a shallow leaf before the leaves of
//! a deeper sibling, so a chunk stored as one raw block (up to 256 KiB)
//! next to larger chunks is wrapped in a one-link node. Memory: at most
//! [`MEMORY_MIB`] of compressed chunks and their plaintext at once, plus
//! one packed file and the pack chunk it is cut from.

use base64::Engine;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use qsync_core::manifest::{ChunkRef, FileEntry, Manifest};
use qsync_core::{chunk, ChainName, Digest, ObjectKey};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{number, IpfsStore, LEAF, V1};
use crate::traits::{ObjectSource, StoreError};

/// Most links in one file node, as the UnixFS importers lay files out.
const MAX_LINKS: usize = 174;
/// Files worked on at once, and chunks of one file.
const FILES_AT_ONCE: usize = 4;
const CHUNKS_AT_ONCE: usize = 4;
/// MiB of compressed chunk objects and their plaintext held at once.
const MEMORY_MIB: u32 = 64;

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

impl IpfsStore {
    /// The MFS directory of `chain`'s plain tree.
    fn tree_dir(&self, chain: &ChainName) -> String {
        format!("{}/trees/{chain}", self.read.root)
    }

    /// Builds the plain tree of `manifest` at [`Self::tree_dir`], replacing
    /// the one there, and returns its CID.
    pub(super) async fn build_tree(
        &self,
        chain: &ChainName,
        manifest: &Manifest,
    ) -> Result<String, StoreError> {
        let root = self.tree_dir(chain);
        let rpc = self.rpc();
        let args = [("arg", root.as_str()), ("recursive", "true"), V1];
        match rpc.call("files/rm", &args, None, &root).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
        self.mkdir(&root).await?;
        for d in &manifest.directories {
            self.mkdir(&format!("{root}/{}", d.path)).await?;
        }
        let memory = Semaphore::new(MEMORY_MIB as usize);
        // Futures made up front: a stream mapping through a closure over
        // borrowed entries is not `Send` for every lifetime, as the
        // async trait needs.
        let files: Vec<_> = manifest
            .files
            .iter()
            .filter(|f| !f.packed)
            .map(|f| {
                let (root, memory) = (&root, &memory);
                async move {
                    let part = self.file(f, memory).await?;
                    self.place(root, &f.path, &part).await
                }
            })
            .collect();
        futures::stream::iter(files)
            .buffer_unordered(FILES_AT_ONCE)
            .try_collect::<()>()
            .await?;
        self.place_packed(&root, manifest).await?;
        let stat = rpc
            .stat(&root, &root)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                location: self.location(),
                key: root.clone(),
            })?;
        Ok(stat.hash)
    }

    async fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        let args = [("arg", path), ("parents", "true"), V1];
        self.rpc().call("files/mkdir", &args, None, path).await.map(drop)
    }

    /// Links `part` into the tree at `root` as the file `path`.
    async fn place(&self, root: &str, path: &str, part: &Part) -> Result<(), StoreError> {
        let (from, to) = (format!("/ipfs/{}", part.cid), format!("{root}/{path}"));
        let args = [("arg", from.as_str()), ("arg", to.as_str()), V1];
        self.rpc().call("files/cp", &args, None, path).await.map(drop)
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

    /// A dag-pb file node over `children` (of one depth), written with
    /// `dag/put` from its dag-json form, which both js-ipfs and Kubo take.
    async fn node(&self, children: &[Part], what: &str) -> Result<Part, StoreError> {
        let size = children.iter().map(|c| c.size).sum();
        let data = unixfs_file(size, children.iter().map(|c| c.size));
        let links: Vec<serde_json::Value> = children
            .iter()
            .map(|c| serde_json::json!({"Hash": {"/": c.cid}, "Name": "", "Tsize": c.tsize}))
            .collect();
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
        let put = self.rpc().call("dag/put", &args, Some(form), what).await?;
        let cid = serde_json::from_slice::<Put>(&put)
            .map_err(|e| StoreError::Refused {
                location: self.location(),
                key: what.into(),
                code: "dag/put".into(),
                hint: format!("unexpected answer ({e}); is this a Kubo-compatible RPC API?"),
            })?
            .cid
            .cid;
        // The node's own bytes count in its cumulative size; the node knows them.
        let path = format!("/ipfs/{cid}");
        let tsize = match self.rpc().stat(&path, what).await? {
            Some(s) => number(&s.cumulative_size),
            None => None,
        };
        Ok(Part {
            cid,
            size,
            tsize: tsize.unwrap_or_else(|| children.iter().map(|c| c.tsize).sum()),
            depth: children[0].depth + 1,
        })
    }

    /// Adds and links every packed file, cut from the pack chunks in
    /// manifest order (each pack chunk is read once), a few adds at once.
    async fn place_packed(&self, root: &str, manifest: &Manifest) -> Result<(), StoreError> {
        let mut held: Option<(Digest, Bytes)> = None;
        let mut adding = FuturesUnordered::new();
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
                    key: f.path.clone(),
                    reason: "the packed file cut from the pack chunks does not match its digest".into(),
                });
            }
            if adding.len() == FILES_AT_ONCE {
                adding.next().await.expect("not empty")?;
            }
            adding.push(async move {
                let part = self.add(Bytes::from(bytes), &f.path).await?;
                self.place(root, &f.path, &part).await
            });
        }
        while let Some(r) = adding.next().await {
            r?;
        }
        Ok(())
    }
}

/// The UnixFS `Data` of a file node of `size` bytes whose links hold
/// `blocks` bytes each: protobuf fields Type = File (1), filesize (3) and
/// one blocksizes (4) per link.
fn unixfs_file(size: u64, blocks: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut out = vec![0x08, 0x02, 0x18];
    varint(size, &mut out);
    for b in blocks {
        out.push(0x20);
        varint(b, &mut out);
    }
    out
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unixfs_file_data_is_what_the_importers_write() {
        // 301000 bytes in links of 300000 and 1000: as js-ipfs's
        // ipfs-unixfs marshals it (checked with the test node's dag/get).
        assert_eq!(
            unixfs_file(301_000, [300_000, 1000].into_iter()),
            [0x08, 0x02, 0x18, 0xc8, 0xaf, 0x12, 0x20, 0xe0, 0xa7, 0x12, 0x20, 0xe8, 0x07]
        );
        assert_eq!(unixfs_file(0, std::iter::empty()), [0x08, 0x02, 0x18, 0x00]);
    }
}
