//! Publishing keeps its promises against hostile or broken surroundings: a
//! chain whose name collides with the GC lease, a lease left by another
//! machine that shares our hostname, a lease taken over while a publish is
//! under way, and S3 servers that ignore conditional writes (moto 4.2, a
//! real server that answers 200 to a failed `If-None-Match`/`If-Match`),
//! beside servers that honour them (s3s-fs, moto 5).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::moto::Moto;
use common::s3::*;
use common::*;
use serde_json::Value;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Where a lease on `chain`'s publishes lives (`locks/publish/<chain>.json`;
/// releases before the GC lease moved out of its way used `locks/<chain>.json`).
fn lease_paths(store: &Path, chain: &str) -> [PathBuf; 2] {
    [
        store.join(format!("locks/publish/{chain}.json")),
        store.join(format!("locks/{chain}.json")),
    ]
}

fn write_lease(path: &Path, body: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(body).unwrap()).unwrap();
}

#[test]
fn a_chain_named_gc_publishes_with_gc_on() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    let cfg = env.agent_config(
        "gc",
        &src,
        &[env.store.display().to_string()],
        "[chain.retention]\nkeep-last = 1\ngc = true\ngc-grace = \"0s\"",
    );
    for version in 1..=2u64 {
        let mut c = qsync();
        c.args(["snapshot", "--once", "--json", "--chain", "gc", "--config"])
            .arg(&cfg);
        // A lease lasts 3 minutes: a chain waiting on its own lease hangs past this.
        let (code, out, err) = run_bounded(c, Duration::from_secs(90), "a cycle of chain gc");
        assert_eq!(code, 0, "cycle {version} of chain gc failed: {err}\n{out}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["version"], version);
        assert!(r["stores"][0]["gc"].is_object(), "garbage was collected: {r}");
        assert!(r["stores"][0]["gc"]["deferred"].is_null(), "{r}");
        mutate(&src, 20, Some(version));
    }
    assert!(
        !env.store.join("locks/gc.json").exists(),
        "the GC lease was released"
    );
}

#[test]
fn a_lease_of_another_machine_with_the_same_hostname_is_not_taken_over() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    // Same hostname, a pid that runs nowhere here, but another boot: a
    // second machine (or container) named like us, still publishing.
    let until = qsync_core::time::Timestamp::now().plus(Duration::from_secs(600));
    let dead = u32::MAX - 1;
    let lease = serde_json::json!({
        "holder": format!("{}:{dead}:0badf00d", hostname()),
        "purpose": "publish eth",
        "expires_at": until.to_string(),
        "machine": {
            "boot_id": "00000000-0000-4000-8000-000000000000",
            "pid_ns": "pid:[1]",
            "pid": dead,
            "start_time": 1,
        },
    });
    for p in lease_paths(&env.store, "eth") {
        write_lease(&p, &lease);
    }
    let (code, _, err) = run(env.snapshot_cmd(&src, "eth", &[]));
    assert_ne!(code, 0, "the other machine's lease was taken over");
    assert!(err.contains("held by"), "{err}");
    assert!(!env.pointer_path("eth").exists(), "no pointer was written");

    // The same lease from this machine's boot and pid namespace, whose
    // holder no longer runs, is taken over at once.
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let mut ours = lease.clone();
    ours["machine"]["boot_id"] = boot_id.trim().into();
    ours["machine"]["pid_ns"] = pid_ns.to_string_lossy().into_owned().into();
    for p in lease_paths(&env.store, "eth") {
        write_lease(&p, &ours);
    }
    let r = env.snapshot(&src, "eth", &[]);
    assert_eq!(r["version"], 1);
}

#[test]
fn a_publisher_whose_lease_was_taken_over_does_not_move_the_pointer() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 2);
    let first = env.snapshot(&src, "eth", &[]);
    assert_eq!(first["version"], 1);
    let pointer = std::fs::read(env.pointer_path("eth")).unwrap();

    // The post hook runs after every chunk is uploaded and before the
    // manifest and pointer are written: there another agent takes the lease.
    let until = qsync_core::time::Timestamp::now().plus(Duration::from_secs(600));
    let usurper = serde_json::json!({
        "holder": "elsewhere:4242:00000000",
        "purpose": "publish eth",
        "expires_at": until.to_string(),
    })
    .to_string();
    let [new, old] = lease_paths(&env.store, "eth");
    let script =
        format!("for f in {new:?} {old:?}; do [ -f \"$f\" ] && printf '%s' '{usurper}' > \"$f\"; done; true");
    mutate(&src, 30, Some(9));
    let cfg = env.agent_config(
        "eth",
        &src,
        &[env.store.display().to_string()],
        &format!(
            "[chain.freeze]\nstrategy = \"hooks\"\npre = [\"true\"]\npost = [\"sh\", \"-c\", {script:?}]\n[chain.retention]\ngc = false"
        ),
    );
    let mut c = qsync();
    c.args(["snapshot", "--once", "--json", "--chain", "eth", "--config"])
        .arg(&cfg);
    let (code, out, err) = run_bounded(c, Duration::from_secs(120), "a cycle");
    assert_ne!(code, 0, "the cycle published without its lease: {out}");
    assert_eq!(
        std::fs::read(env.pointer_path("eth")).unwrap(),
        pointer,
        "the pointer moved without the lease"
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    let e = r["stores"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains("lease") && e.contains("elsewhere"), "{e}\n{err}");
}

