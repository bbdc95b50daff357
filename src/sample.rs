//! Chain-like sample data for the demo, the tests and the benchmarks.
//!
//! `generate` lays out a RocksDB/LevelDB-style directory: mostly
//! incompressible SST files of 8-64 MiB (scaled down for small totals), a
//! compressible LOG and WAL, an OPTIONS file, and many tiny files in nested
//! directories. `mutate` advances it like a node does: compaction deletes
//! some SSTs and writes new ones of the same total size, the LOG grows and
//! the MANIFEST/CURRENT pair is rewritten. Deterministic for a given seed.
//!
//! With `--small-files N` it lays out a store of N small files instead
//! (4-64 KiB each by default, half compressible, in two levels of
//! numbered directories),
//! as goleveldb tables, account stores and blob stores look; `mutate`
//! then rewrites that share of them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// SplitMix64: fast, deterministic, good enough to be incompressible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// What `generate` or `mutate` did.
#[derive(Debug, Serialize)]
pub struct SampleReport {
    /// Bytes in the directory afterwards.
    pub bytes_total: u64,
    /// Bytes written that were not there before (new files and appends).
    pub bytes_changed: u64,
    /// Files in the directory afterwards.
    pub files: u64,
}

fn write_random(path: &Path, size: u64, rng: &mut Rng) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn log_lines(size: u64, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize + 200);
    while (out.len() as u64) < size {
        let line = format!(
            "2026/11/21-09:{:02}:{:02}.{:06} 7f2a{:04x} [db/compaction_job.cc:{}] [default] Compacted {}@0 + {}@1 files to L1 => {} bytes\n",
            rng.below(60), rng.below(60), rng.below(1_000_000), rng.below(0xffff),
            rng.below(2000), rng.below(8), rng.below(12), rng.below(1 << 26)
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(size as usize);
    out
}

fn sst_range(total: u64) -> (u64, u64) {
    let max = (64u64 << 20).min((total / 6).max(4096));
    ((8u64 << 20).min(max / 4).max(1024), max)
}

fn next_sst_number(db: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(db)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(num) = name.strip_suffix(".sst").and_then(|s| s.parse::<u64>().ok()) {
            n = n.max(num);
        }
    }
    Ok(n + 1)
}

fn write_ssts(db: &Path, budget: u64, total_hint: u64, rng: &mut Rng) -> Result<u64> {
    let (lo, hi) = sst_range(total_hint);
    let mut num = next_sst_number(db)?;
    let mut written = 0;
    while written < budget {
        let size = (lo + rng.below(hi - lo + 1)).min(budget - written).max(1);
        write_random(&db.join(format!("{num:06}.sst")), size, rng)?;
        written += size;
        num += 1;
    }
    Ok(written)
}

fn report(dir: &Path, changed: u64) -> Result<SampleReport> {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
                files += 1;
            }
        }
    }
    Ok(SampleReport {
        bytes_total: bytes,
        bytes_changed: changed,
        files,
    })
}

/// Where `--small-files` puts its files.
const BLOBS: &str = "chains/sample/blobs";

/// One small file's bytes, of `max / 16` to `max` bytes: a log-like
/// (compressible) half and a random half.
fn small_file(rng: &mut Rng, max: u64) -> Vec<u8> {
    let size = max / 16 + rng.below(max - max / 16);
    let mut out = log_lines(size / 2, rng);
    let at = out.len();
    out.resize(size as usize, 0);
    rng.fill(&mut out[at..]);
    out
}

