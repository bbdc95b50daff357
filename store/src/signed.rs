//! Reading signed objects: fetch the bytes and the `.minisig`, verify under
//! the pinned key, and only then hand the bytes to a parser.
//! Pointers and the catalog have one signature object per version (see
//! [`ObjectKey::signature_for`]), so a body is never paired with the
//! signature of another version and no retry is needed.

use bytes::Bytes;
use qsync_core::manifest::Manifest;
use qsync_core::pointer::SnapshotRef;
use qsync_core::sign::VerifyingKey;
use qsync_core::{Digest, FormatError, ObjectKey};

use crate::traits::{Expect, ObjectSink, ObjectSource, StoreError};

/// Why a signed object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SignedReadError {
    /// The store failed or lacks the object.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The signature does not verify.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Largest `.minisig` a reader accepts (real ones are about 300 bytes).
const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

/// The verified bytes of `key` from `source`, or `None` when the object is
/// absent. Objects longer than `limit` bytes are refused unread.
pub async fn get_signed(
    source: &dyn ObjectSource,
    key: &ObjectKey,
    vk: &VerifyingKey,
    limit: u64,
) -> Result<Option<Bytes>, SignedReadError> {
    let body = match source.get_limited(key, limit).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    verify_body(source, key, &body, vk).await?;
    Ok(Some(body))
}

/// The manifest `snap` names, read from `source`: its signature verified
/// over the stored bytes, its digest checked against the pointer's, then
/// decoded (on a blocking thread; a large manifest takes a while).
pub async fn get_manifest(
    source: &dyn ObjectSource,
    snap: &SnapshotRef,
    vk: &VerifyingKey,
) -> Result<Manifest, SignedReadError> {
    get_manifest_and_bytes(source, snap, vk).await.map(|(m, _)| m)
}

/// [`get_manifest`], with the stored bytes it was decoded from (which a
/// restore keeps, so that the node can serve its snapshot to peers).
pub async fn get_manifest_and_bytes(
    source: &dyn ObjectSource,
    snap: &SnapshotRef,
    vk: &VerifyingKey,
) -> Result<(Manifest, Bytes), SignedReadError> {
    let key = &snap.manifest_key;
    let what = format!("{key} in {}", source.location());
    let bytes = get_signed(source, key, vk, snap.manifest_size)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            location: source.location(),
            key: key.to_string(),
        })?;
    let actual = Digest::of(&bytes);
    if actual != snap.manifest_blake3 {
        return Err(FormatError::DigestMismatch {
            what,
            expected: snap.manifest_blake3,
            actual,
        }
        .into());
    }
    let stored = bytes.clone();
    let m = tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &what))
        .await
        .expect("decode does not panic")?;
    Ok((m, stored))
}

/// For a conditional rewrite of `key` in `sink`: its verified bytes (`None`
/// when absent) and what [`ObjectSink::put_if`] must expect to find.
pub async fn get_signed_for_update(
    sink: &dyn ObjectSink,
    key: &ObjectKey,
    vk: &VerifyingKey,
    limit: u64,
) -> Result<(Option<Bytes>, Expect), SignedReadError> {
    match sink.get_versioned(key, limit).await? {
        Some((bytes, at)) => {
            verify_body(sink, key, &bytes, vk).await?;
            Ok((Some(bytes), Expect::Version(at)))
        }
        None => Ok((None, Expect::Absent)),
    }
}

/// Checks `body`, read from `key` in `source`, against its signature there.
pub async fn verify_body(
    source: &dyn ObjectSource,
    key: &ObjectKey,
    body: &[u8],
    vk: &VerifyingKey,
) -> Result<(), SignedReadError> {
    let sig_key = key.signature_for(body);
    let sig = match source.get_limited(&sig_key, MAX_SIGNATURE_BYTES).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            return Err(FormatError::BadSignature {
                what: format!("{} in {}", key, source.location()),
                reason: format!(
                "its signature {sig_key} is missing; the store is incomplete or was not published by qsync"
            ),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    vk.verify(key, body, &sig).map_err(|e| match e {
        FormatError::BadSignature { reason, .. } => FormatError::BadSignature {
            what: format!("{} in {}", key, source.location()),
            reason,
        }
        .into(),
        e => e.into(),
    })
}
