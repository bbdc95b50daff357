//! Shared helpers for the end-to-end tests: run the real `qsync` binary in an
//! isolated environment, compare trees, start `qsync serve`, and require the
//! external tools the tests check against (installed by scripts/test.sh).
#![allow(dead_code)]

pub mod ipfs;
pub mod moto;
pub mod proxy;
pub mod s3;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A scratch area with a key pair, a store and a state dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub sk: PathBuf,
    pub pk: PathBuf,
    pub store: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// Starts a `--concurrency 1` restore of chain "eth" from `url` and
    /// returns once it has planned (it then holds DEST and writes its
    /// journal); its stderr is drained to the end so it never writes into
    /// a closed pipe.
    pub fn start_planned_restore(&self, url: &str, dest: &Path) -> Child {
        let mut cmd = self.restore_cmd(url, "eth", dest);
        cmd.args(["--concurrency", "1", "-v"]).env("RUST_LOG", "info");
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut last = std::collections::VecDeque::new();
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("planned:") {
                    let _ = tx.send(Ok(()));
                }
                if last.len() == 5 {
                    last.pop_front();
                }
                last.push_back(line);
            }
            let _ = tx.send(Err(Vec::from(last).join("\n")));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(())) => child,
            Ok(Err(tail)) => panic!("restore ended before planning finished:\n{tail}"),
            Err(e) => panic!("restore did not plan within a minute: {e}"),
        }
    }

    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
        let out = qsync()
            .args(["keygen", "--secret-key"])
            .arg(&sk)
            .arg("--public-key")
            .arg(&pk)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let store = dir.path().join("store");
        let state = dir.path().join("state");
        Env {
            dir,
            sk,
            pk,
            store,
            state,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `qsync snapshot --json` of `src` as chain `chain`; panics on failure.
    pub fn snapshot(&self, src: &Path, chain: &str, extra: &[&str]) -> Value {
        let out = self.snapshot_cmd(src, chain, extra).output().unwrap();
        assert!(
            out.status.success(),
            "snapshot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("snapshot --json prints JSON")
    }

    pub fn snapshot_cmd(&self, src: &Path, chain: &str, extra: &[&str]) -> Command {
        let mut c = self.snapshot_to(src, self.store.to_str().unwrap(), chain);
        c.args(extra);
        c
    }

    /// A `qsync snapshot --json` command of `src` as `chain` into any store URL.
    pub fn snapshot_to(&self, src: &Path, store: &str, chain: &str) -> Command {
        let mut c = qsync();
        c.arg("snapshot")
            .arg("--source")
            .arg(src)
            .args(["--store", store]);
        c.arg("--secret-key")
            .arg(&self.sk)
            .args(["--chain", chain, "--json"]);
        c
    }

    /// A `qsync restore --json` command from `from` into `dest`.
    pub fn restore_cmd(&self, from: &str, chain: &str, dest: &Path) -> Command {
        let mut c = qsync();
        c.args(["restore", "--from", from, "--chain", chain, "--json"])
            .arg("--public-key")
            .arg(&self.pk);
        c.arg("--dest").arg(dest).arg("--state-dir").arg(&self.state);
        c
    }

    /// Restores from the local store; panics on failure.
    pub fn restore(&self, chain: &str, dest: &Path) -> Value {
        let out = self
            .restore_cmd(self.store.to_str().unwrap(), chain, dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("restore --json prints JSON")
    }

    pub fn manifest_path(&self, chain: &str) -> PathBuf {
        let p: Value = serde_json::from_slice(&std::fs::read(self.pointer_path(chain)).unwrap()).unwrap();
        self.store.join(p["current"]["manifest_key"].as_str().unwrap())
    }

    /// Every chunk object in the store, sorted.
    pub fn chunk_objects(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(self.store.join("chunks"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|e| e.unwrap().path())
            .collect();
        all.sort();
        all
    }

    /// Writes an agent configuration for `chain`: this env's key and a state
    /// dir in it, `source`, `stores`, a schedule that does not fire unless
    /// `extra` sets one, then `extra` (more chain keys, then sub-tables).
    pub fn agent_config(&self, chain: &str, source: &Path, stores: &[String], extra: &str) -> PathBuf {
        let path = self.path(&format!("{chain}.toml"));
        let stores: Vec<String> = stores.iter().map(|s| format!("{s:?}")).collect();
        let schedule = if extra.contains("schedule =") {
            ""
        } else {
            "schedule = \"0 0 0 1 1 *\"\n"
        };
        let text = format!(
            "[agent]\nlisten = \"127.0.0.1:0\"\nstate-dir = {:?}\n\n[[chain]]\nname = {chain:?}\nsource = {:?}\nsecret-key = {:?}\nstores = [{}]\n{schedule}{extra}\n",
            self.path("agent-state").display().to_string(),
            source.display().to_string(),
            self.sk.display().to_string(),
            stores.join(", ")
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs one cycle of `chain` as `config` says (`snapshot --config
    /// --once --json`), after `adjust` (environment, say); panics on failure.
    pub fn cycle(&self, config: &Path, chain: &str, adjust: impl FnOnce(&mut Command)) -> Value {
        let mut c = qsync();
        c.args(["snapshot", "--once", "--json", "--chain", chain, "--config"])
            .arg(config);
        adjust(&mut c);
        // A hook or a node that hangs fails the test instead of the suite.
        let (code, out, err) = run_bounded(c, std::time::Duration::from_secs(300), "an agent cycle");
        assert_eq!(code, 0, "cycle of {chain} failed: {err}\n{out}");
        serde_json::from_str(&out).unwrap()
    }

    pub fn pointer_path(&self, chain: &str) -> PathBuf {
        self.store.join(format!("chains/{chain}/latest.json"))
    }

    /// Rewrites the pointer of `chain` in the local `store` with `change`
    /// and signs it with this environment's key, as a publisher would:
    /// tests make a validly signed pointer that expired an hour ago
    /// instead of sleeping until one does.
    pub fn resign_pointer(
        &self,
        store: &Path,
        chain: &str,
        change: impl FnOnce(&mut qsync_core::pointer::Pointer),
    ) {
        let key = qsync_core::ObjectKey::pointer(&qsync_core::ChainName::new(chain).unwrap());
        let path = store.join(key.as_str());
        let mut p = qsync_core::pointer::Pointer::decode(&std::fs::read(&path).unwrap(), "test").unwrap();
        change(&mut p);
        let body = p.encode();
        let sk = qsync_core::sign::SigningKey::load(&self.sk).unwrap();
        let sig = store.join(key.signature_for(&body).as_str());
        std::fs::create_dir_all(sig.parent().unwrap()).unwrap();
        std::fs::write(sig, sk.sign(&key, &body)).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

/// The binary under test, with no QSYNC_* variables leaking in.
/// `QSYNC_TEST_BINARY` runs the tests against another build (an older one,
/// to show that a regression test fails without its fix).
pub fn qsync() -> Command {
    let bin = std::env::var_os("QSYNC_TEST_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_qsync").into());
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("QSYNC_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(mut c: Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into(),
        String::from_utf8_lossy(&stderr).into(),
    )
}

/// Runs `c` to its end with no stdin, like [`run`], but fails the test as a
/// hang (after killing it) when it is still running after `limit`.
pub fn run_bounded(mut c: Command, limit: std::time::Duration, what: &str) -> (i32, String, String) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} was still running after {limit:?}: a hang");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

/// Every entry under `root` (markers excluded): path -> (mode, BLAKE3 or "dir").
pub fn tree(root: &Path) -> BTreeMap<String, (u32, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel.starts_with(".qsync-restore") {
                continue;
            }
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = m.permissions().mode() & 0o777;
            if m.is_dir() {
                out.insert(rel, (mode, "dir".into()));
                walk(root, &e.path(), out);
            } else {
                let h = blake3::hash(&std::fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string();
                out.insert(rel, (mode, h));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Files only (no directories, whose modes a restore may widen for the owner).
pub fn files(root: &Path) -> BTreeMap<String, (u32, String)> {
    tree(root).into_iter().filter(|(_, (_, h))| h != "dir").collect()
}

/// The files under `root` larger than `more_than` bytes, smallest first
/// (then by path), as paths relative to it.
pub fn files_by_size(root: &Path, more_than: u64) -> Vec<String> {
    let mut by_size: Vec<(u64, String)> = files(root)
        .into_keys()
        .map(|p| (std::fs::metadata(root.join(&p)).unwrap().len(), p))
        .filter(|(len, _)| *len > more_than)
        .collect();
    by_size.sort();
    by_size.into_iter().map(|(_, p)| p).collect()
}

pub fn has_marker(dest: &Path) -> bool {
    dest.join(".qsync-restore.json").exists()
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Generates chain-like sample data with `qsync sample generate`.
pub fn sample(dir: &Path, mib: u64) -> Value {
    let out = qsync()
        .args(["sample", "generate", "--size-mib", &mib.to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Rewrites `percent` of the sample in `dir` (`qsync sample mutate`, with
/// its seed when given); returns its JSON summary (`bytes_changed`, ...).
pub fn mutate(dir: &Path, percent: u32, seed: Option<u64>) -> Value {
    let mut c = qsync();
    c.args(["sample", "mutate", "--percent", &percent.to_string()]);
    if let Some(seed) = seed {
        c.args(["--seed", &seed.to_string()]);
    }
    let out = c.arg("--dir").arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Panics with an install hint when an external tool is missing.
/// What the stock `b3sum` prints for each of `paths` under `dir`: path -> hex.
pub fn b3sums<'a>(
    dir: &Path,
    paths: impl IntoIterator<Item = &'a str>,
) -> std::collections::HashMap<String, String> {
    require("b3sum");
    let mut cmd = Command::new("b3sum");
    cmd.current_dir(dir).args(paths);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").unwrap();
            (p.to_string(), h.to_string())
        })
        .collect()
}

/// An hour before now, as the format writes times.
pub fn an_hour_ago() -> qsync_core::time::Timestamp {
    qsync_core::time::Timestamp(qsync_core::time::Timestamp::now().0 - 3600)
}

pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is not installed; run ./scripts/test.sh, which installs it (apt-get install {tool})"
    );
}

/// A TCP proxy in front of a mirror that passes its answers at most
/// `bytes_per_sec` in all, however many connections share it: a restore
/// from it lasts long enough to be interrupted at points defined by its
/// progress, however fast the machine. Its threads end with the test
/// process.
pub struct Throttle {
    pub url: String,
}

impl Throttle {
    pub fn start(upstream_url: &str, bytes_per_sec: u64) -> Throttle {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let upstream = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // When the link is free again: each write books its time on it.
        let free_at = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut asks, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut asks, &mut to_server);
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let free_at = free_at.clone();
                std::thread::spawn(move || {
                    let (mut answers, mut to_client) = (server, client);
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n @ 1..) = answers.read(&mut buf) {
                        let send_at = {
                            let mut free = free_at.lock().unwrap();
                            let at = (*free).max(std::time::Instant::now());
                            *free = at + std::time::Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                            at
                        };
                        std::thread::sleep(send_at.saturating_duration_since(std::time::Instant::now()));
                        if to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Write);
                });
            }
        });
        let slash = if upstream_url.ends_with('/') { "/" } else { "" };
        Throttle {
            url: format!("http://127.0.0.1:{port}{slash}"),
        }
    }
}

/// A `qsync serve` child process; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(store: &Path) -> Server {
        Self::start_with(store, &[])
    }

    pub fn start_with(store: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Server {
        Self::spawn(Self::command(store, extra))
    }

    /// The `qsync serve` command [`Server::start_with`] runs, to adjust first.
    pub fn command(store: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Command {
        let mut c = qsync();
        c.args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(extra);
        c
    }

    /// Runs `serve` (a `qsync serve` command) and waits for its URL.
    pub fn spawn(mut serve: Command) -> Server {
        Self::adopt(serve.stdout(Stdio::piped()).spawn().unwrap())
    }

    /// A `qsync serve` already started with its stdout piped: waits for its URL.
    pub fn adopt(mut child: Child) -> Server {
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "unexpected serve banner {line:?}"
        );
        Server { child, url }
    }
}

impl Server {
    /// The process id of the `qsync serve` child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the counter lines starting with `line_prefix` on a `qsync
/// serve` /metrics page (0 when there is none).
pub fn metric(url: &str, line_prefix: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-sf"])
        .arg(format!("{url}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port` (a server a test started).
pub fn wait_for_port(port: u16, what: &str, limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < limit, "{what} did not start within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
