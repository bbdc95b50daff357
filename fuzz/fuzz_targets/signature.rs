//! Fuzzes minisign signature checking as a fetcher runs it on every
//! `.minisig` a mirror serves (`VerifyingKey::verify`), and the parsing of a
//! pinned public key given as `RW...` text (`VerifyingKey::load`, as from
//! `QSYNC_PUBLIC_KEY`).
//!
//! The key pair was made once with `minisign -G -W`; only the public half
//! and one genuine signature over [`MESSAGE`] are kept here.
//!
//! The first byte chooses the mode:
//! 0. the rest is the signature file, checked over [`MESSAGE`]: it may
//!    verify only if it carries the genuine signature and trusted comment;
//!    reading its key id (`KeyId::of_signature`, which picks the trusted key
//!    during a rotation) never panics and gives the genuine id when it verifies;
//! 1. the rest is the signed object, checked with the genuine signature: it
//!    may verify only if it is [`MESSAGE`] itself;
//! 2. the rest, after `RW`, is a public key: loading never panics, and a key
//!    that loads has a 16-hex-digit id and refuses the genuine signature
//!    unless it is the genuine key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minisign::SignatureBox;
use qsync_core::sign::{KeyId, VerifyingKey};
use qsync_core::ObjectKey;

const PUBLIC_KEY: &str = "RWRRZxh6OwlBpHOrPuCR9KTg3yRupGo1VV9I8Ib3NkpUzKb79ItBRXpX";
const KEY_ID: &str = "A441093B7A186751";
const MESSAGE: &[u8] = b"{\"format\":\"qsync-pointer/1\"}\n";
const SIGNATURE: &str = "untrusted comment: signature from minisign secret key
RURRZxh6OwlBpKtyP+lsyXL+FI7lvDgrWmNfzCc9U00jYQInCoJQOPosax2D37/oTO9vVqjOjlIaeft26qAXajrzjAcBrvmZgwE=
trusted comment: timestamp:1795000000\tfile:chains/eth/latest.json\tqsync
Zp116aGPT3QOV8YUs6bwzaeu8PDAUAAJzcnO5yE4zSBrudmgK0fjrKyDiQZ3xJc0DB9R1q0xOzw71MGIu883Dw==
";

fn genuine() -> SignatureBox {
    SignatureBox::from_string(SIGNATURE).expect("the genuine signature parses")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = VerifyingKey::load(PUBLIC_KEY).expect("the pinned key loads");
    let object = ObjectKey::new("chains/eth/latest.json").expect("valid key");
    match mode % 3 {
        0 => {
            let id = KeyId::of_signature(rest);
            if key.verify(&object, MESSAGE, rest).is_ok() {
                assert_eq!(id.map(|i| i.to_string()).as_deref(), Some(KEY_ID), "the key id of a verified signature");
                let text = std::str::from_utf8(rest).expect("a verified signature is text");
                let sig = SignatureBox::from_string(text).expect("a verified signature parses");
                // Everything but the untrusted comment is covered by the
                // signature, so it must be the genuine one, re-encoded.
                let signed = |b: SignatureBox| {
                    b.into_string()
                        .lines()
                        .skip(1)
                        .map(String::from)
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    signed(sig),
                    signed(genuine()),
                    "a forged signature or trusted comment verified"
                );
            }
        }
        1 => {
            if key.verify(&object, rest, SIGNATURE.as_bytes()).is_ok() {
                assert_eq!(rest, MESSAGE, "the signature verified other bytes");
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            // Only key text: a '/' or NUL could name a file to read instead.
            if text.contains(['/', '\0']) {
                return;
            }
            let Ok(other) = VerifyingKey::load(&format!("RW{text}")) else {
                return;
            };
            let id = other.id().to_string();
            assert!(
                id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
            if other.verify(&object, MESSAGE, SIGNATURE.as_bytes()).is_ok() {
                assert_eq!(id, KEY_ID, "another key verified the genuine signature");
            }
        }
    }
});
