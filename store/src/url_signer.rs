//! Signed URLs for a private CloudFront distribution: readers use the
//! distribution's `https://` URL as an ordinary HTTP store, and with a
//! [`UrlSigner`] every request URL carries a canned-policy signature
//! (`Expires`, `Signature`, `Key-Pair-Id`), RSA-SHA1 over the policy as AWS
//! specifies for signed URLs. Invalidation, the publisher's side of
//! CloudFront, is in `qsync_cdn::cloudfront`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;

/// How long a signed request URL stays valid.
const URL_LIFETIME: Duration = Duration::from_secs(3600);

/// The signing key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("CloudFront private key {path}: {reason}")]
pub struct KeyError {
    /// Key file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
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
    pub fn load(key_pair_id: &str, path: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_key() {
        let err = UrlSigner::from_pem("K1", "not pem").unwrap_err();
        assert!(err.contains("RSA"), "{err}");
    }
}
