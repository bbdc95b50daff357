//! A store in an S3 bucket (AWS or any S3-compatible server), read and write.
//!
//! `s3://BUCKET/PREFIX` maps key `K` to object `PREFIX/K`. Credentials and
//! region come from the standard AWS chain (environment, shared profile, web
//! identity / IRSA, container and instance metadata); endpoints from
//! `AWS_ENDPOINT_URL[_S3]` or [`S3Options::endpoint`]. The SDK retries 5xx,
//! throttling and timeouts with backoff and never 4xx. Objects above
//! [`MULTIPART_THRESHOLD`] go up as concurrent multipart uploads, and every
//! object gets a `Cache-Control` for the CDN in front of the bucket.
//! Conditional writes use `If-None-Match: *` / `If-Match: <ETag>`.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, RequestPayer};
use aws_sdk_s3::Client;
use aws_smithy_runtime::client::retries::{RetryPartition, TokenBucket};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use qsync_core::ObjectKey;
use tokio::sync::OnceCell;

use crate::url::S3Location;

use crate::traits::{
    bounded, collect, Body, CacheClass, Expect, Listed, ObjectMeta, ObjectSink, ObjectSource, PutOptions,
    StoreError, Version,
};

/// Objects larger than this are uploaded in parts (the AWS CLI's default).
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Part size of multipart uploads.
const PART_SIZE: usize = 8 << 20;
/// Parts of one object uploaded at once.
const PART_CONCURRENCY: usize = 4;

/// How to reach the bucket, beyond what the AWS environment says.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Endpoint URL for S3-compatible servers; overrides `AWS_ENDPOINT_URL[_S3]`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`), which most
    /// S3-compatible servers need.
    pub path_style: bool,
    /// Send `x-amz-request-payer: requester` (requester-pays buckets).
    pub requester_pays: bool,
    /// `max-age` written on pointers and the catalog.
    pub pointer_max_age: Duration,
    /// Total attempts per request, retries included.
    pub max_attempts: u32,
    /// Longest one attempt may wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            path_style: false,
            requester_pays: false,
            pointer_max_age: Duration::from_secs(60),
            max_attempts: 6,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// An S3 bucket and prefix.
pub struct S3Store {
    at: S3Location,
    opts: S3Options,
    client: OnceCell<Client>,
    edge: Option<std::sync::Arc<dyn crate::EdgeCache>>,
}

impl S3Store {
    /// The store at `at`; the client is built on first use.
    pub fn new(at: S3Location, opts: S3Options) -> Self {
        S3Store {
            at,
            opts,
            client: OnceCell::new(),
            edge: None,
        }
    }