/// `count` small files of at most `max` bytes under [`BLOBS`], named by
/// number in 256 x 16 directories.
fn generate_small(dir: &Path, count: u64, max: u64, seed: u64) -> Result<SampleReport> {
    let mut rng = Rng(seed);
    let blobs = dir.join(BLOBS);
    for i in 0..count {
        let sub = blobs.join(format!("{:02x}/{:x}", i % 256, (i / 256) % 16));
        if i < 256 * 16 {
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        fs::write(sub.join(format!("{i:08}.blob")), small_file(&mut rng, max))?;
    }
    let r = report(dir, 0)?;
    Ok(SampleReport {
        bytes_changed: r.bytes_total,
        ..r
    })
}

/// Rewrites about `percent` % of the small files in place.
fn mutate_small(dir: &Path, percent: f64, rng: &mut Rng) -> Result<SampleReport> {
    let mut files = Vec::new();
    let mut stack = vec![dir.join(BLOBS)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let n = ((files.len() as f64 * percent / 100.0).ceil() as usize).min(files.len());
    let mut changed = 0;
    for _ in 0..n {
        let p = files.swap_remove(rng.below(files.len() as u64) as usize);
        let max = fs::metadata(&p)?.len().max(4 << 10).next_power_of_two();
        let body = small_file(rng, max);
        changed += body.len() as u64;
        fs::write(&p, body)?;
    }
    report(dir, changed)
}

/// Writes a fresh sample chain directory of about `total` bytes into `dir`,
/// or `small_files` small files of at most `small_max` bytes when that is
/// not zero.
pub fn generate(dir: &Path, total: u64, small_files: u64, small_max: u64, seed: u64) -> Result<SampleReport> {
    if small_files > 0 {
        return generate_small(dir, small_files, small_max.max(16), seed);
    }
    let mut rng = Rng(seed);
    let db = dir.join("chains/sample/db/full");
    let meta = dir.join("chains/sample/state-meta");
    let net = dir.join("chains/sample/network");
    for d in [&db, &meta, &net, &dir.join("chains/sample/empty")] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // ~8 % compressible text, ~2 % tiny files, the rest SSTs.
    let text = total / 12;
    // Compressible, immutable segments, like a freezer/ancient store.
    let ancient = db.join("ancient");
    fs::create_dir_all(&ancient)?;
    let segment = (text / 4).clamp(1, 32 << 20);
    let mut left = text;
    for i in 0.. {
        if left == 0 {
            break;
        }
        let n = left.min(segment);
        fs::write(
            ancient.join(format!("headers.{i:04}.cdat")),
            log_lines(n, &mut rng),
        )?;
        left -= n;
    }
    fs::write(db.join("LOG"), log_lines((text / 8).min(256 << 10), &mut rng))?;
    let mut wal = log_lines((text / 8).min(1 << 20), &mut rng);
    let noisy = wal.len() / 4;
    rng.fill(&mut wal[..noisy]);
    fs::write(db.join("000009.log"), wal)?;
    fs::write(db.join("OPTIONS-000007"), log_lines(8192, &mut rng))?;
    fs::write(db.join("CURRENT"), b"MANIFEST-000005\n")?;
    fs::write(db.join("IDENTITY"), format!("{:032x}\n", rng.next()))?;
    fs::write(db.join("LOCK"), b"")?;
    write_random(&db.join("MANIFEST-000005"), 4096 + rng.below(60_000), &mut rng)?;
    let mut small = 0;
    for i in 0..200u64 {
        let size = 64 + rng.below(4096);
        let sub = if i % 2 == 0 { &meta } else { &net };
        write_random(
            &sub.join(format!("{i:04}-{:08x}", rng.next() as u32)),
            size,
            &mut rng,
        )?;
        small += size;
    }
    let used = report(dir, 0)?.bytes_total;
    write_ssts(&db, total.saturating_sub(used).max(small), total, &mut rng)?;
    let r = report(dir, 0)?;
    Ok(SampleReport {
        bytes_changed: r.bytes_total,
        ..r
    })
}

/// Advances a sample directory by about `percent` % of its bytes.
pub fn mutate(dir: &Path, percent: f64, seed: u64) -> Result<SampleReport> {
    let mut rng = Rng(seed ^ 0x5eed);
    if dir.join(BLOBS).is_dir() {
        return mutate_small(dir, percent, &mut rng);
    }
    let db = dir.join("chains/sample/db/full");
    let before = report(dir, 0)?.bytes_total;
    let target = (before as f64 * percent / 100.0) as u64;
    let mut ssts: Vec<(PathBuf, u64)> = fs::read_dir(&db)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    ssts.sort();
    let log_growth = (target / 100).clamp(1, 64 << 10);
    let manifest = 4096 + rng.below(60_000);
    // Compaction: merge some SSTs into new ones; the output is smaller than
    // the input because overwritten keys are dropped.
    let mut removed = 0;
    while removed < target && !ssts.is_empty() {
        let (p, size) = ssts.remove(rng.below(ssts.len() as u64) as usize);
        fs::remove_file(&p)?;
        removed += size;
    }
    let written = write_ssts(
        &db,
        target.saturating_sub(log_growth + manifest).max(1),
        before,
        &mut rng,
    )?;
    let mut log = fs::OpenOptions::new().append(true).open(db.join("LOG"))?;
    log.write_all(&log_lines(log_growth, &mut rng))?;
    write_random(&db.join("MANIFEST-000005"), manifest, &mut rng)?;
    report(dir, written + log_growth + manifest)
}
