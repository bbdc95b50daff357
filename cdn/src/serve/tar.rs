//! `GET /tar/<chain>/<version>[.tar|.tar.zst]`: a snapshot as one plain tar
//! stream, for `curl -sf URL | tar -x -C DIR` (the single-archive mode of most
//! node charts and snapshot guides).
//!
//! `<version>` is `latest` or a version number from the pointer's history.
//! The pointer and manifest are checked against `--public-key` before a byte
//! is sent; each chunk is verified as it is read, and a bad one aborts the
//! stream (the client sees a broken transfer, never bad bytes with a clean
//! end). The archive is written on a blocking thread into a bounded channel,
//! so memory stays at a few buffers whatever the snapshot size.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qsync_core::manifest::{ChunkRef, FileEntry, Manifest};
use qsync_core::pointer::{self, Pointer};
use qsync_core::{chunk, ChainName, Digest, ObjectKey};
use tokio::sync::mpsc;

use super::ServeState;
use crate::signed::get_signed;
use crate::store::ObjectSource;

/// Bytes per message on the way to the client.
const FRAME: usize = 256 << 10;

fn fail(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// Splits `latest.tar.zst` into (`latest`, zstd?).
fn parse_name(name: &str) -> (&str, bool) {
    if let Some(v) = name.strip_suffix(".tar.zst") {
        (v, true)
    } else {
        (name.strip_suffix(".tar").unwrap_or(name), false)
    }
}

/// `GET /tar/{chain}/{name}`.
pub async fn handler(
    State(st): State<Arc<ServeState>>,
    Path((chain, name)): Path<(String, String)>,
) -> Response {
    let Some(vk) = st.cfg.public_key.clone() else {
        return fail(
            StatusCode::NOT_FOUND,
            "tar streams are off: start qsync serve with --public-key".into(),
        );
    };
    let Ok(chain) = ChainName::new(chain) else {
        return fail(StatusCode::NOT_FOUND, "no such chain".into());
    };
    let (version, zst) = parse_name(&name);
    let store = st.store.clone();
    let pointer_key = ObjectKey::pointer(&chain);
    let pointer = match get_signed(store.as_ref(), &pointer_key, &vk, pointer::MAX_BYTES).await {
        Ok(Some(b)) => match Pointer::decode(&b, pointer_key.as_str()) {
            Ok(p) => p,
            Err(e) => return fail(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        Ok(None) => return fail(StatusCode::NOT_FOUND, format!("no snapshot of chain {chain}")),
        Err(e) => {
            tracing::error!("tar {chain}: {e}");
            return fail(
                StatusCode::BAD_GATEWAY,
                "the store's pointer does not verify".into(),
            );
        }
    };
    let snap = match version {
        "latest" => Some(&pointer.current),
        v => v.parse::<u64>().ok().and_then(|v| {
            std::iter::once(&pointer.current)
                .chain(&pointer.history)
                .find(|s| s.version == v)
        }),
    };
    let Some(snap) = snap.cloned() else {
        return fail(
            StatusCode::NOT_FOUND,
            format!("chain {chain} has no version {version:?}"),
        );
    };
    let manifest = match get_signed(store.as_ref(), &snap.manifest_key, &vk, snap.manifest_size).await {
        Ok(Some(b)) if Digest::of(&b) == snap.manifest_blake3 => {
            Manifest::decode(&b, snap.manifest_key.as_str())
        }
        other => {
            tracing::error!(
                "tar {chain} v{}: manifest unusable: {:?}",
                snap.version,
                other.err()
            );
            return fail(
                StatusCode::BAD_GATEWAY,
                "the snapshot's manifest does not verify".into(),
            );
        }
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let handle = tokio::runtime::Handle::current();
    let metrics_st = st.clone();
    tokio::task::spawn_blocking(move || {
        let out = Sink {
            tx: tx.clone(),
            buf: Vec::with_capacity(FRAME),
            sent: 0,
        };
        let result = if zst {
            zstd::Encoder::new(out, 3)
                .and_then(|enc| write_tar(enc, &manifest, store.as_ref(), &handle)?.finish())
        } else {
            write_tar(out, &manifest, store.as_ref(), &handle)
        };
        match result.and_then(|mut sink| sink.flush().map(|_| sink.sent)) {
            Ok(sent) => metrics_st.metrics.add_bytes("tar", sent),
            Err(e) => {
                tracing::error!(
                    "tar stream of {} v{} aborted: {e}",
                    manifest.chain.name,
                    manifest.version
                );
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    st.metrics.record("tar", StatusCode::OK, 0);
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|i| (i, rx))
    }));
    let kind = if zst {
        "application/zstd"
    } else {
        "application/x-tar"
    };
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// Writes `m` as a tar archive into `w`, reading and verifying each chunk.
fn write_tar<W: Write>(
    w: W,
    m: &Manifest,
    store: &dyn ObjectSource,
    handle: &tokio::runtime::Handle,
) -> std::io::Result<W> {
    let mut b = tar::Builder::new(w);
    let mtime = m.created_at.0;
    for d in &m.directories {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(d.mode & 0o7777);
        h.set_mtime(mtime);
        h.set_size(0);
        b.append_data(&mut h, format!("{}/", d.path), std::io::empty())?;
    }
    for f in &m.files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode & 0o7777);
        h.set_mtime(mtime);
        h.set_size(f.size);
        b.append_data(&mut h, &f.path, FileReader::new(f, store, handle))?;
    }
    b.into_inner()
}

/// Reads one file of a manifest from its verified chunks.
struct FileReader<'a> {
    chunks: std::slice::Iter<'a, ChunkRef>,
    current: Bytes,
    whole: blake3::Hasher,
    file: &'a FileEntry,
    store: &'a dyn ObjectSource,
    handle: &'a tokio::runtime::Handle,
}

impl<'a> FileReader<'a> {
    fn new(file: &'a FileEntry, store: &'a dyn ObjectSource, handle: &'a tokio::runtime::Handle) -> Self {
        FileReader {
            chunks: file.chunks.iter(),
            current: Bytes::new(),
            whole: blake3::Hasher::new(),
            file,
            store,
            handle,
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            let Some(c) = self.chunks.next() else {
                // End of file: the whole-file digest must match too.
                let actual: Digest = self.whole.finalize().into();
                if actual != self.file.blake3 {
                    return Err(std::io::Error::other(format!(
                        "{}: whole-file digest mismatch",
                        self.file.path
                    )));
                }
                return Ok(0);
            };
            let key = ObjectKey::chunk(&c.blake3);
            let limit = chunk::stored_limit(c.size);
            let stored = self
                .handle
                .block_on(self.store.get_limited(&key, limit))
                .map_err(std::io::Error::other)?;
            let plain = chunk::decode(&stored, c.size, &c.blake3).map_err(std::io::Error::other)?;
            let plain = match plain {
                std::borrow::Cow::Borrowed(_) => stored.clone(),
                std::borrow::Cow::Owned(v) => Bytes::from(v),
            };
            self.whole.update(&plain);
            self.current = plain;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A `Write` that sends `FRAME`-sized pieces to the HTTP body.
struct Sink {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    sent: u64,
}

impl Sink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(FRAME));
        self.sent += piece.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FRAME {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("latest"), ("latest", false));
        assert_eq!(parse_name("latest.tar"), ("latest", false));
        assert_eq!(parse_name("7.tar.zst"), ("7", true));
    }
}