    /// The store with `edge` in front of it: a CDN whose root serves the
    /// bucket's objects by name, prefix included.
    pub fn with_edge(mut self, edge: Option<std::sync::Arc<dyn crate::EdgeCache>>) -> Self {
        self.edge = edge;
        self
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| build_client(&self.opts)).await
    }

    /// The bucket's name for `key`: the prefix, then the key.
    pub fn object(&self, key: &ObjectKey) -> String {
        self.at.object(key)
    }

    fn payer(&self) -> Option<RequestPayer> {
        self.opts.requester_pays.then_some(RequestPayer::Requester)
    }

    fn cache_control(&self, cache: CacheClass) -> String {
        cache.cache_control(self.opts.pointer_max_age)
    }

    /// Maps an SDK failure on `key` to a [`StoreError`] that says what to check.
    fn error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        key: &ObjectKey,
        err: SdkError<E, HttpResponse>,
    ) -> StoreError {
        let location = self.location();
        let object = self.object(key);
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        let refused = |hint: String| StoreError::Refused {
            location: location.clone(),
            key: object.clone(),
            code: match (&code, status) {
                (c, _) if !c.is_empty() => c.clone(),
                (_, Some(s)) => format!("HTTP {s}"),
                _ => "request not sent".into(),
            },
            hint,
        };
        let bucket = &self.at.bucket;
        match (code.as_str(), status) {
            ("NoSuchBucket", _) => refused(format!(
                "bucket {bucket} does not exist at this endpoint; check the bucket name, AWS_REGION and the endpoint"
            )),
            ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => StoreError::NotFound { location, key: object },
            ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412 | 409)) => {
                StoreError::Conflict { location, key: object }
            }
            ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken", _) => refused(
                "the credentials were rejected; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the pod's IAM role, and the endpoint".into(),
            ),
            ("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException", _)
            | (_, Some(301)) => refused(format!(
                "bucket {bucket} is in another region; set AWS_REGION to the bucket's region"
            )),
            ("AccessDenied" | "AllAccessDisabled", _) | (_, Some(403)) => refused(format!(
                "no permission; the publisher needs s3:GetObject, s3:PutObject and s3:ListBucket on {bucket}, a reader s3:GetObject (and s3:ListBucket for clear not-found errors); requester-pays buckets need --s3-requester-pays"
            )),
            (_, Some(s)) => StoreError::Http {
                location,
                key: object,
                status: s,
                hint: if s >= 500 || s == 429 {
                    "; the server kept failing after retries, try again later"
                } else {
                    ""
                },
            },
            _ => match err {
                SdkError::ConstructionFailure(_) => refused(format!(
                    "{}; configure credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, IRSA) and AWS_REGION",
                    error_chain(&err)
                )),
                SdkError::DispatchFailure(_) if error_chain(&err).contains("credentials") => refused(format!(
                    "no usable AWS credentials ({}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the pod an IAM role (IRSA)",
                    error_chain(&err)
                )),
                _ => StoreError::Transport {
                    location,
                    key: object,
                    source: error_chain(&err).into(),
                },
            },
        }
    }

    /// Turns "pointer or catalog not found" into "bucket not found" when the
    /// bucket is what is missing (some S3-compatible servers answer
    /// NoSuchKey for both).
    async fn missing_bucket(&self, key: &ObjectKey, err: StoreError) -> StoreError {
        if !(key.is_mutable() && err.is_not_found()) {
            return err;
        }
        let head = self
            .client()
            .await
            .head_bucket()
            .bucket(&self.at.bucket)
            .send()
            .await;
        match head {
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => StoreError::Refused {
                location: self.location(),
                key: self.object(key),
                code: "NoSuchBucket".into(),
                hint: format!(
                    "bucket {} does not exist at this endpoint; check the bucket name, AWS_REGION and the endpoint",
                    self.at.bucket
                ),
            },
            _ => err,
        }
    }

    async fn get_object(
        &self,
        key: &ObjectKey,
        limit: u64,
        range: Option<Range<u64>>,
    ) -> Result<(Bytes, Option<String>), StoreError> {
        let (body, declared, e_tag) = self.open_object(key, limit, range).await?;
        Ok((collect(body, declared).await?, e_tag))
    }

    /// The object's body as it arrives, its declared length and its ETag.
    async fn open_object(
        &self,
        key: &ObjectKey,
        limit: u64,
        range: Option<Range<u64>>,
    ) -> Result<(Body, u64, Option<String>), StoreError> {
        let out = self
            .client()
            .await
            .get_object()
            .bucket(&self.at.bucket)
            .key(self.object(key))
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end.saturating_sub(1))))
            .set_request_payer(self.payer())
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => return Err(self.missing_bucket(key, self.error(key, e)).await),
        };
        let declared = out.content_length.and_then(|n| u64::try_from(n).ok());
        let pieces = futures::stream::try_unfold(out.body, |mut b| async move {
            Ok::<_, aws_sdk_s3::primitives::ByteStreamError>(
                b.next().await.transpose()?.map(|piece| (piece, b)),
            )
        });
        let body = bounded(pieces, declared, limit, self.location(), key.to_string())?;
        Ok((body, declared.unwrap_or(0).min(limit), out.e_tag))
    }

    async fn put_multipart(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        let client = self.client().await;
        let object = self.object(key);
        let upload = client
            .create_multipart_upload()
            .bucket(&self.at.bucket)
            .key(&object)
            .cache_control(self.cache_control(opts.cache))
            .content_type(content_type(key))
            .set_request_payer(self.payer())
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
        let id = upload.upload_id.unwrap_or_default();
        let parts = futures::stream::iter(0..body.len().div_ceil(PART_SIZE))
            .map(|i| {
                let part = body.slice(i * PART_SIZE..((i + 1) * PART_SIZE).min(body.len()));
                let number = i as i32 + 1;
                let (object, id) = (&object, &id);
                async move {
                    let out = client
                        .upload_part()
                        .bucket(&self.at.bucket)
                        .key(object)
                        .upload_id(id)
                        .part_number(number)
                        .body(ByteStream::from(part))
                        .set_request_payer(self.payer())
                        .send()
                        .await
                        .map_err(|e| self.error(key, e))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag)
                            .build(),
                    )
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await;
        let completed = match parts {
            Ok(parts) => client
                .complete_multipart_upload()
                .bucket(&self.at.bucket)
                .key(&object)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .set_request_payer(self.payer())
                .send()
                .await
                .map(drop)
                .map_err(|e| self.error(key, e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort: a lifecycle rule should also abort stale uploads (docs/backends/s3.md).
            let _ = client
                .abort_multipart_upload()
                .bucket(&self.at.bucket)
                .key(&object)
                .upload_id(&id)
                .set_request_payer(self.payer())
                .send()
                .await;
        }
        completed
    }

    async fn put_object(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: Option<&Expect>,
    ) -> Result<(), StoreError> {
        let (if_none_match, if_match) = match expect {
            None => (None, None),
            Some(Expect::Absent) => (Some("*".to_string()), None),
            Some(Expect::Version(v)) => (None, Some(v.0.clone())),
        };
        self.client()
            .await
            .put_object()
            .bucket(&self.at.bucket)
            .key(self.object(key))
            .body(ByteStream::from(body))
            .cache_control(self.cache_control(opts.cache))
            .content_type(content_type(key))
            .set_if_none_match(if_none_match)
            .set_if_match(if_match)
            .set_request_payer(self.payer())
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error(key, e))
    }
}

fn content_type(key: &ObjectKey) -> &'static str {
    let k = key.as_str();
    if k.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// The error and its sources on one line (the SDK's top-level message alone
/// is often just "dispatch failure").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The AWS configuration every client shares: the standard credential and
/// region chain, a rustls (ring) HTTPS client, standard retries with
/// backoff, and timeouts. `default_region` applies when the environment
/// names none.
pub async fn aws_config(
    max_attempts: u32,
    read_timeout: Duration,
    default_region: Option<&'static str>,
) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(read_timeout)
                .build(),
        );
    let loaded = loader.load().await;
    match default_region {
        Some(r) if loaded.region().is_none() => {
            loaded.into_builder().region(aws_config::Region::new(r)).build()
        }
        _ => loaded,
    }
}

