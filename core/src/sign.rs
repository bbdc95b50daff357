//! minisign key files and detached signatures.
//!
//! qsync writes and reads the stock minisign formats (Ed25519, pre-hashed
//! "ED" signatures) so that `minisign -V -p KEY.pub -m OBJECT` verifies any
//! signed object without trusting qsync. Signing covers the exact stored
//! bytes; the trusted comment names the object key, so a signature cannot be
//! moved to another object unnoticed by a human reading `minisign -V` output.
//!
//! Key rotation without a gap: a publisher may sign with several keys
//! ([`SigningKeys`]; the first one's signature is where every reader looks,
//! the others' beside it, see `ObjectKey::signature_by`), and a reader may
//! trust several ([`TrustedKeys`]), picking the key by the signature's key
//! id. Where signatures live is `crate::keys`' business; fetching them is
//! `qsync_store::signed`'s.

use std::fmt;
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

    /// The key id, as minisign prints it (16 uppercase hex digits).
    pub fn id(&self) -> KeyId {
        KeyId::from_keynum(self.0.keynum())
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

/// A minisign key id: the 8 bytes minisign stores in key files and
/// signatures to say which key made a signature, written as minisign
/// prints it (16 uppercase hex digits of the little-endian number). Also a
/// segment of additional signatures' object keys (`ObjectKey::signature_by`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u64);

impl KeyId {
    fn from_keynum(keynum: &[u8]) -> KeyId {
        let mut n = [0u8; 8];
        n.copy_from_slice(&keynum[..8]);
        KeyId(u64::from_le_bytes(n))
    }

    /// The key id of the key that made `signature` (minisign file
    /// contents), read without verifying anything; `None` when the text is
    /// not a readable minisign signature.
    pub fn of_signature(signature: &[u8]) -> Option<KeyId> {
        let text = std::str::from_utf8(signature).ok()?;
        if !global_signature_is_64_bytes(text) {
            return None;
        }
        let sig = SignatureBox::from_string(text).ok()?;
        (sig.keynum().len() == 8).then(|| KeyId::from_keynum(sig.keynum()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl std::str::FromStr for KeyId {
    type Err = FormatError;
    /// Exactly 16 digits of `0-9A-F`, the only spelling qsync writes.
    fn from_str(s: &str) -> Result<KeyId, FormatError> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            Ok(KeyId(u64::from_str_radix(s, 16).expect("16 hex digits")))
        } else {
            Err(FormatError::Invalid(format!(
                "{s:?} is not a minisign key id (16 digits of 0-9 A-F, as `qsync keygen` prints it)"
            )))
        }
    }
}

/// `ids` as `A, B` for messages.
fn list_ids(ids: impl IntoIterator<Item = KeyId>) -> String {
    ids.into_iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The public keys a reader trusts (`--public-key`, repeatable): a
/// signature made by any of them is accepted. The key is chosen by the key
/// id the signature names, so each signature is checked once, against the
/// one key that can verify it.
#[derive(Clone)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// The set of `keys`, in the given order without repeats. Refuses an
    /// empty set (nothing would ever verify), and two different keys with
    /// one id (signatures name their key by id alone, so one of the two
    /// could never be used).
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Result<TrustedKeys, FormatError> {
        let mut out: Vec<VerifyingKey> = Vec::new();
        for k in keys {
            match out.iter().find(|o| o.id() == k.id()) {
                None => out.push(k),
                Some(o) if o.0.to_base64() == k.0.to_base64() => {}
                Some(_) => {
                    return Err(FormatError::Invalid(format!(
                        "two different public keys share the key id {}; check the --public-key values (a key id names one key)",
                        k.id()
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(FormatError::Invalid(
                "no public key given; pass the publisher's key with --public-key (repeatable during a key rotation)".into(),
            ));
        }
        Ok(TrustedKeys(out))
    }

    /// Loads each of `args` as [`VerifyingKey::load`] does (a `.pub` file or
    /// an `RW...` key).
    pub fn load<S: AsRef<str>>(args: &[S]) -> Result<TrustedKeys, FormatError> {
        TrustedKeys::new(
            args.iter()
                .map(|a| VerifyingKey::load(a.as_ref().trim()))
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    /// The trusted key with id `id`.
    pub fn get(&self, id: KeyId) -> Option<&VerifyingKey> {
        self.0.iter().find(|k| k.id() == id)
    }

    /// The ids of the trusted keys, in the order given.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.0.iter().map(VerifyingKey::id)
    }

    /// The ids as `A, B`, for messages.
    pub fn describe(&self) -> String {
        list_ids(self.ids())
    }

    /// Everywhere a signature of `body` stored at `key` that these keys
    /// verify may lie: the primary one ([`ObjectKey::signature_for`],
    /// whichever key made it), then each trusted key's additional one
    /// ([`ObjectKey::signature_by`]).
    pub fn signature_keys(&self, key: &ObjectKey, body: &[u8]) -> Vec<ObjectKey> {
        std::iter::once(key.signature_for(body))
            .chain(self.ids().map(|id| key.signature_by(body, id)))
            .collect()
    }

    /// Checks `signature` over `bytes` of object `key` with the trusted key
    /// the signature names; the id of that key. A signature by a key not in
    /// the set is refused, naming both.
    pub fn verify(&self, key: &ObjectKey, bytes: &[u8], signature: &[u8]) -> Result<KeyId, FormatError> {
        let vk = match KeyId::of_signature(signature) {
            Some(id) => self.get(id).ok_or_else(|| FormatError::UntrustedKey {
                what: key.to_string(),
                reason: format!(
                    "made by key {id}, which is not trusted here (trusted: {})",
                    self.describe()
                ),
            })?,
            // Unreadable: let minisign say why, against any key.
            None => &self.0[0],
        };
        vk.verify(key, bytes, signature).map(|()| vk.id())
    }
}

impl From<VerifyingKey> for TrustedKeys {
    fn from(vk: VerifyingKey) -> TrustedKeys {
        TrustedKeys(vec![vk])
    }
}

/// The secret keys a publisher signs with: one normally, two during a key
/// rotation. The first key's signature goes where every reader (and stock
/// `minisign -V`) looks for it; each other key's goes beside it, named by
/// its key id (`ObjectKey::signature_by`).
pub struct SigningKeys(Vec<SigningKey>);

impl SigningKeys {
    /// The set of `keys`, the first one primary. Refuses an empty set and a
    /// key given twice.
    pub fn new(keys: Vec<SigningKey>) -> Result<SigningKeys, FormatError> {
        if keys.is_empty() {
            return Err(FormatError::Invalid(
                "no secret key given; pass --secret-key (twice during a key rotation: the old key first)"
                    .into(),
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.pk.id() == k.pk.id()) {
                return Err(FormatError::Invalid(format!(
                    "secret key {} is given twice; list each signing key once",
                    k.pk.id()
                )));
            }
        }
        Ok(SigningKeys(keys))
    }

    /// Loads each secret key file (see [`SigningKey::load`]), in order.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<SigningKeys, FormatError> {
        SigningKeys::new(
            paths
                .iter()
                .map(|p| SigningKey::load(p.as_ref()))
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    /// The key whose signature is at the usual place.
    pub fn primary(&self) -> &SigningKey {
        &self.0[0]
    }

    /// The public keys of these keys: what the publisher trusts when it
    /// reads back the pointer and catalog it is about to replace.
    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys(self.0.iter().map(|k| k.pk.clone()).collect())
    }

    /// The key ids as `A, B`, primary first.
    pub fn describe(&self) -> String {
        list_ids(self.0.iter().map(|k| k.pk.id()))
    }

    /// How many keys sign.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where each key's signature of `body` stored at `key` goes, in key
    /// order: the primary key's at [`ObjectKey::signature_for`], each other
    /// key's at [`ObjectKey::signature_by`].
    pub fn signature_keys(&self, key: &ObjectKey, body: &[u8]) -> Vec<ObjectKey> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, k)| match i {
                0 => key.signature_for(body),
                _ => key.signature_by(body, k.pk.id()),
            })
            .collect()
    }

    /// The signature of `body` stored at `key` by the `i`-th key.
    pub fn sign_with(&self, i: usize, key: &ObjectKey, body: &[u8]) -> Vec<u8> {
        self.0[i].sign(key, body)
    }

    /// Every signature of `body` stored at `key`, as (signature's object
    /// key, minisign file contents), in the order of
    /// [`SigningKeys::signature_keys`].
    pub fn sign_all(&self, key: &ObjectKey, body: &[u8]) -> Vec<(ObjectKey, Vec<u8>)> {
        self.signature_keys(key, body)
            .into_iter()
            .enumerate()
            .map(|(i, at)| (at, self.sign_with(i, key, body)))
            .collect()
    }
}

impl From<SigningKey> for SigningKeys {
    fn from(k: SigningKey) -> SigningKeys {
        SigningKeys(vec![k])
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

    fn pair(dir: &Path, name: &str) -> (SigningKey, VerifyingKey) {
        let (s, p) = (dir.join(format!("{name}.sec")), dir.join(format!("{name}.pub")));
        keygen(&s, &p).unwrap();
        (
            SigningKey::load(&s).unwrap(),
            VerifyingKey::load(p.to_str().unwrap()).unwrap(),
        )
    }

    #[test]
    fn trusted_keys_pick_the_key_the_signature_names() {
        let dir = tempfile::tempdir().unwrap();
        let (sa, va) = pair(dir.path(), "a");
        let (sb, vb) = pair(dir.path(), "b");
        let (sc, _) = pair(dir.path(), "c");
        let key = ObjectKey::new("chains/x/latest.json").unwrap();
        let both = TrustedKeys::new([va.clone(), vb.clone(), va.clone()]).unwrap();
        assert_eq!(both.ids().count(), 2, "a repeated key counts once");
        assert_eq!(
            both.verify(&key, b"data", &sa.sign(&key, b"data")).unwrap(),
            va.id()
        );
        assert_eq!(
            both.verify(&key, b"data", &sb.sign(&key, b"data")).unwrap(),
            vb.id()
        );
        assert!(both.verify(&key, b"datA", &sb.sign(&key, b"data")).is_err());
        let err = both
            .verify(&key, b"data", &sc.sign(&key, b"data"))
            .unwrap_err()
            .to_string();
        let c_id = sc.verifying_key().id().to_string();
        assert!(
            err.contains(&c_id) && err.contains(&va.id().to_string()) && err.contains(&vb.id().to_string()),
            "{err}"
        );
        assert_eq!(KeyId::of_signature(b"not a signature"), None);
        assert!(TrustedKeys::new([]).is_err());
        assert_eq!(va.id().to_string().parse::<KeyId>().unwrap(), va.id());
    }

    #[test]
    fn signing_keys_put_the_first_signature_where_readers_look() {
        let dir = tempfile::tempdir().unwrap();
        let (sa, va) = pair(dir.path(), "a");
        let (sb, vb) = pair(dir.path(), "b");
        let keys = SigningKeys::new(vec![sa, sb]).unwrap();
        let key = ObjectKey::new("chains/x/latest.json").unwrap();
        let sigs = keys.sign_all(&key, b"data");
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0].0, key.signature_for(b"data"));
        assert_eq!(sigs[1].0, key.signature_by(b"data", vb.id()));
        va.verify(&key, b"data", &sigs[0].1).unwrap();
        vb.verify(&key, b"data", &sigs[1].1).unwrap();
        assert_eq!(keys.describe(), format!("{}, {}", va.id(), vb.id()));
        let sa2 = SigningKey::load(&dir.path().join("a.sec")).unwrap();
        let again = SigningKey::load(&dir.path().join("a.sec")).unwrap();
        assert!(SigningKeys::new(vec![sa2, again]).is_err(), "a key twice");
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
