//! `qsync serve` under hostile or broken clients and upstreams: stalled tar
//! readers must not starve object requests or each other, `/tar` applies
//! restore's rules (no setuid/setgid here; its expiry rule is unit-tested
//! with a fixed clock in `qsync_cdn::serve::tar`), a bad upstream signature is
//! never cached as immutable, and half-sent requests are closed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn published(mib: u64) -> (Env, PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    sample(&src, mib);
    env.snapshot(&src, "eth", &[]);
    (env, src)
}

fn pk(env: &Env) -> String {
    env.pk.to_str().unwrap().to_string()
}

/// `curl` with a time limit: (HTTP status, response headers, body).
fn curl(url: &str, limit_secs: u32) -> (String, String, Vec<u8>) {
    require("curl");
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-s", "--max-time", &limit_secs.to_string(), "-w", "%{http_code}"])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .arg(url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read_to_string(&head).unwrap_or_default().to_lowercase(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// `curl URL | tar -x -C dest` within `limit_secs`; true when both succeed.
fn curl_tar(url: &str, dest: &Path, limit_secs: u32) -> bool {
    std::fs::create_dir_all(dest).unwrap();
    let script = format!(
        "set -o pipefail; curl -sSf --max-time {limit_secs} '{url}' | tar -x -C '{}'",
        dest.display()
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap()
        .success()
}

fn addr(server: &Server) -> String {
    server.url.strip_prefix("http://").unwrap().to_string()
}

/// Some chunk object of the store, by key.
fn some_chunk_key(env: &Env) -> String {
    let first = env.chunk_objects().into_iter().next().expect("a chunk object");
    first
        .strip_prefix(&env.store)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn stalled_tar_streams_starve_neither_objects_nor_other_streams() {
    let (env, src) = published(24);
    let server = Server::start_with(&env.store, &["--public-key", &pk(&env)]);
    // 24 clients ask for the whole snapshot and never read a byte.
    let stalled: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            s.write_all(b"GET /tar/eth/latest HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (status, _, _) = curl(&format!("{}/{}", server.url, some_chunk_key(&env)), 15);
    assert_eq!(
        status, "200",
        "a chunk GET did not answer while tar streams stalled"
    );
    let (status, _, _) = curl(&format!("{}/healthz", server.url), 15);
    assert_eq!(status, "200", "/healthz did not answer");
    let dest = env.path("untarred");
    assert!(
        curl_tar(&format!("{}/tar/eth/latest", server.url), &dest, 120),
        "a full tar stream did not complete beside stalled ones"
    );
    assert_eq!(tree(&src), tree(&dest));
    drop(stalled);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let (env, _) = published(24);
    let server = Server::start_with(&env.store, &["--public-key", &pk(&env), "--send-timeout", "2s"]);
    let mut s = TcpStream::connect(addr(&server)).unwrap();
    s.write_all(b"GET /tar/eth/latest HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read nothing while socket buffers fill and the server stalls.
    std::thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut total, mut buf) = (0usize, vec![0u8; 1 << 16]);
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stalled stream was not closed ({total} bytes read): {e}"),
        }
    }
    assert!(
        total < 24 << 20,
        "the whole archive was sent to a client that stopped reading"
    );
}

/// (mode, type flag) of every entry of a tar archive, by name (GNU long names resolved).
fn tar_modes(archive: &[u8]) -> std::collections::BTreeMap<String, (u32, u8)> {
    let octal = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
    };
    let mut out = std::collections::BTreeMap::new();
    let (mut at, mut long_name) = (0, None::<String>);
    while at + 512 <= archive.len() && archive[at..at + 512].iter().any(|&b| b != 0) {
        let h = &archive[at..at + 512];
        let size = octal(&h[124..136]) as usize;
        let data = &archive[at + 512..at + 512 + size];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        if h[156] == b'L' {
            long_name = Some(String::from_utf8_lossy(data).trim_end_matches('\0').to_string());
        } else {
            let name = long_name.take().unwrap_or(name);
            out.insert(name, (octal(&h[100..108]) as u32, h[156]));
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn tar_applies_restores_modes_no_setuid_or_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("src");
    sample(&src, 1);
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(src.join("bin"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    let long = format!("{}/deep.bin", "d".repeat(120));
    std::fs::create_dir_all(src.join("d".repeat(120))).unwrap();
    std::fs::write(src.join(&long), b"long path").unwrap();
    env.snapshot(&src, "eth", &[]);
    let server = Server::start_with(&env.store, &["--public-key", &pk(&env)]);
    let (status, _, archive) = curl(&format!("{}/tar/eth/latest", server.url), 60);
    assert_eq!(status, "200");
    let modes = tar_modes(&archive);
    assert_eq!(modes.get("bin/tool"), Some(&(0o755, b'0')), "{modes:?}");
    assert_eq!(modes.get("bin/"), Some(&(0o750, b'5')), "{modes:?}");
    assert!(modes.contains_key(&long), "{modes:?}");
}

#[test]
fn bad_upstream_signature_is_not_cached_for_a_year() {
    let (env, src) = published(4);
    let upstream = Server::start(&env.store);
    let cache = env.path("cache");
    let mirror = Server::start_with(
        &upstream.url,
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--public-key",
            &pk(&env),
            "--pointer-max-age",
            "1s",
        ],
    );
    // Upstream serves a broken manifest signature once.
    let sig = PathBuf::from(format!("{}.minisig", env.manifest_path("eth").display()));
    let good = std::fs::read_to_string(&sig).unwrap();
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    let flipped: String = lines[1]
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    lines[1] = flipped;
    std::fs::write(&sig, lines.join("\n") + "\n").unwrap();
    let key = sig
        .strip_prefix(&env.store)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let (status, head, _) = curl(&format!("{}/{key}", mirror.url), 15);
    assert_eq!(status, "200");
    // Upstream is repaired; within the short max-age the mirror follows.
    std::fs::write(&sig, good).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        !head.contains("immutable") && !head.contains("31536000"),
        "an unverified signature was served as immutable: {head}"
    );
    assert!(head.contains("max-age=1"), "{head}");
    // Refetched and verified over the manifest, it is immutable now.
    let (status, head, _) = curl(&format!("{}/{key}", mirror.url), 15);
    assert_eq!(status, "200");
    assert!(
        head.contains("immutable"),
        "a verified signature stayed short-lived: {head}"
    );
    // A pointer's signature verifies over the version its name gives.
    let pointer = std::fs::read(env.pointer_path("eth")).unwrap();
    let b3 = blake3::hash(&pointer).to_hex();
    let (status, head, _) = curl(
        &format!("{}/chains/eth/latest.json.sigs/{b3}.minisig", mirror.url),
        15,
    );
    assert_eq!(status, "200");
    assert!(head.contains("immutable"), "{head}");
    let dest = env.path("dest");
    let (code, _, err) = run(env.restore_cmd(&mirror.url, "eth", &dest));
    assert_eq!(code, 0, "restore through the cache after the fix: {err}");
    assert_eq!(tree(&src), tree(&dest));
}

#[test]
fn half_sent_requests_are_closed_after_the_header_timeout() {
    let (env, _) = published(1);
    let server = Server::start(&env.store);
    let started = Instant::now();
    let half: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            s.write_all(b"GET /healthz HT").unwrap();
            s
        })
        .collect();
    let (status, _, _) = curl(&format!("{}/{}", server.url, some_chunk_key(&env)), 10);
    assert_eq!(
        status, "200",
        "a normal request did not answer beside half-sent ones"
    );
    // The default --header-timeout is 10 s: every one is closed well within 30 s.
    let limit = Duration::from_secs(30);
    for mut s in half {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a half-sent request was still open after {limit:?}: {e}"),
            }
        }
    }
}

#[test]
fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let (env, _) = published(1);
    let server = Server::start_with(&env.store, &["--max-connections", "8", "--header-timeout", "2s"]);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr(&server)).unwrap())
        .collect();
    // The ninth is answered once the header timeout frees a slot.
    let (status, _, _) = curl(&format!("{}/healthz", server.url), 20);
    assert_eq!(status, "200");
    drop(idle);
}
