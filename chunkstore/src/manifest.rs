//! [`Manifest`]: one partition image as an ordered list of chunks.
//!
//! Canonical encoding (postcard, see docs/protocol.md): magic `VWMF`, format version
//! byte, the chunker parameters, the image length, the whole-image BLAKE3, then the
//! `(ChunkId, len)` list. postcard is deterministic for a given value, and decoding
//! rejects anything that would not re-encode to the same bytes, so a manifest has exactly
//! one encoding and [`ManifestId`] (BLAKE3 of it) names it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::{ChunkId, Error, ManifestId};

/// First bytes of every encoded manifest.
pub const MAGIC: [u8; 4] = *b"VWMF";
/// The encoding version this build writes and reads.
pub const VERSION: u8 = 1;
/// Largest encoded manifest accepted: 1 GiB, about 30 million chunks, which is 1.9 TiB
/// of image at the default 64 KiB average. A bound on what an untrusted manifest may
/// make a host allocate, not a limit of the protocols: a manifest crosses the network
/// in pieces (docs/protocol.md).
pub const MAX_ENCODED_LEN: usize = 1 << 30;

/// The largest chunk a manifest may list: a chunk crosses the network whole, in one
/// frame, and the chunk protocol's frames carry at most this much (`ChunkerParams::DEFAULT`
/// cuts at most this much).
pub const MAX_CHUNK_LEN: u32 = 256 << 10;

/// One chunk of an image, in image order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's id; [`ChunkId::ZERO`] for an all-zero chunk.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

impl ChunkRef {
    /// True for an all-zero chunk (a hole; never stored or sent).
    pub fn is_zero(&self) -> bool {
        self.id.is_zero()
    }
}

/// One partition image: its chunks in order, its length and its whole-image BLAKE3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    params: ChunkerParams,
    len: u64,
    image_hash: blake3::Hash,
    chunks: Vec<ChunkRef>,
    /// BLAKE3 of the encoding, computed once.
    id: ManifestId,
}

/// The wire form: kept apart from [`Manifest`] so the domain type can change freely.
#[derive(Serialize, Deserialize)]
struct Wire {
    magic: [u8; 4],
    version: u8,
    params: ChunkerParams,
    len: u64,
    image_hash: [u8; 32],
    chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// A manifest from its parts; checks that the chunk lengths add up to `len` and
    /// respect the chunker's bounds.
    pub fn new(
        params: ChunkerParams,
        len: u64,
        image_hash: blake3::Hash,
        chunks: Vec<ChunkRef>,
    ) -> Result<Self, Error> {
        let mut manifest =
            Self { params, len, image_hash, chunks, id: ManifestId::from_bytes([0; 32]) };
        manifest.check().map_err(|reason| Error::BadManifest { reason })?;
        manifest.id = ManifestId::from(blake3::hash(&manifest.encode()));
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        self.params.validate().map_err(|e| e.to_string())?;
        if self.params.max > MAX_CHUNK_LEN {
            return Err(format!(
                "cut with chunks of up to {} bytes; a chunk travels whole, in one frame of \
                 at most {MAX_CHUNK_LEN} bytes, so such an image could never be distributed",
                self.params.max
            ));
        }
        let mut sum = 0u64;
        let last = self.chunks.len().saturating_sub(1);
        for (i, c) in self.chunks.iter().enumerate() {
            if c.len == 0 || c.len > self.params.max {
                return Err(format!("chunk {i} ({}) has length {}", c.id, c.len));
            }
            if c.len < self.params.min && i != last {
                return Err(format!("chunk {i} ({}) is shorter than the minimum", c.id));
            }
            sum += u64::from(c.len);
        }
        if sum != self.len {
            return Err(format!("chunk lengths add up to {sum}, the image is {} bytes", self.len));
        }
        Ok(())
    }

    /// The chunker parameters the image was cut with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Image length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// BLAKE3 of the whole image.
    pub fn image_hash(&self) -> blake3::Hash {
        self.image_hash
    }

    /// The chunks in image order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// Its distinct non-zero chunks in first-appearance order: what crosses the network
    /// (a zero chunk never, a repeated one once), and what the planner and the stage
    /// orders number chunks by.
    pub fn distinct(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.chunks.iter().filter(|c| !c.is_zero() && seen.insert(c.id)).copied().collect()
    }

