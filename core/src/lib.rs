//! qsync's store format (v1; v2 packs small files): what every reader and writer agrees on.
//!
//! Object keys, content-defined chunking and chunk encoding, the manifest and
//! the per-chain pointer, minisign signatures, and the trust state a fetcher
//! keeps between runs. This crate is synchronous and does no network I/O;
//! transports live in `qsync-cdn`, pipelines in `qsync-snapshotter` and
//! `qsync-fetcher`. docs/format.md is the normative description of what these
//! types read and write.

pub mod capped;
pub mod chunk;
pub mod digest;
pub mod error;
pub mod filehash;
pub mod keys;
pub mod lease;
pub mod manifest;
pub mod pieces;
pub mod pointer;
pub mod progress;
pub mod records;
pub mod sign;
pub mod span;
pub mod time;
pub mod trust;

pub use digest::Digest;
pub use error::FormatError;
pub use keys::{ChainName, ObjectKey};
