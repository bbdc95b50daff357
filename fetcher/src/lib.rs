//! The restoring side: verify, plan, fetch, write, seal.
//!
//! [`Mirrors`] reads signed pointers and manifests and fetches chunks with
//! failover between `--from` stores; [`restore()`] turns a destination into an
//! exact, verified copy of the latest snapshot; [`dest`] owns the on-disk
//! rules (markers, path confinement, free space); [`inspect`] backs
//! `qsync verify` and `qsync ls`. Signature and freshness rules live in
//! `qsync_core::trust`; transports in `qsync_store`.

pub mod audit;
mod batch;
pub mod choose;
mod complete;
pub mod dest;
pub mod error;
pub mod inspect;
pub mod journal;
pub mod mirrors;
mod pace;
pub mod peer;
mod plan;
pub mod preview;
pub mod restore;
pub mod root;
#[cfg(test)]
mod testing;
mod write;

pub use dest::ForeignDest;
pub use error::RestoreError;
pub use mirrors::{MirrorOptions, MirrorReport, Mirrors};
pub use restore::{restore, RestoreOptions, RestoreSummary};
