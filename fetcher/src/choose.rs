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
use qsync_core::sign::VerifyingKey;
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
}

/// Picks the newest fresh snapshot of `chain` any mirror offers (or
/// `version` of its history), checks it against the trust state and
/// fetches its manifest.
pub async fn choose(
    mirrors: &Mirrors,
    vk: &VerifyingKey,
    chain: &ChainName,
    trust: &TrustStore,
    expired: Expired,
    version: Option<u64>,
    now: Timestamp,
) -> Result<Chosen, RestoreError> {
    let candidates = mirrors.pointers(chain, vk).await?;
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
        let manifest = mirrors.manifest(&pointer.current, vk).await?;
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
