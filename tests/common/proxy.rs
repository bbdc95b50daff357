//! A fault-injecting HTTP proxy on loopback, for mirror failover tests.
//!
//! One request per connection: it reads the request, and for chunk objects
//! (GET or PUT, any prefix) draws a fault: a 503, a connection closed without
//! an answer, a stall, or (for GETs) the upstream answer with one body byte
//! flipped. Everything else is forwarded verbatim, headers and body, to the
//! upstream (`qsync serve` or an S3 server, whose signatures still verify).
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
    /// Requests carrying `x-amz-request-payer: requester`.
    pub requester_pays: AtomicU64,
    /// Requests carrying an `Authorization` header.
    pub authorized: AtomicU64,
}

pub struct FaultProxy {
    pub url: String,
    pub counts: Arc<Counts>,
    pub gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
}

/// Holds chunk GETs past the first `pass` until `open` is set: a test can
/// stop the upstream at a known point of a client's run.
pub struct Gate {
    pub pass: AtomicU64,
    pub seen: AtomicU64,
    pub held: AtomicU64,
    pub open: AtomicBool,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            pass: AtomicU64::new(u64::MAX),
            seen: AtomicU64::new(0),
            held: AtomicU64::new(0),
            open: AtomicBool::new(false),
        }
    }
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`) with `faults`.
    pub fn start(upstream: &str, faults: Faults, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let counts = Arc::new(Counts::default());
        let gate = Arc::new(Gate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, g) = (counts.clone(), stop.clone(), gate.clone());
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
                let (c, up, g) = (c.clone(), upstream.clone(), g.clone());
                std::thread::spawn(move || handle(conn, &up, faults, rng % 1000, &c, &g));
            }
        });
        FaultProxy {
            url,
            counts,
            gate,
            stop,
        }
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

fn handle(mut conn: TcpStream, upstream: &str, faults: Faults, draw: u64, counts: &Counts, gate: &Gate) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Some(head) = read_head(&mut conn) else { return };
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let path = words.next().unwrap_or("/").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
    {
        return;
    }
    let mut body = vec![0u8; length];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if header("authorization").is_some() {
        counts.authorized.fetch_add(1, Ordering::Relaxed);
    }
    if header("x-amz-request-payer").is_some_and(|v| v == "requester") {
        counts.requester_pays.fetch_add(1, Ordering::Relaxed);
    }
    // Chunk objects of a qsync store, under any prefix (S3 paths carry the bucket).
    let chunk = path.contains("/chunks/");
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
    let corrupt = hit(faults.corrupt) && method == "GET";
    if chunk
        && method == "GET"
        && gate.seen.fetch_add(1, Ordering::SeqCst) >= gate.pass.load(Ordering::SeqCst)
    {
        gate.held.fetch_add(1, Ordering::SeqCst);
        while !gate.open.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    // The request as the client sent it (so signatures over its headers
    // still verify), but one request per connection.
    let mut request: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default().trim();
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("expect")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    request.push_str("connection: close\r\n\r\n");
    if up
        .write_all(request.as_bytes())
        .and_then(|()| up.write_all(&body))
        .is_err()
    {
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
