//! Fuzzes the chunk object decoders a restore and a pull-through cache run
//! on bytes from any mirror: `chunk::decode`, `StreamDecoder` (fed in pieces
//! cut at fuzzer-chosen points) and `verify_stored`.
//!
//! Input: one mode byte, three bytes of declared size (so at most 16 MiB,
//! the largest chunk a valid manifest allows), one byte of cut count, two
//! bytes per cut, then the payload. Mode bit 0 set: the payload is a
//! plaintext, encoded with `chunk::encode` and then optionally damaged (bit 1:
//! flip a byte, bit 2: truncate, bit 3: append), so the fuzzer reaches the
//! accepting paths; clear: the payload is the stored object itself, checked
//! against the digest of what it expands to, so a hostile frame that does
//! expand is judged on its size.
//!
//! Invariants: nothing panics; what `decode` accepts is exactly `size` bytes
//! hashing to the digest; `StreamDecoder` never accepts what `decode`
//! refuses, hands back the same plaintext in order, and accepts everything
//! `decode` accepts that is no longer than `stored_limit(size)` (streaming
//! also refuses over-long frames, as readers refuse over-long downloads);
//! `verify_stored` accepts what `decode` accepts; an undamaged encoding of
//! a plaintext always decodes to it.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use qsync_core::chunk::{self, stored_limit, StreamDecoder, ZSTD_MAGIC};
use qsync_core::{Digest, FormatError};

fn stream(stored: &[u8], size: u64, digest: Digest, cuts: &[usize]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    let mut take = |at: u64, plain: &[u8]| {
        assert_eq!(at, out.len() as u64, "plaintext arrives in order");
        out.extend_from_slice(plain);
    };
    let mut dec = StreamDecoder::new(size, digest);
    let mut from = 0;
    for &to in cuts.iter().chain([&stored.len()]) {
        if let Some((at, plain)) = dec.feed(&stored[from..to])? {
            take(at, &plain);
        }
        from = to;
    }
    if let Some((at, plain)) = dec.finish()? {
        take(at, &plain);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let mode = data[0];
    let declared = u64::from(u32::from_le_bytes([data[1], data[2], data[3], 0]));
    let ncuts = usize::from(data[4] % 8);
    let Some(cut_bytes) = data.get(5..5 + 2 * ncuts) else {
        return;
    };
    let payload = &data[5 + 2 * ncuts..];

    let (stored, size, digest, pristine) = if mode & 1 == 1 {
        let plain = payload.to_vec();
        let (_, mut stored) = chunk::encode(plain.clone(), 1);
        let mut damaged = false;
        if mode & 2 != 0 && !stored.is_empty() {
            let i = declared as usize % stored.len();
            stored[i] ^= mode | 1;
            damaged = true;
        }
        if mode & 4 != 0 {
            stored.truncate(declared as usize % (stored.len() + 1));
            damaged = true;
        }
        if mode & 8 != 0 {
            stored.push(mode);
            damaged = true;
        }
        let size = plain.len() as u64;
        let pristine = (!damaged).then_some(plain.clone());
        (stored, size, Digest::of(&plain), pristine)
    } else {
        // The digest of what the object expands to, so hostile frames that
        // do expand reach the size checks.
        let expanded: Cow<[u8]> = if payload.starts_with(&ZSTD_MAGIC) {
            match zstd::bulk::decompress(payload, 1 << 24) {
                Ok(p) => Cow::Owned(p),
                Err(_) => Cow::Borrowed(payload),
            }
        } else {
            Cow::Borrowed(payload)
        };
        let size = if mode & 2 != 0 {
            expanded.len() as u64
        } else {
            declared
        };
        (payload.to_vec(), size, Digest::of(&expanded), None)
    };

    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stored.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = chunk::decode(&stored, size, &digest).map(Cow::into_owned);
    let streamed = stream(&stored, size, digest, &cuts);
    if let Some(plain) = &pristine {
        assert_eq!(
            whole.as_ref().ok(),
            Some(plain),
            "an undamaged chunk did not decode"
        );
    }
    match (&whole, &streamed) {
        (Ok(w), Ok(s)) => assert_eq!(w, s, "streaming and whole decoding disagree"),
        (Err(_), Ok(_)) => panic!("streaming accepted a chunk that decode refuses"),
        (Ok(_), Err(e)) => assert!(
            stored.len() as u64 > stored_limit(size),
            "streaming refused a chunk that decode accepts: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
    if let Ok(w) = &whole {
        assert_eq!(w.len() as u64, size);
        assert_eq!(Digest::of(w), digest);
        chunk::verify_stored(&stored, &digest, size).expect("verify_stored refused a chunk decode accepts");
    }
    // Whatever it says, a cache check bounded by the largest chunk must not panic.
    let _ = chunk::verify_stored(&stored, &digest, 16 << 20);
});
