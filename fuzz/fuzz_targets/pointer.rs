//! Fuzzes `Pointer::decode`, the parser of `chains/<chain>/latest.json` as
//! any mirror serves it (decoded only after its signature checks, but a
//! publisher bug or a stolen key must still not crash a fetcher).
//!
//! Invariants: decoding never panics; a pointer that decodes re-encodes to
//! bytes that decode to the same pointer, and encoding is then stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsync_core::pointer::{Pointer, POINTER_FORMAT};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Pointer::decode(data, "fuzz") else {
        return;
    };
    assert_eq!(p.format, POINTER_FORMAT);
    let bytes = p.encode();
    let again = Pointer::decode(&bytes, "re-encoded").expect("an encoded pointer decodes");
    assert_eq!(again, p);
    assert_eq!(again.encode(), bytes, "encoding is stable");
});
