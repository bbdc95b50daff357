//! Fuzzes the `Range` header parsing `qsync serve` relies on: tower-http's
//! ServeDir hands the header and the file's length to the
//! `http-range-header` crate (`parse_range_header` then `validate`), and
//! reads from the file whatever ranges come back.
//!
//! Input: eight bytes of file length (little-endian; the fuzzer also gets
//! small lengths, where off-by-ones live), then the header value.
//!
//! Invariants: nothing panics; every range that validates lies inside the
//! file (start <= end < length) and they do not overlap. One exception is
//! known and pinned: for an empty file, `bytes=0-` and `bytes=0-N` validate
//! to `0..=0`, a range of a byte the file does not have; ServeDir then
//! answers 206 with `Content-Length: 0` and an empty body (it special-cases
//! length 0), so nothing is read out of bounds. The target accepts exactly
//! that and nothing else for length 0.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let raw = u64::from_le_bytes(*len);
    // Half the inputs get a length below 256, the rest any length.
    let file_len = if raw & 1 == 0 { (raw >> 1) % 256 } else { raw >> 1 };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Ok(parsed) = http_range_header::parse_range_header(header) else {
        return;
    };
    let Ok(ranges) = parsed.validate(file_len) else {
        return;
    };
    assert!(!ranges.is_empty(), "{header:?} validated to no range");
    if file_len == 0 {
        assert!(
            ranges.iter().all(|r| *r == (0..=0)),
            "{header:?} on an empty file validated to {ranges:?}"
        );
        return;
    }
    for r in &ranges {
        assert!(
            r.start() <= r.end() && *r.end() < file_len,
            "{header:?} on a {file_len}-byte file validated to {r:?}, outside the file"
        );
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            assert!(
                a.end() < b.start() || b.end() < a.start(),
                "{header:?}: {a:?} and {b:?} overlap"
            );
        }
    }
});
