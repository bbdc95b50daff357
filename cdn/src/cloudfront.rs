//! CloudFront in front of a store: invalidating the pointer paths a publish
//! changed, and signing reader requests for private distributions.
//!
//! Readers use the distribution's `https://` URL as an ordinary HTTP store;
//! with a [`UrlSigner`] every request URL carries a canned-policy signature
//! (`Expires`, `Signature`, `Key-Pair-Id`), RSA-SHA1 over the policy as AWS
//! specifies for signed URLs.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;

use crate::s3::{aws_config, error_chain};

/// How long a signed request URL stays valid.
const URL_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a CloudFront operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudFrontError {
    /// The signing key could not be used.
    #[error("CloudFront private key {path}: {reason}")]
    Key {
        /// Key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
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

/// Signs URLs for a private distribution with one of its trusted key pairs.
pub struct UrlSigner {
    key_pair_id: String,
    key: rsa::pkcs1v15::SigningKey<sha1::Sha1>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("key_pair_id", &self.key_pair_id)
            .finish_non_exhaustive()
    }
}

impl UrlSigner {
    /// A signer from a PEM private key (PKCS#1 `RSA PRIVATE KEY`, as
    /// `openssl genrsa` writes, or PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(key_pair_id: &str, pem: &str) -> Result<Self, String> {
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|e| format!("not a PEM RSA private key ({e}); CloudFront key pairs are RSA 2048"))?;
        if key_pair_id.is_empty() || !key_pair_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "{key_pair_id:?} is not a CloudFront key pair ID (like K2JCJMDEHXQW5F)"
            ));
        }
        Ok(UrlSigner {
            key_pair_id: key_pair_id.into(),
            key: rsa::pkcs1v15::SigningKey::new(key),
        })
    }

    /// [`UrlSigner::from_pem`] on the file at `path`.
    pub fn load(key_pair_id: &str, path: &Path) -> Result<Self, CloudFrontError> {
        let err = |reason: String| CloudFrontError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_pem(key_pair_id, &pem).map_err(err)
    }

    /// `url` signed with a canned policy valid until `expires` (Unix seconds).
    pub fn sign_until(&self, url: &str, expires: u64) -> String {
        let policy = format!(
            r#"{{"Statement":[{{"Resource":"{url}","Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}}}]}}"#
        );
        let sig = self.key.sign(policy.as_bytes()).to_vec();
        let sig: String = base64::engine::general_purpose::STANDARD
            .encode(sig)
            .chars()
            .map(|c| match c {
                '+' => '-',
                '=' => '_',
                '/' => '~',
                c => c,
            })
            .collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{sep}Expires={expires}&Signature={sig}&Key-Pair-Id={}",
            self.key_pair_id
        )
    }

    /// `url` signed for the next hour.
    pub fn sign(&self, url: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.sign_until(url, (now + URL_LIFETIME).as_secs())
    }
}

/// After a publish to `store`: invalidates the paths of the rewritten `keys`
/// on `distribution` (which serves the bucket at its root, so paths are
/// object names). The invalidation ID, or `None` after a warning: the
/// snapshot is published either way, and edges pick it up within the
/// pointer's max-age.
pub async fn invalidate_keys(distribution: &str, store: &str, keys: &[String]) -> Option<String> {
    let s3 = crate::s3::S3Store::new(store, Default::default()).ok();
    let paths = keys
        .iter()
        .map(|k| match (&s3, qsync_core::ObjectKey::new(k.as_str())) {
            (Some(s3), Ok(key)) => format!("/{}", s3.object(&key)),
            _ => format!("/{k}"),
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_key() {
        let err = UrlSigner::from_pem("K1", "not pem").unwrap_err();
        assert!(err.contains("RSA"), "{err}");
    }
}
