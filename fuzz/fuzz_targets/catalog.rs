//! Fuzzes `Catalog::decode`, the parser of a store's `catalog.json` (what
//! `qsync ls` reads over HTTP).
//!
//! Invariants: decoding never panics; a catalog that decodes round-trips
//! through `encode`, and `insert` keeps it decodable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsync_core::pointer::{Catalog, CATALOG_FORMAT};
use qsync_core::ChainName;

fuzz_target!(|data: &[u8]| {
    let Ok(mut c) = Catalog::decode(data) else {
        return;
    };
    assert_eq!(c.format, CATALOG_FORMAT);
    let bytes = c.encode();
    assert_eq!(Catalog::decode(&bytes).expect("an encoded catalog decodes"), c);
    // A publisher adds its chain to whatever catalog it found.
    let chain = ChainName::new("fuzz").expect("valid chain name");
    c.insert(&chain);
    let after = Catalog::decode(&c.encode()).expect("a catalog with one more chain decodes");
    assert!(after.chains.contains(&chain));
});
