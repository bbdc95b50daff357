//! Reading signed objects: fetch the bytes and the `.minisig`, verify under
//! the pinned key, and only then hand the bytes to a parser.
//!
//! The object and its signature are two writes, so a reader can catch a
//! pointer between them; a signature failure is therefore retried once after
//! a short pause before it is reported.

use std::time::Duration;

use bytes::Bytes;
use qsync_core::sign::VerifyingKey;
use qsync_core::{FormatError, ObjectKey};

use crate::store::{ObjectSource, StoreError};

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
    let mut attempt = 0;
    loop {
        let body = match source.get_limited(key, limit).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sig = match source.get_limited(&key.signature(), MAX_SIGNATURE_BYTES).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() && attempt > 0 => {
                return Err(FormatError::BadSignature {
                    what: format!("{} in {}", key, source.location()),
                    reason: "its .minisig is missing; the store is incomplete or was not published by qsync"
                        .into(),
                }
                .into())
            }
            Err(e) if e.is_not_found() => Bytes::new(),
            Err(e) => return Err(e.into()),
        };
        match vk.verify(key, &body, &sig) {
            Ok(()) => return Ok(Some(body)),
            Err(_) if attempt == 0 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(FormatError::BadSignature { reason, .. }) => {
                return Err(FormatError::BadSignature {
                    what: format!("{} in {}", key, source.location()),
                    reason,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}
