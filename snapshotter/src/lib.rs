//! The publishing side: turn a chain data directory into a signed snapshot,
//! once or on a schedule.
//!
//! [`options`] says what a run is asked to do; [`scan`] lists what will be
//! published; [`read`] cuts and hashes a file; [`publish`] chunks, hashes and
//! compresses it, uploads only chunks the stores lack, then writes the
//! manifest, its signature and, last, the chain pointer. The agent side
//! builds on it: [`config`] (the TOML file), [`freeze`] (hooks and hard-link
//! staging), [`chainmeta`] (the head block), [`lease`] (one publisher per
//! store and chain), [`gc`] (retention and garbage collection), [`cycle`]
//! (one scheduled run) and [`agent`] (the schedule, re-signing, health and
//! metrics).

pub mod agent;
pub mod chainmeta;
pub mod commit;
pub mod config;
mod cosign;
pub mod cycle;
pub mod error;
pub mod freeze;
pub mod gc;
pub mod lease;
pub mod options;
pub mod publish;
pub mod read;
pub mod scan;
pub mod upload;

pub use commit::resign;
pub use error::SnapshotError;
pub use options::{SnapshotOptions, SnapshotSummary};
pub use publish::{publish, publish_many, KnownFiles, PublishRun, Published};
