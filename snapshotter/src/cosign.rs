//! During a key rotation, signing with every key what a store kept from
//! before it.
//!
//! A publisher that signs with an old and a new key puts both signatures on
//! everything it writes from then on. What it wrote before (the catalog,
//! which changes only when a chain is added, and the manifests the pointer
//! still keeps in its history) has the old key's signature only, so a
//! fetcher or a collection trusting only the new key could not read it
//! until retention replaced it, weeks later with weekly snapshots kept.
//! After each commit [`sign_kept`] adds each key's missing signature to
//! those objects. It never rewrites a signature that exists, and signs only
//! bytes it has verified: the catalog under its own keys, a manifest by the
//! digest the pointer it has just written gives. Best effort: a failure is
//! logged, the snapshot is published either way, and the next publish
//! tries again. With one signing key it does nothing (and costs nothing).

use bytes::Bytes;
use qsync_core::pointer::{self, Pointer, SnapshotRef};
use qsync_core::sign::SigningKeys;
use qsync_core::{Digest, FormatError, ObjectKey};
use qsync_store::signed::get_signed;
use qsync_store::PutOptions;

use crate::upload::Target;
use crate::SnapshotError;

/// Adds the missing signatures of `signer`'s keys to the catalog and to the
/// manifests `pointer` (just written to `t`) keeps; how many were added.
pub(crate) async fn sign_kept(t: &Target, signer: &SigningKeys, pointer: &Pointer) -> u64 {
    if signer.len() < 2 {
        return 0;
    }
    let mut added = 0;
    let catalog = ObjectKey::catalog();
    match catalog_signatures(t, signer, &catalog).await {
        Ok(n) => added += n,
        Err(e) => warn(t, &catalog, &e),
    }
    // `current` was written just now, with every key.
    for snap in &pointer.history {
        match manifest_signatures(t, signer, snap).await {
            Ok(n) => added += n,
            Err(e) => warn(t, &snap.manifest_key, &e),
        }
    }
    if added > 0 {
        tracing::info!(
            "{}: added {added} signature(s) by {} to objects kept from before the key rotation",
            t.sink.location(),
            signer.describe()
        );
    }
    added
}

fn warn(t: &Target, key: &ObjectKey, e: &SnapshotError) {
    tracing::warn!(
        "{key} in {}: could not add the signatures of every signing key ({e}); readers that trust only the new key cannot read it yet. The next publish tries again",
        t.sink.location()
    );
}

async fn catalog_signatures(t: &Target, signer: &SigningKeys, key: &ObjectKey) -> Result<u64, SnapshotError> {
    let Some(body) = get_signed(t.sink.as_ref(), key, &signer.trusted(), pointer::MAX_BYTES).await? else {
        return Ok(0);
    };
    let lacking = lacking(t, signer, key, &body).await?;
    put(t, signer, key, &body, lacking).await
}

async fn manifest_signatures(
    t: &Target,
    signer: &SigningKeys,
    snap: &SnapshotRef,
) -> Result<u64, SnapshotError> {
    let key = &snap.manifest_key;
    // A manifest's signature keys do not depend on its bytes (it is written
    // once), so nothing is read unless a signature is missing.
    let lacking = lacking(t, signer, key, &[]).await?;
    if lacking.is_empty() {
        return Ok(0);
    }
    let body = t.sink.get_limited(key, snap.manifest_size).await?;
    let actual = Digest::of(&body);
    if actual != snap.manifest_blake3 {
        return Err(FormatError::DigestMismatch {
            what: format!("{key} in {}", t.sink.location()),
            expected: snap.manifest_blake3,
            actual,
        }
        .into());
    }
    put(t, signer, key, &body, lacking).await
}

/// Which signatures of `signer`'s keys (by index) the store lacks for
/// `body` at `key`. The primary place counts as the first key's only when
/// that key made the signature there: one by another key (the old one,
/// when the keys were listed new first) leaves the first key's signature
/// to be added beside it.
async fn lacking(
    t: &Target,
    signer: &SigningKeys,
    key: &ObjectKey,
    body: &[u8],
) -> Result<Vec<(usize, ObjectKey)>, SnapshotError> {
    let sig_keys = signer.signature_keys(key, body);
    let heads = futures::future::join_all(sig_keys.iter().map(|k| t.sink.head(k))).await;
    let mut out = Vec::new();
    for (i, (k, head)) in sig_keys.into_iter().zip(heads).enumerate() {
        if head?.is_none() {
            out.push((i, k));
        } else if i == 0 {
            let first = signer.primary().verifying_key().id();
            let there = t.sink.get_limited(&k, 16 << 10).await?;
            if qsync_core::sign::KeyId::of_signature(&there) != Some(first) {
                let beside = key.signature_by(body, first);
                if t.sink.head(&beside).await?.is_none() {
                    out.push((0, beside));
                }
            }
        }
    }
    Ok(out)
}

async fn put(
    t: &Target,
    signer: &SigningKeys,
    key: &ObjectKey,
    body: &[u8],
    lacking: Vec<(usize, ObjectKey)>,
) -> Result<u64, SnapshotError> {
    let n = lacking.len() as u64;
    for (i, sig_key) in lacking {
        let sig = Bytes::from(signer.sign_with(i, key, body));
        t.sink.put(&sig_key, sig, PutOptions::for_key(&sig_key)).await?;
    }
    Ok(n)
}
