//! Where qsync objects live and how they move.
//!
//! One small pair of traits ([`ObjectSource`], [`ObjectSink`]) over validated
//! object keys, with a backend per kind of store: a local directory
//! ([`local`]), any static HTTP host ([`http`]), an S3 bucket ([`s3`]),
//! an IPFS node's MFS or a published IPFS directory ([`ipfs`]). Store URLs are parsed in one place ([`open`]). [`serve`] is the read-only HTTP
//! origin that makes a local store reachable by fetchers. Pipelines never
//! branch on the backend: they see only the traits.

pub mod cloudfront;
pub mod http;
pub mod ipfs;
pub mod local;
pub mod open;
pub mod probe;
pub mod prometheus;
pub mod s3;
pub mod serve;
pub mod signed;
pub mod store;

pub use open::{open_sink, open_sink_with, open_source, open_source_with, StoreOptions};
pub use store::{
    Body, CacheClass, Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions, StoreError, Version,
};