async fn build_client(opts: &S3Options) -> Client {
    let custom_endpoint = opts.endpoint.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    // S3-compatible servers rarely care about the region, but SigV4 needs one.
    let default_region = custom_endpoint.then_some("us-east-1");
    let shared = aws_config(opts.max_attempts, opts.read_timeout, default_region).await;
    // The SDK's retry quota fails requests outright once many retried
    // recently; a publish of thousands of chunks over a flaky link would then
    // fail as a whole. Attempts per request stay bounded by `max_attempts`.
    let partition = RetryPartition::custom("qsync-s3")
        .token_bucket(TokenBucket::unlimited())
        .build();
    let mut conf = aws_sdk_s3::config::Builder::from(&shared)
        .retry_partition(partition)
        .force_path_style(opts.path_style)
        // Many S3-compatible servers reject the SDK's default trailing
        // checksums; objects are content-addressed and verified on read anyway.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(e) = &opts.endpoint {
        conf = conf.endpoint_url(e);
    }
    Client::from_conf(conf.build())
}

#[async_trait]
impl ObjectSource for S3Store {
    fn location(&self) -> String {
        self.at.to_string()
    }

    fn id(&self) -> crate::StoreId {
        crate::StoreUrl::S3(self.at.clone()).id()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        self.get_limited(key, u64::MAX).await
    }

    async fn get_limited(&self, key: &ObjectKey, limit: u64) -> Result<Bytes, StoreError> {
        Ok(self.get_object(key, limit, None).await?.0)
    }

    async fn get_stream(&self, key: &ObjectKey, limit: u64) -> Result<Body, StoreError> {
        Ok(self.open_object(key, limit, None).await?.0)
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let len = range.end - range.start;
        Ok(self.get_object(key, len, Some(range)).await?.0)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        let out = self
            .client()
            .await
            .head_object()
            .bucket(&self.at.bucket)
            .key(self.object(key))
            .set_request_payer(self.payer())
            .send()
            .await;
        match out {
            Ok(o) => Ok(Some(ObjectMeta {
                size: o.content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            })),
            Err(e) => match self.error(key, e) {
                StoreError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }
}

#[async_trait]
impl ObjectSink for S3Store {
    fn edge(&self) -> Option<crate::Edge<'_>> {
        let cache = self.edge.as_deref()?;
        Some(crate::Edge {
            cache,
            prefix: &self.at.prefix,
        })
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        if body.len() > MULTIPART_THRESHOLD {
            self.put_multipart(key, body, opts).await
        } else {
            self.put_object(key, body, opts, None).await
        }
    }

    async fn get_versioned(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        match self.get_object(key, limit, None).await {
            Ok((body, Some(etag))) => Ok(Some((body, Version(etag)))),
            Ok((_, None)) => Err(StoreError::Refused {
                location: self.location(),
                key: self.object(key),
                code: "no ETag".into(),
                hint: "the server does not support conditional writes, which publishing needs".into(),
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        opts: PutOptions,
        expect: &Expect,
    ) -> Result<(), StoreError> {
        self.put_object(key, body, opts, Some(expect)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.client()
            .await
            .delete_object()
            .bucket(&self.at.bucket)
            .key(self.object(key))
            .set_request_payer(self.payer())
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error(key, e))
    }

    async fn list(&self, dir: &ObjectKey) -> Result<Vec<Listed>, StoreError> {
        let prefix = format!("{}/", self.object(dir));
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(&prefix)
            .set_request_payer(self.payer())
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(dir, e))?;
            for o in page.contents() {
                let Some(name) = o.key().and_then(|k| k.strip_prefix(&self.at.prefix)) else {
                    continue;
                };
                let Ok(key) = ObjectKey::new(name) else {
                    continue;
                };
                out.push(Listed {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::StoreUrl;

    #[test]
    fn objects_are_named_under_the_prefix() {
        let at = |url: &str| match StoreUrl::parse(url).unwrap() {
            StoreUrl::S3(l) => S3Store::new(l, S3Options::default()),
            other => panic!("{other:?}"),
        };
        let s = at("s3://chain-data/snapshots/");
        assert_eq!(s.location(), "s3://chain-data/snapshots/");
        assert_eq!(s.object(&ObjectKey::catalog()), "snapshots/catalog.json");
        assert_eq!(
            at("s3://chain-data").object(&ObjectKey::catalog()),
            "catalog.json"
        );
    }
}
