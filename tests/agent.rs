//! The snapshot agent against real chain databases: a ganache node (a real
//! LevelDB chain) stopped and restarted by hooks while it produces blocks,
//! published to a local directory and to S3 and restored into a fresh node
//! that must report the same head; and a RocksDB written continuously,
//! snapshotted with the hardlink strategy, that must reopen holding every
//! key written before the freeze.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::{aws_env, S3Server};
use common::*;
use serde_json::Value;

/// The ganache CLI installed by scripts/test.sh (npm, tests/chain-node).
fn ganache() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chain-node/node_modules/.bin/ganache");
    assert!(
        p.exists(),
        "ganache is not installed; run ./scripts/test.sh (npm install --prefix tests/chain-node)"
    );
    p
}

/// The result of a JSON-RPC call to the node on `port`; `None` when it
/// does not answer with JSON.
fn try_rpc(port: u16, method: &str, params: &str) -> Option<Value> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
    let out = Command::new("curl")
        .args(["-sf", "-H", "content-type: application/json", "-d", &body])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let reply = serde_json::from_slice::<Value>(&out.stdout).ok()?;
    Some(reply["result"].clone())
}

fn rpc(port: u16, method: &str, params: &str) -> Value {
    try_rpc(port, method, params).unwrap_or_else(|| panic!("{method} on :{port} failed"))
}

