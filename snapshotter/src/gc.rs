//! Retention and garbage collection.
//!
//! [`select`] decides which snapshots of a chain the pointer keeps (last N,
//! newest per day and per week); the pointer is the only record of what is
//! kept, so [`collect`] deletes manifests the pointer no longer names, and
//! chunks that no kept manifest of any chain in the store references. It
//! never deletes on incomplete knowledge: a pointer or manifest that cannot
//! be read and verified stops the collection.
//!
//! The grace period runs from the moment a manifest left the pointer, not
//! from its upload: a fetcher that read the previous pointer just before a
//! cycle must still find every chunk. `gc/retired.json` records when a
//! collection first saw each manifest unkept (missing or unreadable, every
//! unkept manifest counts as retired just now, which only delays deletion);
//! while younger than the grace period such a manifest counts as kept, and
//! its chunks with it. Chunks no manifest references (a failed publish's
//! uploads) stay for the grace period after their upload. A collection runs
//! only while no publish holds a lease on the store (see [`crate::lease`]
//! for why that ordering is safe).
//!
//! Signatures follow what they sign, whichever key made them (the primary
//! one and the additional ones of a key rotation alike): a manifest's go
//! with the manifest; a pointer's or the catalog's are kept while they sign
//! the current version, and deleted past the grace period once superseded.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use qsync_core::manifest::Manifest;
use qsync_core::pointer::{self, Catalog, Pointer, SnapshotRef};
use qsync_core::sign::TrustedKeys;
use qsync_core::time::Timestamp;
use qsync_core::{ChainName, Digest, FormatError, ObjectKey};
use qsync_store::signed::{get_manifest, get_signed, SignedReadError};
use qsync_store::{Listed, ObjectSink, PutOptions};
use serde::{Deserialize, Serialize};

use crate::config::Retention;
use crate::lease::{self, Lease, LeaseError};
use crate::SnapshotError;

/// The snapshots to keep from `snaps` (newest first): the newest
/// `keep_last`, plus the newest of each of the last `keep_daily` UTC days
/// and `keep_weekly` weeks (Monday to Sunday) that have snapshots.
pub fn select(snaps: &[SnapshotRef], policy: &Retention) -> Vec<SnapshotRef> {
    let day = |s: &SnapshotRef| s.created_at.0 / 86_400;
    // 1970-01-01 was a Thursday: shift so weeks start on Monday.
    let week = |s: &SnapshotRef| (s.created_at.0 / 86_400 + 3) / 7;
    let mut keep = vec![false; snaps.len()];
    for k in keep.iter_mut().take(policy.keep_last.max(1)) {
        *k = true;
    }
    for (period, n) in [
        (&day as &dyn Fn(&SnapshotRef) -> u64, policy.keep_daily),
        (&week, policy.keep_weekly),
    ] {
        let mut seen = HashSet::new();
        for (i, s) in snaps.iter().enumerate() {
            if seen.len() >= n {
                break;
            }
            if seen.insert(period(s)) {
                keep[i] = true;
            }
        }
    }
    snaps
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(s, _)| s.clone())
        .collect()
}

/// What a collection did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Nothing was deleted; this is what would go.
    pub dry_run: bool,
    /// Why nothing was collected this time, when that is so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    /// Chains whose pointers were read.
    pub chains: Vec<String>,
    /// Snapshots (manifests) kept across those chains.
    pub manifests_kept: u64,
    /// Manifest objects deleted.
    pub manifests_deleted: Vec<String>,
    /// Manifests no pointer names any more, kept (with their chunks)
    /// because they left the pointer less than the grace period ago.
    pub manifests_in_grace: u64,
    /// Chunks referenced by a kept manifest or one still in its grace period.
    pub chunks_referenced: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
    /// Stored bytes of the chunks deleted.
    pub bytes_deleted: u64,
    /// Unreferenced chunks left because they are younger than the grace period.
    pub chunks_in_grace: u64,
    /// Superseded pointer and catalog signatures deleted.
    pub signatures_deleted: u64,
}

