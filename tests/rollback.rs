//! A deliberate rollback: `restore --snapshot-version N` restores an older
//! snapshot the pointer still keeps, over a newer restore, and is refused
//! with the kept versions listed when the pointer no longer keeps it.

mod common;

use common::*;

#[test]
fn restore_an_older_kept_version_on_purpose() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    env.snapshot(&src, "eth", &[]);
    let v1 = files(&src);
    mutate(&src, 20, None);
    env.snapshot(&src, "eth", &[]);
    let v2 = files(&src);
    assert_ne!(v1, v2);

    let dest = env.path("dest");
    assert_eq!(env.restore("eth", &dest)["version"], 2);
    assert_eq!(files(&dest), v2);

    // Back to version 1, over the restore of version 2 (a top-up in reverse).
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.args(["--snapshot-version", "1"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["version"], 1);
    assert!(err.contains("not the latest"), "the rollback is logged: {err}");
    assert_eq!(files(&dest), v1);

    // Init mode with a pinned version does not take the version-1 restore as
    // fresh for version 2, and vice versa.
    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &dest);
    c.env("QSYNC_INIT", "1").env("QSYNC_SNAPSHOT_VERSION", "2");
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), v2);

    let mut c = env.restore_cmd(env.store.to_str().unwrap(), "eth", &env.path("other"));
    c.args(["--snapshot-version", "7"]);
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(err.contains("not kept") && err.contains("2, 1"), "{err}");
}
