//! minisign key files and detached signatures.
//!
//! qsync writes and reads the stock minisign formats (Ed25519, pre-hashed
//! "ED" signatures) so that `minisign -V -p KEY.pub -m OBJECT` verifies any
//! signed object without trusting qsync. Signing covers the exact stored
//! bytes; the trusted comment names the object key, so a signature cannot be
//! moved to another object unnoticed by a human reading `minisign -V` output.

use std::io::Cursor;
use std::path::Path;

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

use crate::{FormatError, ObjectKey};

/// Environment variable holding the password of an encrypted secret key.
pub const PASSWORD_ENV: &str = "QSYNC_SECRET_KEY_PASSWORD";

fn key_err(path: &Path, reason: impl std::fmt::Display) -> FormatError {
    FormatError::Key {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Creates a key pair and writes both files (the secret one mode 0600).
/// Refuses to overwrite either file.
pub fn keygen(secret_path: &Path, public_path: &Path) -> Result<VerifyingKey, FormatError> {
    for p in [secret_path, public_path] {
        if p.exists() {
            return Err(key_err(
                p,
                "already exists; refusing to overwrite a key (move it away first)",
            ));
        }
    }
    let kp = KeyPair::generate_unencrypted_keypair().map_err(|e| key_err(secret_path, e))?;
    let vk = VerifyingKey(kp.pk.clone());
    let sk_text = kp
        .sk
        .to_box(Some(&format!("qsync secret key {}", vk.id())))
        .map_err(|e| key_err(secret_path, e))?
        .into_string();
    let pk_text = kp.pk.to_box().map_err(|e| key_err(public_path, e))?.into_string();
    write_new(secret_path, sk_text.as_bytes(), 0o600)?;
    write_new(public_path, pk_text.as_bytes(), 0o644)?;
    Ok(vk)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FormatError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| key_err(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| key_err(path, e))
}

/// A secret key loaded for signing.
pub struct SigningKey {
    sk: SecretKey,
    pk: VerifyingKey,
}

impl SigningKey {
    /// Loads a minisign secret key file. Encrypted keys need their password in
    /// the `QSYNC_SECRET_KEY_PASSWORD` environment variable.
    pub fn load(path: &Path) -> Result<SigningKey, FormatError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            key_err(
                path,
                format!("cannot read secret key ({e}); create one with `qsync keygen`"),
            )
        })?;
        let sk_box = SecretKeyBox::from_string(&text).map_err(|e| key_err(path, e))?;
        let sk = match SecretKey::from_unencrypted_box(sk_box.clone()) {
            Ok(sk) => sk,
            Err(_) => match std::env::var(PASSWORD_ENV) {
                Ok(pw) => SecretKey::from_box(sk_box, Some(pw)).map_err(|e| key_err(path, e))?,
                Err(_) => {
                    return Err(key_err(
                        path,
                        format!(
                        "not a minisign secret key, or an encrypted one: set {PASSWORD_ENV} to its password"
                    ),
                    ))
                }
            },
        };
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| key_err(path, e))?;
        Ok(SigningKey {
            sk,
            pk: VerifyingKey(pk),
        })
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.pk
    }

    /// A detached minisign signature (file contents) over `bytes` stored at `key`.
    pub fn sign(&self, key: &ObjectKey, bytes: &[u8]) -> Vec<u8> {
        let trusted = format!(
            "timestamp:{}\tfile:{}\tqsync",
            crate::time::Timestamp::now().0,
            key
        );
        minisign::sign(
            Some(&self.pk.0),
            &self.sk,
            Cursor::new(bytes),
            Some(&trusted),
            Some("signature from qsync secret key"),
        )
        .expect("signing in memory with a loaded key cannot fail")
        .into_string()
        .into_bytes()
    }
}

/// A pinned public key.
#[derive(Clone)]
pub struct VerifyingKey(PublicKey);

