//! Opening stores: the one place that maps a parsed [`StoreUrl`] to its
//! backend ([`LocalStore`], [`HttpStore`], [`S3Store`], [`IpfsStore`], or a
//! published IPFS directory), with the options remote stores need.

use std::sync::Arc;

use crate::http::HttpStore;
use crate::ipfs::{self, IpfsStore};
use crate::local::LocalStore;
use crate::s3::{S3Options, S3Store};
use crate::traits::{EdgeCache, ObjectSink, ObjectSource, StoreError};
use crate::url::StoreUrl;
use crate::url_signer::UrlSigner;

/// The directory of a local store URL, `None` for remote stores.
pub fn local_dir(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    Ok(match StoreUrl::parse(url)? {
        StoreUrl::Local(dir) => Some(dir),
        _ => None,
    })
}

/// How to reach remote stores.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Bearer token for HTTP stores (private `qsync serve` mirrors).
    pub http_token: Option<String>,
    /// Signs requests to https:// stores (a private CloudFront distribution).
    pub url_signer: Option<Arc<UrlSigner>>,
    /// S3 endpoint, addressing and request options.
    pub s3: S3Options,
    /// Gateway for `ipfs://CID` stores [default: [`DEFAULT_IPFS_GATEWAY`]].
    pub ipfs_gateway: Option<String>,
    /// RPC API for `ipfs://CID` stores; when set, reads use `cat` instead of the gateway.
    pub ipfs_api: Option<String>,
    /// The CDN in front of writable S3 and local stores, told which
    /// objects a publish rewrote ([`crate::ObjectSink::edge`]).
    pub edge_cache: Option<Arc<dyn EdgeCache>>,
}

/// The gateway `ipfs://CID` stores are read through unless told otherwise.
pub const DEFAULT_IPFS_GATEWAY: &str = "http://127.0.0.1:8080";

/// Opens a store for reading.
pub fn open_source(url: &str) -> Result<Arc<dyn ObjectSource>, StoreError> {
    open_source_with(url, &StoreOptions::default())
}

/// Opens a store for reading with `opts`.
pub fn open_source_with(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectSource>, StoreError> {
    open_source_at(&StoreUrl::parse(url)?, opts)
}

/// Opens the store at `url` for reading with `opts`.
pub fn open_source_at(url: &StoreUrl, opts: &StoreOptions) -> Result<Arc<dyn ObjectSource>, StoreError> {
    Ok(match url {
        StoreUrl::Local(dir) => Arc::new(LocalStore::new(dir)),
        StoreUrl::S3(at) => Arc::new(S3Store::new(at.clone(), opts.s3.clone())),
        StoreUrl::IpfsMfs { api, dir } => Arc::new(IpfsStore::new(api, dir)?),
        StoreUrl::IpfsCid(cid) => ipfs::open_cid(
            cid,
            opts.ipfs_gateway.as_deref().unwrap_or(DEFAULT_IPFS_GATEWAY),
            opts.ipfs_api.as_deref(),
        )?,
        StoreUrl::Http(base) => Arc::new(
            HttpStore::with_token(base, opts.http_token.as_deref())?.with_signer(opts.url_signer.clone()),
        ),
    })
}

/// Opens a store for writing.
pub fn open_sink(url: &str) -> Result<Arc<dyn ObjectSink>, StoreError> {
    open_sink_with(url, &StoreOptions::default())
}

/// Opens a store for writing with `opts`.
pub fn open_sink_with(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectSink>, StoreError> {
    open_sink_at(&StoreUrl::parse(url)?, opts)
}

/// Opens the store at `url` for writing with `opts`.
pub fn open_sink_at(url: &StoreUrl, opts: &StoreOptions) -> Result<Arc<dyn ObjectSink>, StoreError> {
    match url {
        StoreUrl::Local(dir) => Ok(Arc::new(LocalStore::new(dir).with_edge(opts.edge_cache.clone()))),
        StoreUrl::S3(at) => Ok(Arc::new(
            S3Store::new(at.clone(), opts.s3.clone()).with_edge(opts.edge_cache.clone()),
        )),
        StoreUrl::IpfsMfs { api, dir } => Ok(Arc::new(IpfsStore::new(api, dir)?)),
        StoreUrl::Http(_) | StoreUrl::IpfsCid(_) => Err(StoreError::ReadOnly {
            location: url.to_string(),
        }),
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

    /// Records what it is asked to invalidate.
    #[derive(Debug, Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl EdgeCache for Recorder {
        async fn invalidate(&self, paths: Vec<String>) -> Result<String, StoreError> {
            self.0.lock().unwrap().extend(paths);
            Ok("I1".into())
        }
    }

    #[tokio::test]
    async fn an_edge_cache_is_told_the_paths_it_serves_the_keys_at() {
        let recorder = Arc::new(Recorder::default());
        let opts = StoreOptions {
            edge_cache: Some(recorder.clone()),
            ..Default::default()
        };
        let keys = ["chains/eth/latest.json".to_string()];
        for (url, path) in [
            ("s3://bkt/main/net", "/main/net/chains/eth/latest.json"),
            ("/tmp/x", "/chains/eth/latest.json"),
        ] {
            let sink = open_sink_with(url, &opts).unwrap();
            assert_eq!(sink.edge().unwrap().invalidate(&keys).await.unwrap(), "I1");
            assert_eq!(recorder.0.lock().unwrap().pop().unwrap(), path, "{url}");
        }
        // Readers of an IPFS directory go through gateways, never this cache;
        // without the option no store has one.
        assert!(open_sink_with("ipfs+http://127.0.0.1:5001/qsync", &opts)
            .unwrap()
            .edge()
            .is_none());
        assert!(open_sink("s3://bkt/p").unwrap().edge().is_none());
    }
}
