//! Content-defined chunking and the chunk object encoding.
//!
//! Files are cut with FastCDC (2020 variant, normalisation level 1, gear seed
//! 0) so that an insertion shifts only nearby boundaries. A chunk object is the
//! chunk itself ("raw") when compression does not pay, or one zstd frame of it.
//! Readers tell the two apart by the zstd magic number; a writer therefore
//! never stores raw a chunk that itself starts with that magic. The object key
//! is the BLAKE3 of the plaintext, so the encoding can differ between
//! publishers without breaking deduplication.

use std::borrow::Cow;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::{Digest, FormatError};

/// The first four bytes of every zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Chunker parameters, recorded in every manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    /// Always `"fastcdc-2020"` in format v1.
    pub algorithm: String,
    /// Smallest chunk, bytes (the last chunk of a file may be smaller).
    pub min_size: u32,
    /// Target average chunk, bytes.
    pub avg_size: u32,
    /// Largest chunk, bytes; also the reader's limit for one chunk.
    pub max_size: u32,
    /// FastCDC normalisation level.
    pub normalization: u8,
    /// Gear table seed.
    pub seed: u64,
}

impl Default for ChunkerParams {
    /// 1 / 4 / 16 MiB: a 1 TB database becomes about 250 000 chunks, while a
    /// changed region costs at most one 16 MiB chunk to re-upload. See
    /// docs/benchmarks.md for the measurement behind these sizes.
    fn default() -> Self {
        ChunkerParams {
            algorithm: "fastcdc-2020".into(),
            min_size: 1 << 20,
            avg_size: 4 << 20,
            max_size: 16 << 20,
            normalization: 1,
            seed: 0,
        }
    }
}

impl ChunkerParams {
    /// The default chunker around an average of `kib` KiB: minimum a
    /// quarter, maximum four times (the `--chunk-size` / `chunk-size` knob).
    /// Sizes this implementation cannot bound are refused.
    pub fn with_average_kib(kib: u32) -> Result<ChunkerParams, FormatError> {
        let avg = kib.saturating_mul(1024);
        let p = ChunkerParams {
            min_size: avg / 4,
            avg_size: avg,
            max_size: avg.saturating_mul(4),
            ..ChunkerParams::default()
        };
        p.validate()
            .map_err(|_| FormatError::Invalid(format!("chunk size {kib} KiB: use 256 to 4096")))?;
        Ok(p)
    }

    /// Refuses parameters this implementation cannot reproduce or bound.
    pub fn validate(&self) -> Result<(), FormatError> {
        use fastcdc::v2020::*;
        let fits = self.algorithm == "fastcdc-2020"
            && (MINIMUM_MIN..=MINIMUM_MAX).contains(&(self.min_size as usize))
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&(self.avg_size as usize))
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&(self.max_size as usize))
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.normalization <= 3;
        if fits {
            Ok(())
        } else {
            Err(FormatError::Invalid(format!(
                "unsupported chunker parameters {self:?}; this qsync supports fastcdc-2020 with sizes up to 16 MiB"
            )))
        }
    }

    /// Cuts `source` into chunks, yielding `(offset, bytes)` in order.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = std::io::Result<(u64, Vec<u8>)>> {
        let level = match self.normalization {
            0 => fastcdc::v2020::Normalization::Level0,
            1 => fastcdc::v2020::Normalization::Level1,
            2 => fastcdc::v2020::Normalization::Level2,
            _ => fastcdc::v2020::Normalization::Level3,
        };
        fastcdc::v2020::StreamCDC::with_level_and_seed(
            source,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
            level,
            self.seed,
        )
        .map(|r| {
            r.map(|c| (c.offset, c.data)).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })
    }
}

/// How a chunk object is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The plaintext itself.
    Raw,
    /// One zstd frame.
    Zstd,
}

/// Chunks larger than this are probed on a sample before being compressed whole.
const PROBE_ABOVE: usize = 512 << 10;
/// Size of the probe sample, taken from the middle of the chunk.
const PROBE_LEN: usize = 128 << 10;

/// Whether zstd saves at least 1/32 of `sample`.
fn pays(sample: &[u8], level: i32) -> bool {
    zstd::bulk::compress(sample, level).is_ok_and(|z| z.len() + sample.len() / 32 <= sample.len())
}

