//! IPFS through the Kubo RPC API: a store kept in the node's MFS (the
//! mutable file system), published as one UnixFS directory per snapshot.
//!
//! - `ipfs+http://HOST:PORT[/MFS/DIR]` (default directory `/qsync`) is a
//!   read-write store: every object is added (CIDv1, raw leaves, one request
//!   per object so memory stays bounded by the object) and linked into the
//!   directory at its key, so the directory is laid out exactly like a
//!   store. Objects already linked are found by `files/stat` and not added
//!   again. [`IpfsStore::snapshot_root`] returns the directory's CID and pins
//!   it recursively: `GATEWAY/ipfs/<CID>/` is then a complete read-only
//!   store that anyone can pin and mirror.
//! - `ipfs://CID` is a read-only store: through a gateway (an [`HttpStore`]
//!   at `GATEWAY/ipfs/CID/`), or through the RPC API's `cat` when an API URL
//!   is given.
//! - Before each pointer write the store also builds the snapshot's plain
//!   tree, its files as a UnixFS directory sharing the raw chunks' blocks
//!   (`ipfs/tree.rs`, with the UnixFS bytes in `ipfs/unixfs.rs`).
//!
//! A small client on reqwest rather than `ipfs-api-backend-hyper`: that crate
//! drags in a second HTTP stack (hyper 0.14), needs the yanked `core2 0.4.0`
//! pinned to resolve, and rejects js-ipfs's numeric `Size` (docs/backends/ipfs.md).
//!
//! Conditional writes compare the MFS entry's CID before replacing it; the
//! node serialises MFS changes, but two publishers on one node could still
//! interleave between the compare and the replace. Run one publisher per
//! MFS directory.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::manifest::Manifest;
use qsync_core::{ChainName, ObjectKey};
use std::sync::{Arc, Mutex};

use reqwest::Client;
use serde::Deserialize;

use crate::http::{client_builder, read_body, HttpStore};
use crate::traits::{
    Body, Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, Roots, StoreError, Version,
};

/// Longest one RPC call may take: a node asked for a CID it does not have
/// searches the network indefinitely.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer to a command that returns JSON rather than object bytes.
const ANSWER_LIMIT: u64 = 1 << 20;
/// Leaf size of every add: the nodes' default chunker, named so that the
/// depth of an added DAG follows from its size (the plain tree needs it).
const LEAF: u64 = 256 << 10;
/// Every MFS call names CIDv1, or js-ipfs rewrites the directories it
/// touches as CIDv0.
const V1: (&str, &str) = ("cid-version", "1");

mod tree;
mod unixfs;

