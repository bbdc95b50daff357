//! Reading one source file: cut into content-defined chunks as it is read
//! once, each chunk and the whole file hashed on the way, and the file
//! proved unchanged from listing to the last byte (a file the node changes
//! while it is read fails the run: no snapshot mixes two states of it).

use std::path::Path;

use qsync_core::chunk::ChunkerParams;
use qsync_core::Digest;
use tokio::sync::mpsc;

use crate::scan::Stat;
use crate::SnapshotError;

/// Blocking: cuts `path` into chunks, sends them with their digests, and
/// returns the whole-file digest after checking the file did not change.
pub(crate) fn read_chunks(
    path: &Path,
    before: &Stat,
    params: &ChunkerParams,
    tx: mpsc::Sender<(Digest, Vec<u8>)>,
) -> Result<Digest, SnapshotError> {
    let io = |source| SnapshotError::Source {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let opened = Stat::of(&f.metadata().map_err(io)?);
    let mut whole = blake3::Hasher::new();
    let mut read = 0u64;
    for c in params.chunks(std::io::BufReader::with_capacity(1 << 20, &f)) {
        let (_, data) = c.map_err(io)?;
        whole.update(&data);
        read += data.len() as u64;
        if tx.blocking_send((Digest::of(&data), data)).is_err() {
            break; // the upload side failed; its error is reported
        }
    }
    let after = Stat::of(&f.metadata().map_err(io)?);
    let changed = |what: String| SnapshotError::FileChanged {
        path: path.into(),
        what,
    };
    if opened != *before {
        return Err(changed(
            "it was replaced or modified between listing and opening".into(),
        ));
    }
    if after != opened || read != before.size {
        return Err(changed(format!(
            "size {} -> {}, read {read} bytes, mtime {} -> {}",
            before.size, after.size, before.mtime_ns, after.mtime_ns
        )));
    }
    Ok(whole.finalize().into())
}
