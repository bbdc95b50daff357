//! Store URLs: the one place that maps a URL to a backend.
//!
//! - a path or `file://PATH`: [`LocalStore`], read and write;
//! - `http://` or `https://`: [`HttpStore`], read-only;
//! - `s3://BUCKET/PREFIX`: [`S3Store`], read and write;
//! - `ipfs+http://HOST:PORT[/MFS/DIR]`: [`IpfsStore`] in a node's MFS, read and write;
//! - `ipfs://CID`: a published IPFS directory, read through a gateway or the RPC API.

use std::sync::Arc;

use crate::cloudfront::UrlSigner;
use crate::http::HttpStore;
use crate::ipfs::{self, IpfsStore};
use crate::local::LocalStore;
use crate::s3::{S3Options, S3Store};
use crate::store::{ObjectSink, ObjectSource, StoreError};

const SUPPORTED: &str =
    "use a directory path, file://PATH, s3://BUCKET/PREFIX, ipfs+http://HOST:PORT, ipfs://CID or http(s)://HOST/PREFIX";

fn bad(url: &str, reason: String) -> StoreError {
    StoreError::BadUrl {
        url: url.into(),
        reason,
    }
}

fn scheme(url: &str) -> Option<&str> {
    let (s, _) = url.split_once("://")?;
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        .then_some(s)
}

fn local(url: &str) -> Result<Option<LocalStore>, StoreError> {
    match scheme(url) {
        None if url.is_empty() => Err(bad(url, format!("empty; {SUPPORTED}"))),
        None => Ok(Some(LocalStore::new(url))),
        Some("file") => Ok(Some(LocalStore::new(&url["file://".len()..]))),
        Some("http" | "https" | "s3" | "ipfs" | "ipfs+http" | "ipfs+https") => Ok(None),
        Some(other) => Err(bad(
            url,
            format!("scheme {other}:// is not supported by this build; {SUPPORTED}"),
        )),
    }
}

/// The directory of a local store URL, `None` for remote stores.
pub fn local_dir(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    Ok(local(url)?.map(|l| l.root().to_path_buf()))
}

/// How to reach remote stores.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Bearer token for HTTP stores (private `qsync serve` mirrors).
    pub http_token: Option<String>,
    /// Signs requests to https:// stores (a private CloudFront distribution).
    pub cloudfront: Option<Arc<UrlSigner>>,
    /// S3 endpoint, addressing and request options.
    pub s3: S3Options,
    /// Gateway for `ipfs://CID` stores [default: `http://127.0.0.1:8080`].
    pub ipfs_gateway: Option<String>,
    /// RPC API for `ipfs://CID` stores; when set, reads use `cat` instead of the gateway.
    pub ipfs_api: Option<String>,
}

/// Opens a store for reading.
pub fn open_source(url: &str) -> Result<Arc<dyn ObjectSource>, StoreError> {
    open_source_with(url, &StoreOptions::default())
}

/// Opens a store for reading with `opts`.
pub fn open_source_with(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectSource>, StoreError> {
    Ok(match local(url)? {
        Some(l) => Arc::new(l),
        None if url.starts_with("s3://") => Arc::new(S3Store::new(url, opts.s3.clone())?),
        None if url.starts_with("ipfs+") => Arc::new(IpfsStore::new(url)?),
        None if url.starts_with("ipfs://") => ipfs::open_cid(
            url,
            opts.ipfs_gateway.as_deref().unwrap_or("http://127.0.0.1:8080"),
            opts.ipfs_api.as_deref(),
        )?,
        None => Arc::new(
            HttpStore::with_token(url, opts.http_token.as_deref())?.with_signer(opts.cloudfront.clone()),
        ),
    })
}

/// Opens a store for writing.
pub fn open_sink(url: &str) -> Result<Arc<dyn ObjectSink>, StoreError> {
    open_sink_with(url, &StoreOptions::default())
}

/// Opens a store for writing with `opts`.
pub fn open_sink_with(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectSink>, StoreError> {
    match local(url)? {
        Some(l) => Ok(Arc::new(l)),
        None if url.starts_with("s3://") => Ok(Arc::new(S3Store::new(url, opts.s3.clone())?)),
        None if url.starts_with("ipfs+") => Ok(Arc::new(IpfsStore::new(url)?)),
        None => Err(StoreError::ReadOnly { location: url.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_backends() {
        assert_eq!(open_source("/tmp/x").unwrap().location(), "/tmp/x");
        assert_eq!(open_source("file:///tmp/x").unwrap().location(), "/tmp/x");
        assert_eq!(open_source("http://h:1/p").unwrap().location(), "http://h:1/p/");
        assert_eq!(open_sink("s3://bkt/p/q").unwrap().location(), "s3://bkt/p/q/");
        assert!(matches!(
            open_sink("https://h/p"),
            Err(StoreError::ReadOnly { .. })
        ));
        let err = open_source("gopher://h").err().unwrap().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