/// A Kubo-compatible RPC endpoint.
#[derive(Clone)]
struct Rpc {
    api: String,
    client: Client,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Added {
    hash: String,
    /// The DAG's cumulative size: a number from js-ipfs, a string from Kubo.
    #[serde(default)]
    size: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Stat {
    hash: String,
    /// A number from js-ipfs, sometimes a string from other nodes.
    size: serde_json::Value,
    /// Bytes of every block of the DAG.
    #[serde(default)]
    cumulative_size: serde_json::Value,
    /// Links of the root node: 0 for a file that is one raw leaf.
    #[serde(default)]
    blocks: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RpcError {
    message: String,
}

impl Rpc {
    fn new(api: &str) -> Result<Rpc, StoreError> {
        let client = client_builder()
            .timeout(RPC_TIMEOUT)
            .build()
            .map_err(|e| StoreError::BadUrl {
                url: api.into(),
                reason: e.to_string(),
            })?;
        Ok(Rpc {
            api: api.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// Calls `command` with `args`; its (small, JSON) answer on success.
    async fn call(
        &self,
        command: &str,
        args: &[(&str, &str)],
        form: Option<reqwest::multipart::Form>,
        key: &str,
    ) -> Result<Bytes, StoreError> {
        self.send(command, args, form, key, ANSWER_LIMIT).await
    }

    /// Calls `command` with `args`; its answer (refused unread beyond
    /// `limit` bytes) on success, a [`StoreError`] about `key` otherwise.
    async fn send(
        &self,
        command: &str,
        args: &[(&str, &str)],
        form: Option<reqwest::multipart::Form>,
        key: &str,
        limit: u64,
    ) -> Result<Bytes, StoreError> {
        let mut req = self
            .client
            .post(format!("{}/api/v0/{command}", self.api))
            .query(args);
        if let Some(f) = form {
            req = req.multipart(f);
        }
        let transport = |e: String| StoreError::Transport {
            location: self.api.clone(),
            key: key.into(),
            source: e.into(),
        };
        let resp = req.send().await.map_err(|e| {
            transport(format!(
                "IPFS RPC API {command}: {e}; is the node running and its API at {}?",
                self.api
            ))
        })?;
        let status = resp.status();
        let limit = if status.is_success() { limit } else { ANSWER_LIMIT };
        let body = read_body(resp, limit, self.api.clone(), key.into()).await?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<RpcError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        let absent = ["does not exist", "not found", "no link named", "no such file"];
        if absent.iter().any(|m| message.to_lowercase().contains(m)) {
            return Err(StoreError::NotFound {
                location: self.api.clone(),
                key: key.into(),
            });
        }
        Err(StoreError::Refused {
            location: self.api.clone(),
            key: key.into(),
            code: format!("{command}: HTTP {}", status.as_u16()),
            hint: message,
        })
    }

    async fn stat(&self, path: &str, key: &str) -> Result<Option<Stat>, StoreError> {
        match self.call("files/stat", &[("arg", path)], None, key).await {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Refused {
                    location: self.api.clone(),
                    key: key.into(),
                    code: "files/stat".into(),
                    hint: format!("unexpected answer ({e}); is this a Kubo-compatible RPC API?"),
                }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `body` as one file: CIDv1, raw leaves of [`LEAF`] bytes, not
    /// pinned (the MFS directory holds what is kept).
    async fn add(&self, body: Bytes, key: &str) -> Result<Added, StoreError> {
        // js-ipfs refuses parts without a content type.
        let part = reqwest::multipart::Part::stream(body)
            .file_name("object")
            .mime_str("application/octet-stream")
            .expect("valid MIME type");
        let form = reqwest::multipart::Form::new().part("file", part);
        let chunker = format!("size-{LEAF}");
        let added = self
            .call(
                "add",
                &[
                    ("cid-version", "1"),
                    ("raw-leaves", "true"),
                    ("chunker", &chunker),
                    ("pin", "false"),
                    ("quieter", "true"),
                ],
                Some(form),
                key,
            )
            .await?;
        serde_json::from_slice(&added).map_err(|e| StoreError::Refused {
            location: self.api.clone(),
            key: key.into(),
            code: "add".into(),
            hint: format!("unexpected answer ({e})"),
        })
    }
}

/// A store in a directory of an IPFS node's MFS.
pub struct IpfsStore {
    /// Reads, rooted at the MFS directory.
    read: Reader,
    /// MFS directories this process created or found.
    dirs: Mutex<HashSet<String>>,
}

impl IpfsStore {
    /// The MFS directory `dir` (a valid key) of the node whose RPC API is
    /// at `api` (`http://HOST:PORT`), as [`crate::url::StoreUrl::IpfsMfs`]
    /// names them.
    pub fn new(api: &str, dir: &str) -> Result<Self, StoreError> {
        Ok(IpfsStore {
            read: Reader {
                rpc: Rpc::new(api)?,
                root: format!("/{dir}"),
                location: format!("{api} (MFS /{dir})"),
                id: crate::StoreUrl::IpfsMfs {
                    api: api.into(),
                    dir: dir.into(),
                }
                .id(),
            },
            dirs: Mutex::new(HashSet::new()),
        })
    }

    fn rpc(&self) -> &Rpc {
        &self.read.rpc
    }

    fn path(&self, key: &ObjectKey) -> String {
        self.read.path(key)
    }

    /// The CID of the store's directory as it is now, pinned recursively so
    /// that this snapshot stays available whatever the directory becomes.
    pub async fn snapshot_root(&self) -> Result<String, StoreError> {
        let stat = self
            .rpc()
            .stat(&self.read.root, &self.read.root)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                location: self.location(),
                key: self.read.root.clone(),
            })?;
        self.rpc()
            .call(
                "pin/add",
                &[("arg", &stat.hash), ("recursive", "true")],
                None,
                &self.read.root,
            )
            .await?;
        Ok(stat.hash)
    }

    /// Unpins a snapshot root pinned by [`IpfsStore::snapshot_root`] (for
    /// retention); its blocks go at the node's next garbage collection unless
    /// something else still holds them.
    pub async fn unpin(&self, cid: &str) -> Result<(), StoreError> {
        self.rpc()
            .call("pin/rm", &[("arg", cid), ("recursive", "true")], None, cid)
            .await
            .map(drop)
    }

    async fn link(&self, key: &ObjectKey, body: Bytes) -> Result<(), StoreError> {
        let k = key.as_str();
        let added = self.rpc().add(body, k).await?;
        let path = self.path(key);
        let parent = &path[..path.rfind('/').expect("paths have a parent")];
        if !self.dirs.lock().expect("not poisoned").contains(parent) {
            self.rpc()
                .call(
                    "files/mkdir",
                    &[("arg", parent), ("parents", "true"), V1],
                    None,
                    k,
                )
                .await?;
            self.dirs.lock().expect("not poisoned").insert(parent.to_string());
        }
        if key.is_mutable() {
            match self.rpc().call("files/rm", &[("arg", &path), V1], None, k).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        let source = format!("/ipfs/{}", added.hash);
        match self
            .rpc()
            .call("files/cp", &[("arg", &source), ("arg", &path), V1], None, k)
            .await
        {
            // Content-named and already linked (a concurrent or earlier put): the same bytes.
            Err(StoreError::Refused { hint, .. }) if hint.contains("already has entry") => Ok(()),
            r => r.map(drop),
        }
    }
}

#[async_trait]
impl ObjectSource for IpfsStore {
    fn location(&self) -> String {
        self.read.location()
    }

    fn id(&self) -> crate::StoreId {
        self.read.id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.read.get(key).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        self.read.get_limited(key, limit).await
    }

    async fn get_stream(&self, key: &ObjectKey, limit: u64) -> Result<Body, StoreError> {
        self.read.get_stream(key, limit).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.read.get_range(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        self.read.head(key).await
    }
}

#[async_trait]
impl ObjectSink for IpfsStore {
    async fn put(&self, key: &ObjectKey, body: Bytes, _: PutOptions) -> Result<(), StoreError> {
        self.link(key, body).await
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        let Some(stat) = self.rpc().stat(&self.path(key), key.as_str()).await? else {
            return Ok(None);
        };
        // By CID, so the bytes are the version the CID names.
        let path = format!("/ipfs/{}", stat.hash);
        let body = self
            .rpc()
            .send("cat", &[("arg", &path)], None, key.as_str(), limit)
            .await?;
        Ok(Some((body, Version(stat.hash))))
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        let current = self
            .rpc()
            .stat(&self.path(key), key.as_str())
            .await?
            .map(|s| Version(s.hash));
        let matches = match expect {
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current.as_ref() == Some(v),
        };
        if !matches {
            return Err(StoreError::Conflict {
                location: self.location(),
                key: key.to_string(),
            });
        }
        self.put(key, body, opts).await
    }

    fn roots(&self) -> Option<&dyn Roots> {
        Some(self)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self
            .rpc()
            .call(
                "files/rm",
                &[("arg", &self.path(key)), ("cid-version", "1")],
                None,
                key.as_str(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Walks the MFS directories with `files/ls`; MFS keeps no write times,
    /// so `modified` is `None`.
    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_string()];
        while let Some(key) = todo.pop() {
            let path = format!("{}/{key}", self.read.root);
            let body = match self
                .rpc()
                .call("files/ls", &[("arg", &path), ("long", "true")], None, &key)
                .await
            {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let ls: Ls = serde_json::from_slice(&body).map_err(|e| StoreError::Refused {
                location: self.location(),
                key: key.clone(),
                code: "files/ls".into(),
                hint: format!("unexpected answer ({e}); is this a Kubo-compatible RPC API?"),
            })?;
            for entry in ls.entries.unwrap_or_default() {
                let child = format!("{key}/{}", entry.name);
                if entry.kind == 1 {
                    todo.push(child);
                } else if let Ok(key) = ObjectKey::new(child) {
                    out.push(Listed {
                        key,
                        size: number(&entry.size).unwrap_or(0),
                        modified: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ls {
    entries: Option<Vec<LsEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LsEntry {
    name: String,
    /// 0 file, 1 directory.
    #[serde(rename = "Type")]
    kind: u8,
    /// A number from js-ipfs, a string from some nodes.
    size: serde_json::Value,
}

/// Reads objects under a path through the RPC API: `files/read` under an
/// MFS directory, `cat` under `/ipfs/<CID>`. Sizes come from `files/stat`,
/// which takes both kinds of path.
struct Reader {
    rpc: Rpc,
    /// `/<MFS dir>` or `/ipfs/<CID>`, no trailing `/`.
    root: String,
    location: String,
    id: crate::StoreId,
}

impl Reader {
    fn path(&self, key: &ObjectKey) -> String {
        format!("{}/{}", self.root, key)
    }

    fn mfs(&self) -> bool {
        !self.root.starts_with("/ipfs/")
    }

    async fn read(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
        limit: u64,
    ) -> Result<Bytes, StoreError> {
        let (command, length) = if self.mfs() {
            ("files/read", "count")
        } else {
            ("cat", "length")
        };
        let path = self.path(key);
        let mut args = vec![("arg", path)];
        if let Some(r) = range {
            args.push(("offset", r.start.to_string()));
            args.push((length, (r.end - r.start).to_string()));
        }
        let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.rpc.send(command, &args, None, key.as_str(), limit).await
    }
}

#[async_trait]
impl ObjectSource for Reader {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn id(&self) -> crate::StoreId {
        self.id.clone()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.read(key, None, u64::MAX).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        self.read(key, None, limit).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        let len = range.end - range.start;
        self.read(key, Some(range), len).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self
            .rpc
            .stat(&self.path(key), key.as_str())
            .await?
            .map(|s| ObjectMeta {
                size: number(&s.size).unwrap_or(0),
            }))
    }
}

/// A size field: a number from js-ipfs, a string from other nodes.
fn number(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Opens the published directory `cid` (as [`crate::url::StoreUrl::IpfsCid`]
/// names it) for reading: through `api` (`cat`) when given, otherwise
/// through `gateway`.
pub fn open_cid(cid: &str, gateway: &str, api: Option<&str>) -> Result<Arc<dyn ObjectSource>, StoreError> {
    Ok(match api {
        Some(api) => Arc::new(Reader {
            rpc: Rpc::new(api)?,
            root: format!("/ipfs/{cid}"),
            location: format!("ipfs://{cid} (via {api})"),
            id: crate::StoreUrl::IpfsCid(cid.into()).id(),
        }),
        None => Arc::new(HttpStore::new(&format!(
            "{}/ipfs/{cid}/",
            gateway.trim_end_matches('/')
        ))?),
    })
}

#[async_trait]
impl Roots for IpfsStore {
    async fn snapshot_root(&self) -> Result<String, StoreError> {
        IpfsStore::snapshot_root(self).await
    }

    async fn plain_tree(&self, chain: &ChainName, manifest: &Manifest) -> Result<String, StoreError> {
        self.build_tree(chain, manifest).await
    }

    async fn retire_root(&self, root: &str) -> Result<(), StoreError> {
        self.unpin(root).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfs_paths_and_gateway_urls() {
        let s = IpfsStore::new("http://127.0.0.1:5001", "qsync").unwrap();
        assert_eq!(s.location(), "http://127.0.0.1:5001 (MFS /qsync)");
        let s = IpfsStore::new("http://h:5001", "snapshots/eth").unwrap();
        assert_eq!(s.path(&ObjectKey::catalog()), "/snapshots/eth/catalog.json");
        let g = open_cid("bafyabc", "http://g:8080/", None).unwrap();
        assert_eq!(g.location(), "http://g:8080/ipfs/bafyabc/");
    }
}
