//! CloudFront in front of an S3 store, the publisher's side: invalidating
//! the pointer paths a publish rewrote. Readers' signed URLs are
//! `qsync_store::url_signer`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qsync_store::s3::{aws_config, error_chain};
use qsync_store::StoreUrl;

/// Why a CloudFront invalidation failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudFrontError {
    /// The invalidation request failed.
    #[error("invalidating {paths:?} on CloudFront distribution {distribution}: {reason}; check the distribution ID and that the publisher may call cloudfront:CreateInvalidation")]
    Invalidation {
        /// Distribution ID.
        distribution: String,
        /// Paths asked for.
        paths: Vec<String>,
        /// The service's answer.
        reason: String,
    },
}

/// After a publish to `store`: invalidates the paths of the rewritten
/// `keys` on `distribution`, whose root serves the store's objects (an S3
/// bucket's objects by name, prefix included; any other store's by key).
/// The invalidation ID, or `None` after a warning: the snapshot is
/// published either way, and edges pick it up within the pointer's max-age.
pub async fn invalidate_keys(distribution: &str, store: &StoreUrl, keys: &[String]) -> Option<String> {
    let prefix = match store {
        StoreUrl::S3(at) => at.prefix.as_str(),
        _ => "",
    };
    let paths = keys.iter().map(|k| format!("/{prefix}{k}")).collect();
    match invalidate(distribution, paths).await {
        Ok(id) => {
            tracing::info!("CloudFront invalidation {id} created on {distribution}");
            Some(id)
        }
        Err(e) => {
            tracing::warn!(
                "the snapshot is published, but {e}; edges serve the old pointer until its max-age runs out"
            );
            None
        }
    }
}

/// Invalidates `paths` (each starting with `/`) on `distribution`; returns
/// the invalidation ID. Honours `AWS_ENDPOINT_URL_CLOUDFRONT`.
pub async fn invalidate(distribution: &str, paths: Vec<String>) -> Result<String, CloudFrontError> {
    use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

    let fail = |paths: &Vec<String>, reason: String| CloudFrontError::Invalidation {
        distribution: distribution.into(),
        paths: paths.clone(),
        reason,
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
