//! `restore --dry-run`: the plan of a restore, with nothing written in the
//! destination or the state directory, and exactly what the restore then
//! does.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Every entry under `root` with its kind, size, mode, mtime and content
/// digest: any write, create, delete or chmod changes it.
fn snapshot_of(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_file() {
                blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string()
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                format!(
                    "{:o} {} {} {body}",
                    m.mode(),
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                ),
            );
        }
    }
    out
}

fn dry_run(env: &Env, dest: &Path) -> (i32, Value, String) {
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", dest);
    c.arg("--dry-run");
    let (code, out, err) = run(c);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[test]
fn a_dry_run_writes_nothing_and_predicts_what_the_restore_does() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 16);
    env.snapshot(&src, "eth", &["--chunk-size", "256"]);
    let dest = env.path("dest");

    // Nothing there: nothing is created, not even the state directory.
    let (code, plan, err) = dry_run(&env, &dest);
    assert_eq!(code, 0, "{err}");
    assert!(!dest.exists() && !env.state.exists(), "a dry run created files");
    assert_eq!(plan["destination"], "absent");
    assert_eq!(plan["bytes_to_fetch"], plan["bytes_total"]);
    assert!(plan["space_available"].as_u64().unwrap() > 0);

    env.restore("eth", &dest);
    mutate(&src, 10, None);
    env.snapshot(&src, "eth", &["--chunk-size", "256"]);
    std::fs::write(dest.join("stray.log"), b"not in the snapshot").unwrap();
    let (dest_before, state_before) = (snapshot_of(&dest), snapshot_of(&env.state));

    let (code, plan, err) = dry_run(&env, &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        snapshot_of(&dest),
        dest_before,
        "the dry run changed the destination"
    );
    assert_eq!(
        snapshot_of(&env.state),
        state_before,
        "the dry run changed the state dir"
    );
    assert_eq!(plan["version"], 2, "{plan}");
    assert_eq!(plan["destination"], "complete (chain eth version 1)", "{plan}");
    let remove = plan["remove"].as_array().unwrap();
    assert!(remove.contains(&Value::from("stray.log")), "{plan}");
    assert!(plan["bytes_kept"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["pointer_from"].as_str().unwrap().contains("store"), "{plan}");

    // The restore then does exactly what was planned.
    let done = env.restore("eth", &dest);
    assert_eq!(
        done["bytes_fetched"], plan["bytes_to_fetch"],
        "plan {plan}\nrestore {done}"
    );
    assert_eq!(
        done["bytes_reused"], plan["bytes_kept"],
        "plan {plan}\nrestore {done}"
    );
    assert_eq!(done["chunks_fetched"], plan["chunks_to_fetch"]);
    assert_eq!(done["removed"].as_u64().unwrap(), remove.len() as u64);
    assert_eq!(files(&dest), files(&src));

    // Complete now: the plan says so.
    let (_, plan, _) = dry_run(&env, &dest);
    assert_eq!(plan["already_complete"], true, "{plan}");
    assert_eq!(plan["bytes_to_fetch"], 0);
}

#[test]
fn a_dry_run_into_data_qsync_did_not_write_says_the_restore_would_refuse() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 4);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("precious"), b"keep me").unwrap();
    let (code, plan, err) = dry_run(&env, &dest);
    assert_ne!(code, 0);
    assert_eq!(plan["destination"], "foreign", "{plan}");
    assert!(plan["refused"].as_str().unwrap().contains("--force"), "{plan}");
    assert!(
        err.contains("would fail") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(std::fs::read(dest.join("precious")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
}

#[test]
fn a_dry_run_lists_entries_of_the_wrong_kind_that_the_restore_replaces() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 4);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    env.restore("eth", &dest);
    // A link where a directory belongs, a directory where a file does.
    let dir = files(&dest)
        .into_keys()
        .find_map(|p| p.rsplit_once('/').map(|(d, _)| d.to_string()))
        .unwrap();
    let file = files(&dest)
        .into_keys()
        .find(|p| !p.starts_with(&format!("{dir}/")))
        .unwrap();
    std::fs::rename(dest.join(&dir), env.path("moved")).unwrap();
    std::os::unix::fs::symlink(env.path("moved"), dest.join(&dir)).unwrap();
    std::fs::remove_file(dest.join(&file)).unwrap();
    std::fs::create_dir_all(dest.join(&file).join("x")).unwrap();
    let before = snapshot_of(&dest);
    let (code, plan, err) = dry_run(&env, &dest);
    assert_eq!(code, 0, "{err}");
    assert_eq!(snapshot_of(&dest), before);
    let remove: Vec<&str> = plan["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        remove.contains(&dir.as_str()) && remove.contains(&file.as_str()),
        "{plan}"
    );
    assert!(
        !remove.iter().any(|r| r.starts_with(&format!("{file}/"))),
        "{plan}"
    );
    let done = env.restore("eth", &dest);
    assert_eq!(
        done["bytes_fetched"], plan["bytes_to_fetch"],
        "plan {plan}\nrestore {done}"
    );
    assert_eq!(files(&dest), files(&src));
}

#[test]
fn a_dry_run_refuses_what_the_restore_would_and_never_runs_as_an_init_container() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    env.snapshot(&src, "eth", &[]);
    let dest = env.path("dest");
    // The state dir inside the destination: the restore refuses it.
    let mut c = qsync();
    c.args(["restore", "--chain", "eth", "--json", "--dry-run", "--from"])
        .arg(&env.store)
        .arg("--public-key")
        .arg(&env.pk)
        .arg("--dest")
        .arg(&dest)
        .arg("--state-dir")
        .arg(dest.join("state"));
    std::fs::create_dir(&dest).unwrap();
    let (code, out, err) = run(c);
    assert_eq!(code, 4, "{err}");
    assert!(out.contains("--state-dir"), "{out}");
    // In an init container a dry run would let the node start on nothing.
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.args(["--dry-run", "--init"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}