    /// The distinct ids of the chunks a store must hold (zero chunks left out), sorted.
    pub fn stored_ids(&self) -> Vec<ChunkId> {
        let mut ids: Vec<ChunkId> =
            self.chunks.iter().filter(|c| !c.is_zero()).map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Where each chunk lies in the image, and where each distinct chunk goes.
    pub fn layout(&self) -> Layout {
        let mut chunks = Vec::with_capacity(self.chunks.len());
        let mut places: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        let mut offset = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            chunks.push(Placed { id: c.id, len: c.len, offset });
            if !c.is_zero() {
                places.entry(c.id).or_default().push(i);
            }
            offset += u64::from(c.len);
        }
        Layout { chunks, places }
    }

    /// Bytes in zero chunks (holes when the image is written).
    pub fn zero_bytes(&self) -> u64 {
        self.chunks.iter().filter(|c| c.is_zero()).map(|c| u64::from(c.len)).sum()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            magic: MAGIC,
            version: VERSION,
            params: self.params,
            len: self.len,
            image_hash: *self.image_hash.as_bytes(),
            chunks: self.chunks.clone(),
        };
        postcard::to_stdvec(&wire).expect("encoding to a Vec cannot fail")
    }

    /// The manifest's id: BLAKE3 of [`Self::encode`].
    pub fn id(&self) -> ManifestId {
        self.id
    }

    /// Decodes untrusted bytes; accepts only the canonical encoding of a valid manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadManifest { reason };
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(bad(format!("{} bytes, the limit is {MAX_ENCODED_LEN}", bytes.len())));
        }
        if bytes.len() < 5 || bytes[..4] != MAGIC {
            return Err(bad("not a vw manifest (bad magic)".into()));
        }
        if bytes[4] != VERSION {
            return Err(bad(format!("format version {}, this build reads {VERSION}", bytes[4])));
        }
        let (wire, rest): (Wire, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| bad(format!("truncated or garbled: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} trailing bytes", rest.len())));
        }
        let manifest = Self {
            params: wire.params,
            len: wire.len,
            image_hash: blake3::Hash::from_bytes(wire.image_hash),
            chunks: wire.chunks,
            id: ManifestId::from(blake3::hash(bytes)),
        };
        manifest.check().map_err(bad)?;
        if manifest.encode() != bytes {
            return Err(bad("not in canonical form".into()));
        }
        Ok(manifest)
    }
}

/// One chunk where it lies in its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The chunk's id ([`ChunkId::ZERO`] for a hole).
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
    /// Its offset in the image.
    pub offset: u64,
}

impl Placed {
    /// The offset just past it.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// An image's chunks with their offsets, and the places of each distinct non-zero
/// chunk: what writes an image from chunks arriving in any order needs
/// ([`Manifest::layout`]).
#[derive(Clone, Debug)]
pub struct Layout {
    chunks: Vec<Placed>,
    places: HashMap<ChunkId, Vec<usize>>,
}

impl Layout {
    /// The chunks in image order.
    pub fn chunks(&self) -> &[Placed] {
        &self.chunks
    }

    /// The indices (into [`Layout::chunks`]) where non-zero chunk `id` goes; empty if
    /// the image does not use it.
    pub fn places(&self, id: &ChunkId) -> &[usize] {
        self.places.get(id).map_or(&[], Vec::as_slice)
    }

    /// Each distinct non-zero chunk with its places.
    pub fn distinct(&self) -> impl Iterator<Item = (&ChunkId, &[usize])> {
        self.places.iter().map(|(id, at)| (id, at.as_slice()))
    }

    /// The indices of the chunks covering `[offset, offset + len)`.
    pub fn covering(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.saturating_add(len);
        let first = self.chunks.partition_point(|c| c.end() <= offset);
        let last = self.chunks.partition_point(|c| c.offset < end);
        first..last.max(first)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Manifest {
        let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        let chunks = vec![
            ChunkRef { id: ChunkId::of(b"a"), len: 4096 },
            ChunkRef { id: ChunkId::of(b"b"), len: 300 },
        ];
        Manifest::new(params, 4396, blake3::hash(b"image"), chunks).expect("valid")
    }

    #[test]
    fn golden_bytes() {
        let bytes = sample().encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_HEX);
        assert_eq!(sample().id().to_hex(), GOLDEN_ID);
    }

