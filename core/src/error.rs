//! Errors for malformed, forged or unsafe format objects.
//!
//! Every message names the object and says what to do next, because these
//! errors reach operators verbatim through `qsync`.

/// Why a format object was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A structural problem: bad JSON, bad field, unsupported version.
    #[error("{0}")]
    Invalid(String),
    /// A chunk or object whose bytes do not match its content address.
    #[error("{what}: BLAKE3 is {actual}, expected {expected}; the copy is corrupt or was tampered with, fetch it from another mirror")]
    DigestMismatch {
        /// The object that failed.
        what: String,
        /// Digest the manifest or pointer promised.
        expected: crate::Digest,
        /// Digest of the bytes received.
        actual: crate::Digest,
    },
    /// A signature that does not verify under a pinned key.
    #[error("{what}: signature rejected ({reason}); check that --public-key is the publisher's key (repeat it to trust both keys during a key rotation) and that the store was not tampered with")]
    BadSignature {
        /// The signed object.
        what: String,
        /// What minisign reported.
        reason: String,
    },
    /// A signature made by a key that is not trusted here, and no
    /// signature by a trusted one: rejected like any bad signature, but a
    /// publisher reading back its own objects can tell a key change from
    /// damage.
    #[error("{what}: signature rejected ({reason}); check that --public-key is the publisher's key (repeat it to trust both keys during a key rotation) and that the store was not tampered with")]
    UntrustedKey {
        /// The signed object.
        what: String,
        /// Which key made it, and which are trusted.
        reason: String,
    },
    /// A key file that cannot be read or parsed.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl FormatError {
    /// Expired object refused.
    pub fn expired(what: &str, at: crate::time::Timestamp) -> Self {
        FormatError::Invalid(format!(
            "{what} expired at {at}; the publisher has stopped refreshing it (check its agent), or pass --allow-expired to restore it anyway"
        ))
    }
}
