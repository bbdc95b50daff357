//! Reading signed objects: fetch the bytes and the `.minisig`, verify under
//! a pinned key, and only then hand the bytes to a parser.
//! Pointers and the catalog have one signature object per version (see
//! [`ObjectKey::signature_for`]), so a body is never paired with the
//! signature of another version and no retry is needed.
//!
//! During a key rotation an object also has additional signatures beside
//! the primary one ([`ObjectKey::signature_by`]). A reader fetches the
//! primary signature; only when the key that made it is not one it trusts
//! (or it is missing) does it look for an additional signature by each key
//! it does trust. A reader that trusts the primary key does one fetch, as
//! before.

use bytes::Bytes;
use qsync_core::manifest::Manifest;
use qsync_core::pointer::SnapshotRef;
use qsync_core::sign::{KeyId, TrustedKeys};
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
pub const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

/// The verified bytes of `key` from `source`, or `None` when the object is
/// absent. Objects longer than `limit` bytes are refused unread.
pub async fn get_signed(
    source: &dyn ObjectSource,
    key: &ObjectKey,
    keys: &TrustedKeys,
    limit: u64,
) -> Result<Option<Bytes>, SignedReadError> {
    let body = match source.get_limited(key, limit).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    verify_body(source, key, &body, keys).await?;
    Ok(Some(body))
}

/// The manifest `snap` names, read from `source`: its signature verified
/// over the stored bytes, its digest checked against the pointer's, then
/// decoded (on a blocking thread; a large manifest takes a while).
pub async fn get_manifest(
    source: &dyn ObjectSource,
    snap: &SnapshotRef,
    keys: &TrustedKeys,
) -> Result<Manifest, SignedReadError> {
    get_manifest_and_bytes(source, snap, keys)
        .await
        .map(|(m, _, _)| m)
}