fn head(port: u16) -> (u64, String) {
    let b = rpc(port, "eth_getBlockByNumber", r#"["latest", false]"#);
    let n = u64::from_str_radix(b["number"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    (n, b["hash"].as_str().unwrap().to_string())
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Kills the process whose pid is in a file (a node a hook script started) on drop.
struct PidFileKiller(PathBuf);

impl Drop for PidFileKiller {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

/// A ganache node on `db` serving RPC on a free loopback port, without
/// timed block production (blocks only when asked); killed on drop.
struct Ganache {
    child: std::process::Child,
    port: u16,
}

impl Ganache {
    fn start(db: &Path) -> Ganache {
        let port = free_port();
        let child = Command::new(ganache())
            .arg("--database.dbPath")
            .arg(db)
            .args(["--server.host", "127.0.0.1", "--server.port", &port.to_string()])
            .args(["--wallet.deterministic", "--logging.quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let node = Ganache { child, port };
        wait_for_port(port, "ganache", Duration::from_secs(60));
        // The port opens before the node answers RPC (seen failing once in a
        // loaded suite): wait until it does.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while try_rpc(port, "eth_blockNumber", "[]").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "ganache on :{port} never answered RPC"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    /// The head of a fresh node opened on restored data.
    fn head_of(db: &Path) -> (u64, String) {
        head(Ganache::start(db).port)
    }
}

impl Drop for Ganache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ganache_stopped_by_hooks_restores_into_a_node_with_the_same_head() {
    require("curl");
    let ganache = ganache();
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let db = env.path("chain/db");
    let port = free_port();
    let dir = env.dir.path();
    // The node's own start and stop scripts, as an operator would have.
    let start = dir.join("start-node.sh");
    write_script(
        &start,
        &format!(
            "{} --database.dbPath {} --server.host 127.0.0.1 --server.port {port} --miner.blockTime 1 --wallet.deterministic --logging.quiet > {}/node.log 2>&1 < /dev/null &\necho $! > {}/node.pid",
            ganache.display(),
            db.display(),
            dir.display(),
            dir.display()
        ),
    );
    let rpc_url = format!("http://127.0.0.1:{port}");
    // Stop block production, record the head the database will hold, stop the node.
    let stop = dir.join("stop-node.sh");
    write_script(
        &stop,
        &format!(
            r#"curl -sf -H 'content-type: application/json' -d '{{"jsonrpc":"2.0","id":1,"method":"miner_stop","params":[]}}' {rpc_url} > /dev/null
curl -sf -H 'content-type: application/json' -d '{{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest",false]}}' {rpc_url} > {d}/head.rpc
pid=$(cat {d}/node.pid)
kill -INT $pid
while kill -0 $pid 2>/dev/null; do sleep 0.1; done"#,
            d = dir.display()
        ),
    );
    let head_cmd = format!(
        "python3 -c \"import json; r = json.load(open('{}/head.rpc'))['result']; print(json.dumps({{'height': int(r['number'], 16), 'block_hash': r['hash']}}))\"",
        dir.display()
    );
    std::fs::create_dir_all(&db).unwrap();
    let config = env.agent_config(
        "ganache",
        &db,
        &[env.store.display().to_string(), s3.url("snapshots")],
        &format!(
            r#"s3-endpoint = "{endpoint}"
s3-path-style = true

[chain.freeze]
strategy = "hooks"
pre = ["{stop}"]
post = ["{start}"]
timeout = "60s"

[chain.metadata]
command = ["sh", "-c", {head_cmd:?}]
"#,
            endpoint = s3.endpoint,
            stop = stop.display(),
            start = start.display(),
        ),
    );

    let _node = PidFileKiller(dir.join("node.pid"));
    assert!(Command::new(&start).status().unwrap().success());
    wait_for_port(port, "ganache", Duration::from_secs(60));
    let until = |h: u64| {
        let t = Instant::now();
        while head(port).0 < h {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the node stopped producing blocks"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until(3);

    let first = env.cycle(&config, "ganache", |c| {
        aws_env(c, &s3.endpoint);
    });
    // The post hook restarted the node, and it goes on producing blocks.
    wait_for_port(port, "restarted ganache", Duration::from_secs(60));
    let h1 = first["height"].as_u64().unwrap();
    until(h1 + 2);
    let second = env.cycle(&config, "ganache", |c| {
        aws_env(c, &s3.endpoint);
    });
    let (h2, hash2) = (
        second["height"].as_u64().unwrap(),
        second["block_hash"].as_str().unwrap().to_string(),
    );
    assert!(h2 >= h1 + 2, "heights {h1} then {h2}");
    assert_eq!(second["version"], 2);
    for s in second["stores"].as_array().unwrap() {
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["summary"]["version"], 2, "{s}");
    }
    assert!(second["freeze_seconds"].as_f64().unwrap() > 0.0);

    // Restore from S3 into a fresh directory and open it in a fresh node.
    let dest = env.path("restored");
    let mut r = env.restore_cmd(&s3.url("snapshots"), "ganache", &dest);
    aws_env(&mut r, &s3.endpoint).env("QSYNC_S3_PATH_STYLE", "true");
    let (code, _, err) = run(r);
    assert_eq!(code, 0, "restore from S3: {err}");
    let restored = Ganache::head_of(&dest);
    assert_eq!(
        restored,
        (h2, hash2),
        "the restored node's head is the snapshot's"
    );
}

#[test]
fn rocksdb_written_continuously_snapshots_with_hardlinks() {
    let ok = Command::new("python3")
        .args(["-c", "import rocksdict"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "rocksdict is not installed; run ./scripts/test.sh (pip install rocksdict)"
    );
    let env = Env::new();
    let dir = env.dir.path();
    let db = env.path("rocks/db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let writer = dir.join("writer.py");
    std::fs::write(
        &writer,
        r#"
import os, signal, sys
from rocksdict import Rdict, Options
path, progress = sys.argv[1], sys.argv[2]
opt = Options()
opt.create_if_missing(True)
opt.set_write_buffer_size(64 * 1024)
db = Rdict(path, opt)
i = int(open(progress).read()) if os.path.exists(progress) else 0
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
while not stop:
    db[f"k{i:08d}"] = os.urandom(512)
    i += 1
    if i % 20 == 0:
        with open(progress + ".tmp", "w") as f:
            f.write(str(i))
        os.replace(progress + ".tmp", progress)
db.close()
with open(progress + ".tmp", "w") as f:
    f.write(str(i))
os.replace(progress + ".tmp", progress)
"#,
    )
    .unwrap();
    let d = dir.display();
    let start = dir.join("start.sh");
    write_script(
        &start,
        &format!(
            "python3 {d}/writer.py {} {d}/progress > {d}/writer.log 2>&1 < /dev/null &\necho $! > {d}/writer.pid",
            db.display()
        ),
    );
    let stop = dir.join("stop.sh");
    write_script(
        &stop,
        &format!(
            "pid=$(cat {d}/writer.pid)\nkill -TERM $pid\nwhile kill -0 $pid 2>/dev/null; do sleep 0.05; done\ncp {d}/progress {d}/frozen-count"
        ),
    );
    let config = env.agent_config(
        "rocks",
        &db,
        &[env.store.display().to_string()],
        &format!(
            "[chain.freeze]\nstrategy = \"hardlink\"\npre = [{:?}]\npost = [{:?}]\n",
            stop.display().to_string(),
            start.display().to_string()
        ),
    );
    let _writer = PidFileKiller(dir.join("writer.pid"));
    assert!(Command::new(&start).status().unwrap().success());
    let count = || {
        std::fs::read_to_string(dir.join("progress"))
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let t = Instant::now();
    while count() < 3000 {
        assert!(t.elapsed() < Duration::from_secs(60), "the writer is not writing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = env.cycle(&config, "rocks", |_| {});
    let frozen: u64 = std::fs::read_to_string(dir.join("frozen-count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The writer runs again and keeps changing the source during the upload.
    let t = Instant::now();
    while count() < frozen + 500 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the writer did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(report["strategy"], "hardlink");
    assert!(
        !env.path("rocks/.qsync-staging-rocks").exists(),
        "staging is removed after the cycle"
    );

    let dest = env.path("restored");
    env.restore("rocks", &dest);
    let check = Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
from rocksdict import Rdict
db = Rdict("{}")
missing = [i for i in range({frozen}) if db.get(f"k{{i:08d}}") is None]
db.close()
print(len(missing))
"#,
            dest.display()
        ))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the restored RocksDB does not open: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "0",
        "keys written before the freeze are missing"
    );
    let ssts = std::fs::read_dir(&dest)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sst")
        })
        .count();
    assert!(ssts > 0, "the test should exercise hard-linked .sst files");
}

#[test]
fn path_strategy_reads_the_checkpoint_and_records_the_head_from_rpc() {
    require("curl");
    let env = Env::new();
    let db = env.path("chain/db");
    let checkpoint = env.path("chain/checkpoint");
    std::fs::create_dir_all(&db).unwrap();
    let node = Ganache::start(&db);
    let port = node.port;
    for _ in 0..5 {
        rpc(port, "evm_mine", "[]");
    }
    let config = env.agent_config(
        "ganache",
        &db,
        &[env.store.display().to_string()],
        &format!(
            r#"[chain.freeze]
strategy = "path"
pre = ["sh", "-c", "rm -rf {ck} && cp -a {db} {ck}"]
path = "{ck}"

[chain.metadata]
kind = "ethereum"
rpc = "http://127.0.0.1:{port}"
"#,
            db = db.display(),
            ck = checkpoint.display(),
        ),
    );
    let expected = head(port);
    let report = env.cycle(&config, "ganache", |_| {});
    assert_eq!(report["strategy"], "path");
    assert_eq!(
        (
            report["height"].as_u64().unwrap(),
            report["block_hash"].as_str().unwrap().to_string()
        ),
        expected
    );
    // The node went on running; what was published is the checkpoint.
    rpc(port, "evm_mine", "[]");
    assert_eq!(
        report["files"].as_u64().unwrap() as usize,
        files(&checkpoint).len()
    );

    let dest = env.path("restored");
    env.restore("ganache", &dest);
    assert_eq!(files(&dest), files(&checkpoint));
    assert_eq!(
        Ganache::head_of(&dest),
        expected,
        "the restored node's head is the recorded one"
    );
}