/// Encodes a chunk for storage: one zstd frame at `level` when that saves at
/// least 1/32 of the size, the plaintext itself otherwise. Large chunks are
/// first probed on a 128 KiB sample, because compressing already-compressed
/// database pages costs a core-second per GB and saves nothing. A chunk that
/// starts with the zstd magic is always framed, so readers can tell.
pub fn encode(plain: Vec<u8>, level: i32) -> (Encoding, Vec<u8>) {
    let must_frame = plain.starts_with(&ZSTD_MAGIC);
    if !must_frame && plain.len() > PROBE_ABOVE {
        let mid = plain.len() / 2 - PROBE_LEN / 2;
        if !pays(&plain[mid..mid + PROBE_LEN], level) {
            return (Encoding::Raw, plain);
        }
    }
    match zstd::bulk::compress(&plain, level) {
        Ok(z) if must_frame || z.len() + plain.len() / 32 <= plain.len() => (Encoding::Zstd, z),
        _ if !must_frame => (Encoding::Raw, plain),
        // Compressing into memory cannot fail for valid levels; level 1 is the fallback.
        _ => (
            Encoding::Zstd,
            zstd::bulk::compress(&plain, 1).expect("zstd level 1"),
        ),
    }
}

/// Largest stored object a chunk of `size` plaintext bytes may be: the
/// plaintext itself, or a zstd frame of it (which may be slightly larger
/// when the data does not compress). Readers refuse longer downloads.
pub fn stored_limit(size: u64) -> u64 {
    size + size / 128 + 4096
}

/// The plaintext of a stored chunk object, decompressing at most `max` bytes
/// so a hostile object cannot expand past it. Raw chunks are borrowed.
fn expand<'a>(stored: &'a [u8], max: u64, digest: &Digest) -> Result<Cow<'a, [u8]>, FormatError> {
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(stored));
    }
    // The decoder a restore's StreamDecoder runs, over the whole object
    // into a buffer of the bound: both take exactly the same objects.
    let mut decoder = zstd_decoder(digest)?;
    let mut input = zstd::stream::raw::InBuffer::around(stored);
    let mut out = Vec::with_capacity(usize::try_from(max).map_err(|_| too_long(digest, max))?);
    if !inflate_into(&mut decoder, &mut input, &mut out, digest)? {
        return Err(undecodable(digest, "the zstd frame is cut short"));
    }
    Ok(Cow::Owned(out))
}

/// A zstd decoder that expands into the caller's buffer, which holds the
/// whole chunk and which the frame may not outgrow (zstd's stable output
/// mode): the decoder keeps no window of its own and copies nothing out of
/// one. The window a frame asks for then costs nothing, so any is taken:
/// a window limit was enforced only where zstd did not decode a frame in
/// one pass, so whether a chunk was accepted hung on where the network cut
/// it (found by review against the `chunk` fuzz target's rule).
fn zstd_decoder(digest: &Digest) -> Result<zstd::stream::raw::Decoder<'static>, FormatError> {
    use zstd::stream::raw::DParameter;
    let mut d = zstd::stream::raw::Decoder::new().map_err(|e| undecodable(digest, e))?;
    d.set_parameter(DParameter::StableOutBuffer(true))
        .map_err(|e| undecodable(digest, e))?;
    d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_LARGEST))
        .map_err(|e| undecodable(digest, e))?;
    Ok(d)
}

/// The largest window zstd knows (2 GiB), which costs a stable-output
/// decoder nothing.
const WINDOW_LOG_LARGEST: u32 = 31;

/// Runs `decoder` over what is left of `input`, appending plaintext to
/// `out` (the same buffer every call, never grown: the stable mode; a frame
/// expanding past its capacity fails), until it needs more input or the
/// frame ends (true). Bytes after the frame are refused: a chunk object is
/// exactly one frame (§3).
fn inflate_into(
    decoder: &mut zstd::stream::raw::Decoder<'static>,
    input: &mut zstd::stream::raw::InBuffer<'_>,
    out: &mut Vec<u8>,
    digest: &Digest,
) -> Result<bool, FormatError> {
    use zstd::stream::raw::{Operation, OutBuffer};
    loop {
        let before = (input.pos(), out.len());
        let hint = {
            let len = out.len();
            let mut output = OutBuffer::around_pos(out, len);
            decoder
                .run(input, &mut output)
                .map_err(|e| undecodable(digest, e))?
        };
        if hint == 0 {
            if input.pos() < input.src.len() {
                return Err(undecodable(digest, "bytes follow the zstd frame"));
            }
            return Ok(true);
        }
        if input.pos() == input.src.len() || before == (input.pos(), out.len()) {
            return Ok(false);
        }
    }
}