impl VerifyingKey {
    /// Loads a public key from `arg`: a minisign public key file, or the
    /// base64 key itself (`RW...`, as `minisign -G` prints it) for env vars.
    pub fn load(arg: &str) -> Result<VerifyingKey, FormatError> {
        let p = Path::new(arg);
        if arg.starts_with("RW") && !p.exists() {
            return PublicKey::from_base64(arg.trim())
                .map(VerifyingKey)
                .map_err(|e| key_err(p, format!("not a minisign public key: {e}")));
        }
        let text = std::fs::read_to_string(p).map_err(|e| {
            key_err(
                p,
                format!("cannot read public key ({e}); pass the publisher's .pub file or its RW... key"),
            )
        })?;
        PublicKeyBox::from_string(&text)
            .and_then(|b| b.into_public_key())
            .map(VerifyingKey)
            .map_err(|e| key_err(p, format!("not a minisign public key file: {e}")))
    }

    /// The key id as minisign prints it (16 uppercase hex digits).
    pub fn id(&self) -> String {
        let bytes = self.0.to_bytes();
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[2..10]);
        format!("{:016X}", u64::from_le_bytes(n))
    }

    /// Checks `signature` (minisign file contents) over `bytes` of object `key`.
    pub fn verify(&self, key: &ObjectKey, bytes: &[u8], signature: &[u8]) -> Result<(), FormatError> {
        let bad = |reason: String| FormatError::BadSignature {
            what: key.to_string(),
            reason,
        };
        let text = std::str::from_utf8(signature).map_err(|_| bad("signature file is not text".into()))?;
        if !global_signature_is_64_bytes(text) {
            return Err(bad(
                "the global signature (fourth line) is not 64 bytes; the signature file is truncated or tampered with".into(),
            ));
        }
        let sig = SignatureBox::from_string(text).map_err(|e| bad(format!("unreadable signature: {e}")))?;
        minisign::verify(&self.0, &sig, Cursor::new(bytes), true, false, false)
            .map_err(|e| bad(e.to_string()))
    }
}

/// Whether the fourth line of a signature file (the global signature, over
/// the signature and the trusted comment) decodes to 64 bytes, or is absent
/// (which minisign reports itself). minisign 0.10 slices it as 64 bytes
/// without checking, so a shorter one would panic instead of failing to
/// verify. Its base64 decoder stops at the first character outside the
/// alphabet and then accepts only padding, so the length is the count of
/// leading alphabet characters times 6/8.
fn global_signature_is_64_bytes(text: &str) -> bool {
    let Some(line) = text.lines().nth(3) else {
        return true;
    };
    let digits = line
        .trim()
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .count();
    digits * 6 / 8 == 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject_other_key_or_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, p1) = (dir.path().join("a.sec"), dir.path().join("a.pub"));
        let (s2, p2) = (dir.path().join("b.sec"), dir.path().join("b.pub"));
        keygen(&s1, &p1).unwrap();
        keygen(&s2, &p2).unwrap();
        assert!(keygen(&s1, &p1).is_err(), "overwrote a key");
        let key = ObjectKey::new("chains/x/latest.json").unwrap();
        let sig = SigningKey::load(&s1).unwrap().sign(&key, b"data");
        let v1 = VerifyingKey::load(p1.to_str().unwrap()).unwrap();
        let v2 = VerifyingKey::load(p2.to_str().unwrap()).unwrap();
        v1.verify(&key, b"data", &sig).unwrap();
        assert!(v1.verify(&key, b"datA", &sig).is_err());
        assert!(v2.verify(&key, b"data", &sig).is_err());
        assert_eq!(SigningKey::load(&s1).unwrap().verifying_key().id(), v1.id());
    }

    /// Found by fuzz/fuzz_targets/signature.rs: minisign 0.10 slices the
    /// global signature as 64 bytes without checking its length, so a
    /// mirror serving a genuine signature with its last line cut panicked
    /// the fetcher instead of being refused and failed over.
    #[test]
    fn refuses_a_cut_global_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (s, p) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
        keygen(&s, &p).unwrap();
        let key = ObjectKey::new("chains/x/latest.json").unwrap();
        let sig = String::from_utf8(SigningKey::load(&s).unwrap().sign(&key, b"data")).unwrap();
        let vk = VerifyingKey::load(p.to_str().unwrap()).unwrap();
        let lines: Vec<&str> = sig.lines().collect();
        let global_cut = format!("{}\n{}\n{}\n{}\n", lines[0], lines[1], lines[2], &lines[3][..40]);
        let err = vk
            .verify(&key, b"data", global_cut.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("global signature"), "{err}");
    }
}
