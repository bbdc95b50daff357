//! Measures FastCDC parameter choices on 1 GiB of incompressible data (what
//! chain databases mostly are): object count, and bytes to re-upload after
//! (a) 0.1 % of 4 KiB pages rewritten in place, as MDBX/LMDB databases do, and
//! (b) 100 bytes inserted in the middle of the data. Run with
//! `cargo run --release -p qsync-core --example chunk_sizes`.

use std::collections::HashSet;

use qsync_core::chunk::ChunkerParams;
use qsync_core::Digest;

fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    v
}

fn chunks(p: &ChunkerParams, data: &[u8]) -> Vec<(Digest, usize)> {
    p.chunks(data)
        .map(|c| c.unwrap().1)
        .map(|c| (Digest::of(&c), c.len()))
        .collect()
}

fn new_bytes(before: &[(Digest, usize)], after: &[(Digest, usize)]) -> usize {
    let old: HashSet<_> = before.iter().map(|c| c.0).collect();
    after.iter().filter(|c| !old.contains(&c.0)).map(|c| c.1).sum()
}

fn main() {
    let data = noise(1 << 30, 7);
    let mut paged = data.clone();
    let pages = paged.len() / 4096;
    let mut x = 99u64;
    for _ in 0..pages / 1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let page = (x >> 33) as usize % pages;
        paged[page * 4096..page * 4096 + 4096].copy_from_slice(&noise(4096, x));
    }
    let mut inserted = data[..data.len() / 2].to_vec();
    inserted.extend(noise(100, 3));
    inserted.extend(&data[data.len() / 2..]);

    println!("| min / avg / max | chunks per GiB | objects per TB | re-upload after 0.1 % pages rewritten | re-upload after a 100-byte insert |");
    println!("|---|---|---|---|---|");
    for (min, avg, max) in [
        (64 << 10, 256 << 10, 1 << 20),
        (256 << 10, 1 << 20, 4 << 20),
        (512 << 10, 2 << 20, 8 << 20),
        (1 << 20, 4 << 20, 16 << 20),
    ] {
        let p = ChunkerParams {
            min_size: min,
            avg_size: avg,
            max_size: max,
            ..ChunkerParams::default()
        };
        let base = chunks(&p, &data);
        let a = new_bytes(&base, &chunks(&p, &paged));
        let b = new_bytes(&base, &chunks(&p, &inserted));
        println!(
            "| {} KiB / {} KiB / {} KiB | {} | {:.0}k | {:.0} MiB ({:.0} % of the data) | {:.1} MiB |",
            min >> 10,
            avg >> 10,
            max >> 10,
            base.len(),
            base.len() as f64 * 1024.0 / 1000.0,
            a as f64 / 1048576.0,
            a as f64 * 100.0 / data.len() as f64,
            b as f64 / 1048576.0
        );
    }
}
