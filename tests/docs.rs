//! docs/operations.md is the configuration reference: every flag and every
//! environment variable the binary accepts must appear in it, so the page
//! cannot drift from the code.

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
