//! docs/operations.md is the configuration reference: every flag, every
//! environment variable the binary accepts and every key of the agent's
//! TOML file must appear in it (and every TOML key in the example config),
//! so neither can drift from the code. docs/security.md is the security
//! model: every test it names as a defence's proof must exist.

mod common;

use common::qsync;

fn help(args: &[&str]) -> String {
    let out = qsync().args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_and_env_var_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let commands = [
        vec!["keygen"],
        vec!["snapshot"],
        vec!["agent"],
        vec!["gc"],
        vec!["restore"],
        vec!["verify"],
        vec!["ls"],
        vec!["serve"],
        vec!["demo"],
        vec!["sample", "generate"],
        vec!["sample", "mutate"],
    ];
    let mut checked = 0;
    for cmd in &commands {
        let text = help(cmd);
        assert!(
            doc.contains(&format!("qsync {}", cmd[0])),
            "docs lack a section for qsync {}",
            cmd[0]
        );
        for word in text.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == ',') {
            let word = word.trim_matches(['=', ':', '.', '(', ')']);
            let flag = word.starts_with("--") && word.len() > 2 && word != "--help" && word != "--version";
            let env = word.starts_with("QSYNC_");
            if flag || env {
                assert!(
                    doc.contains(word),
                    "docs/operations.md does not mention {word} (qsync {})",
                    cmd.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "parsed only {checked} flags from --help");
}

#[test]
fn boolean_env_vars_accept_one_and_zero() {
    // Kubernetes manifests commonly say QSYNC_INIT=1; clap's default only takes true/false.
    for (value, ok) in [
        ("1", true),
        ("0", true),
        ("yes", true),
        ("true", true),
        ("maybe", false),
    ] {
        let out = qsync()
            .args(["ls", "--from", "/nonexistent", "--public-key", "RWQ"])
            .env("QSYNC_JSON", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(!err.contains("invalid value"), ok, "QSYNC_JSON={value}: {err}");
    }
}

/// The TOML keys the agent's configuration structs accept, read from their
/// source: every `pub` field of a struct that denies unknown fields, with `_` as `-`.
fn config_keys() -> Vec<String> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshotter/src/config.rs")).unwrap();
    let mut keys = Vec::new();
    let (mut in_struct, mut serde_strict) = (false, false);
    for line in src.lines() {
        if line.starts_with("#[serde(") {
            serde_strict = line.contains("deny_unknown_fields");
        }
        if line.starts_with("pub struct ") {
            in_struct = serde_strict && line.ends_with('{');
            serde_strict = false;
            continue;
        }
        if line == "}" {
            in_struct = false;
        }
        if let Some(field) = line.strip_prefix("    pub ").filter(|_| in_struct) {
            let name = field.split(':').next().unwrap().trim();
            keys.push(if name == "chains" {
                "chain".into()
            } else {
                name.replace('_', "-")
            });
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_in_the_example() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/qsync.example.toml")).unwrap();
    let keys = config_keys();
    assert!(keys.len() > 30, "parsed only {} keys from config.rs", keys.len());
    for key in &keys {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/operations.md does not document the config key `{key}`"
        );
        assert!(
            example.contains(key.as_str()),
            "qsync.example.toml does not show the config key {key}"
        );
    }
}

/// Every test docs/security.md names as a defence's proof exists: a
/// `file::test` is `fn test` in `tests/file.rs`; a `qsync_crate::module::...::test`
/// is `fn test` in that crate's `src/module.rs`; a "fuzz target `x`" is
/// `fuzz/fuzz_targets/x.rs`.
#[test]
fn every_test_the_security_model_names_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let mut named = 0;
    for row in doc.lines().filter(|l| l.starts_with('|')) {
        let Some(tests) = row.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        for name in tests.split('`').skip(1).step_by(2) {
            let parts: Vec<&str> = name.split("::").collect();
            let (file, test) = match parts.as_slice() {
                // A fuzz target, checked below.
                [_] => continue,
                [file, test] => (root.join("tests").join(format!("{file}.rs")), *test),
                [krate, modules @ .., test] if krate.starts_with("qsync_") => {
                    let mut src = root.join(krate.trim_start_matches("qsync_")).join("src");
                    for m in modules.iter().filter(|m| **m != "tests") {
                        src.push(m);
                    }
                    let file = src.with_extension("rs");
                    (if file.exists() { file } else { src.join("mod.rs") }, *test)
                }
                _ => panic!("docs/security.md names {name}: neither file::test nor qsync_crate::path::test"),
            };
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("docs/security.md names {name}: {}: {e}", file.display()));
            assert!(
                text.contains(&format!("fn {test}(")),
                "docs/security.md names {name}, but {} has no fn {test}",
                file.display()
            );
            named += 1;
        }
        for target in tests.split("fuzz target").skip(1) {
            for t in target.split('`').skip(1).step_by(2).take(1) {
                assert!(
                    root.join("fuzz/fuzz_targets").join(format!("{t}.rs")).exists(),
                    "docs/security.md names fuzz target {t}, which fuzz/fuzz_targets lacks"
                );
            }
        }
    }
    assert!(named > 40, "only {named} tests named in docs/security.md");
}
