//! moto's server for the tests: a second real S3 implementation beside
//! s3s-fs (it does not check SigV4, the test credentials go unchecked) and
//! the local CloudFront API. moto 5 comes from PyPI into the system python;
//! moto 4.2, which ignores conditional writes, into tests/moto4/venv (both
//! installed by scripts/test.sh).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::s3::BUCKET;
use super::{free_port, wait_for_port};

/// A moto server on a free loopback port; killed on drop.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    fn start(program: &str, args: &[&str]) -> Moto {
        let port = free_port();
        let child = Command::new(program)
            .args(args)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}; run ./scripts/test.sh, which installs it"));
        wait_for_port(port, "moto", Duration::from_secs(30));
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// moto 5 with no bucket (for the CloudFront API).
    pub fn bare() -> Moto {
        Moto::start("python3", &["-m", "moto.server"])
    }

    /// moto 5, which honours conditional writes, with bucket [`BUCKET`].
    pub fn current() -> Moto {
        Moto::bare().with_bucket()
    }

    /// moto 4.2, which ignores `If-None-Match` and `If-Match` on PutObject
    /// and answers 200, with bucket [`BUCKET`].
    pub fn ignoring_conditions() -> Moto {
        let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto4/venv/bin/moto_server");
        assert!(
            Path::new(program).exists(),
            "{program} is missing; run ./scripts/test.sh, which installs moto 4.2 there"
        );
        Moto::start(program, &[]).with_bucket()
    }

    fn with_bucket(self) -> Moto {
        let out = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{BUCKET}", self.endpoint)])
            .output()
            .unwrap();
        assert!(out.status.success(), "creating the bucket in moto failed");
        self
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
