//! Fuzzes the two validators every name from outside goes through before it
//! becomes part of a path or URL: `ObjectKey::new` (keys in pointers,
//! manifests, and `qsync serve` request paths) and `ChainName::new` (chain
//! names in requests, pointers, catalogs and flags).
//!
//! Invariants, checked here independently of keys.rs: an accepted object key
//! joined onto a directory stays under it and is made of plain names of
//! `[A-Za-z0-9._-]`; it round-trips through serde. An accepted chain name is
//! 1-64 of `[a-z0-9._-]` starting with a letter or digit, and every key built
//! from it (pointer, its signature, manifest, manifests directory, publish
//! lease) is itself a valid object key, and its lease is never the GC lease.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use qsync_core::{ChainName, Digest, ObjectKey};

fn check_key(key: &ObjectKey) {
    let s = key.as_str();
    assert!(!s.is_empty() && s.len() <= 512, "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)),
        "{s:?}"
    );
    let joined = Path::new("/store").join(s);
    assert!(joined.starts_with("/store"), "{s:?}");
    assert!(
        joined
            .components()
            .skip(2)
            .all(|c| matches!(c, Component::Normal(_))),
        "{s:?} has a component that is not a plain name"
    );
    assert_eq!(joined.components().count() - 2, s.split('/').count(), "{s:?}");
    let json = serde_json::to_string(key).expect("a key serialises");
    assert_eq!(
        &serde_json::from_str::<ObjectKey>(&json).expect("a key deserialises"),
        key
    );
}

fn rebuilt(key: ObjectKey) -> ObjectKey {
    ObjectKey::new(key.as_str()).unwrap_or_else(|e| panic!("a key qsync builds is invalid: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = ObjectKey::new(text.as_ref()) {
        check_key(&key);
        assert_eq!(key.as_str(), text);
    }
    // serde goes through the same check.
    if let Ok(key) = serde_json::from_slice::<ObjectKey>(data) {
        check_key(&key);
    }
    if let Ok(chain) = ChainName::new(text.as_ref()) {
        let s = chain.as_str();
        assert!((1..=64).contains(&s.len()), "{s:?}");
        assert!(s.as_bytes()[0].is_ascii_alphanumeric(), "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
            "{s:?}"
        );
        let d = Digest::of(data);
        for key in [
            ObjectKey::pointer(&chain),
            ObjectKey::manifest(&chain, u64::MAX, &d, true),
            ObjectKey::manifests_dir(&chain),
        ] {
            check_key(&rebuilt(key));
        }
        let lock = rebuilt(ObjectKey::publish_lock(&chain));
        check_key(&lock);
        assert_ne!(lock, ObjectKey::gc_lock(), "a chain's lease is the GC lease");
        let pointer = ObjectKey::pointer(&chain);
        assert!(pointer.is_mutable());
        check_key(&rebuilt(pointer.signature_for(data)));
        let json = serde_json::to_string(&chain).expect("a chain name serialises");
        assert_eq!(
            serde_json::from_str::<ChainName>(&json).expect("deserialises"),
            chain
        );
    }
});
