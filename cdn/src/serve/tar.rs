//! `GET /tar/<chain>/<version>[.tar|.tar.zst]`: a snapshot as one plain tar
//! stream, for `curl -sf URL | tar -x -C DIR` (the single-archive mode of most
//! node charts and snapshot guides).
//!
//! `<version>` is `latest` or a version number from the pointer's history
//! (parsed by [`qsync_core::keys::parse_tar_name`]). Restore's acceptance
//! rules apply before a byte is sent: pointer and manifest signed under
//! `--public-key`, neither expired ([`qsync_core::trust`]); entries get the
//! modes a restore applies (no setuid, setgid or sticky bits). Each chunk is
//! verified as it is read and each file's digest at its end; a bad one aborts
//! the stream (the client sees a broken transfer, never bad bytes with a
//! clean end).
//!
//! The archive is built asynchronously, one piece per poll of the response
//! body: no thread is held while a stream waits for the store or the client,
//! so any number of streams share the runtime with object requests. Chunk
//! decoding and zstd compression run in short blocking steps. Chunk bytes
//! held by all streams together are bounded by a FIFO semaphore
//! ([`ServeConfig::tar_memory`](super::ServeConfig)).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use qsync_core::keys::{parse_tar_name, TarVersion};
use qsync_core::manifest::Manifest;
use qsync_core::pointer::{self, Pointer};
use qsync_core::trust::{check_manifest, check_pointer, Expired};
use qsync_core::{chunk, ChainName, Digest, ObjectKey};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServeState;
use qsync_store::signed::{get_manifest, get_signed};

/// Largest piece handed to the client at once.
const FRAME: usize = 256 << 10;
/// One tar block.
const BLOCK: usize = 512;
/// zstd level of `.tar.zst` streams.
const ZSTD_LEVEL: i32 = 3;

/// The message for an expired pointer or snapshot (`--allow-expired` is restore's, not ours).
fn refused(e: qsync_core::FormatError) -> String {
    format!("{e} (qsync serve never streams an expired snapshot)")
}

