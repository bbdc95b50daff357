//! A read-only store behind any static HTTP(S) host: nginx, CloudFront, an S3
//! website endpoint, an IPFS gateway path, or `qsync serve`.
//!
//! Keys are appended to the base URL. 404 and 410 mean "not found"; other
//! error statuses and transport failures are reported with the URL so the
//! operator can reproduce them with curl.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qsync_core::ObjectKey;
use reqwest::{Client, StatusCode};

use crate::traits::{bounded, collect, Body, ObjectMeta, ObjectSource, StoreError};
use crate::url_signer::UrlSigner;

/// The client settings every backend that speaks HTTP shares.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("qsync/", env!("CARGO_PKG_VERSION")))
}

/// `resp`'s body (`key` in the store at `location`) as it arrives, bounded
/// to `limit` bytes (see [`bounded`]).
pub(crate) fn body(
    resp: reqwest::Response,
    limit: u64,
    location: String,
    key: String,
) -> Result<Body, StoreError> {
    let declared = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let pieces = futures::stream::try_unfold(resp, |mut r| async move {
        Ok::<_, reqwest::Error>(r.chunk().await?.map(|piece| (piece, r)))
    });
    bounded(pieces, declared, limit, location, key)
}

/// `resp`'s whole body, abandoned unread once it would exceed `limit` bytes.
pub(crate) async fn read_body(
    resp: reqwest::Response,
    limit: u64,
    location: String,
    key: String,
) -> Result<Bytes, StoreError> {
    let declared = resp.content_length().unwrap_or(0).min(limit);
    collect(body(resp, limit, location, key)?, declared).await
}

/// An HTTP store rooted at a base URL.
pub struct HttpStore {
    base: String,
    client: Client,
    signer: Option<Arc<UrlSigner>>,
}

impl HttpStore {
    /// A store at `base` (a trailing `/` is added if missing).
    pub fn new(base: &str) -> Result<Self, StoreError> {
        Self::with_token(base, None)
    }

    /// A store at `base` whose requests carry `Authorization: Bearer <token>`
    /// (a private `qsync serve --token-file` mirror).
    pub fn with_token(base: &str, token: Option<&str>) -> Result<Self, StoreError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                StoreError::BadUrl {
                    url: base.into(),
                    reason: "the HTTP token has characters a header cannot carry".into(),
                }
            })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let client = client_builder()
            .default_headers(headers)
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::BadUrl {
                url: base.into(),
                reason: e.to_string(),
            })?;
        let base = if base.ends_with('/') {
            base.to_string()
        } else {
            format!("{base}/")
        };
        Ok(HttpStore {
            base,
            client,
            signer: None,
        })
    }

    /// This store with every request URL signed by `signer` (a private
    /// CloudFront distribution).
    pub fn with_signer(self, signer: Option<Arc<UrlSigner>>) -> Self {
        HttpStore { signer, ..self }
    }

    fn url(&self, key: &ObjectKey) -> String {
        let url = format!("{}{}", self.base, key);
        match &self.signer {
            Some(s) => s.sign(&url),
            None => url,
        }
    }

    fn transport(&self, key: &ObjectKey, e: reqwest::Error) -> StoreError {
        StoreError::Transport {
            location: self.location(),
            key: key.to_string(),
            source: Box::new(e),
        }
    }

    fn status(&self, key: &ObjectKey, status: StatusCode) -> StoreError {
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            };
        }
        let hint = match status.as_u16() {
            401 | 403 => "; the server refused access: check the URL, tokens or signed-URL settings",
            416 => "; the range is outside the object: the object is shorter than expected",
            _ => "",
        };
        StoreError::Http {
            location: self.location(),
            key: key.to_string(),
            status: status.as_u16(),
            hint,
        }
    }
}

#[async_trait]
impl ObjectSource for HttpStore {
    fn location(&self) -> String {
        self.base.clone()
    }

    fn id(&self) -> crate::StoreId {
        crate::StoreUrl::Http(self.base.clone()).id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.get_limited(key, u64::MAX).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        let body = self.get_stream(key, limit).await?;
        collect(body, 0).await
    }

    async fn get_stream(&self, key: &ObjectKey, limit: u64) -> Result<Body, StoreError> {
        let resp = self
            .client
            .get(self.url(key))
            .send()
            .await
            .map_err(|e| self.transport(key, e))?;
        if !resp.status().is_success() {
            return Err(self.status(key, resp.status()));
        }
        body(resp, limit, self.location(), key.to_string())
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let resp = self
            .client
            .get(self.url(key))
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .send()
            .await
            .map_err(|e| self.transport(key, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status(key, status));
        }
        let body = resp.bytes().await.map_err(|e| self.transport(key, e))?;
        if status == StatusCode::PARTIAL_CONTENT {
            return Ok(body);
        }
        // A server that ignores Range sends the whole object with 200.
        let end = (range.end as usize).min(body.len());
        Ok(body.slice((range.start as usize).min(end)..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        let resp = self
            .client
            .head(self.url(key))
            .send()
            .await
            .map_err(|e| self.transport(key, e))?;
        match resp.status() {
            // `content_length()` describes the (empty) HEAD body, not the object.
            s if s.is_success() => Ok(Some(ObjectMeta {
                size: resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0),
            })),
            s => match self.status(key, s) {
                StoreError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }
}
