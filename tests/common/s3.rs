//! A real S3 server for the tests: `s3s-fs` (installed by scripts/test.sh),
//! which checks SigV4 signatures, on a free loopback port, and helpers to
//! point `qsync` at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, wait_for_port};

pub const ACCESS_KEY: &str = "qsync-test";
pub const SECRET_KEY: &str = "qsync-test-secret-key";
pub const BUCKET: &str = "qsync-bucket";

/// An `s3s-fs` process serving `root` (one directory per bucket); killed on drop.
pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    child: Child,
}

impl S3Server {
    /// An authenticating server with bucket [`BUCKET`] under `root`.
    pub fn start(root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        Self::spawn(root, &["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
    }

    /// A second server over the same directory that lets anyone read: the
    /// bucket as a public HTTP origin.
    pub fn anonymous(&self) -> S3Server {
        Self::spawn(&self.root, &[])
    }

    fn spawn(root: &Path, auth: &[&str]) -> S3Server {
        require("s3s-fs");
        let port = free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(auth)
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "s3s-fs", Duration::from_secs(20));
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
            child,
        }
    }

    /// The store URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The bucket's files under `prefix` (s3s-fs keeps one file per object).
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.join(BUCKET).join(prefix)
    }

    /// Chunk objects under `prefix`.
    pub fn chunk_count(&self, prefix: &str) -> usize {
        let chunks = self.dir(prefix).join("chunks");
        std::fs::read_dir(&chunks)
            .map(|d| {
                d.map(|e| std::fs::read_dir(e.unwrap().path()).unwrap().count())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points `c` at `endpoint` with the test credentials, with nothing from the
/// developer's own AWS set-up leaking in.
pub fn aws_env<'a>(c: &'a mut Command, endpoint: &str) -> &'a mut Command {
    for v in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        c.env_remove(v);
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("QSYNC_S3_ENDPOINT", endpoint)
        .env("QSYNC_S3_PATH_STYLE", "true")
}