    /// `VWMF`, version 1, params 1024/4096/16384, length 4396, image hash, 2 chunks
    /// (id, len 4096), (id, len 300). See docs/protocol.md.
    const GOLDEN_HEX: &str = "56574d460180088020808001ac220229ff7dec8a365f7300835d175494866d46e56fec330dad33cd3dc93df3c16d0217762fddd969a453925d65717ac3eea21320b66b54342fde15128d6caf21215f802010e5cf3d3c8a4f9f3468c8cc58eea84892a22fdadbc1acb22410190044c1d553ac02";
    const GOLDEN_ID: &str = "389bde5041109595e736cba732211953420effb91d6a0362b16173108faf26df";

    #[test]
    fn rejects_foreign_truncated_and_trailing_bytes() {
        let bytes = sample().encode();
        let err = |b: &[u8]| Manifest::decode(b).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(b"PK\x03\x04 zip file").contains("bad magic"), "{}", err(b"PK\x03\x04"));
        assert!(err(&bytes[..bytes.len() - 7]).contains("truncated"));
        let mut long = bytes.clone();
        long.push(0);
        assert!(err(&long).contains("1 trailing bytes"));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert!(err(&v2).contains("format version 2"));
    }

    /// What the network carries, numbered as the planner and stage orders number it:
    /// each non-zero chunk once, in first-appearance order.
    #[test]
    fn distinct_chunks_skip_zeros_and_repeats_in_first_appearance_order() {
        let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let r = |id, len| ChunkRef { id, len };
        let chunks = vec![r(b, 4096), r(ChunkId::ZERO, 4096), r(a, 4096), r(b, 4096), r(a, 100)];
        let m = Manifest::new(params, 4 * 4096 + 100, blake3::hash(b"i"), chunks).expect("valid");
        assert_eq!(m.distinct(), vec![r(b, 4096), r(a, 4096)]);
    }

    #[test]
    fn rejects_lengths_that_do_not_add_up() {
        let m = sample();
        let err = Manifest::new(m.params(), 5000, m.image_hash(), m.chunks().to_vec());
        assert!(err.is_err());
    }

    /// fastcdc cuts chunks of up to 16 MiB, but the chunk protocol carries 256 KiB: a
    /// manifest with bigger chunks is refused, built here or decoded from the wire.
    #[test]
    fn chunks_the_wire_cannot_carry_are_refused() {
        let params = ChunkerParams { min: 64 << 10, avg: 256 << 10, max: 1 << 20 };
        let chunks = vec![ChunkRef { id: ChunkId::of(b"big"), len: 512 << 10 }];
        let err = Manifest::new(params, 512 << 10, blake3::hash(b"x"), chunks.clone())
            .expect_err("512 KiB chunks")
            .to_string();
        assert!(err.contains("could never be distributed"), "{err}");
        let wire = Wire {
            magic: MAGIC,
            version: VERSION,
            params,
            len: 512 << 10,
            image_hash: [0; 32],
            chunks,
        };
        let bytes = postcard::to_stdvec(&wire).expect("encode");
        let err = Manifest::decode(&bytes).expect_err("decoded").to_string();
        assert!(err.contains("could never be distributed"), "{err}");
    }

    proptest! {
        #[test]
        fn round_trip(lens in proptest::collection::vec(1024u32..=16384, 0..50), tail in 1u32..1024) {
            let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
            let mut chunks: Vec<ChunkRef> = lens.iter().enumerate()
                .map(|(i, &len)| ChunkRef { id: ChunkId::of(&i.to_le_bytes()), len }).collect();
            chunks.push(ChunkRef { id: ChunkId::of(b"tail"), len: tail });
            let len = chunks.iter().map(|c| u64::from(c.len)).sum();
            let m = Manifest::new(params, len, blake3::hash(b"x"), chunks).expect("valid");
            let back = Manifest::decode(&m.encode()).expect("decodes");
            prop_assert_eq!(back.id(), m.id());
            prop_assert_eq!(back, m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut framed = b"VWMF\x01".to_vec();
            framed.extend(bytes);
            let _ = Manifest::decode(&framed);
        }
    }
}
