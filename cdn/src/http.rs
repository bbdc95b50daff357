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

use crate::cloudfront::UrlSigner;
use crate::store::{ObjectMeta, ObjectSource, StoreError};

/// The client settings every backend that speaks HTTP shares.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("qsync/", env!("CARGO_PKG_VERSION")))
}

/// Why [`read_body`] stopped.
pub(crate) enum BodyError {
    /// The body is longer than the limit; the rest was not read.
    TooLarge,
    /// The connection failed.
    Transport(reqwest::Error),
}

/// `resp`'s body, abandoned unread once it would exceed `limit` bytes.
pub(crate) async fn read_body(mut resp: reqwest::Response, limit: u64) -> Result<Bytes, BodyError> {
    let declared = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(frame) = resp.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() + frame.len()) as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&frame);
    }
    Ok(body.freeze())
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

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.get_limited(key, u64::MAX).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        let too_large = || StoreError::TooLarge {
            location: self.location(),
            key: key.to_string(),
            limit,
        };
        let resp = self
            .client
            .get(self.url(key))
            .send()
            .await
            .map_err(|e| self.transport(key, e))?;
        if !resp.status().is_success() {
            return Err(self.status(key, resp.status()));
        }
        read_body(resp, limit).await.map_err(|e| match e {
            BodyError::TooLarge => too_large(),
            BodyError::Transport(e) => self.transport(key, e),
        })
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
