//! Committing a snapshot in one store: the manifest, then the pointer
//! (written only while the run's publish lease is still its own, and only
//! over the version the run started from, its history cut by the retention
//! policy), then the catalog entry, then (during a key rotation) the new
//! key's signatures on what the store kept from before; and re-signing a pointer
//! to move its expiry; then telling the store's edge cache (a CDN), if it
//! has one, which paths were rewritten. Before any of that, stores that
//! can name the snapshot's files as a directory (IPFS) build that plain
//! tree, so that every pointer of the run can name it. Everything here
//! runs after every chunk is uploaded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qsync_core::manifest::Manifest;
use qsync_core::pointer::{self, Catalog, Pointer, SnapshotRef};
use qsync_core::sign::SigningKeys;
use qsync_core::time::Timestamp;
use qsync_core::{ChainName, Digest, ObjectKey};
use qsync_store::signed::get_signed_for_update;
use qsync_store::{Expect, ObjectSink, StoreError};

use crate::options::{SnapshotOptions, SnapshotSummary};
use crate::upload::Target;
use crate::SnapshotError;

/// The times a run writes.
#[derive(Clone, Copy)]
pub(crate) struct Expiry {
    pub(crate) now: Timestamp,
    pub(crate) expires_at: Timestamp,
    pub(crate) manifest_expires_at: Timestamp,
}

/// The snapshot a run commits, the same for every store.
pub(crate) struct NewSnapshot<'a> {
    pub(crate) signer: &'a SigningKeys,
    pub(crate) opts: &'a SnapshotOptions,
    pub(crate) manifest: &'a Manifest,
    /// The manifest as stored, encoded once for every store and shared,
    /// never copied (a million files' is 46 MB).
    pub(crate) stored: &'a Bytes,
    /// What the pointer says of it (its key names its digest).
    pub(crate) current: &'a SnapshotRef,
    pub(crate) when: Expiry,
    /// Plaintext bytes of all files.
    pub(crate) total: u64,
    /// The pointer's mirror hints: the operator's, then the run's plain trees.
    pub(crate) mirrors: &'a [String],
}

/// Builds the plain tree of `manifest` in every live store that can
/// ([`qsync_store::Roots::plain_tree`]): per store, its CID. The tree is
/// an extra: a store whose tree fails is published without one (its
/// pointer names no tree), with a warning.
pub(crate) async fn plain_trees(targets: &[Arc<Target>], manifest: &Manifest) -> Vec<Option<String>> {
    let mut trees = Vec::with_capacity(targets.len());
    for t in targets {
        let started = std::time::Instant::now();
        let tree = match t.sink.roots().filter(|_| t.live()) {
            Some(roots) => match roots.plain_tree(&manifest.chain.name, manifest).await {
                Ok(cid) if !plausible_cid(&cid) => {
                    tracing::warn!(
                        "{}: the IPFS node answered {cid:?} as the plain tree's CID, which is no CID; publishing the snapshot without it",
                        t.sink.location()
                    );
                    None
                }
                Ok(cid) => {
                    tracing::info!(
                        "{}: the snapshot's files are the directory /ipfs/{cid} (built in {:.1?})",
                        t.sink.location(),
                        started.elapsed()
                    );
                    Some(cid)
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: the plain tree of {} could not be built ({e}); publishing the snapshot without it",
                        t.sink.location(),
                        manifest.chain.name
                    );
                    None
                }
            },
            None => None,
        };
        trees.push(tree);
    }
    trees
}

