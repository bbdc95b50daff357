//! Fuzzes `parse_tar_name`, which reads the `<name>` of a `qsync serve`
//! request for `/tar/<chain>/<name>` (anyone who can reach the server
//! chooses it).
//!
//! Invariants: nothing panics; a name accepted is `latest` or a decimal
//! version, then nothing, `.tar` or `.tar.zst`, and printing what was parsed
//! gives back a name that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsync_core::keys::{parse_tar_name, TarVersion};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let Some((version, zst)) = parse_tar_name(name) else {
        return;
    };
    let stem = name
        .strip_suffix(".tar.zst")
        .or_else(|| name.strip_suffix(".tar"))
        .unwrap_or(name);
    assert_eq!(zst, name.ends_with(".tar.zst"), "{name:?}");
    match version {
        TarVersion::Latest => assert_eq!(stem, "latest", "{name:?}"),
        TarVersion::Number(n) => {
            assert!(stem.bytes().all(|b| b.is_ascii_digit()), "{name:?}");
            assert_eq!(stem.parse::<u64>().ok(), Some(n), "{name:?}");
        }
    }
    let printed = match version {
        TarVersion::Latest => "latest".to_string(),
        TarVersion::Number(n) => n.to_string(),
    };
    for ext in ["", ".tar", ".tar.zst"] {
        let again = parse_tar_name(&format!("{printed}{ext}"));
        assert_eq!(again, Some((version, ext == ".tar.zst")), "{printed}{ext}");
    }
});
