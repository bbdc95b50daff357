//! The read-only commands and the demo: `verify` lists every bad object,
//! `ls` shows versions, `demo` runs the whole path, and usage mistakes get
//! messages that say what to do.

mod common;

use common::*;

#[test]
fn verify_lists_missing_and_corrupt_chunks() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 16);
    env.snapshot(&src, "eth", &[]);
    let verify = || {
        let mut c = qsync();
        c.args(["verify", "--chain", "eth", "--from"])
            .arg(&env.store)
            .arg("--public-key")
            .arg(&env.pk);
        run(c)
    };
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 problem(s)"), "{out}");

    let objects = env.chunk_objects();
    std::fs::remove_file(&objects[0]).unwrap();
    let mut bytes = std::fs::read(&objects[1]).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&objects[1], bytes).unwrap();
    let (code, out, err) = verify();
    assert_eq!(code, 3, "{out}{err}");
    let name = |p: &std::path::PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.contains(&name(&objects[0])) && out.contains("not found"),
        "{out}"
    );
    assert!(out.contains(&name(&objects[1])), "{out}");
    assert!(out.contains("2 problem(s)"), "{out}");
}

#[test]
fn ls_shows_versions_for_one_or_all_chains() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"1").unwrap();
    env.snapshot(&src, "eth", &["--height", "100"]);
    std::fs::write(src.join("f"), b"2").unwrap();
    env.snapshot(&src, "eth", &["--height", "200"]);
    env.snapshot(&src, "dot", &[]);
    let mut c = qsync();
    c.arg("ls")
        .arg("--from")
        .arg(&env.store)
        .arg("--public-key")
        .arg(&env.pk);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].starts_with("dot ") && lines[1].ends_with("(latest)"),
        "{out}"
    );
    assert!(
        lines[2].contains(" 2 ") && lines[2].contains("200") && lines[2].ends_with("(latest)"),
        "{out}"
    );
    assert!(lines[3].contains(" 1 ") && lines[3].contains("100"), "{out}");
}

#[test]
fn demo_runs_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = qsync();
    c.args(["demo", "--size-mib", "24", "--dir"])
        .arg(dir.path().join("demo"));
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    for stage in ["generate", "keygen", "snapshot", "serve", "restore", "verify"] {
        assert!(
            out.lines().any(|l| l.starts_with(stage)),
            "missing stage {stage}: {out}"
        );
    }
    assert!(out.contains("byte-identical"), "{out}");
}

#[test]
fn usage_mistakes_get_actionable_errors() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut bad_chain = env.snapshot_cmd(&src, "Eth Mainnet", &[]);
    bad_chain.env_remove("QSYNC_JSON");
    let (code, _, err) = run(bad_chain);
    assert_ne!(code, 0);
    assert!(
        err.contains("not a valid chain name") && err.contains("eth-mainnet"),
        "{err}"
    );

    let mut c = qsync();
    c.args([
        "snapshot",
        "--chain",
        "eth",
        "--store",
        "http://127.0.0.1:1/x",
        "--source",
    ])
    .arg(&src)
    .arg("--secret-key")
    .arg(&env.sk);
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(
        err.contains("read-only") && err.contains("directory path"),
        "{err}"
    );

    let mut c = qsync();
    c.args(["snapshot", "--chain", "eth", "--store"])
        .arg(&env.store)
        .arg("--source")
        .arg(env.path("nope"))
        .arg("--secret-key")
        .arg(&env.sk);
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");

    let mut c = qsync();
    c.args(["snapshot", "--chain", "eth", "--store"])
        .arg(&env.store)
        .arg("--source")
        .arg(&src)
        .arg("--secret-key")
        .arg(env.path("missing.sec"));
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(
        err.contains("missing.sec") && err.contains("qsync keygen"),
        "{err}"
    );
}

/// Every command runs with glibc's malloc told to unmap freed chunk-sized
/// blocks (`src/alloc.rs`): without it glibc's arenas keep them and RSS
/// grows with the data. The setting is made by re-executing the same
/// process (the pid a supervisor waits on stays the one it started), and
/// an operator's own `GLIBC_TUNABLES` is left alone.
#[test]
fn qsync_runs_with_the_allocator_settings_in_the_process_it_was_started_as() {
    let env = Env::new();
    let environ = |server: &Server| {
        let raw = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
        raw.split(|b| *b == 0)
            .filter_map(|v| {
                std::str::from_utf8(v)
                    .ok()?
                    .strip_prefix("GLIBC_TUNABLES=")
                    .map(String::from)
            })
            .collect::<Vec<_>>()
    };
    // glibc rewrites the variable in the process's own memory as it
    // parses it, so /proc shows at least its first tunable, not always all.
    let settings = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1";
    let ours = environ(&Server::start(&env.store));
    assert!(
        matches!(&ours[..], [v] if v.starts_with("glibc.malloc.mmap_threshold=4194304") && settings.starts_with(v.as_str())),
        "{ours:?}"
    );
    let mut theirs = Server::command(&env.store, &[]);
    theirs.env("GLIBC_TUNABLES", "glibc.malloc.arena_max=4");
    let theirs = Server::spawn(theirs);
    assert_eq!(environ(&theirs), ["glibc.malloc.arena_max=4"]);
}

/// The allocator settings are qsync's own: a freeze hook (which may well
/// restart the node) runs with the environment the operator gave, without
/// them, and with the operator's own `GLIBC_TUNABLES` when there is one.
#[test]
fn hooks_do_not_inherit_qsyncs_allocator_settings() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    let seen = env.path("hook-env");
    let script = format!("env > {:?}", seen.display().to_string());
    let cfg = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        &format!(
            "[chain.freeze]\nstrategy = \"hooks\"\npre = [\"sh\", \"-c\", {script:?}]\npost = [\"true\"]"
        ),
    );
    let hook_saw = |tunables: Option<&str>| {
        env.cycle(&cfg, "eth", |c| {
            if let Some(t) = tunables {
                c.env("GLIBC_TUNABLES", t);
            }
        });
        std::fs::read_to_string(&seen)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("GLIBC_TUNABLES=") || l.starts_with("QSYNC_ALLOCATOR"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(hook_saw(None), Vec::<String>::new());
    assert_eq!(
        hook_saw(Some("glibc.malloc.arena_max=4")),
        ["GLIBC_TUNABLES=glibc.malloc.arena_max=4"]
    );
}