/// [`get_manifest`], with the id of the trusted key whose signature
/// verified and the stored bytes it was decoded from (which a restore
/// keeps, so that the node can serve its snapshot to peers).
pub async fn get_manifest_and_bytes(
    source: &dyn ObjectSource,
    snap: &SnapshotRef,
    keys: &TrustedKeys,
) -> Result<(Manifest, KeyId, Bytes), SignedReadError> {
    let key = &snap.manifest_key;
    let what = format!("{key} in {}", source.location());
    let bytes = match source.get_limited(key, snap.manifest_size).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(StoreError::NotFound {
                location: source.location(),
                key: key.to_string(),
            }
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    // The signature first: an edited manifest is reported as a rejected
    // signature (exit 3), whatever its digest.
    let signer = verify_body(source, key, &bytes, keys).await?;
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
    Ok((m, signer, stored))
}

/// For a conditional rewrite of `key` in `sink`: its verified bytes (`None`
/// when absent) and what [`ObjectSink::put_if`] must expect to find.
pub async fn get_signed_for_update(
    sink: &dyn ObjectSink,
    key: &ObjectKey,
    keys: &TrustedKeys,
    limit: u64,
) -> Result<(Option<Bytes>, Expect), SignedReadError> {
    match sink.get_versioned(key, limit).await? {
        Some((bytes, at)) => {
            verify_body(sink, key, &bytes, keys).await?;
            Ok((Some(bytes), Expect::Version(at)))
        }
        None => Ok((None, Expect::Absent)),
    }
}

/// Checks `body`, read from `key` in `source`, against its signatures
/// there; the id of the trusted key whose signature verified. The primary
/// signature decides when a trusted key made it (verified or refused, no
/// second chance); otherwise the additional signature of each trusted key
/// is looked for, in the order the keys were given.
pub async fn verify_body(
    source: &dyn ObjectSource,
    key: &ObjectKey,
    body: &[u8],
    keys: &TrustedKeys,
) -> Result<KeyId, SignedReadError> {
    let what = || format!("{} in {}", key, source.location());
    let located = |e: FormatError| -> SignedReadError {
        match e {
            FormatError::BadSignature { reason, .. } => {
                FormatError::BadSignature { what: what(), reason }.into()
            }
            FormatError::UntrustedKey { reason, .. } => {
                FormatError::UntrustedKey { what: what(), reason }.into()
            }
            e => e.into(),
        }
    };
    let primary_key = key.signature_for(body);
    let primary = fetch_signature(source, &primary_key).await?;
    let primary_id = primary.as_deref().and_then(KeyId::of_signature);
    if let (Some(sig), Some(id)) = (&primary, primary_id) {
        if keys.get(id).is_some() {
            return keys.verify(key, body, sig).map_err(located);
        }
    }
    let mut tried = Vec::new();
    let mut refused: Option<FormatError> = None;
    for id in keys.ids().filter(|id| Some(*id) != primary_id) {
        let sig_key = key.signature_by(body, id);
        match fetch_signature(source, &sig_key).await? {
            Some(sig) => match keys.verify(key, body, &sig) {
                Ok(id) => return Ok(id),
                // Try the others: another trusted key's signature may verify.
                Err(e) => refused = Some(e),
            },
            None => tried.push(sig_key.to_string()),
        }
    }
    if let Some(e) = refused {
        return Err(located(e));
    }
    let (primary_said, untrusted) = match (&primary, primary_id) {
        (None, _) => (
            format!("its signature {primary_key} is missing (the store is incomplete or was not published by qsync)"),
            false,
        ),
        (Some(_), Some(id)) => (
            format!("its signature {primary_key} is by key {id}, which is not trusted here"),
            true,
        ),
        // Unreadable: minisign's own words say best what is wrong with it.
        (Some(sig), None) => return keys.verify(key, body, sig).map_err(located),
    };
    let reason = format!(
        "{primary_said}, and no signature by a trusted key ({}) is there (looked for {})",
        keys.describe(),
        tried.join(", ")
    );
    let what = what();
    Err(match untrusted {
        true => FormatError::UntrustedKey { what, reason },
        false => FormatError::BadSignature { what, reason },
    }
    .into())
}

/// The signature at `sig_key`, or `None` when the store lacks it.
async fn fetch_signature(
    source: &dyn ObjectSource,
    sig_key: &ObjectKey,
) -> Result<Option<Bytes>, SignedReadError> {
    match source.get_limited(sig_key, MAX_SIGNATURE_BYTES).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;
    use crate::PutOptions;
    use qsync_core::sign::{keygen, SigningKey, SigningKeys, VerifyingKey};

    struct Keys {
        _dir: tempfile::TempDir,
        sk: Vec<SigningKey>,
        vk: Vec<VerifyingKey>,
    }

    fn keys(n: usize) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (mut sk, mut vk) = (Vec::new(), Vec::new());
        for i in 0..n {
            let (s, p) = (
                dir.path().join(format!("{i}.sec")),
                dir.path().join(format!("{i}.pub")),
            );
            vk.push(keygen(&s, &p).unwrap());
            sk.push(SigningKey::load(&s).unwrap());
        }
        Keys { _dir: dir, sk, vk }
    }

    async fn put(store: &MemoryStore, key: &ObjectKey, body: &[u8]) {
        store
            .put(key, Bytes::copy_from_slice(body), PutOptions::for_key(key))
            .await
            .unwrap();
    }

    /// A pointer signed by keys 0 (primary) and 1 (additional) in a store.
    async fn dual_signed(k: &Keys) -> (MemoryStore, ObjectKey, Vec<u8>) {
        let store = MemoryStore::new("rotation");
        let key = ObjectKey::new("chains/eth/latest.json").unwrap();
        let body = b"{\"v\":1}".to_vec();
        let load = |i: usize| SigningKey::load(&k._dir.path().join(format!("{i}.sec"))).unwrap();
        let signer = SigningKeys::new(vec![load(0), load(1)]).unwrap();
        for (sig_key, sig) in signer.sign_all(&key, &body) {
            put(&store, &sig_key, &sig).await;
        }
        put(&store, &key, &body).await;
        (store, key, body)
    }

    fn trust(k: &Keys, which: &[usize]) -> TrustedKeys {
        TrustedKeys::new(which.iter().map(|&i| k.vk[i].clone())).unwrap()
    }

    #[tokio::test]
    async fn either_key_of_a_dual_signed_object_verifies_it() {
        let k = keys(3);
        let (store, key, body) = dual_signed(&k).await;
        for (which, signer) in [
            (&[0][..], 0),
            (&[1][..], 1),
            (&[0, 1][..], 0),
            (&[1, 0][..], 0),
            (&[2, 1][..], 1),
        ] {
            let got = verify_body(&store, &key, &body, &trust(&k, which)).await.unwrap();
            assert_eq!(got, k.vk[signer].id(), "trusting {which:?}");
        }
        assert!(verify_body(&store, &key, b"{\"v\":2}", &trust(&k, &[1]))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_reader_trusting_neither_key_is_told_which_keys_signed_and_which_it_trusts() {
        let k = keys(3);
        let (store, key, body) = dual_signed(&k).await;
        let err = verify_body(&store, &key, &body, &trust(&k, &[2]))
            .await
            .unwrap_err()
            .to_string();
        for id in [k.vk[0].id(), k.vk[2].id()] {
            assert!(err.contains(&id.to_string()), "{id} not named: {err}");
        }
        assert!(
            err.contains(key.signature_by(&body, k.vk[2].id()).as_str()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_bad_primary_signature_by_a_trusted_key_is_refused_outright() {
        let k = keys(2);
        let (store, key, body) = dual_signed(&k).await;
        // Key 0's signature over other bytes, at the primary place.
        let forged = k.sk[0].sign(&key, b"other");
        put(&store, &key.signature_for(&body), &forged).await;
        assert!(verify_body(&store, &key, &body, &trust(&k, &[0, 1]))
            .await
            .is_err());
        // A reader that trusts only key 1 never reads the primary's verdict.
        assert_eq!(
            verify_body(&store, &key, &body, &trust(&k, &[1])).await.unwrap(),
            k.vk[1].id()
        );
    }
}
