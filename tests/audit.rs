//! `qsync verify --dest`: a live node's data directory audited against the
//! snapshot its marker names: missing, changed and extra files, exit 7.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::Value;

fn audit(env: &Env, dest: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut c = qsync();
    c.args(["verify", "--chain", "eth", "--json", "--from"])
        .arg(&env.store)
        .arg("--public-key")
        .arg(&env.pk)
        .arg("--dest")
        .arg(dest)
        .args(extra);
    let (code, out, err) = run(c);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

/// A node's data directory restored from 8 MiB of sample data, as chain
/// `eth`.
fn restored(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    sample(&src, 8);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    env.restore("eth", &dest);
    dest
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_audit_names_every_missing_changed_and_extra_file_and_trusts_nothing_a_link_points_at() {
    let env = Env::new();
    let dest = restored(&env);

    let (code, r, err) = audit(&env, &dest, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (r["hashed"].clone(), r["trusted"].clone()),
        (r["files"].clone(), 0.into()),
        "{r}"
    );
    let (code, r, err) = audit(&env, &dest, &["--fast"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        r["trusted"], r["files"],
        "--fast hashed what the index vouches for: {r}"
    );

    let by_size = files_by_size(&dest, 64);
    let [flipped, gone, loose, linked] = [0, 1, 2, 3].map(|i| by_size[i].clone());
    // Rewritten in place with the same size and mtime: only its ctime and
    // contents say so.
    let p = dest.join(&flipped);
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::remove_file(dest.join(&gone)).unwrap();
    std::fs::set_permissions(dest.join(&loose), std::fs::Permissions::from_mode(0o666)).unwrap();
    // A link to an identical copy outside: not the file, however it reads.
    let outside = env.path("outside");
    std::fs::copy(dest.join(&linked), &outside).unwrap();
    std::fs::remove_file(dest.join(&linked)).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join(&linked)).unwrap();
    std::fs::write(dest.join("intruder"), b"x").unwrap();

    for depth in [&[][..], &["--fast"][..]] {
        let (code, r, err) = audit(&env, &dest, depth);
        assert_eq!(code, 7, "{depth:?}: {err}");
        let mut missing = names(&r["missing"]);
        missing.sort();
        let mut want = vec![gone.clone(), linked.clone()];
        want.sort();
        assert_eq!(missing, want, "{depth:?}: {r}");
        let changed = names(&r["changed"]);
        assert!(
            changed.contains(&format!("{flipped} (contents)")),
            "{depth:?}: {r}"
        );
        assert!(changed.contains(&format!("{loose} (mode)")), "{depth:?}: {r}");
        assert_eq!(changed.len(), 2, "{depth:?}: {r}");
        assert_eq!(names(&r["extra"]), vec!["intruder".to_string()], "{depth:?}: {r}");
        assert!(err.contains("restore into it again"), "{err}");
    }
    // The audit wrote nothing: the restore still repairs exactly this.
    let repaired = env.restore("eth", &dest);
    assert_eq!(repaired["removed"], 1, "{repaired}");
    assert_eq!(audit(&env, &dest, &[]).0, 0);
}

#[test]
fn an_audit_of_a_directory_without_a_completed_restore_says_what_to_do() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    std::fs::create_dir(&dest).unwrap();
    let (code, _, err) = audit(&env, &dest, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("--snapshot-version"), "{err}");
    // Against a named version it audits anyway: everything is missing.
    let (code, r, _) = audit(&env, &dest, &["--snapshot-version", "1"]);
    assert_eq!(code, 7);
    let files_missing = names(&r["missing"]).iter().filter(|p| !p.ends_with('/')).count();
    assert_eq!(files_missing as u64, r["files"].as_u64().unwrap());
}

#[test]
fn an_audit_sees_setuid_bits_hard_links_and_directories_out_of_place() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 4);
    std::fs::create_dir_all(src.join("empty/inner")).unwrap();
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    env.restore("eth", &dest);
    let by_size = files_by_size(&dest, 64);
    let [setuid, linked] = [0, 1].map(|i| by_size[i].clone());
    let mode = std::fs::metadata(dest.join(&setuid))
        .unwrap()
        .permissions()
        .mode();
    std::fs::set_permissions(dest.join(&setuid), std::fs::Permissions::from_mode(mode | 0o4000)).unwrap();
    std::fs::hard_link(dest.join(&linked), env.path("outside-link")).unwrap();
    // An empty directory swapped for a file, another loosened.
    std::fs::remove_dir(dest.join("empty/inner")).unwrap();
    std::fs::write(dest.join("empty/inner"), b"").unwrap();
    std::fs::set_permissions(dest.join("empty"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, r, err) = audit(&env, &dest, &[]);
    assert_eq!(code, 7, "{err}");
    let changed = names(&r["changed"]);
    assert!(changed.contains(&format!("{setuid} (mode)")), "{r}");
    assert!(changed.contains(&format!("{linked} (links)")), "{r}");
    assert!(changed.contains(&"empty/ (mode)".to_string()), "{r}");
    assert!(names(&r["missing"]).contains(&"empty/inner/".to_string()), "{r}");
}

/// A directory that took the setgid bit from its parent (what a volume
/// with a Kubernetes `fsGroup` does to everything under it) is as a
/// restore leaves it: no restore removes the bit, so the audit must not
/// call it changed and send the operator to a restore that changes
/// nothing.
#[test]
fn a_directory_with_an_inherited_setgid_bit_is_not_changed() {
    let env = Env::new();
    let dest = restored(&env);
    let dirs: Vec<_> = tree(&dest)
        .into_iter()
        .filter(|(_, (_, h))| h == "dir")
        .map(|(rel, _)| dest.join(rel))
        .collect();
    assert!(!dirs.is_empty());
    for d in &dirs {
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o2000)).unwrap();
    }
    let (code, r, err) = audit(&env, &dest, &[]);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["changed"], Value::Array(vec![]), "{r}");
}