fn too_long(digest: &Digest, size: u64) -> FormatError {
    FormatError::Invalid(format!(
        "chunk {digest}: more than the {size} bytes the manifest declares; the copy is corrupt, fetch it from another mirror"
    ))
}

fn undecodable(digest: &Digest, why: impl std::fmt::Display) -> FormatError {
    FormatError::Invalid(format!(
        "chunk {digest}: zstd frame does not decode ({why}); the copy is corrupt, fetch it from another mirror"
    ))
}

fn check_digest(plain: &[u8], digest: &Digest) -> Result<(), FormatError> {
    let actual = Digest::of(plain);
    if &actual != digest {
        return Err(wrong_digest(digest, actual));
    }
    Ok(())
}

fn wrong_digest(digest: &Digest, actual: Digest) -> FormatError {
    FormatError::DigestMismatch {
        what: format!("chunk {digest}"),
        expected: *digest,
        actual,
    }
}

fn wrong_size(digest: &Digest, got: u64, size: u64) -> FormatError {
    FormatError::Invalid(format!(
        "chunk {digest}: decodes to {got} bytes, manifest says {size}; the copy is corrupt or truncated, fetch it from another mirror"
    ))
}

/// Decodes a stored chunk object, refusing anything that does not expand to
/// exactly `size` bytes hashing to `digest`. A raw chunk is returned
/// borrowed: restores write it straight from the network buffer.
pub fn decode<'a>(stored: &'a [u8], size: u64, digest: &Digest) -> Result<Cow<'a, [u8]>, FormatError> {
    let plain = expand(stored, size, digest)?;
    if plain.len() as u64 != size {
        return Err(wrong_size(digest, plain.len() as u64, size));
    }
    check_digest(&plain, digest)?;
    Ok(plain)
}

/// Plaintext handed back by a [`StreamDecoder`], with its offset in the chunk.
pub type Plaintext<'a> = (u64, Cow<'a, [u8]>);

/// Decodes a stored chunk object as it arrives, with the guarantees of
/// [`decode`]. A raw object's plaintext is handed back piece by piece while
/// it is still in the CPU cache, so it is hashed and written without a
/// second trip through memory; a zstd frame is expanded as it arrives,
/// in place into one buffer of the declared size (zstd's stable output), so a
/// compressible chunk costs one copy of itself, not two. Nothing
/// handed back is trusted until [`Self::finish`] returns `Ok`: a caller
/// writing pieces as they come must treat them as unverified until then.
pub struct StreamDecoder {
    size: u64,
    digest: Digest,
    handed: Handed,
    /// Stored bytes taken in so far (a frame is bounded like [`decode`]'s).
    stored: u64,
    /// The stored bytes while the encoding is unknown (fewer than four seen).
    held: Vec<u8>,
    encoding: Option<Encoding>,
    /// The frame's decoder and the plaintext decoded so far, and whether
    /// the frame has ended.
    zstd: Option<Box<Inflating>>,
    frame_done: bool,
}

/// A zstd frame being expanded in place ([`zstd_decoder`]) into `out`,
/// which holds the whole chunk: its declared size, never grown.
struct Inflating {
    decoder: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder for the chunk of `size` plaintext bytes hashing to `digest`.
    pub fn new(size: u64, digest: Digest) -> Self {
        StreamDecoder {
            size,
            digest,
            handed: Handed::default(),
            stored: 0,
            held: Vec::new(),
            encoding: None,
            zstd: None,
            frame_done: false,
        }
    }

