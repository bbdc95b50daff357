//! A real IPFS node for the tests: js-ipfs 0.66.1 (installed into
//! tests/ipfs-node by scripts/test.sh), with its own repository, its RPC API
//! and gateway on free loopback ports, and networking off (no swarm
//! addresses, no bootstrap peers, no discovery, `--offline`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, wait_for_port};

/// A running node; killed on drop.
pub struct IpfsNode {
    pub api: String,
    pub gateway: String,
    child: Child,
    _repo: tempfile::TempDir,
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ipfs-node")
}

fn jsipfs(repo: &Path) -> Command {
    let dir = node_dir();
    let bin = dir.join("node_modules/.bin/jsipfs");
    assert!(
        bin.exists(),
        "{} is missing; run ./scripts/test.sh, which installs js-ipfs (npm install in tests/ipfs-node)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("IPFS_PATH", repo).env(
        "NODE_OPTIONS",
        format!("--require {}", dir.join("polyfill.js").display()),
    );
    c
}

impl IpfsNode {
    pub fn start() -> IpfsNode {
        let repo = tempfile::tempdir().unwrap();
        let init = jsipfs(repo.path())
            .args(["init", "--empty-repo"])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "jsipfs init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let (api, gateway, rpc) = (free_port(), free_port(), free_port());
        let config_path = repo.path().join("config");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        let addresses = &mut config["Addresses"];
        addresses["Swarm"] = Value::Array(vec![]);
        addresses["Delegates"] = Value::Array(vec![]);
        addresses["API"] = format!("/ip4/127.0.0.1/tcp/{api}").into();
        addresses["Gateway"] = format!("/ip4/127.0.0.1/tcp/{gateway}").into();
        addresses["RPC"] = format!("/ip4/127.0.0.1/tcp/{rpc}").into();
        config["Bootstrap"] = Value::Array(vec![]);
        config["Discovery"]["MDNS"]["Enabled"] = false.into();
        config["Discovery"]["webRTCStar"]["Enabled"] = false.into();
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let child = jsipfs(repo.path())
            .args(["daemon", "--offline", "--enable-preload=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for port in [api, gateway] {
            wait_for_port(port, "js-ipfs", Duration::from_secs(90));
        }
        IpfsNode {
            api: format!("http://127.0.0.1:{api}"),
            gateway: format!("http://127.0.0.1:{gateway}"),
            child,
            _repo: repo,
        }
    }

    /// Calls the RPC API with `curl` (a second, independent client).
    pub fn rpc(&self, command: &str, query: &str, file: Option<&Path>) -> Value {
        let mut c = Command::new("curl");
        c.args(["-sf", "-X", "POST", "-m", "30"]);
        if let Some(f) = file {
            c.arg("-F")
                .arg(format!("file=@{};type=application/octet-stream", f.display()));
        }
        let out = c
            .arg(format!("{}/api/v0/{command}?{query}", self.api))
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}?{query} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl IpfsNode {
    /// The bytes the gateway serves at `/ipfs/<path>` (`None` unless 200).
    pub fn gateway_get(&self, path: &str) -> Option<Vec<u8>> {
        let out = Command::new("curl")
            .args(["-sf", "-m", "30", &format!("{}/ipfs/{path}", self.gateway)])
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// Every block under `/ipfs/<path>` (`refs -r -u`, the root not included).
    pub fn refs(&self, path: &str) -> BTreeSet<String> {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "-m", "60"])
            .arg(format!(
                "{}/api/v0/refs?arg={path}&recursive=true&unique=true",
                self.api
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "refs {path} failed");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["Ref"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Bytes of the blocks of the directory `cid` that the DAG under
    /// `shared` (an `/ipfs/` path) lacks: what the first costs the node's
    /// repository beyond the second.
    pub fn extra_bytes(&self, cid: &str, shared: &str) -> u64 {
        let size = |b: &str| {
            self.rpc("block/stat", &format!("arg={b}"), None)["Size"]
                .as_u64()
                .unwrap()
        };
        let shared = self.refs(shared);
        let below: u64 = (self.refs(&format!("/ipfs/{cid}")).difference(&shared))
            .map(|b| size(b))
            .sum();
        size(cid) + below
    }
}

impl Drop for IpfsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
