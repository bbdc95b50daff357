//! Object keys: where each kind of object lives inside a store.
//!
//! A store is a flat namespace of `/`-separated keys; every backend (a local
//! directory, an HTTP origin, S3, an IPFS directory) maps keys the same way,
//! which is what lets any static host serve a store. The layout:
//!
//! ```text
//! catalog.json                                     chains in this store (signed)
//! chains/<chain>/latest.json                       the chain's pointer (signed)
//! chains/<chain>/manifests/<version:012>-<b3:16>.json[.zst]   one per snapshot (signed)
//! chunks/<b3[0..2]>/<b3>                           content-addressed chunk objects
//! <manifest key>.minisig                           its detached minisign signature
//! <pointer or catalog key>.sigs/<b3>.minisig       signature of the version whose BLAKE3 is <b3>
//! <manifest key>.<KEYID>.minisig                   an additional signature, by key KEYID (rotation)
//! <pointer or catalog key>.sigs/<b3>.<KEYID>.minisig   the same for a pointer or catalog version
//! locks/publish/<chain>.json, locks/gc.json        publish and GC leases (unsigned, never read by fetchers)
//! gc/retired.json                                  when GC first saw each manifest unkept (unsigned)
//! probes/<random>.json                             a conditional-write probe, deleted at once
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sign::KeyId;
use crate::{Digest, FormatError};