    /// Takes the next piece of the stored object; returns the plaintext it
    /// completes, with its offset within the chunk, in order.
    pub fn feed<'a>(&'a mut self, piece: &'a [u8]) -> Result<Option<Plaintext<'a>>, FormatError> {
        self.stored += piece.len() as u64;
        if self.stored > stored_limit(self.size) {
            return Err(FormatError::Invalid(format!(
                "chunk {}: the stored object exceeds {} bytes, the most a {}-byte chunk may take; the copy is corrupt, fetch it from another mirror",
                self.digest,
                stored_limit(self.size),
                self.size
            )));
        }
        match self.encoding {
            Some(Encoding::Raw) => self.pass(Cow::Borrowed(piece)).map(Some),
            Some(Encoding::Zstd) => self.inflate(piece),
            None => {
                self.held.extend_from_slice(piece);
                if self.held.len() < ZSTD_MAGIC.len() {
                    return Ok(None);
                }
                let held = std::mem::take(&mut self.held);
                if held.starts_with(&ZSTD_MAGIC) {
                    self.encoding = Some(Encoding::Zstd);
                    let decoder = zstd_decoder(&self.digest)?;
                    let out = Vec::with_capacity(usize::try_from(self.size).map_err(|_| self.too_long())?);
                    self.zstd = Some(Box::new(Inflating { decoder, out }));
                    // What it expands lies in the decoder's buffer, not in `held`.
                    return self.inflate(&held);
                }
                self.encoding = Some(Encoding::Raw);
                self.pass(Cow::Owned(held)).map(Some)
            }
        }
    }

    /// Whether `piece`, fed next, starts a zstd frame: the object's first
    /// four bytes (with those held) are the zstd magic. The whole chunk is
    /// then held while it expands, so a caller counting memory makes room
    /// first; a raw chunk streams through.
    pub fn starts_frame(&self, piece: &[u8]) -> bool {
        self.encoding.is_none()
            && self.held.len() + piece.len() >= ZSTD_MAGIC.len()
            && self
                .held
                .iter()
                .chain(piece)
                .take(ZSTD_MAGIC.len())
                .eq(ZSTD_MAGIC.iter())
    }

    /// Ends the object: returns what plaintext is left (a raw chunk shorter
    /// than the zstd magic), after checking that a frame ended, the size
    /// and the digest of everything handed back.
    pub fn finish(mut self) -> Result<Option<(u64, Vec<u8>)>, FormatError> {
        let last = match self.encoding {
            Some(Encoding::Raw) => None,
            Some(Encoding::Zstd) if !self.frame_done => {
                return Err(self.corrupt("the zstd frame is cut short"));
            }
            Some(Encoding::Zstd) => None,
            // Shorter than the zstd magic: a tiny raw chunk.
            None => {
                let held = std::mem::take(&mut self.held);
                Some(self.pass(Cow::Owned(held))?)
            }
        };
        if self.handed.bytes != self.size {
            return Err(wrong_size(&self.digest, self.handed.bytes, self.size));
        }
        let actual: Digest = self.handed.hasher.finalize().into();
        if actual != self.digest {
            return Err(wrong_digest(&self.digest, actual));
        }
        Ok(last.map(|(at, plain)| (at, plain.into_owned())))
    }

    /// Expands the next piece of the frame; its plaintext, if any.
    fn inflate(&mut self, piece: &[u8]) -> Result<Option<Plaintext<'_>>, FormatError> {
        if self.frame_done {
            return if piece.is_empty() {
                Ok(None)
            } else {
                Err(self.corrupt("bytes follow the zstd frame"))
            };
        }
        let z = self
            .zstd
            .as_mut()
            .expect("a zstd decoder once the magic was seen");
        let start = z.out.len();
        let mut input = zstd::stream::raw::InBuffer::around(piece);
        self.frame_done = inflate_into(&mut z.decoder, &mut input, &mut z.out, &self.digest)?;
        let plain = &z.out[start..];
        if plain.is_empty() {
            return Ok(None);
        }
        let at = self.handed.take(plain, self.size, &self.digest)?;
        Ok(Some((at, Cow::Borrowed(plain))))
    }

    fn corrupt(&self, why: impl std::fmt::Display) -> FormatError {
        undecodable(&self.digest, why)
    }

    fn too_long(&self) -> FormatError {
        too_long(&self.digest, self.size)
    }

    /// Hashes plaintext and hands it back at its offset, refusing any
    /// beyond the declared size.
    fn pass<'a>(&mut self, plain: Cow<'a, [u8]>) -> Result<Plaintext<'a>, FormatError> {
        let at = self.handed.take(&plain, self.size, &self.digest)?;
        Ok((at, plain))
    }
}

