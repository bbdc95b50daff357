//! CloudFront in front of a store, the publisher's side: the
//! [`EdgeCache`] that invalidates the pointer paths a publish rewrote.
//! Readers' signed URLs are `qsync_store::url_signer`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use qsync_store::s3::{aws_config, error_chain};
use qsync_store::{EdgeCache, StoreError};

/// A CloudFront distribution whose root serves a store's objects: given to
/// a store as its [`EdgeCache`] (`StoreOptions::edge_cache`).
#[derive(Clone, Debug)]
pub struct CloudFront {
    /// The distribution ID.
    pub distribution: String,
}

#[async_trait]
impl EdgeCache for CloudFront {
    async fn invalidate(&self, paths: Vec<String>) -> Result<String, StoreError> {
        invalidate(&self.distribution, paths).await
    }
}

/// Invalidates `paths` (each starting with `/`) on `distribution`; returns
/// the invalidation ID. Honours `AWS_ENDPOINT_URL_CLOUDFRONT`.
pub async fn invalidate(distribution: &str, paths: Vec<String>) -> Result<String, StoreError> {
    use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

    let fail = |paths: &Vec<String>, reason: String| StoreError::Refused {
        location: format!("CloudFront distribution {distribution}"),
        key: paths.join(" "),
        code: reason,
        hint: "check the distribution ID and that the publisher may call cloudfront:CreateInvalidation"
            .into(),
    };
    // CloudFront is global; its API lives in us-east-1.
    let shared = aws_config(6, Duration::from_secs(30), Some("us-east-1")).await;
    let client = aws_sdk_cloudfront::Client::new(&shared);
    let caller_reference = format!(
        "qsync-{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        std::process::id()
    );
    let batch = InvalidationBatch::builder()
        .paths(
            Paths::builder()
                .quantity(paths.len() as i32)
                .set_items(Some(paths.clone()))
                .build()
                .map_err(|e| fail(&paths, e.to_string()))?,
        )
        .caller_reference(caller_reference)
        .build()
        .map_err(|e| fail(&paths, e.to_string()))?;
    let out = client
        .create_invalidation()
        .distribution_id(distribution)
        .invalidation_batch(batch)
        .send()
        .await
        .map_err(|e| fail(&paths, error_chain(&e)))?;
    Ok(out.invalidation.map(|i| i.id).unwrap_or_default())
}