/// A validated object key: relative, `/`-separated, no empty, `.` or `..`
/// segments, printable ASCII only. Safe to join onto a directory or URL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, FormatError> {
        let key = key.into();
        let ok = !key.is_empty()
            && key.len() <= 512
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if ok {
            Ok(ObjectKey(key))
        } else {
            Err(FormatError::Invalid(format!(
                "{key:?} is not a valid object key (relative, '/'-separated, [A-Za-z0-9._-] only)"
            )))
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the object is rewritten in place (a pointer or the catalog);
    /// every other object is written once and never changes.
    pub fn is_mutable(&self) -> bool {
        self.is_rewritten_signed()
            || self.0.starts_with("locks/")
            || self.0.starts_with("gc/")
            || self.0.starts_with("probes/")
    }

    /// The key of the detached signature of `body` stored at this key.
    ///
    /// An object written once has its signature at `<key>.minisig`. An object
    /// rewritten in place has one signature per version, at
    /// `<key>.sigs/<BLAKE3 of body>.minisig`: a publisher uploads it before
    /// the body without changing what readers see, a failed or losing
    /// publisher leaves only an unreferenced file, and a reader or CDN cache
    /// never pairs a body with the signature of another version.
    pub fn signature_for(&self, body: &[u8]) -> ObjectKey {
        if self.is_mutable() {
            ObjectKey(format!("{}.sigs/{}.minisig", self.0, Digest::of(body).to_hex()))
        } else {
            ObjectKey(format!("{}.minisig", self.0))
        }
    }

    /// The key of an additional signature of `body` stored at this key, made
    /// by key `by` while a publisher signs with several keys (a rotation):
    /// [`ObjectKey::signature_for`] with `.<KEYID>` before `.minisig`, so
    /// `<key>.<KEYID>.minisig` or `<key>.sigs/<b3>.<KEYID>.minisig`. The
    /// primary signature stays where readers that know one key look.
    pub fn signature_by(&self, body: &[u8], by: KeyId) -> ObjectKey {
        let primary = self.signature_for(body).0;
        let stem = primary
            .strip_suffix(".minisig")
            .expect("signature keys end in .minisig");
        ObjectKey(format!("{stem}.{by}.minisig"))
    }

    /// What this key names when it is a signature written by
    /// [`ObjectKey::signature_for`] or [`ObjectKey::signature_by`] of a
    /// pointer, the catalog or a manifest; `None` for any other key.
    pub fn signature_of(&self) -> Option<SignatureOf> {
        let stem = self.0.strip_suffix(".minisig")?;
        let split_id = |s: &str| -> (String, Option<KeyId>) {
            match s.rsplit_once('.') {
                Some((rest, id)) if !rest.is_empty() => match id.parse::<KeyId>() {
                    Ok(id) => (rest.to_string(), Some(id)),
                    Err(_) => (s.to_string(), None),
                },
                _ => (s.to_string(), None),
            }
        };
        if let Some((object, name)) = stem.rsplit_once(".sigs/") {
            let object = ObjectKey::new(object).ok()?;
            if !object.is_rewritten_signed() || name.contains('/') {
                return None;
            }
            let (b3, key_id) = split_id(name);
            let version = Some(b3.parse::<Digest>().ok()?);
            return Some(SignatureOf {
                object,
                version,
                key_id,
            });
        }
        let (object, key_id) = split_id(stem);
        let object = ObjectKey::new(object).ok()?;
        object.is_manifest().then_some(SignatureOf {
            object,
            version: None,
            key_id,
        })
    }

    /// Whether this is a manifest ([`ObjectKey::manifest`]'s shape).
    pub fn is_manifest(&self) -> bool {
        self.0.starts_with("chains/")
            && self.0.contains("/manifests/")
            && (self.0.ends_with(".json") || self.0.ends_with(".json.zst"))
    }

    /// A pointer or the catalog: rewritten in place, and signed.
    fn is_rewritten_signed(&self) -> bool {
        self.0 == "catalog.json" || (self.0.starts_with("chains/") && self.0.ends_with("/latest.json"))
    }

    /// The key of the chunk with plaintext digest `d`.
    pub fn chunk(d: &Digest) -> ObjectKey {
        let hex = d.to_hex();
        ObjectKey(format!("chunks/{}/{}", &hex[..2], hex))
    }

    /// The pointer naming the current snapshot of `chain`.
    pub fn pointer(chain: &ChainName) -> ObjectKey {
        ObjectKey(format!("chains/{chain}/latest.json"))
    }

    /// The manifest of snapshot `version` of `chain` whose stored bytes hash to `d`.
    pub fn manifest(chain: &ChainName, version: u64, d: &Digest, compressed: bool) -> ObjectKey {
        let ext = if compressed { "json.zst" } else { "json" };
        ObjectKey(format!(
            "chains/{chain}/manifests/{version:012}-{}.{ext}",
            &d.to_hex()[..16]
        ))
    }

    /// The store's list of chains.
    pub fn catalog() -> ObjectKey {
        ObjectKey("catalog.json".into())
    }

    /// The lease on publishing `chain` to the store (and re-signing its
    /// pointer): `locks/publish/<chain>.json`. In its own directory so that
    /// no chain name can collide with [`ObjectKey::gc_lock`]. Never read by
    /// fetchers and never signed.
    pub fn publish_lock(chain: &ChainName) -> ObjectKey {
        ObjectKey(format!("locks/publish/{chain}.json"))
    }

    /// The lease a garbage collection holds on the store: `locks/gc.json`.
    pub fn gc_lock() -> ObjectKey {
        ObjectKey("locks/gc.json".into())
    }

    /// Garbage collection's record of when it first saw each manifest that
    /// no pointer names (`gc/retired.json`); unsigned, readers ignore it.
    pub fn gc_retired() -> ObjectKey {
        ObjectKey("gc/retired.json".into())
    }

    /// A probe object a publisher creates conditionally, and deletes, to
    /// learn whether the store honours conditional writes:
    /// `probes/<tag>.json`, `tag` being 1-64 of `[a-z0-9]`.
    pub fn probe(tag: &str) -> Result<ObjectKey, FormatError> {
        if (1..=64).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Ok(ObjectKey(format!("probes/{tag}.json")))
        } else {
            Err(FormatError::Invalid(format!(
                "{tag:?} is not a probe tag (1-64 of a-z, 0-9)"
            )))
        }
    }

    /// The directory holding `chain`'s manifests.
    pub fn manifests_dir(chain: &ChainName) -> ObjectKey {
        ObjectKey(format!("chains/{chain}/manifests"))
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = FormatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ObjectKey::new(s)
    }
}

