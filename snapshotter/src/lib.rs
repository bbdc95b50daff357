//! The publishing side: turn a chain data directory into a signed snapshot.
//!
//! [`scan`] lists what will be published; [`publish`] chunks, hashes and
//! compresses it, uploads only chunks the store lacks, then writes the
//! manifest, its signature and, last, the chain pointer. Freezing the node
//! (hooks, hard links, checkpoints) and scheduling are not here yet.

pub mod error;
pub mod publish;
pub mod scan;

pub use error::SnapshotError;
pub use publish::{publish, SnapshotOptions, SnapshotSummary};