/// Whether a collection deletes what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// Delete garbage past its grace period.
    Delete,
    /// Only report what would be deleted (`qsync gc --dry-run`).
    DryRun,
}

/// Collects garbage in `sink`. `own` is the chain whose lease the caller
/// already holds (the agent right after its publish), if any.
pub async fn collect(
    sink: Arc<dyn ObjectSink>,
    keys: &TrustedKeys,
    own: Option<&ChainName>,
    grace: Duration,
    mode: GcMode,
) -> Result<GcReport, SnapshotError> {
    let mut report = GcReport {
        dry_run: mode == GcMode::DryRun,
        ..GcReport::default()
    };
    let gc_key = ObjectKey::gc_lock();
    let lease = match Lease::acquire(sink.clone(), gc_key.clone(), "gc").await {
        Ok(l) => l,
        Err(LeaseError::Held { holder, .. }) => {
            report.deferred = Some(format!("another collection is running ({holder})"));
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    let result = collect_leased(&sink, keys, own, grace, &gc_key, &mut report).await;
    lease.release().await;
    result.map(|()| report)
}

async fn collect_leased(
    sink: &Arc<dyn ObjectSink>,
    keys: &TrustedKeys,
    own: Option<&ChainName>,
    grace: Duration,
    gc_key: &ObjectKey,
    report: &mut GcReport,
) -> Result<(), SnapshotError> {
    // Our lease is written; a publisher that starts after this sees it and
    // waits. One that started before holds a lease we see here.
    let own_key = own.map(ObjectKey::publish_lock);
    for l in sink.list(&ObjectKey::new("locks")?).await? {
        if &l.key == gc_key || Some(&l.key) == own_key.as_ref() {
            continue;
        }
        if let Some(b) = lease::live(sink.as_ref(), &l.key).await? {
            report.deferred = Some(format!("{} is held by {} ({})", l.key, b.holder, b.purpose));
            return Ok(());
        }
    }
    let old = |l: &Listed| {
        l.modified
            .is_none_or(|m| SystemTime::now().duration_since(m).unwrap_or_default() >= grace)
    };

    // Every chain with a pointer, listed or catalogued: a chain whose catalog
    // update failed still owns its chunks.
    let mut chains: Vec<ChainName> = Vec::new();
    let catalog_key = ObjectKey::catalog();
    let catalog = get_signed(sink.as_ref(), &catalog_key, keys, pointer::MAX_BYTES).await?;
    if let Some(b) = &catalog {
        chains.extend(Catalog::decode(b)?.chains);
    }
    let listed = sink.list(&ObjectKey::new("chains")?).await?;
    for l in &listed {
        let parts: Vec<&str> = l.key.as_str().split('/').collect();
        if let ["chains", name, "latest.json"] = parts[..] {
            let name = ChainName::new(name.to_string())?;
            if !chains.contains(&name) {
                chains.push(name);
            }
        }
    }

    let mut referenced: HashSet<Digest> = HashSet::new();
    let mut kept_manifests: HashSet<String> = HashSet::new();
    // The versions of pointers and the catalog that are current: every
    // signature of one of them (by any key) stays.
    let mut current: HashSet<(ObjectKey, Digest)> = HashSet::new();
    if let Some(b) = &catalog {
        current.insert((catalog_key.clone(), Digest::of(b)));
    }
    for chain in &chains {
        let key = ObjectKey::pointer(chain);
        let Some(bytes) = get_signed(sink.as_ref(), &key, keys, pointer::MAX_BYTES).await? else {
            continue;
        };
        current.insert((key.clone(), Digest::of(&bytes)));
        let p = Pointer::decode(&bytes, key.as_str())?;
        report.chains.push(chain.to_string());
        for snap in std::iter::once(&p.current).chain(&p.history) {
            let m = manifest(sink.as_ref(), snap, keys).await?;
            referenced.extend(m.all_chunks().map(|c| c.blake3));
            kept_manifests.insert(snap.manifest_key.to_string());
            report.manifests_kept += 1;
        }
    }

    // Manifests no pointer names: retired, and kept while they left the
    // pointer less than `grace` ago (or were uploaded less than that ago).
    let now = Timestamp::now();
    let before = load_retired(sink.as_ref()).await;
    let mut retired = Retired::default();
    let mut doomed: Vec<ObjectKey> = Vec::new();
    let mut doomed_manifests: HashSet<&str> = HashSet::new();
    // A retired manifest in grace that cannot be read: which chunks it
    // needs is unknown, so no chunk goes this time.
    let mut unknown_references = None;
    let manifests: Vec<&Listed> = listed
        .iter()
        .filter(|l| l.key.as_str().contains("/manifests/") && !l.key.as_str().ends_with(".minisig"))
        .collect();
    for l in &manifests {
        let k = l.key.as_str();
        if kept_manifests.contains(k) {
            continue;
        }
        let since = before.manifests.get(k).copied().unwrap_or(now);
        retired.manifests.insert(k.to_string(), since);
        if now.0.saturating_sub(since.0) >= grace.as_secs() && old(l) {
            report.manifests_deleted.push(k.to_string());
            doomed_manifests.insert(k);
            doomed.push(l.key.clone());
            retired.manifests.remove(k);
            continue;
        }
        report.manifests_in_grace += 1;
        match retired_manifest(sink.as_ref(), l, keys).await {
            Ok(m) => referenced.extend(m.all_chunks().map(|c| c.blake3)),
            Err(e) => {
                tracing::warn!("{k} in {}, retired less than the grace period ago, cannot be read ({e}); no chunk is deleted until it can be or its grace period is over", sink.location());
                unknown_references = Some(k.to_string());
            }
        }
    }
    let listed_manifests: HashSet<&str> = manifests.iter().map(|l| l.key.as_str()).collect();
    // Whether `l`, in a pointer's or the catalog's `.sigs/`, signs a current version.
    let signs_current = |l: &Listed| {
        l.key
            .signature_of()
            .and_then(|of| Some((of.object, of.version?)))
            .is_some_and(|v| current.contains(&v))
    };
    for l in &listed {
        let k = l.key.as_str();
        if k.contains("/manifests/") && k.ends_with(".minisig") {
            // A manifest's signatures (primary and additional) go with it,
            // or alone when it is gone; so does anything else named like one.
            let of = l.key.signature_of();
            let manifest_key = of.as_ref().map_or_else(
                || k.strip_suffix(".minisig").unwrap_or(k),
                |of| of.object.as_str(),
            );
            if doomed_manifests.contains(manifest_key)
                || (!listed_manifests.contains(manifest_key)
                    && !kept_manifests.contains(manifest_key)
                    && old(l))
            {
                doomed.push(l.key.clone());
            }
        } else if k.contains("/latest.json.sigs/") && old(l) && !signs_current(l) {
            report.signatures_deleted += 1;
            doomed.push(l.key.clone());
        }
    }
    for l in sink.list(&ObjectKey::new("catalog.json.sigs")?).await? {
        if old(&l) && !signs_current(&l) {
            report.signatures_deleted += 1;
            doomed.push(l.key);
        }
    }
    for l in sink.list(&ObjectKey::new("chunks")?).await? {
        let name = l.key.as_str().rsplit('/').next().unwrap_or_default();
        let Ok(d) = name.parse::<Digest>() else {
            continue;
        };
        if referenced.contains(&d) {
            continue;
        }
        if old(&l) && unknown_references.is_none() {
            report.chunks_deleted += 1;
            report.bytes_deleted += l.size;
            doomed.push(l.key);
        } else {
            report.chunks_in_grace += 1;
        }
    }
    report.chunks_referenced = referenced.len() as u64;
    if report.dry_run {
        return Ok(());
    }
    // Recorded before deleting: if this write fails, the next collection
    // counts these manifests as retired from then on, which only delays.
    if retired != before {
        let key = ObjectKey::gc_retired();
        let body = bytes::Bytes::from(serde_json::to_vec_pretty(&retired).expect("serialisable"));
        if let Err(e) = sink.put(&key, body, PutOptions::for_key(&key)).await {
            tracing::warn!("recording retired manifests in {key}: {e}; their grace period restarts at the next collection");
        }
    }
    use futures::StreamExt;
    let mut deletes = futures::stream::iter(doomed)
        .map(|k| {
            let sink = sink.clone();
            async move { sink.delete(&k).await }
        })
        .buffer_unordered(16);
    while let Some(r) = deletes.next().await {
        r?;
    }
    Ok(())
}

/// `gc/retired.json`: when a collection first saw each manifest (by key)
/// that no pointer names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Retired {
    manifests: BTreeMap<String, Timestamp>,
}

/// Largest `gc/retired.json` read (about 100 bytes per retired manifest).
const MAX_RETIRED_BYTES: u64 = 16 << 20;

/// The store's record of retired manifests; empty when it is missing or
/// unreadable (then every unkept manifest counts as retired now).
async fn load_retired(sink: &dyn ObjectSink) -> Retired {
    let key = ObjectKey::gc_retired();
    match sink.get_limited(&key, MAX_RETIRED_BYTES).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(
                "{key} in {} is unreadable ({e}); every unkept manifest counts as retired now",
                sink.location()
            );
            Retired::default()
        }),
        Err(e) if e.is_not_found() => Retired::default(),
        Err(e) => {
            tracing::warn!(
                "reading {key} in {}: {e}; every unkept manifest counts as retired now",
                sink.location()
            );
            Retired::default()
        }
    }
}