/// An agent configuration with one chain per (name, store URL, endpoint).
fn s3_config(env: &Env, src: &Path, chains: &[(&str, &str, &str)], extra: &str) -> PathBuf {
    let mut text = format!(
        "[agent]\nlisten = \"127.0.0.1:0\"\nstate-dir = {:?}\n",
        env.path("agent-state").display().to_string()
    );
    for (name, url, endpoint) in chains {
        text.push_str(&format!(
            "\n[[chain]]\nname = {name:?}\nsource = {:?}\nsecret-key = {:?}\nstores = [{url:?}]\nschedule = \"0 0 0 1 1 *\"\ns3-endpoint = {endpoint:?}\ns3-path-style = true\n{extra}\n",
            src.display().to_string(),
            env.sk.display().to_string(),
        ));
    }
    let path = env.path("s3.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn agent_check(_env: &Env, cfg: &Path, endpoint: &str) -> (i32, String, String) {
    let mut c = qsync();
    c.args(["agent", "--check", "--config"]).arg(cfg);
    aws_env(&mut c, endpoint);
    run_bounded(c, Duration::from_secs(120), "agent --check")
}

#[test]
fn a_server_that_ignores_conditional_writes_is_refused_unless_lease_only() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    let moto = Moto::ignoring_conditions();
    let url = format!("s3://{BUCKET}/old-ceph");

    let mut c = env.snapshot_to(&src, &url, "eth");
    aws_env(&mut c, &moto.endpoint);
    let (code, out, err) = run_bounded(c, Duration::from_secs(120), "snapshot");
    assert_ne!(code, 0, "published to a server without conditional writes: {out}");
    assert!(
        err.contains("does not honour If-None-Match/If-Match") && err.contains("--lease-only"),
        "{err}"
    );

    let cfg = s3_config(&env, &src, &[("eth", &url, &moto.endpoint)], "");
    let (code, out, err) = agent_check(&env, &cfg, &moto.endpoint);
    assert_ne!(code, 0, "agent --check passed: {out}");
    assert!(
        out.contains("If-None-Match") || err.contains("If-None-Match"),
        "{out}\n{err}"
    );

    // The operator opts into lease-only safety: the publish goes ahead (and
    // is the first version: the refused run wrote no pointer).
    let mut c = env.snapshot_to(&src, &url, "eth");
    aws_env(&mut c, &moto.endpoint).arg("--lease-only");
    let (code, out, err) = run_bounded(c, Duration::from_secs(120), "snapshot --lease-only");
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["version"], 1, "{r}");

    let cfg = s3_config(&env, &src, &[("eth", &url, &moto.endpoint)], "lease-only = true");
    let (code, out, err) = agent_check(&env, &cfg, &moto.endpoint);
    assert_eq!(code, 0, "agent --check with lease-only: {out}\n{err}");
    assert!(out.contains("lease-only"), "{out}");
}

#[test]
fn s3s_fs_and_current_moto_pass_the_probe_and_agent_check_contacts_every_store() {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    let s3 = S3Server::start(&env.path("s3"));
    let moto = Moto::current();
    for endpoint in [&s3.endpoint, &moto.endpoint] {
        let mut c = env.snapshot_to(&src, &s3.url("probe"), "eth");
        aws_env(&mut c, endpoint);
        let (code, _, err) = run_bounded(c, Duration::from_secs(120), "snapshot");
        assert_eq!(code, 0, "{endpoint}: {err}");
    }
    assert!(
        !s3.dir("probe/probes").exists()
            || std::fs::read_dir(s3.dir("probe/probes"))
                .unwrap()
                .next()
                .is_none(),
        "the probe object was deleted"
    );

    let cfg = s3_config(&env, &src, &[("eth", &s3.url("checked"), &s3.endpoint)], "");
    let (code, out, err) = agent_check(&env, &cfg, &s3.endpoint);
    assert_eq!(code, 0, "{out}\n{err}");
    for what in ["credentials", "bucket", "write", "conditional writes"] {
        assert!(out.contains(what), "agent --check does not report {what}: {out}");
    }
    assert!(out.contains(&s3.url("checked")), "{out}");

    // A bucket that does not exist fails the check, naming the store.
    let missing = "s3://no-such-bucket/x";
    let cfg = s3_config(&env, &src, &[("eth", missing, &s3.endpoint)], "");
    let (code, out, err) = agent_check(&env, &cfg, &s3.endpoint);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(missing) || err.contains(missing), "{out}\n{err}");
    // Wrong credentials too.
    let cfg = s3_config(&env, &src, &[("eth", &s3.url("checked"), &s3.endpoint)], "");
    let mut c = qsync();
    c.args(["agent", "--check", "--config"]).arg(&cfg);
    aws_env(&mut c, &s3.endpoint).env("AWS_SECRET_ACCESS_KEY", "wrong");
    let (code, out, err) = run_bounded(c, Duration::from_secs(120), "agent --check");
    assert_ne!(code, 0, "{out}\n{err}");
}