impl From<ObjectKey> for String {
    fn from(k: ObjectKey) -> String {
        k.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a signature's key names (see [`ObjectKey::signature_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureOf {
    /// The object signed: a manifest, a pointer or the catalog.
    pub object: ObjectKey,
    /// For a pointer or the catalog, the BLAKE3 of the version signed.
    pub version: Option<Digest>,
    /// For an additional signature, the key that made it; `None` for the
    /// primary signature (whichever key made it).
    pub key_id: Option<KeyId>,
}

/// A chain name: 1-64 of `[a-z0-9._-]`, starting with a letter or digit. It is
/// a path segment in every store, so nothing else is allowed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChainName(String);

impl ChainName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, FormatError> {
        let name = name.into();
        let ok = (1..=64).contains(&name.len())
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(ChainName(name))
        } else {
            Err(FormatError::Invalid(format!(
                "{name:?} is not a valid chain name: use 1-64 characters of a-z, 0-9, '.', '_', '-' (for example \"polkadot\" or \"eth-mainnet\")"
            )))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChainName {
    type Error = FormatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ChainName::new(s)
    }
}

impl From<ChainName> for String {
    fn from(c: ChainName) -> String {
        c.0
    }
}

impl std::str::FromStr for ChainName {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChainName::new(s)
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Which snapshot a `qsync serve` `/tar/<chain>/<name>` request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarVersion {
    /// `latest`: the pointer's current snapshot.
    Latest,
    /// A version number from the pointer's current snapshot or history.
    Number(u64),
}

/// Parses the `<name>` of `/tar/<chain>/<name>`: `latest` or a version
/// number, optionally ending in `.tar` or `.tar.zst`; the bool says zstd.
/// Anything else (empty, signs, spaces, other suffixes) is `None`.
pub fn parse_tar_name(name: &str) -> Option<(TarVersion, bool)> {
    let (version, zst) = match name.strip_suffix(".tar.zst") {
        Some(v) => (v, true),
        None => (name.strip_suffix(".tar").unwrap_or(name), false),
    };
    let version = match version {
        "latest" => TarVersion::Latest,
        v if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
            TarVersion::Number(v.parse().ok()?)
        }
        _ => return None,
    };
    Some((version, zst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_names() {
        assert_eq!(parse_tar_name("latest"), Some((TarVersion::Latest, false)));
        assert_eq!(parse_tar_name("latest.tar"), Some((TarVersion::Latest, false)));
        assert_eq!(parse_tar_name("7.tar.zst"), Some((TarVersion::Number(7), true)));
        assert_eq!(parse_tar_name("12"), Some((TarVersion::Number(12), false)));
        for bad in [
            "",
            ".tar",
            "+7",
            "-1",
            "7.zip",
            "latest.tar.gz",
            "99999999999999999999999",
            "x",
        ] {
            assert_eq!(parse_tar_name(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn tar_names_never_panic_and_round_trip(name in ".{0,40}", n in proptest::num::u64::ANY, zst: bool) {
            let _ = parse_tar_name(&name);
            let ext = if zst { ".tar.zst" } else { ".tar" };
            proptest::prop_assert_eq!(parse_tar_name(&format!("{n}{ext}")), Some((TarVersion::Number(n), zst)));
        }
    }

    #[test]
    fn additional_signatures_sit_beside_the_primary_and_parse_back() {
        let id: KeyId = "0123456789ABCDEF".parse().unwrap();
        let c = ChainName::new("eth").unwrap();
        let d = Digest::of(b"x");
        let pointer = ObjectKey::pointer(&c);
        assert_eq!(
            pointer.signature_by(b"x", id).as_str(),
            format!("chains/eth/latest.json.sigs/{d}.0123456789ABCDEF.minisig")
        );
        let m = ObjectKey::manifest(&c, 7, &d, true);
        assert_eq!(
            m.signature_by(b"x", id).as_str(),
            format!("{m}.0123456789ABCDEF.minisig")
        );
        for (object, version) in [
            (pointer.clone(), Some(d)),
            (ObjectKey::catalog(), Some(d)),
            (m.clone(), None),
            (ObjectKey::manifest(&c, 8, &d, false), None),
        ] {
            let primary = object.signature_for(b"x").signature_of().unwrap();
            assert_eq!(
                primary,
                SignatureOf {
                    object: object.clone(),
                    version,
                    key_id: None
                }
            );
            let extra = object.signature_by(b"x", id).signature_of().unwrap();
            assert_eq!(
                extra,
                SignatureOf {
                    object,
                    version,
                    key_id: Some(id)
                }
            );
        }
        for not_a_signature in [
            "chains/eth/latest.json",
            "chunks/ab/abcd.minisig",
            "locks/gc.json.sigs/x.minisig",
            "chains/eth/latest.json.sigs/nothex.minisig",
            "chains/eth/latest.json.sigs/a/b.minisig",
            "chains/eth/manifests/1.txt.minisig",
            "catalog.json.0123456789ABCDEF.minisig",
        ] {
            let k = ObjectKey::new(not_a_signature).unwrap();
            assert_eq!(k.signature_of(), None, "{not_a_signature}");
        }
        // A key id in lower case is not one qsync writes: not a signature by it.
        let lower = ObjectKey::new(format!("{m}.0123456789abcdef.minisig")).unwrap();
        assert_eq!(lower.signature_of(), None);
    }

    proptest::proptest! {
        #[test]
        fn every_signature_key_is_valid_and_parses_back(body: Vec<u8>, n: u64, version: u64, zst: bool) {
            let id: KeyId = format!("{n:016X}").parse().unwrap();
            let c = ChainName::new("eth").unwrap();
            let d = Digest::of(&body);
            for object in [ObjectKey::pointer(&c), ObjectKey::catalog(), ObjectKey::manifest(&c, version, &d, zst)] {
                for (sig, key_id) in [(object.signature_for(&body), None), (object.signature_by(&body, id), Some(id))] {
                    let again = ObjectKey::new(sig.as_str()).unwrap();
                    let of = again.signature_of().unwrap();
                    proptest::prop_assert_eq!(&of.object, &object);
                    proptest::prop_assert_eq!(of.key_id, key_id);
                    proptest::prop_assert_eq!(of.version.is_some(), object.is_mutable());
                }
            }
        }
    }

    #[test]
    fn keys_reject_traversal_and_odd_characters() {
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a\\b", "a%2fb"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ObjectKey::new("chains/eth/latest.json").is_ok());
    }

    #[test]
    fn chain_names() {
        assert!(ChainName::new("eth-mainnet").is_ok());
        for bad in ["", "Eth", "-x", "a/b", ".."] {
            assert!(ChainName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn layout() {
        let d = Digest::of(b"x");
        let c = ChainName::new("eth").unwrap();
        assert_eq!(
            ObjectKey::chunk(&d).as_str(),
            format!("chunks/{}/{}", &d.to_hex()[..2], d)
        );
        assert_eq!(
            ObjectKey::pointer(&c).signature_for(b"x").as_str(),
            format!("chains/eth/latest.json.sigs/{d}.minisig")
        );
        assert_eq!(
            ObjectKey::catalog().signature_for(b"x").as_str(),
            format!("catalog.json.sigs/{d}.minisig")
        );
        // No chain name reaches the GC lease.
        assert_eq!(ObjectKey::publish_lock(&c).as_str(), "locks/publish/eth.json");
        let gc = ChainName::new("gc").unwrap();
        assert_ne!(ObjectKey::publish_lock(&gc), ObjectKey::gc_lock());
        assert!(ObjectKey::gc_lock().is_mutable() && ObjectKey::gc_retired().is_mutable());
        assert!(ObjectKey::probe("ab12").unwrap().is_mutable());
        assert!(ObjectKey::probe("../x").is_err() && ObjectKey::probe("").is_err());
        let m = ObjectKey::manifest(&c, 7, &d, false);
        assert!(!m.is_mutable());
        assert_eq!(m.signature_for(b"x").as_str(), format!("{m}.minisig"));
        assert!(ObjectKey::manifest(&c, 7, &d, true)
            .as_str()
            .starts_with("chains/eth/manifests/000000000007-"));
    }
}
