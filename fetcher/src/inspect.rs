//! Read-only inspection of a store: `qsync verify` and `qsync ls`.
//!
//! Verification follows exactly the path a restore would (signed pointer,
//! signed and digest-checked manifest, every chunk decoded and hashed) but
//! writes nothing and collects every bad object instead of stopping at the
//! first, so the publisher can repair the store in one pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use qsync_core::manifest::ChunkRef;
use qsync_core::pointer::{self, Catalog, Pointer};
use qsync_core::sign::TrustedKeys;
use qsync_core::time::Timestamp;
use qsync_core::{ChainName, ObjectKey};
use qsync_store::signed::get_signed;
use serde::Serialize;

use crate::mirrors::ChunkSink;
use crate::write::Held;
use crate::{Mirrors, RestoreError};

/// Result of `qsync verify`.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// Chain checked.
    pub chain: String,
    /// Snapshot version checked.
    pub version: u64,
    /// Distinct chunk objects checked.
    pub chunks_checked: u64,
    /// Plaintext bytes checked.
    pub bytes_checked: u64,
    /// Problems found: `key: reason`.
    pub bad: Vec<String>,
}

/// Checks every object the latest snapshot of `chain` reaches in `mirrors`'
/// primary store. `Err` only when the pointer or manifest cannot be used at
/// all; bad chunks are listed in the report.
pub async fn verify_store(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    chain: &ChainName,
    concurrency: usize,
) -> Result<VerifyReport, RestoreError> {
    let pointer = mirrors.pointer(chain, keys).await?;
    let mut bad = Vec::new();
    let now = Timestamp::now();
    if pointer.expires_at < now {
        bad.push(format!(
            "{}: expired at {}",
            ObjectKey::pointer(chain),
            pointer.expires_at
        ));
    }
    let (manifest, _) = mirrors.manifest(&pointer.current, keys).await?;
    if manifest.expires_at < now {
        bad.push(format!(
            "{}: expired at {}",
            pointer.current.manifest_key, manifest.expires_at
        ));
    }
    let unique: BTreeMap<_, _> = manifest.all_chunks().map(|c| (c.blake3, c.size)).collect();
    let chunks_checked = unique.len() as u64;
    let bytes_checked = unique.values().sum();
    // A compressed chunk is expanded whole, so chunks in flight share the
    // restore's budget: `--concurrency 64` of 16 MiB chunks would be 1 GiB.
    // A raw one streams through in one MiB, as in a restore.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        crate::restore::IN_FLIGHT_MIB as usize,
    ));
    let budget = &budget;
    let results: Vec<Option<String>> = futures::stream::iter(unique)
        .map(|(blake3, size)| async move {
            let whole = size.div_ceil(1 << 20).clamp(1, crate::restore::IN_FLIGHT_MIB) as u32;
            let streaming = budget.clone().acquire_many_owned(1).await.expect("never closed");
            let mut checked = Checked(Held::new(budget.clone(), streaming, whole));
            match mirrors.chunk(&ChunkRef { blake3, size }, &mut checked).await {
                Ok(_) => None,
                Err(e) => Some(format!("{}: {e}", ObjectKey::chunk(&blake3))),
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bad.extend(results.into_iter().flatten());
    Ok(VerifyReport {
        chain: chain.to_string(),
        version: pointer.current.version,
        chunks_checked,
        bytes_checked,
        bad,
    })
}

/// The verified pointers of `chain`, or of every chain in the store's catalog.
pub async fn list(
    mirrors: &Mirrors,
    keys: &TrustedKeys,
    chain: Option<&ChainName>,
) -> Result<Vec<Pointer>, RestoreError> {
    let chains = match chain {
        Some(c) => vec![c.clone()],
        None => {
            let store = mirrors.primary();
            match get_signed(store, &ObjectKey::catalog(), keys, pointer::MAX_BYTES).await? {
                Some(bytes) => Catalog::decode(&bytes)?.chains,
                None => {
                    return Err(RestoreError::NoSnapshot {
                        chain: "(any)".into(),
                        locations: store.location(),
                    })
                }
            }
        }
    };
    let mut out = Vec::new();
    for c in &chains {
        out.push(mirrors.pointer(c, keys).await?);
    }
    Ok(out)
}

/// Where `verify` streams a chunk: nowhere, but a compressed chunk, which
/// its decoder expands whole, holds its size of the memory budget, and so
/// does a hedge's copy.
struct Checked(Held);

#[async_trait::async_trait]
impl ChunkSink for Checked {
    async fn write(&mut self, _: u64, _: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }

    async fn expanding(&mut self) -> Result<(), RestoreError> {
        self.0.expand().await;
        Ok(())
    }

    fn hedge_room(&self) -> Option<(Arc<tokio::sync::Semaphore>, u32)> {
        Some(self.0.hedge_room())
    }
}