/// Whether `cid`, as an IPFS node answered it, can be a CID: what goes
/// into a signed pointer (and is printed by `qsync ls`) is checked, not
/// trusted.
fn plausible_cid(cid: &str) -> bool {
    (1..=128).contains(&cid.len()) && cid.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Writes one store's manifest, pointer and catalog entry for `snapshot`,
/// over the pointer `previous` the run read from it (version `expect`);
/// the summary (with the store's plain `tree`, if it built one) and the
/// BLAKE3 of the manifest as stored.
pub(crate) async fn finish_store(
    t: &Target,
    snapshot: &NewSnapshot<'_>,
    previous: Option<&Pointer>,
    expect: &Expect,
    tree: Option<String>,
) -> Result<(SnapshotSummary, Digest), SnapshotError> {
    let NewSnapshot {
        signer,
        opts,
        manifest,
        stored,
        current,
        when,
        total,
        mirrors,
    } = *snapshot;
    let version = manifest.version;
    let manifest_key = &current.manifest_key;
    t.put_signed(manifest_key, stored.clone(), signer, None).await?;

    let pointer_key = ObjectKey::pointer(&opts.chain);
    let mut pointer = Pointer::next(
        previous,
        opts.chain.clone(),
        current.clone(),
        when.now,
        when.expires_at,
    );
    pointer.mirrors = mirrors.to_vec();
    if let Some(policy) = &opts.retention {
        let all: Vec<SnapshotRef> = std::iter::once(pointer.current.clone())
            .chain(pointer.history.iter().cloned())
            .collect();
        pointer.history = crate::gc::select(&all, policy).into_iter().skip(1).collect();
    }
    // Only while the lease is still ours: a run whose renewals failed, or
    // whose lease another agent took over, leaves the pointer alone.
    crate::lease::check_held(t.sink.as_ref(), &opts.chain).await?;
    // Written only over the pointer this run started from: of two publishers
    // racing on one chain, the second finds the pointer moved and fails.
    match t
        .put_signed(&pointer_key, pointer.encode(), signer, Some(expect))
        .await
    {
        Err(StoreError::Conflict { location, key }) => {
            return Err(SnapshotError::PointerRace { location, key })
        }
        r => r?,
    }
    let mut rewritten = vec![pointer_key.to_string()];
    if update_catalog(t, signer, &opts.chain).await? {
        rewritten.push(ObjectKey::catalog().to_string());
    }
    // During a key rotation: the new key's signatures on what is kept from before.
    crate::cosign::sign_kept(t, signer, &pointer).await;
    let ipfs_root_cid = match t.sink.roots() {
        Some(roots) => Some(roots.snapshot_root().await?),
        None => None,
    };

    let c = &t.counters;
    let summary = SnapshotSummary {
        chain: opts.chain.to_string(),
        version,
        pointer_sequence: pointer.sequence,
        pointer_key: pointer_key.to_string(),
        manifest_key: manifest_key.to_string(),
        manifest_blake3: pointer.current.manifest_blake3.to_hex(),
        files: manifest.files.len() as u64,
        bytes_total: total,
        bytes_uploaded: c.bytes_uploaded.load(Ordering::Relaxed),
        bytes_new: c.bytes_new.load(Ordering::Relaxed),
        chunks_total: manifest.chunk_refs() as u64,
        chunks_uploaded: c.chunks_uploaded.load(Ordering::Relaxed),
        rewritten,
        ipfs_root_cid,
        ipfs_tree_cid: tree,
        created_at: when.now.to_string(),
        expires_at: when.expires_at.to_string(),
        snapshot_expires_at: when.manifest_expires_at.to_string(),
    };
    Ok((summary, pointer.current.manifest_blake3))
}

/// Adds `chain` to the catalog; true when it was not listed. Publishers of
/// other chains may update it at the same time, so the write is conditional
/// and retried on a conflict.
async fn update_catalog(t: &Target, signer: &SigningKeys, chain: &ChainName) -> Result<bool, SnapshotError> {
    let key = ObjectKey::catalog();
    let mut attempts = 0;
    let keys = signer.trusted();
    loop {
        let (bytes, expect) = get_signed_for_update(t.sink.as_ref(), &key, &keys, pointer::MAX_BYTES)
            .await
            .map_err(|e| {
                SnapshotError::reading_own(
                    e,
                    signer,
                    "The snapshot was published (its pointer moved) but the catalog was not updated.",
                )
            })?;
        let mut catalog = match bytes {
            Some(b) => Catalog::decode(&b)?,
            None => Catalog::default(),
        };
        if !catalog.insert(chain) {
            return Ok(false);
        }
        match t.put_signed(&key, catalog.encode(), signer, Some(&expect)).await {
            Err(StoreError::Conflict { .. }) if attempts < 8 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
            }
            r => return Ok(r.map(|()| true)?),
        }
    }
}

/// Re-signs the pointer of `chain` in `sink` with a new expiry, naming the
/// same snapshot; `None` when the chain has no pointer there, or when its
/// snapshot is older than `max_age` (then the expiry must stop moving, so
/// that readers refuse a source whose snapshots stopped). Conditional: a
/// publish that moved the pointer meanwhile wins.
pub async fn resign(
    sink: Arc<dyn ObjectSink>,
    signer: &SigningKeys,
    chain: &ChainName,
    expires_in: Duration,
    max_age: Duration,
) -> Result<Option<Pointer>, SnapshotError> {
    let key = ObjectKey::pointer(chain);
    let (bytes, expect) = get_signed_for_update(sink.as_ref(), &key, &signer.trusted(), pointer::MAX_BYTES)
        .await
        .map_err(|e| SnapshotError::reading_own(e, signer, "Nothing was written."))?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let mut p = Pointer::decode(&bytes, key.as_str())?;
    let now = Timestamp::now();
    let age = now.0.saturating_sub(p.current.created_at.0);
    if age > max_age.as_secs() {
        tracing::warn!(
            "not re-signing {key} in {}: its snapshot (version {}) is {} old, more than max-age {}; the pointer expires at {}",
            sink.location(),
            p.current.version,
            humantime::format_duration(Duration::from_secs(age)),
            humantime::format_duration(max_age),
            p.expires_at
        );
        return Ok(None);
    }
    p.sequence += 1;
    p.created_at = now;
    p.expires_at = now.plus(expires_in);
    let t = Target::new(sink);
    match t.put_signed(&key, p.encode(), signer, Some(&expect)).await {
        Err(StoreError::Conflict { location, key }) => Err(SnapshotError::PointerRace { location, key }),
        r => r.map(|()| Some(p)).map_err(Into::into),
    }
}

/// After a publish to `sink`: has its edge cache (a CDN, where the store
/// has one) forget the `rewritten` keys. The invalidation's ID, or `None`
/// when the store has no edge cache or the request failed (after a warning:
/// the snapshot is published either way, and edges pick it up within the
/// pointer's max-age).
pub async fn invalidate_rewritten(sink: &dyn ObjectSink, rewritten: &[String]) -> Option<String> {
    let edge = sink.edge()?;
    match edge.invalidate(rewritten).await {
        Ok(id) => {
            tracing::info!("{}: edge cache invalidation {id} created", sink.location());
            Some(id)
        }
        Err(e) => {
            tracing::warn!(
                "the snapshot is published, but {e}; edges serve the old pointer until its max-age runs out"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plausible_cid;

    #[test]
    fn only_a_plausible_cid_from_the_node_reaches_a_signed_pointer() {
        assert!(plausible_cid(
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
        ));
        assert!(plausible_cid("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"));
        for bad in ["", "bafy\u{1b}[31m", "baf y", "../x", &"a".repeat(129)] {
            assert!(!plausible_cid(bad), "{bad:?}");
        }
    }
}
