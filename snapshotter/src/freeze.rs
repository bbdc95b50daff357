//! Holding the node still while it is read: running the operator's pre and
//! post hooks with timeouts, and the hardlink strategy's staging copy.
//!
//! The strategies differ in what is read and when the node thaws
//! ([`crate::cycle`] drives them): `hooks` reads the source while frozen,
//! `hardlink` freezes only while [`stage`] hard-links the immutable files and
//! copies the rest, `path` reads the copy the pre hook made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::scan::scan;
use crate::SnapshotError;

/// A freeze or thaw hook that did not succeed. Cloneable (its causes are
/// kept as text) because the post hook's result is both recorded for the
/// cycle report and returned to the publish it gates.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The program could not be started.
    #[error("{what} hook {program:?} could not start: {reason}")]
    Start {
        /// `pre` or `post`.
        what: &'static str,
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// It ran and exited unsuccessfully; `tail` holds its last output lines.
    #[error("{what} hook {command:?} failed ({status}){}", if tail.is_empty() { String::new() } else { format!(": {tail}") })]
    Failed {
        /// `pre` or `post`.
        what: &'static str,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its last lines of output, joined with ` | `.
        tail: String,
    },
    /// Waiting for it failed.
    #[error("{what} hook {program:?}: {reason}")]
    Wait {
        /// `pre` or `post`.
        what: &'static str,
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// It ran past its timeout and was killed with its process group.
    #[error("{what} hook {command:?} did not finish within {timeout:?} and was killed; raise freeze.timeout or fix the hook")]
    TimedOut {
        /// `pre` or `post`.
        what: &'static str,
        /// The command line.
        command: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Runs `argv` to completion within `timeout`; the child is killed (with
/// its process group) when it takes longer. Its stdout and stderr go to the
/// agent's log; the error carries their last lines.
pub async fn run_hook(what: &'static str, argv: &[String], timeout: Duration) -> Result<(), HookError> {
    let Some(program) = argv.first() else {
        return Ok(());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| HookError::Start {
        what,
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let collect = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut a), err.read_to_end(&mut b));
        a.extend_from_slice(&b);
        a
    };
    let run = async { tokio::join!(child.wait(), collect) };
    match tokio::time::timeout(timeout, run).await {
        Ok((status, output)) => {
            let output = String::from_utf8_lossy(&output);
            let tail: Vec<&str> = output.lines().rev().take(5).collect();
            let tail: String = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            if !output.trim().is_empty() {
                tracing::info!("{what} hook: {}", output.trim());
            }
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(HookError::Failed {
                    what,
                    command: argv.join(" "),
                    status: s.to_string(),
                    tail,
                }),
                Err(e) => Err(HookError::Wait {
                    what,
                    program: program.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        Err(_) => {
            if let Some(pid) = child.id() {
                // The whole group: a shell hook's children must not outlive it.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            let _ = child.kill().await;
            Err(HookError::TimedOut {
                what,
                command: argv.join(" "),
                timeout,
            })
        }
    }
}

/// Whether `name` matches the shell pattern `pat` (`*` any run, `?` one character).
pub fn matches(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What [`stage`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Staged {
    /// Files hard-linked.
    pub linked: u64,
    /// Files copied.
    pub copied: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
}

/// The default staging directory: `.qsync-staging-<chain>` beside `source`.
pub fn default_staging(source: &Path, chain: &str) -> PathBuf {
    let parent = source.parent().unwrap_or(Path::new("/"));
    parent.join(format!(".qsync-staging-{chain}"))
}

/// Blocking: rebuilds `staging` as a copy of `source` in which files whose
/// names match `immutable` are hard links and the rest are copies. Runs
/// while the node is frozen, so it only touches metadata and small files.
pub fn stage(source: &Path, staging: &Path, immutable: &[String]) -> Result<Staged, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Source { path, source }
    };
    clear(staging)?;
    let listing = scan(source)?;
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    for (rel, _) in &listing.dirs {
        let d = staging.join(rel);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let mut done = Staged::default();
    for (i, f) in listing.files.iter().enumerate() {
        let to = staging.join(&*f.path);
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        if immutable.iter().any(|p| matches(p, name)) {
            std::fs::hard_link(listing.path(i), &to).map_err(|e| {
                if e.raw_os_error() == Some(18) {
                    SnapshotError::Unsupported {
                        path: to.clone(),
                        what: format!(
                            "cannot hard-link {} across filesystems; set freeze.staging to a directory on the source's filesystem",
                            listing.path(i).display()
                        ),
                    }
                } else {
                    SnapshotError::Source { path: to.clone(), source: e }
                }
            })?;
            done.linked += 1;
        } else {
            done.bytes_copied += std::fs::copy(listing.path(i), &to).map_err(io(&listing.path(i)))?;
            done.copied += 1;
        }
    }
    // Directory modes last: a read-only directory could not be filled.
    for (rel, mode) in &listing.dirs {
        use std::os::unix::fs::PermissionsExt;
        let d = staging.join(rel);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(*mode)).map_err(io(&d))?;
    }
    Ok(done)
}

/// Removes a staging directory left by an earlier cycle.
pub fn clear(staging: &Path) -> Result<(), SnapshotError> {
    match std::fs::remove_dir_all(staging) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SnapshotError::Source {
            path: staging.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn shell_patterns() {
        assert!(matches("*.sst", "000123.sst"));
        assert!(!matches("*.sst", "000123.sst.tmp"));
        assert!(matches("MANIFEST-*", "MANIFEST-000002"));
        assert!(matches("?.ldb", "a.ldb"));
        assert!(!matches("?.ldb", "ab.ldb"));
        assert!(matches("*", ""));
        assert!(matches("*a*b", "xxaxxb"));
    }

    #[test]
    fn stage_links_immutable_files_and_copies_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("db");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/1.sst"), b"table").unwrap();
        std::fs::write(src.join("LOG"), b"log").unwrap();
        let staging = d.path().join("staging");
        std::fs::create_dir_all(staging.join("stale")).unwrap();
        let s = stage(&src, &staging, &["*.sst".into()]).unwrap();
        assert_eq!((s.linked, s.copied, s.bytes_copied), (1, 1, 3));
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&src.join("sub/1.sst")), ino(&staging.join("sub/1.sst")));
        assert_ne!(ino(&src.join("LOG")), ino(&staging.join("LOG")));
        assert!(!staging.join("stale").exists());
    }

    #[tokio::test]
    async fn hooks_fail_with_their_output_and_time_out() {
        let sh = |c: &str| vec!["sh".to_string(), "-c".into(), c.into()];
        run_hook("pre", &sh("true"), Duration::from_secs(5))
            .await
            .unwrap();
        let e = run_hook("pre", &sh("echo disk busy >&2; exit 4"), Duration::from_secs(5))
            .await
            .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("disk busy") && e.contains("pre hook"), "{e}");
        let t = std::time::Instant::now();
        let e = run_hook("post", &sh("sleep 30 & sleep 30"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = run_hook("pre", &["/no/such/hook".into()], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("could not start"), "{e}");
    }
}
