//! The CDN side of qsync: [`serve`], the read-only HTTP origin that makes a
//! local store reachable by fetchers (and a pull-through mirror of any
//! other store, and tar streams of a snapshot), and [`cloudfront`]
//! invalidation after a publish. The stores themselves, their traits and
//! backends, are `qsync-store`, which this crate builds on.

pub mod cloudfront;
pub mod serve;