/// A manifest no pointer names any more, read to learn which chunks it
/// needs: its signature verified (no pointer gives its digest now), then
/// decoded.
async fn retired_manifest(
    sink: &dyn ObjectSink,
    l: &Listed,
    keys: &TrustedKeys,
) -> Result<Manifest, SnapshotError> {
    let what = format!("{} in {}", l.key, sink.location());
    let bytes = get_signed(sink, &l.key, keys, l.size)
        .await?
        .ok_or_else(|| FormatError::Invalid(format!("{what} vanished while being collected")))?;
    let m = tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &what))
        .await
        .expect("decode does not panic")?;
    Ok(m)
}

/// The verified manifest `snap` names. A manifest the pointer names but
/// the store lacks stops the collection: something else is wrong.
async fn manifest(
    sink: &dyn ObjectSink,
    snap: &SnapshotRef,
    keys: &TrustedKeys,
) -> Result<Manifest, SnapshotError> {
    match get_manifest(sink, snap, keys).await {
        Err(SignedReadError::Store(e)) if e.is_not_found() => Err(FormatError::Invalid(format!(
            "{} in {} is named by the pointer but missing; garbage collection stopped without deleting anything. Run `qsync verify` on this store",
            snap.manifest_key,
            sink.location()
        ))
        .into()),
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsync_core::time::Timestamp;

    fn snap(version: u64, created: u64) -> SnapshotRef {
        SnapshotRef {
            version,
            manifest_key: ObjectKey::new(format!("m/{version}")).unwrap(),
            manifest_blake3: Digest::of(b""),
            manifest_size: 0,
            created_at: Timestamp(created),
            height: None,
            files: 0,
            bytes: 0,
        }
    }

    #[test]
    fn keeps_last_daily_and_weekly() {
        const H: u64 = 3600;
        // Every 6 hours for 20 days, newest first; day 0 is a Thursday.
        let snaps: Vec<_> = (0..80u64).rev().map(|i| snap(i + 1, i * 6 * H)).collect();
        let versions = |p: &Retention| -> Vec<u64> { select(&snaps, p).iter().map(|s| s.version).collect() };
        let mut p = Retention::default();
        assert_eq!(versions(&p), [80, 79, 78]);
        p.keep_daily = 3;
        // The newest of today (80) plus the newest of the two days before.
        assert_eq!(versions(&p), [80, 79, 78, 76, 72]);
        p.keep_daily = 0;
        p.keep_weekly = 2;
        // Day 19 is a Monday..: weeks start on days 18 (Mon) and 11.
        let w = versions(&p);
        assert_eq!(w[..3], [80, 79, 78]);
        assert_eq!(
            w[3], 72,
            "newest of the week before (days 11-17) is day 17's last"
        );
        assert_eq!(w.len(), 4);
    }
}
