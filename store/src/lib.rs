//! Where qsync objects live: one small pair of traits ([`ObjectSource`],
//! [`ObjectSink`]) over validated object keys, with a backend per kind of
//! store: a local directory ([`local`]), any static HTTP host ([`http`],
//! with CloudFront signed URLs from [`url_signer`]), an S3 bucket ([`s3`]),
//! an IPFS node's MFS or a published IPFS directory ([`ipfs`]). Store URLs
//! are parsed once into a [`StoreUrl`] ([`url`]) and opened in one place
//! ([`open`]); [`probe`] checks a writable store
//! before it is relied on; [`retry`] is the one retry layer over a store;
//! [`signed`] reads an object with its detached
//! signature. [`prometheus`] writes the text exposition format, for the
//! agent's `/metrics` and restore's metrics file alike. [`testing`] holds
//! an in-memory store and a fault-injecting wrapper for unit tests of the
//! pipelines.
//!
//! This crate has no HTTP server: fetchers depend on it alone. The origin
//! server, the pull-through mirror and CloudFront invalidation are in
//! `qsync-cdn`. Pipelines never branch on the backend: they see only the
//! traits.

pub mod http;
pub mod ipfs;
pub mod local;
pub mod open;
pub mod probe;
pub mod prometheus;
pub mod retry;
pub mod s3;
pub mod signed;
pub mod testing;
pub mod traits;
pub mod url;
pub mod url_signer;

pub use open::{
    open_sink, open_sink_at, open_sink_with, open_source, open_source_at, open_source_with, StoreOptions,
};
pub use traits::{
    Body, CacheClass, Edge, EdgeCache, Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions,
    Roots, StoreError, Version,
};
pub use url::{S3Location, StoreId, StoreUrl};
