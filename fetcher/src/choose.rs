//! Which snapshot a restore takes, from the pointers every mirror served.
//!
//! Candidates come newest first by signed creation time
//! ([`qsync_core::trust::rank`]), so a stale store can never outrank a fresh
//! one whatever its version counter says, and nothing older than another
//! valid candidate is restored. An expired candidate is skipped, with a
//! warning, in favour of the next fresh one; a fresh winner must still not
//! be older than what this host restored before (rollback). With
//! `--snapshot-version`, an older entry of the winner's history is taken on
//! purpose (the rollback check applies to the winner itself). Every
//! mirror's part ends up in the run's report: which one supplied the
//! pointer, which were older, expired, empty or rejected.

use qsync_core::manifest::Manifest;
use qsync_core::pointer::Pointer;
use qsync_core::sign::{KeyId, TrustedKeys};
use qsync_core::time::Timestamp;
use qsync_core::trust::{self, rank, Expired, TrustStore};
use qsync_core::{ChainName, FormatError};

use crate::{Mirrors, RestoreError};

/// The snapshot a restore goes on with.
pub struct Chosen {
    /// The pointer, its `current` replaced by the version asked for.
    pub pointer: Pointer,
    /// The verified manifest of `pointer.current`.
    pub manifest: Manifest,
    /// The mirror whose pointer won.
    pub from: String,
    /// The pointer's stored bytes, as signed, when it names the snapshot
    /// chosen as its current one (not after `--snapshot-version` took an
    /// older one from its history).
    pub pointer_bytes: Option<bytes::Bytes>,
    /// The manifest's stored bytes, as signed.
    pub manifest_bytes: bytes::Bytes,
    /// The trusted key whose signature on the manifest verified.
    pub signed_by: KeyId,
}

/// Picks the newest fresh snapshot of `chain` any mirror offers (or
/// `version` of its history), checks it against the trust state and
/// fetches its manifest.
pub async fn choose(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    chain: &ChainName,
    trust: &TrustStore,
    expired: Expired,
    version: Option<u64>,
    now: Timestamp,
) -> Result<Chosen, RestoreError> {
    let candidates = mirrors.pointers(chain, keys).await?;
    let mut last: Option<RestoreError> = None;
    for (n, c) in candidates.iter().enumerate() {
        let more = n + 1 < candidates.len();
        match trust::check_pointer(&c.pointer, now, expired) {
            Err(e) => {
                mirrors.set_pointer_status(c.mirror, "expired".into());
                if more {
                    tracing::warn!("skipping the newest candidate from {}: {e}", c.location);
                }
                last = Some(e.into());
                continue;
            }
            Ok(Some(w)) => tracing::warn!("{w}"),
            Ok(None) => {}
        }
        trust.check_rollback(chain, &c.pointer.current)?;
        let pointer = pick_version(&c.pointer, version)?;
        let (manifest, signed_by, manifest_bytes) = mirrors
            .manifest_and_bytes(&pointer.current, keys, Some(c.mirror))
            .await?;
        // The manifest must be the one promised; its own expiry is judged next.
        trust::check_manifest(&manifest, &pointer.current, chain, now, Expired::Allow)?;
        if manifest.expires_at < now {
            let e = FormatError::expired(
                &format!(
                    "snapshot {} of chain {chain} (from {})",
                    pointer.current.version, c.location
                ),
                manifest.expires_at,
            );
            if expired == Expired::Refuse {
                mirrors.set_pointer_status(c.mirror, "expired".into());
                if more {
                    tracing::warn!("skipping the newest candidate: {e}");
                }
                last = Some(e.into());
                continue;
            }
            tracing::warn!("{e}; continuing because of --allow-expired");
        }
        mirrors.set_pointer_status(c.mirror, "chosen".into());
        for other in &candidates[n + 1..] {
            let (theirs, ours) = (&other.pointer.current, &c.pointer.current);
            if rank(theirs) < rank(ours) {
                tracing::warn!(
                    "{} offers snapshot {} of {chain} created {}, older than snapshot {} created {} from {}: that mirror is stale",
                    other.location, theirs.version, theirs.created_at, ours.version, ours.created_at, c.location
                );
                mirrors.set_pointer_status(other.mirror, "older".into());
            } else if theirs.manifest_blake3 != ours.manifest_blake3 {
                tracing::warn!(
                    "{} and {} offer different snapshots of {chain} under one version and creation time: two publishers are signing different data under one name",
                    other.location, c.location
                );
                mirrors.set_pointer_status(other.mirror, "conflicting".into());
            } else {
                mirrors.set_pointer_status(other.mirror, "same".into());
            }
        }
        tracing::info!(
            "restoring snapshot {} of {chain} (created {}) named by {}",
            pointer.current.version,
            pointer.current.created_at,
            c.location
        );
        return Ok(Chosen {
            pointer,
            manifest,
            from: c.location.clone(),
            pointer_bytes: (version.is_none_or(|v| v == c.pointer.current.version)).then(|| c.bytes.clone()),
            manifest_bytes,
            signed_by,
        });
    }
    Err(last.expect("at least one candidate"))
}