/// The plaintext a [`StreamDecoder`] has handed back: its digest so far
/// and its length. Apart from the decoder's buffer, so that plaintext
/// borrowed from that buffer can be counted.
#[derive(Default)]
struct Handed {
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Handed {
    /// Counts `plain` as handed back next, refusing it past the chunk's
    /// declared `size`; returns its offset in the chunk.
    fn take(&mut self, plain: &[u8], size: u64, digest: &Digest) -> Result<u64, FormatError> {
        if self.bytes + plain.len() as u64 > size {
            return Err(too_long(digest, size));
        }
        self.hasher.update(plain);
        let at = self.bytes;
        self.bytes += plain.len() as u64;
        Ok(at)
    }
}

/// Checks a stored chunk object against the digest in its key when its
/// plaintext size is not known (a cache has only the key): decompression is
/// bounded by `max_size`.
pub fn verify_stored(stored: &[u8], digest: &Digest, max_size: u64) -> Result<(), FormatError> {
    check_digest(&expand(stored, max_size, digest)?, digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
            ..ChunkerParams::default()
        }
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
    }

    #[test]
    fn incompressible_is_raw_and_text_is_zstd() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..(2 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text = b"block 1234 hash 0xabc\n".repeat(50_000);
        assert_eq!(encode(text, 3).0, Encoding::Zstd);
        // Small chunks are compressed whole, large ones probed first: both raw.
        for len in [100_000, noise.len()] {
            let (enc, stored) = encode(noise[..len].to_vec(), 3);
            assert_eq!(enc, Encoding::Raw);
            assert_eq!(
                decode(&stored, len as u64, &Digest::of(&noise[..len]))
                    .unwrap()
                    .into_owned(),
                &noise[..len]
            );
        }
    }

    #[test]
    fn raw_chunk_starting_with_magic_is_framed() {
        let mut plain = ZSTD_MAGIC.to_vec();
        plain.extend((0..5000u32).map(|i| (i * 7919 % 251) as u8));
        let (enc, stored) = encode(plain.clone(), 3);
        assert_eq!(enc, Encoding::Zstd);
        assert_eq!(
            decode(&stored, plain.len() as u64, &Digest::of(&plain))
                .unwrap()
                .into_owned(),
            plain
        );
    }

    #[test]
    fn declared_size_bounds_decompression() {
        let plain = vec![0u8; 1 << 20];
        let (_, stored) = encode(plain.clone(), 3);
        assert!(decode(&stored, 1000, &Digest::of(&plain)).is_err());
    }

