//! The UnixFS bytes the plain tree writes itself: the `Data` of file,
//! directory and HAMT-sharded directory nodes, and how a sharded
//! directory's entries fall into its buckets (murmur3-x64-64 of the name,
//! eight bits a level, fanout 256), as the js-ipfs and Kubo importers lay
//! them out, so that a directory qsync writes has the CID theirs would.
//! Writing the nodes is `tree.rs`'s business.

use std::collections::BTreeMap;

/// A shard's fanout: eight bits of the name's hash per level.
const FANOUT: u64 = 256;
/// UnixFS `hashType` of a shard: murmur3-x64-64 (multicodec `0x22`).
const MURMUR3: u64 = 0x22;

/// The `Data` of a directory node: Type = Directory.
pub(super) const DIRECTORY: [u8; 2] = [0x08, 0x01];

/// The `Data` of a file node of `size` bytes whose links hold `blocks`
/// bytes each: Type = File, filesize, one blocksizes per link.
pub(super) fn file(size: u64, blocks: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut out = vec![0x08, 0x02, 0x18];
    varint(size, &mut out);
    for b in blocks {
        out.push(0x20);
        varint(b, &mut out);
    }
    out
}

/// The `Data` of a shard node whose occupied slots are `slots`: Type =
/// HAMTShard, the slots as a big-endian bitfield without leading zero
/// bytes, hashType and fanout.
pub(super) fn shard(slots: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut bits = [0u8; FANOUT as usize / 8];
    for s in slots {
        bits[bits.len() - 1 - usize::from(s / 8)] |= 1 << (s % 8);
    }
    let first = bits.iter().position(|&b| b != 0).unwrap_or(bits.len() - 1);
    let bits = &bits[first..];
    let mut out = vec![0x08, 0x05, 0x12, bits.len() as u8];
    out.extend_from_slice(bits);
    out.push(0x28);
    varint(MURMUR3, &mut out);
    out.push(0x30);
    varint(FANOUT, &mut out);
    out
}

/// A slot of a shard: one entry, or a shard of the entries whose hashes
/// agree this far.
#[derive(Debug)]
pub(super) enum Slot<T> {
    /// A named entry; its link is named `<slot in two hex digits><name>`.
    Entry(String, T),
    /// A shard one level down; its link is named by the slot alone.
    Shard(Shard<T>),
}

/// One node of a sharded directory: its occupied slots, in order.
#[derive(Debug)]
pub(super) struct Shard<T> {
    pub(super) slots: BTreeMap<u8, Slot<T>>,
}

/// Lays `entries` (distinct names) out as a sharded directory.
pub(super) fn layout<T>(entries: Vec<(String, T)>) -> Shard<T> {
    level(entries, 0)
}

fn level<T>(entries: Vec<(String, T)>, depth: usize) -> Shard<T> {
    let mut groups: BTreeMap<u8, Vec<(String, T)>> = BTreeMap::new();
    for (name, v) in entries {
        groups.entry(slot(&name, depth)).or_default().push((name, v));
    }
    let slots = groups
        .into_iter()
        .map(|(s, mut group)| {
            let slot = if group.len() == 1 {
                let (name, v) = group.pop().expect("one entry");
                Slot::Entry(name, v)
            } else {
                Slot::Shard(level(group, depth + 1))
            };
            (s, slot)
        })
        .collect();
    Shard { slots }
}

/// The slot of `name` at `depth`: byte `depth % 8` of the first 64 bits
/// (big-endian) of murmur3-x64-128 of the name, or once those are used up
/// of the name followed by the byte `depth / 8`.
fn slot(name: &str, depth: usize) -> u8 {
    let round = depth / 8;
    let mut key = name.as_bytes().to_vec();
    if round > 0 {
        key.push(round as u8);
    }
    murmur3_x64_128(&key).0.to_be_bytes()[depth % 8]
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// MurmurHash3 x64 128 with seed 0 (Austin Appleby's public-domain
/// reference): `(h1, h2)`.
fn murmur3_x64_128(data: &[u8]) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    fn fmix(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
    let mix1 = |k: u64| k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix2 = |k: u64| k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    let (mut h1, mut h2) = (0u64, 0u64);
    let blocks = data.chunks_exact(16);
    let tail = blocks.remainder();
    for b in blocks {
        let k1 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        h1 ^= mix1(k1);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix2(k2);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let mut t = [0u8; 16];
    t[..tail.len()].copy_from_slice(tail);
    if tail.len() > 8 {
        h2 ^= mix2(u64::from_le_bytes(t[8..].try_into().expect("8 bytes")));
    }
    if !tail.is_empty() {
        h1 ^= mix1(u64::from_le_bytes(t[..8].try_into().expect("8 bytes")));
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_hash_js_ipfs_shards_with() {
        // From @multiformats/murmur3 (murmur3128.encode), as js-ipfs 0.66 ships it.
        for (input, hex) in [
            ("", "00000000000000000000000000000000"),
            ("a", "85555565f6597889e6b53a48510e895a"),
            ("hello", "cbd8a7b341bd9b025b1e906a48ae1d19"),
            ("000123.ldb", "5ff2ff05dc4ae685c852555c376225a7"),
            (
                "abcdefghijklmnopqrstuvwxyz0123456789",
                "f2596f5eb4ff5e3a3996b9372e6d94c0",
            ),
        ] {
            let (h1, h2) = murmur3_x64_128(input.as_bytes());
            assert_eq!(format!("{h1:016x}{h2:016x}"), hex, "{input:?}");
        }
        assert_eq!(slot("hello", 0), 0xcb);
        assert_eq!(slot("hello", 7), 0x02);
    }

    #[test]
    fn data_is_what_the_importers_marshal() {
        // 301000 bytes in links of 300000 and 1000 (the block js-ipfs
        // stored for such a node, read back with block/get).
        assert_eq!(
            file(301_000, [300_000, 1000].into_iter()),
            [0x08, 0x02, 0x18, 0xc8, 0xaf, 0x12, 0x20, 0xe0, 0xa7, 0x12, 0x20, 0xe8, 0x07]
        );
        // Slots 0 and 9: bits 0 and 9 of a big-endian bitfield, two bytes.
        assert_eq!(
            shard([0, 9].into_iter()),
            [0x08, 0x05, 0x12, 0x02, 0x02, 0x01, 0x28, 0x22, 0x30, 0x80, 0x02]
        );
        assert_eq!(shard([255].into_iter())[3..5], [32, 0x80]);
    }

    #[test]
    fn colliding_names_share_a_shard_one_level_down() {
        let names: Vec<String> = (0..600).map(|i| format!("{i:06}.ldb")).collect();
        let s = layout(names.iter().map(|n| (n.clone(), ())).collect());
        fn count(s: &Shard<()>) -> usize {
            (s.slots.values())
                .map(|slot| match slot {
                    Slot::Entry(..) => 1,
                    Slot::Shard(sub) => count(sub),
                })
                .sum()
        }
        assert_eq!(count(&s), 600);
        // 600 names in 256 slots: some slots must hold a shard.
        assert!(s.slots.values().any(|slot| matches!(slot, Slot::Shard(_))));
    }
}
