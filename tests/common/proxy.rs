//! A fault-injecting HTTP proxy on loopback, for mirror failover tests.
//!
//! One request per connection: it reads the request line, and for chunk
//! objects draws a fault: a 503, a connection closed without an answer, a
//! stall of `stall_secs` (bounded), or the upstream answer with one body
//! byte flipped. Everything else is forwarded to the upstream `qsync serve`.
//! Counts of each fault are kept so tests can check faults really happened.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-mille chances of each fault, for chunk requests.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    pub error: u64,
    pub reset: u64,
    pub stall: u64,
    pub corrupt: u64,
}

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub corrupted: AtomicU64,
}

pub struct FaultProxy {
    pub url: String,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`) with `faults`.
    pub fn start(upstream: &str, faults: Faults, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = seed | 1;
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (c, up) = (c.clone(), upstream.clone());
                std::thread::spawn(move || handle(conn, &up, faults, rng % 1000, &c));
            }
        });
        FaultProxy { url, counts, stop }
    }

    pub fn count(&self, f: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        f(&self.counts).load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

fn handle(mut conn: TcpStream, upstream: &str, faults: Faults, draw: u64, counts: &Counts) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Some(head) = read_head(&mut conn) else { return };
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("GET").to_string(),
        words.next().unwrap_or("/").to_string(),
    );
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let chunk = path.starts_with("/chunks/");
    let mut edge = 0;
    let mut hit = |per_mille: u64| {
        edge += per_mille;
        chunk && draw < edge
    };
    if hit(faults.error) {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        let _ = conn
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    if hit(faults.reset) {
        counts.resets.fetch_add(1, Ordering::Relaxed);
        return; // dropped without an answer
    }
    if hit(faults.stall) {
        counts.stalls.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(8));
        return;
    }
    let corrupt = hit(faults.corrupt);
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let request = format!("{method} {path} HTTP/1.1\r\nhost: {upstream}\r\nconnection: close\r\n\r\n");
    if up.write_all(request.as_bytes()).is_err() {
        return;
    }
    let mut response = Vec::new();
    if up.read_to_end(&mut response).is_err() {
        return;
    }
    if corrupt {
        if let Some(body) = response.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            if body < response.len() {
                let i = body + (response.len() - body) / 2;
                response[i] ^= 0x20;
                counts.corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = conn.write_all(&response);
}