    /// Feeds `stored` to a [`StreamDecoder`] in pieces cut at `cuts`.
    fn stream_decode(stored: &[u8], size: u64, d: &Digest, cuts: &[usize]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        let mut collect = |at: u64, plain: &[u8]| {
            assert_eq!(at as usize, out.len(), "plaintext arrives in order");
            out.extend_from_slice(plain);
        };
        let mut dec = StreamDecoder::new(size, *d);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stored.len() + 1)).collect();
        cuts.sort_unstable();
        let mut from = 0;
        for to in cuts.into_iter().chain([stored.len()]) {
            if let Some((at, plain)) = dec.feed(&stored[from..to])? {
                collect(at, &plain);
            }
            from = to;
        }
        if let Some((at, plain)) = dec.finish()? {
            collect(at, &plain);
        }
        Ok(out)
    }

    /// A frame whose header asks for a window larger than any chunk, but
    /// holds no more than its chunk: taken or refused alike whole, streamed
    /// in one piece or cut. zstd enforced a window limit only when it did
    /// not decode the frame in one pass, so streamed whole it was taken and
    /// cut or decoded whole (in steps) refused.
    #[test]
    fn a_frame_asking_for_a_large_window_is_judged_the_same_however_it_arrives() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&plain);
        let (_, framed) = encode(plain.clone(), 3);
        // Rewrite the header: not single-segment, a window descriptor of
        // 2^26, a four-byte content size, the same blocks.
        let fhd = framed[4];
        let fcs_len = match fhd >> 6 {
            0 => usize::from(fhd & 0x20 != 0),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let header = 5 + usize::from(fhd & 0x20 == 0) + fcs_len + [0, 1, 2, 4][usize::from(fhd & 3)];
        let mut crafted = ZSTD_MAGIC.to_vec();
        crafted.push((2 << 6) | (fhd & 0x04));
        crafted.push(16 << 3);
        crafted.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        crafted.extend_from_slice(&framed[header..]);
        let size = plain.len() as u64;
        let whole = decode(&crafted, size, &d).map(|p| p.into_owned());
        assert_eq!(whole.as_deref().ok(), Some(&plain[..]), "{whole:?}");
        for cuts in [&[][..], &[12], &[4096, 20_000]] {
            assert_eq!(
                stream_decode(&crafted, size, &d, cuts).ok().as_deref(),
                Some(&plain[..]),
                "cut at {cuts:?}"
            );
        }
        assert!(verify_stored(&crafted, &d, 16 << 20).is_ok());
    }

    /// A frame is announced before it is expanded, whatever the cut of its
    /// first bytes; a raw chunk never is.
    #[test]
    fn a_frame_is_announced_before_it_expands_and_a_raw_chunk_never() {
        let plain: Vec<u8> = b"abc".repeat(10_000);
        let (_, framed) = encode(plain.clone(), 3);
        let d = Digest::of(&plain);
        let mut dec = StreamDecoder::new(plain.len() as u64, d);
        assert!(!dec.starts_frame(&framed[..2]));
        assert!(dec.feed(&framed[..2]).unwrap().is_none());
        assert!(!dec.starts_frame(&framed[2..3]) && dec.starts_frame(&framed[2..4]));
        assert!(dec.feed(&framed[2..]).unwrap().is_some());
        assert!(!dec.starts_frame(b"more"));
        let raw = vec![7u8; 100];
        let dec = StreamDecoder::new(100, Digest::of(&raw));
        assert!(!dec.starts_frame(&raw));
    }

    #[test]
    fn stream_decoder_takes_tiny_raw_chunks() {
        for plain in [&b""[..], b"a", b"ab", b"abc", b"abcd"] {
            let d = Digest::of(plain);
            assert_eq!(stream_decode(plain, plain.len() as u64, &d, &[1]).unwrap(), plain);
        }
    }

    proptest! {
        /// Streaming and whole-object decoding accept and refuse the same
        /// objects, however the object is cut into pieces.
        #[test]
        fn stream_decoder_agrees_with_decode(
            data in proptest::collection::vec(0u8..4, 0..6000),
            compressible in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            damage in 0u8..5,
            pos in any::<usize>(),
        ) {
            let plain: Vec<u8> = if compressible { data.clone() } else { data.iter().enumerate().map(|(i, b)| (i as u8).wrapping_mul(151) ^ b).collect() };
            let d = Digest::of(&plain);
            let (_, mut stored) = encode(plain.clone(), 3);
            match damage {
                1 if !stored.is_empty() => { let i = pos % stored.len(); stored[i] ^= 0x20; }
                2 => { stored.truncate(pos % (stored.len() + 1)); }
                3 => { stored.push(b'x'); }
                // A second frame after the first: one frame is the format.
                4 => { let again = stored.clone(); stored.extend(again); }
                _ => {}
            }
            let size = plain.len() as u64;
            let whole = decode(&stored, size, &d).map(|p| p.into_owned());
            let streamed = stream_decode(&stored, size, &d, &cuts);
            prop_assert_eq!(whole.is_ok(), streamed.is_ok());
            if let (Ok(w), Ok(s)) = (whole, streamed) {
                prop_assert_eq!(&w, &plain);
                prop_assert_eq!(s, w);
            }
        }

        #[test]
        fn chunks_reassemble(data in proptest::collection::vec(any::<u8>(), 0..20_000), level in 1i32..4) {
            let mut joined = Vec::new();
            for c in small().chunks(&data[..]) {
                let (offset, bytes) = c.unwrap();
                prop_assert_eq!(offset as usize, joined.len());
                prop_assert!(bytes.len() <= 1024);
                let d = Digest::of(&bytes);
                let (_, stored) = encode(bytes.clone(), level);
                joined.extend(decode(&stored, bytes.len() as u64, &d).unwrap().into_owned());
            }
            prop_assert_eq!(joined, data);
        }

        #[test]
        fn any_flipped_byte_is_caught(data in proptest::collection::vec(any::<u8>(), 1..4000), pos in any::<usize>(), bit in 0u8..8) {
            let d = Digest::of(&data);
            let (_, mut stored) = encode(data.clone(), 3);
            let i = pos % stored.len();
            stored[i] ^= 1 << bit;
            prop_assert!(decode(&stored, data.len() as u64, &d).is_err());
        }
    }
}