/// `pointer`, with `current` replaced by `version` from its history when
/// one is asked for (a deliberate rollback).
fn pick_version(pointer: &Pointer, version: Option<u64>) -> Result<Pointer, RestoreError> {
    let mut p = pointer.clone();
    let Some(v) = version.filter(|v| *v != p.current.version) else {
        return Ok(p);
    };
    let Some(older) = p.history.iter().find(|s| s.version == v).cloned() else {
        let kept: Vec<String> = std::iter::once(&p.current)
            .chain(&p.history)
            .map(|s| s.version.to_string())
            .collect();
        return Err(FormatError::Invalid(format!(
            "version {v} of chain {} is not kept by the pointer (kept: {}); choose one of those, or restore the latest without --snapshot-version",
            p.chain,
            kept.join(", ")
        ))
        .into());
    };
    tracing::warn!(
        "restoring version {v} of {}, not the latest {}, as asked (--snapshot-version)",
        p.chain,
        p.current.version
    );
    p.current = older;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use qsync_core::manifest::{ChainMeta, MANIFEST_FORMAT};
    use qsync_core::pointer::SnapshotRef;
    use qsync_core::sign::{keygen, SigningKey, VerifyingKey};
    use qsync_core::ObjectKey;
    use qsync_store::testing::MemoryStore;
    use qsync_store::{ObjectSink, ObjectSource, PutOptions};

    fn chain() -> ChainName {
        ChainName::new("eth").unwrap()
    }

    async fn put_signed(store: &MemoryStore, sk: &SigningKey, key: &ObjectKey, body: Vec<u8>) {
        let sig_key = key.signature_for(&body);
        let sig = sk.sign(key, &body);
        store
            .put(&sig_key, sig.into(), PutOptions::for_key(&sig_key))
            .await
            .unwrap();
        store
            .put(key, body.into(), PutOptions::for_key(key))
            .await
            .unwrap();
    }

    /// Publishes `version` of `eth` into `store`, created at `created`, its
    /// pointer valid until `expires` (Unix seconds); returns its reference.
    async fn publish(
        store: &MemoryStore,
        sk: &SigningKey,
        version: u64,
        created: u64,
        expires: u64,
    ) -> SnapshotRef {
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            chain: ChainMeta {
                name: chain(),
                height: Some(version * 100),
                block_hash: None,
            },
            version,
            created_at: Timestamp(created),
            expires_at: Timestamp(created + 1_000_000),
            chunker: Default::default(),
            directories: Vec::new(),
            files: Vec::new(),
            pack: Vec::new(),
            pack_index: Default::default(),
        };
        let (stored, compressed) = m.encode();
        let key = ObjectKey::manifest(&chain(), version, &qsync_core::Digest::of(&stored), compressed);
        put_signed(store, sk, &key, stored.clone()).await;
        let snap = SnapshotRef::new(&m, key, &stored);
        let p = Pointer::next(
            None,
            chain(),
            snap.clone(),
            Timestamp(created),
            Timestamp(expires),
        );
        put_signed(store, sk, &ObjectKey::pointer(&chain()), p.encode()).await;
        snap
    }

    struct World {
        _dir: tempfile::TempDir,
        sk: SigningKey,
        vk: VerifyingKey,
        keys: TrustedKeys,
        trust: TrustStore,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let vk = keygen(&dir.path().join("k.sec"), &dir.path().join("k.pub")).unwrap();
        let sk = SigningKey::load(&dir.path().join("k.sec")).unwrap();
        let trust = TrustStore::new(dir.path().join("trust"));
        World {
            _dir: dir,
            sk,
            keys: vk.clone().into(),
            vk,
            trust,
        }
    }

    fn mirrors(stores: &[&Arc<MemoryStore>]) -> Mirrors {
        Mirrors::new(
            stores
                .iter()
                .map(|s| (*s).clone() as Arc<dyn ObjectSource>)
                .collect(),
        )
    }

    async fn chosen(w: &World, m: &Mirrors, now: u64) -> Result<Chosen, RestoreError> {
        choose(
            m,
            &w.keys,
            &chain(),
            &w.trust,
            Expired::Refuse,
            None,
            Timestamp(now),
        )
        .await
    }

    #[tokio::test]
    async fn a_stale_store_with_a_higher_counter_never_wins() {
        let w = world();
        let (stale, fresh) = (
            Arc::new(MemoryStore::new("stale")),
            Arc::new(MemoryStore::new("fresh")),
        );
        publish(&stale, &w.sk, 7, 1_000, 90_000).await;
        publish(&fresh, &w.sk, 2, 3_000, 90_000).await;
        for order in [[&stale, &fresh], [&fresh, &stale]] {
            let c = chosen(&w, &mirrors(&order), 5_000).await.unwrap();
            assert_eq!((c.pointer.current.version, c.from.as_str()), (2, "mem://fresh"));
        }
    }

    #[tokio::test]
    async fn an_expired_newer_candidate_is_skipped_for_a_fresh_one() {
        let w = world();
        let (expiring, fresh) = (
            Arc::new(MemoryStore::new("expiring")),
            Arc::new(MemoryStore::new("fresh")),
        );
        publish(&expiring, &w.sk, 2, 2_000, 5_000).await;
        publish(&fresh, &w.sk, 1, 1_000, 90_000).await;
        let m = mirrors(&[&expiring, &fresh]);
        // Before the newer pointer expires it wins; after, the fresh one
        // does, decided by the clock passed in (no test sleeps).
        assert_eq!(chosen(&w, &m, 4_000).await.unwrap().pointer.current.version, 2);
        let c = chosen(&w, &m, 6_000).await.unwrap();
        assert_eq!((c.pointer.current.version, c.from.as_str()), (1, "mem://fresh"));
        // Alone, the expired one fails the restore, naming the expiry.
        let e = chosen(&w, &mirrors(&[&expiring]), 6_000).await.err().unwrap();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[tokio::test]
    async fn an_older_snapshot_than_this_host_restored_is_a_rollback() {
        let w = world();
        let (old, new) = (
            Arc::new(MemoryStore::new("old")),
            Arc::new(MemoryStore::new("new")),
        );
        publish(&old, &w.sk, 1, 1_000, 90_000).await;
        let restored = publish(&new, &w.sk, 2, 3_000, 90_000).await;
        w.trust
            .advance(&chain(), &restored, &w.vk.id().to_string())
            .unwrap();
        let e = chosen(&w, &mirrors(&[&old]), 5_000).await.err().unwrap();
        assert!(
            e.to_string().contains("rollback") || e.to_string().contains("older"),
            "{e}"
        );
        assert_eq!(
            chosen(&w, &mirrors(&[&old, &new]), 5_000)
                .await
                .unwrap()
                .pointer
                .current
                .version,
            2
        );
    }
}