fn fail(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// `GET /tar/{chain}/{name}`.
pub async fn handler(
    State(st): State<Arc<ServeState>>,
    Path((chain, name)): Path<(String, String)>,
) -> Response {
    let Some(keys) = st.cfg.public_keys.clone() else {
        return fail(
            StatusCode::NOT_FOUND,
            "tar streams are off: start qsync serve with --public-key".into(),
        );
    };
    let Ok(chain) = ChainName::new(chain) else {
        return fail(StatusCode::NOT_FOUND, "no such chain".into());
    };
    let Some((version, zst)) = parse_tar_name(&name) else {
        return fail(
            StatusCode::NOT_FOUND,
            format!("{name:?} names no snapshot: use latest or a version number, with .tar or .tar.zst"),
        );
    };
    let store = st.store.clone();
    let pointer_key = ObjectKey::pointer(&chain);
    let pointer = match get_signed(store.as_ref(), &pointer_key, &keys, pointer::MAX_BYTES).await {
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
    let now = st.cfg.clock.now();
    if let Err(e) = check_pointer(&pointer, now, Expired::Refuse) {
        tracing::warn!("tar {chain}: {e}");
        return fail(StatusCode::GONE, refused(e));
    }
    let snap = match version {
        TarVersion::Latest => Some(&pointer.current),
        TarVersion::Number(v) => std::iter::once(&pointer.current)
            .chain(&pointer.history)
            .find(|s| s.version == v),
    };
    let Some(snap) = snap.cloned() else {
        return fail(
            StatusCode::NOT_FOUND,
            format!("chain {chain} has no version {name:?}"),
        );
    };
    let manifest = match get_manifest(store.as_ref(), &snap, &keys).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("tar {chain} v{}: manifest unusable: {e}", snap.version);
            return fail(
                StatusCode::BAD_GATEWAY,
                "the snapshot's manifest does not verify".into(),
            );
        }
    };
    if let Err(e) = check_manifest(&manifest, &snap, &chain, now, Expired::Allow) {
        tracing::error!("tar {chain}: {e}");
        return fail(
            StatusCode::BAD_GATEWAY,
            "the snapshot's manifest does not match its pointer".into(),
        );
    }
    if let Err(e) = check_manifest(&manifest, &snap, &chain, now, Expired::Refuse) {
        tracing::warn!("tar {chain}: {e}");
        return fail(StatusCode::GONE, refused(e));
    }
    st.metrics.record("tar", StatusCode::OK, 0);
    let archive = Archive::new(Arc::new(manifest), st.clone(), zst);
    let body = Body::from_stream(futures::stream::unfold(archive, |mut a| async move {
        a.next().await.map(|piece| (piece, a))
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

/// The 512-byte header of one entry, preceded by a GNU long-name entry
/// when the name does not fit in 100 bytes.
fn entry_header(name: &str, kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * BLOCK);
    let name = name.as_bytes();
    if name.len() > 100 {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(name.len() as u64 + 1);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

/// Zero bytes that pad an entry of `size` bytes to a whole block.
fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

fn broken(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// A chunk's verified plaintext, with its share of the memory budget.
struct Held {
    plain: Bytes,
    at: usize,
    /// The chunk's share of the budget, when no [`Archive::kept`] holds it.
    _permit: Option<OwnedSemaphorePermit>,
}

/// A verified chunk kept because a packed file after this one continues in it.
struct Kept {
    digest: Digest,
    plain: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// One tar (or tar.zst) stream, produced a piece at a time.
struct Archive {
    m: Arc<Manifest>,
    st: Arc<ServeState>,
    /// Next directory to emit.
    dir: usize,
    /// Current file, its pieces and the next one, whether its header is
    /// out, its running digest.
    file: usize,
    pieces: Vec<qsync_core::pieces::Piece>,
    piece: usize,
    header_sent: bool,
    whole: blake3::Hasher,
    held: Option<Held>,
    kept: Option<Kept>,
    trailer_sent: bool,
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    zstd_finished: bool,
    zst: bool,
    done: bool,
    sent: u64,
}

impl Archive {
    fn new(m: Arc<Manifest>, st: Arc<ServeState>, zst: bool) -> Self {
        Archive {
            m,
            st,
            dir: 0,
            file: 0,
            pieces: Vec::new(),
            piece: 0,
            header_sent: false,
            whole: blake3::Hasher::new(),
            held: None,
            kept: None,
            trailer_sent: false,
            zstd: None,
            zstd_finished: false,
            zst,
            done: false,
            sent: 0,
        }
    }

    /// The next piece for the client; `None` at the end or after an error.
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let piece = if self.zst {
            self.next_compressed().await
        } else {
            self.next_raw().await
        };
        match piece {
            Ok(Some(p)) => {
                self.sent += p.len() as u64;
                Some(Ok(p))
            }
            Ok(None) => {
                self.done = true;
                self.st.metrics.add_bytes("tar", self.sent);
                None
            }
            Err(e) => {
                self.done = true;
                tracing::error!(
                    "tar stream of {} v{} aborted: {e}",
                    self.m.chain.name,
                    self.m.version
                );
                Some(Err(e))
            }
        }
    }

    /// The next compressed piece: raw pieces go through zstd in short
    /// blocking steps until it emits output.
    async fn next_compressed(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let mut enc = match self.zstd.take() {
                Some(enc) => enc,
                None if self.zstd_finished => return Ok(None),
                None => zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?,
            };
            match self.next_raw().await? {
                Some(raw) => {
                    let (enc, out) = blocking(move || {
                        use std::io::Write;
                        enc.write_all(&raw)?;
                        let out = std::mem::take(enc.get_mut());
                        Ok((enc, out))
                    })
                    .await?;
                    self.zstd = Some(enc);
                    if !out.is_empty() {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
                None => {
                    self.zstd_finished = true;
                    let out = blocking(move || enc.finish()).await?;
                    return Ok((!out.is_empty()).then(|| Bytes::from(out)));
                }
            }
        }
    }

    /// The next piece of the plain tar archive.
    async fn next_raw(&mut self) -> std::io::Result<Option<Bytes>> {
        let mtime = self.m.created_at.0;
        loop {
            if let Some(h) = &mut self.held {
                let n = FRAME.min(h.plain.len() - h.at);
                let piece = Bytes::copy_from_slice(&h.plain[h.at..h.at + n]);
                h.at += n;
                if h.at == h.plain.len() {
                    // The copy is the client's; the chunk and its budget go now.
                    self.held = None;
                }
                return Ok(Some(piece));
            }
            if let Some(d) = self.m.directories.get(self.dir) {
                self.dir += 1;
                let name = format!("{}/", d.path);
                let h = entry_header(&name, tar::EntryType::Directory, d.applied_mode(), 0, mtime);
                return Ok(Some(Bytes::from(h)));
            }
            let m = self.m.clone();
            let Some(f) = m.files.get(self.file) else {
                if self.trailer_sent {
                    return Ok(None);
                }
                self.trailer_sent = true;
                return Ok(Some(Bytes::from(vec![0u8; 2 * BLOCK])));
            };
            if !self.header_sent {
                self.header_sent = true;
                self.whole = blake3::Hasher::new();
                self.pieces = m.pieces(self.file);
                self.piece = 0;
                let h = entry_header(&f.path, tar::EntryType::Regular, f.applied_mode(), f.size, mtime);
                return Ok(Some(Bytes::from(h)));
            }
            if let Some(p) = self.pieces.get(self.piece).cloned() {
                self.piece += 1;
                self.held = Some(self.piece_of(&p).await?);
                continue;
            }
            let actual: Digest = self.whole.finalize().into();
            if actual != f.blake3 {
                return Err(broken(format!("{}: whole-file digest mismatch", f.path)));
            }
            self.file += 1;
            self.header_sent = false;
            let pad = padding(f.size);
            if pad > 0 {
                return Ok(Some(Bytes::from(vec![0u8; pad])));
            }
        }
    }

    /// The bytes of piece `p`, hashed into the file's digest. A chunk that
    /// a packed file after this one continues in is kept, so a chunk of a
    /// thousand small files is read once, not a thousand times.
    async fn piece_of(&mut self, p: &qsync_core::pieces::Piece) -> std::io::Result<Held> {
        let (at, end) = (p.at as usize, (p.at + p.len) as usize);
        let kept = self.kept.take().filter(|k| k.digest == p.chunk.blake3);
        // Any other chunk kept is gone now: its budget is free before this
        // one waits for its own.
        let (plain, permit) = match kept {
            Some(k) => (k.plain, k._permit),
            None => self.fetch(p.chunk.blake3, p.chunk.size).await?,
        };
        let part = plain.slice(at..end);
        let mut whole = std::mem::take(&mut self.whole);
        let hashed = part.clone();
        self.whole = blocking(move || {
            whole.update(&hashed);
            Ok(whole)
        })
        .await?;
        let permit = if end < plain.len() {
            self.kept = Some(Kept {
                digest: p.chunk.blake3,
                plain,
                _permit: permit,
            });
            None
        } else {
            Some(permit)
        };
        Ok(Held {
            plain: part,
            at: 0,
            _permit: permit,
        })
    }

    /// Reads and verifies one chunk, within the shared memory budget.
    async fn fetch(&mut self, digest: Digest, size: u64) -> std::io::Result<(Bytes, OwnedSemaphorePermit)> {
        let budget: Arc<Semaphore> = self.st.tar_budget.clone();
        let want = size.min(self.st.cfg.tar_memory as u64).max(1) as u32;
        let permit = budget
            .acquire_many_owned(want)
            .await
            .map_err(|_| broken("tar memory budget closed".into()))?;
        let key = ObjectKey::chunk(&digest);
        let stored = self
            .st
            .store
            .get_limited(&key, chunk::stored_limit(size))
            .await
            .map_err(std::io::Error::other)?;
        let plain = blocking(move || {
            Ok(
                match chunk::decode(&stored, size, &digest).map_err(std::io::Error::other)? {
                    std::borrow::Cow::Borrowed(_) => stored.clone(),
                    std::borrow::Cow::Owned(v) => Bytes::from(v),
                },
            )
        })
        .await?;
        Ok((plain, permit))
    }
}

/// Runs a short CPU step on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| broken(format!("tar step failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::serve::ServeConfig;
    use qsync_core::manifest::{ChainMeta, ChunkRef, FileEntry};
    use qsync_core::time::Timestamp;

    /// A state over a store holding one file of `chunks` 1 MiB chunks.
    fn state_with_file(dir: &std::path::Path, chunks: usize) -> (Arc<ServeState>, Arc<Manifest>) {
        let mut refs = Vec::new();
        let mut whole = blake3::Hasher::new();
        for i in 0..chunks {
            let plain = vec![i as u8; 1 << 20];
            whole.update(&plain);
            let d = Digest::of(&plain);
            let key = ObjectKey::chunk(&d);
            let (_, stored) = chunk::encode(plain, 1);
            let path = dir.join(key.as_str());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, stored).unwrap();
            refs.push(ChunkRef {
                blake3: d,
                size: 1 << 20,
            });
        }
        let m = Manifest {
            format: qsync_core::manifest::MANIFEST_FORMAT.into(),
            chain: ChainMeta {
                name: ChainName::new("eth").unwrap(),
                height: None,
                block_hash: None,
            },
            version: 1,
            created_at: Timestamp(1),
            expires_at: Timestamp(u64::MAX / 2),
            chunker: Default::default(),
            directories: Vec::new(),
            files: vec![FileEntry {
                path: "f".into(),
                size: (chunks as u64) << 20,
                mode: 0o4755,
                blake3: whole.finalize().into(),
                chunks: refs.into(),
                packed: false,
            }],
            pack: Vec::new(),
            pack_index: Default::default(),
        };
        let mut cfg = ServeConfig::new(dir);
        cfg.tar_memory = 16 << 20;
        let state = Arc::new(ServeState {
            store: Arc::new(qsync_store::local::LocalStore::new(dir)),
            tar_budget: Arc::new(Semaphore::new(cfg.tar_memory)),
            cfg,
            metrics: Default::default(),
        });
        (state, Arc::new(m))
    }

    /// Many interleaved streams stay within the budget, and every byte of it
    /// comes back, also from a stream dropped half-way (a client gone).
    #[tokio::test]
    async fn streams_share_the_budget_and_return_it() {
        let dir = tempfile::tempdir().unwrap();
        let (st, m) = state_with_file(dir.path(), 6);
        let total = st.cfg.tar_memory;
        // More streams than the budget has chunks for: they take turns.
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let mut a = Archive::new(m.clone(), st.clone(), false);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while let Some(piece) = a.next().await {
                        n += piece.unwrap().len() as u64;
                    }
                    n
                })
            })
            .collect();
        let expected = 512 + (6u64 << 20) + 1024;
        for t in tasks {
            assert_eq!(t.await.unwrap(), expected);
        }
        assert_eq!(st.tar_budget.available_permits(), total, "budget leaked");

        let mut half = Archive::new(m.clone(), st.clone(), true);
        for _ in 0..3 {
            half.next().await.unwrap().unwrap();
        }
        drop(half);
        assert_eq!(
            st.tar_budget.available_permits(),
            total,
            "a dropped stream kept its share"
        );
    }

    /// A store with one signed snapshot of chain `eth` whose pointer
    /// expires at `pointer_expires` (Unix seconds), signed by a fresh key.
    fn signed_store(dir: &std::path::Path, pointer_expires: u64) -> qsync_core::sign::VerifyingKey {
        use qsync_core::pointer::SnapshotRef;
        use qsync_core::sign::{keygen, SigningKey};
        let keys = tempfile::tempdir().unwrap();
        let vk = keygen(&keys.path().join("k.sec"), &keys.path().join("k.pub")).unwrap();
        let sk = SigningKey::load(&keys.path().join("k.sec")).unwrap();
        let (_, m) = state_with_file(dir, 1);
        let mut m = (*m).clone();
        m.created_at = Timestamp(1_000);
        m.expires_at = Timestamp(pointer_expires + 3_600);
        let put = |key: &ObjectKey, body: &[u8]| {
            for (k, b) in [
                (key.clone(), body.to_vec()),
                (key.signature_for(body), sk.sign(key, body)),
            ] {
                let p = dir.join(k.as_str());
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b).unwrap();
            }
        };
        let (stored, compressed) = m.encode();
        let mkey = ObjectKey::manifest(&m.chain.name, 1, &Digest::of(&stored), compressed);
        put(&mkey, &stored);
        let snap = SnapshotRef::new(&m, mkey, &stored);
        let p = Pointer::next(
            None,
            m.chain.name.clone(),
            snap,
            Timestamp(1_000),
            Timestamp(pointer_expires),
        );
        put(&ObjectKey::pointer(&m.chain.name), &p.encode());
        vk
    }

    /// `/tar` applies restore's expiry rule by the configured clock: the
    /// same store streams before the pointer's expiry and answers 410 after
    /// it, with no waiting for the wall clock.
    #[tokio::test]
    async fn an_expired_snapshot_is_refused_by_the_clock() {
        use axum::body::Body;
        use axum::extract::connect_info::MockConnectInfo;
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let expires = 2_000_000_000;
        let vk = signed_store(dir.path(), expires);
        let status_at = |now: u64| {
            let mut cfg = ServeConfig::new(dir.path());
            cfg.public_keys = Some(vk.clone().into());
            cfg.clock = qsync_core::time::Clock::Fixed(Timestamp(now));
            let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
            let req = axum::http::Request::builder()
                .uri("/tar/eth/latest")
                .body(Body::empty())
                .unwrap();
            async move {
                crate::serve::app(cfg)
                    .layer(MockConnectInfo(peer))
                    .oneshot(req)
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(status_at(expires - 60).await, StatusCode::OK);
        assert_eq!(status_at(expires + 1).await, StatusCode::GONE);
    }

    /// Our headers read back with the tar crate, long names included.
    #[test]
    fn headers_read_back() {
        let long = format!("{}/f", "d".repeat(150));
        let mut archive = Vec::new();
        for (name, size) in [("a/b.txt", 3u64), (long.as_str(), 0)] {
            archive.extend(entry_header(name, tar::EntryType::Regular, 0o640, size, 7));
            archive.extend(std::iter::repeat_n(b'x', size as usize));
            archive.extend(vec![0u8; padding(size)]);
        }
        archive.extend(vec![0u8; 1024]);
        let mut t = tar::Archive::new(&archive[..]);
        let got: Vec<(String, u32, u64)> = t
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![("a/b.txt".into(), 0o640, 3), (long.clone(), 0o640, 0)]);
    }
}
