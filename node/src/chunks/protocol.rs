//! The wire format of `/vw/chunks`: length-prefixed frames, each a version byte and
//! a postcard-encoded [`Frame`]. The name carries no version: a peer of another
//! release meets this one at its first frame and is refused, both versions named.
//!
//! ```text
//! frame   = length:u32 BE | version:u8 (6) | body:postcard(Frame)
//! length  = bytes after the length field (version + body), at most MAX_FRAME
//! ```
//!
//! Everything is bounded before it is allocated: the length is checked before the body
//! is read, then each variant's own limits (ids per request, chunk size, text). A chunk
//! frame never carries the zero chunk (zero chunks are holes, never sent). A frame that
//! breaks a rule is a protocol violation, and the peer is dropped for the deployment.

use serde::{Deserialize, Serialize};
use vw_chunkstore::{ChunkId, ManifestId};

pub use crate::wire::FrameError;
use crate::wire::{self, Message};

/// The protocol's name, negotiated by libp2p.
pub const PROTOCOL_NAME: &str = "/vw/chunks";
/// The frame format version this build speaks (2: a want names its manifest; 3: a
/// relief stream asks whether the sender has upload to spare, [`Frame::IfSpare`]; 4: a
/// guest waits on the stream's chunks, [`Frame::Urgent`]; 5: a planned sender passes
/// on a chunk it is still fetching, [`Frame::Through`]; 6: a chunk already sent on an
/// urgent stream is not sent again, [`Frame::Sent`]).
pub const VERSION: u8 = 6;
/// Largest chunk carried: the largest a manifest may list, so every stored image can
/// be distributed.
pub const MAX_CHUNK: usize = vw_chunkstore::MAX_CHUNK_LEN as usize;
/// Most chunk ids one request may name.
pub const MAX_WANT: usize = 4096;
/// Longest deployment name or error message.
pub const MAX_TEXT: usize = 512;
/// Largest frame after its length field: a full chunk plus headroom for the header.
pub const MAX_FRAME: usize = MAX_CHUNK + 1024;

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Receiver → sender: send these chunks of this manifest, for this deployment. The
    /// sender serves them only if it granted the receiver that manifest for that
    /// deployment, and every id is in the manifest.
    Want {
        /// The deployment they are for.
        deployment: String,
        /// The manifest the receiver is staging that lists them.
        manifest: ManifestId,
        /// Chunk ids, in the order wanted.
        ids: Vec<ChunkId>,
    },
    /// Receiver → sender: this many more chunks may be in flight (flow control).
    Credit {
        /// Chunks.
        chunks: u32,
    },
    /// Sender → receiver: one chunk's bytes.
    Chunk {
        /// Its id; the receiver checks the bytes hash to it.
        id: ChunkId,
        /// Its bytes.
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
    },
    /// Sender → receiver: the sender does not hold this chunk.
    Missing {
        /// The chunk.
        id: ChunkId,
    },
    /// Either way: nothing more on this stream.
    Done,
    /// Either way: why the stream ends.
    Refused {
        /// A short reason, for the log.
        reason: String,
    },
    /// Sender → receiver: one chunk's bytes, zstd-compressed (sent only when that
    /// saves at least an eighth). The receiver decompresses into at most `len` bytes,
    /// then checks the bytes hash to the id.
    Packed {
        /// Its id.
        id: ChunkId,
        /// Its length uncompressed.
        len: u32,
        /// The zstd frame.
        #[serde(with = "serde_bytes_compat")]
        data: Vec<u8>,
    },
    /// Receiver → sender, before its first `Want`: this stream relieves another sender
    /// that runs slow. A sender whose upload has no room to spare refuses it at once
    /// (`Refused`), rather than take upload from the streams it feeds already.
    IfSpare,
    /// Receiver → sender, before its first `Want`: a guest is reading these chunks
    /// now (a lazy disk). The sender answers at once from what it holds (`Missing` for
    /// a chunk it is still receiving, rather than wait for it; unless asked
    /// [`Frame::Through`]) and its other streams give way while it sends.
    Urgent,
    /// Receiver → sender, after `Urgent` and before its first `Want`: the sender is the
    /// receiver's planned sender of these chunks (its parent in the plan, for them). A
    /// chunk it lacks but is staging itself is fetched at once and its answer's bytes
    /// passed on as they arrive (cut-through; the last byte only once the whole chunk
    /// is verified there), rather than answered `Missing`: every host of a cascade
    /// whose guests read the same chunk at once then gets it down the chain, and the
    /// source's uplink carries it once.
    Through,
    /// Sender → receiver, in a stream's place for a chunk: the sender sent this chunk
    /// to this receiver on an urgent stream since it was asked for here, so it is not
    /// sent again. A receiver that does not hold it by now asks for it again, as for
    /// [`Frame::Missing`].
    Sent {
        /// The chunk.
        id: ChunkId,
    },
}

/// Byte strings as postcard byte arrays (length + bytes), not sequences of integers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

impl Message for Frame {
    const PROTOCOL: &'static str = PROTOCOL_NAME;
    const VERSION: u8 = VERSION;
    const MAX: usize = MAX_FRAME;

    /// Checks the variant's limits.
    fn check(&self) -> Result<(), FrameError> {
        let bad = |why: String| Err(FrameError::Invalid(why));
        match self {
            Frame::Want { deployment, ids, .. } => {
                if deployment.len() > MAX_TEXT {
                    return bad(format!("deployment name of {} bytes", deployment.len()));
                }
                if ids.is_empty() || ids.len() > MAX_WANT {
                    return bad(format!("want of {} ids (1..={MAX_WANT})", ids.len()));
                }
                if let Some(id) = ids.iter().find(|id| id.is_zero()) {
                    return bad(format!(
                        "want of the zero chunk {id:#}: zero chunks are never sent"
                    ));
                }
                Ok(())
            }
            Frame::Chunk { id, data } => {
                if id.is_zero() {
                    return bad("a zero chunk was sent; zero chunks are holes, never sent".into());
                }
                if data.is_empty() || data.len() > MAX_CHUNK {
                    return bad(format!("chunk {id:#} of {} bytes (1..={MAX_CHUNK})", data.len()));
                }
                Ok(())
            }
            Frame::Packed { id, len, data } => {
                if id.is_zero() {
                    return bad("a zero chunk was sent; zero chunks are holes, never sent".into());
                }
                if *len == 0 || *len as usize > MAX_CHUNK {
                    return bad(format!("packed chunk {id:#} of {len} bytes (1..={MAX_CHUNK})"));
                }
                if data.is_empty() || data.len() >= *len as usize {
                    return bad(format!(
                        "packed chunk {id:#}: {} compressed bytes for {len}",
                        data.len()
                    ));
                }
                Ok(())
            }
            Frame::Refused { reason } if reason.len() > MAX_TEXT => {
                bad(format!("reason of {} bytes", reason.len()))
            }
            Frame::Credit { chunks: 0 } => bad("a credit of 0 chunks".into()),
            _ => Ok(()),
        }
    }
}

impl Frame {
    /// The frame with its length prefix, ready to write.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        wire::encode(self)
    }

    /// Decodes one frame body (version byte and postcard, without the length field).
    pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        wire::decode_body(body)
    }

    /// Whether a chunk frame's bytes hash to its id (the receiver's check before it
    /// stores or forwards anything). A packed frame is never verified as it comes: its
    /// bytes are compressed, so it is unpacked first (`unpack`). Frames without chunk
    /// bytes have nothing to verify.
    pub fn verified(&self) -> bool {
        match self {
            Frame::Chunk { id, data } => ChunkId::from(blake3::hash(data)) == *id,
            Frame::Packed { .. } => false,
            _ => true,
        }
    }

    /// A packed frame as the plain chunk frame it stands for ([`unpack`]); any other
    /// frame as it is.
    #[cfg(feature = "packing")]
    pub fn unpacked(self) -> Result<Frame, UnpackError> {
        match self {
            Frame::Packed { id, len, data } => {
                unpack(&id, len, &data).map(|data| Frame::Chunk { id, data })
            }
            other => Ok(other),
        }
    }
}

/// Why a packed chunk could not be unpacked: the sender broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The announced length is zero or more than a chunk.
    #[error("packed chunk {id:#} announces {len} bytes (1..={MAX_CHUNK})")]
    Length {
        /// The chunk.
        id: ChunkId,
        /// The announced length.
        len: u32,
    },
    /// The bytes are not zstd, or hold more than the announced length.
    #[error("packed chunk {id:#} is not zstd of at most {len} bytes: {reason}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// The announced length.
        len: u32,
        /// zstd's word.
        reason: String,
    },
    /// The bytes hold less than the announced length.
    #[error("packed chunk {id:#} holds {got} bytes, not the {len} announced")]
    Short {
        /// The chunk.
        id: ChunkId,
        /// The announced length.
        len: u32,
        /// What it held.
        got: usize,
    },
}

/// The frame that carries a chunk: [`Frame::Packed`] with zstd level 1 if that saves at
/// least an eighth, [`Frame::Chunk`] otherwise.
#[cfg(feature = "packing")]
pub fn pack(id: ChunkId, data: Vec<u8>) -> Frame {
    if let Ok(packed) = zstd::bulk::compress(&data, 1) {
        if !packed.is_empty()
            && packed.len() < data.len()
            && packed.len() <= data.len() - data.len() / 8
        {
            if let Ok(len) = u32::try_from(data.len()) {
                return Frame::Packed { id, len, data: packed };
            }
        }
    }
    Frame::Chunk { id, data }
}

/// A packed chunk's bytes, decompressed into at most `len` bytes (itself at most
/// [`MAX_CHUNK`]): memory is bounded by the announced length whatever the compressed
/// bytes claim, and anything but exactly `len` bytes is refused. The caller still
/// checks the bytes hash to the id.
#[cfg(feature = "packing")]
pub fn unpack(id: &ChunkId, len: u32, data: &[u8]) -> Result<Vec<u8>, UnpackError> {
    let n = len as usize;
    if n == 0 || n > MAX_CHUNK {
        return Err(UnpackError::Length { id: *id, len });
    }
    let plain = zstd::bulk::decompress(data, n).map_err(|e| UnpackError::Corrupt {
        id: *id,
        len,
        reason: e.to_string(),
    })?;
    if plain.len() != n {
        return Err(UnpackError::Short { id: *id, len, got: plain.len() });
    }
    Ok(plain)
}

/// The body length a frame's 4-byte header announces, checked against [`MAX_FRAME`]
/// before anything is allocated for it.
pub fn frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    wire::frame_len::<Frame>(head)
}

/// Splits a byte stream into frames, holding at most one frame's bytes.
pub type FrameDecoder = wire::Decoder<Frame>;

/// What a frame's first bytes (length field included) say it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// Too few bytes yet to tell.
    Unknown,
    /// A chunk's bytes ([`Frame::Chunk`] or [`Frame::Packed`]), this chunk's.
    Chunk(ChunkId),
    /// Anything else (or another version's frame).
    Other,
}

/// What a frame carries, from its first bytes: how a frame is passed on before it has
/// all arrived ([`Frame::Through`]). Only the header is read; the frame is checked
/// whole by whoever decodes it.
pub fn carried(frame: &[u8]) -> Carried {
    // length:u32 | version | variant (one byte below 128) | id: 32 bytes, for both.
    const CHUNK: u8 = 2;
    const PACKED: u8 = 6;
    let Some(head) = frame.get(4..4 + 2 + 32) else {
        return if frame.len() > 5 && (frame[4] != VERSION || ![CHUNK, PACKED].contains(&frame[5])) {
            Carried::Other
        } else {
            Carried::Unknown
        };
    };
    match (head[0], head[1]) {
        (VERSION, CHUNK | PACKED) => {
            let id: [u8; 32] = head[2..].try_into().expect("32 bytes");
            Carried::Chunk(ChunkId::from_bytes(id))
        }
        _ => Carried::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: u8) -> ChunkId {
        ChunkId::from_bytes([b; 32])
    }

    fn mid(b: u8) -> ManifestId {
        ManifestId::from_bytes([b; 32])
    }

    fn hex(v: &[u8]) -> String {
        v.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes on the wire are pinned: a change here is a protocol change (bump the
    /// version and the protocol name).
    #[test]
    fn golden_bytes() {
        let want = Frame::Want { deployment: "g".into(), manifest: mid(3), ids: vec![id(1)] }
            .encode()
            .expect("encode");
        assert_eq!(hex(&want), format!("0000004506000167{}01{}", "03".repeat(32), "01".repeat(32)));
        let chunk = Frame::Chunk { id: id(2), data: vec![7, 8, 9] }.encode().expect("encode");
        assert_eq!(hex(&chunk), format!("000000260602{}03070809", "02".repeat(32)));
        assert_eq!(
            hex(&Frame::Credit { chunks: 300 }.encode().expect("encode")),
            "000000040601ac02"
        );
        assert_eq!(hex(&Frame::Done.encode().expect("encode")), "000000020604");
        assert_eq!(hex(&Frame::IfSpare.encode().expect("encode")), "000000020607");
        assert_eq!(hex(&Frame::Urgent.encode().expect("encode")), "000000020608");
        assert_eq!(hex(&Frame::Through.encode().expect("encode")), "000000020609");
        let sent = Frame::Sent { id: id(4) }.encode().expect("encode");
        assert_eq!(hex(&sent), format!("00000022060a{}", "04".repeat(32)));
    }

    /// A frame's first bytes say whether it carries a chunk, and which, as soon as its
    /// header is in; never from fewer bytes.
    #[test]
    fn a_frames_head_says_which_chunk_it_carries() {
        let chunk = Frame::Chunk { id: id(2), data: vec![7; 100] }.encode().expect("encode");
        let packed =
            Frame::Packed { id: id(3), len: 200, data: vec![7; 100] }.encode().expect("encode");
        let missing = Frame::Missing { id: id(2) }.encode().expect("encode");
        for (frame, whole) in [(&chunk, Carried::Chunk(id(2))), (&packed, Carried::Chunk(id(3)))] {
            assert_eq!(carried(&frame[..37]), Carried::Unknown);
            assert_eq!(carried(&frame[..38]), whole);
            assert_eq!(carried(frame), whole);
        }
        assert_eq!(carried(&missing[..5]), Carried::Unknown);
        assert_eq!(carried(&missing[..6]), Carried::Other);
        assert_eq!(carried(&missing), Carried::Other);
        let mut old = chunk.clone();
        old[4] = VERSION - 1;
        assert_eq!(carried(&old[..6]), Carried::Other);
        assert_eq!(carried(&old), Carried::Other);
    }

    #[test]
    fn limits_are_checked_both_ways() {
        assert!(Frame::Chunk { id: ChunkId::ZERO, data: vec![0; 10] }.encode().is_err());
        assert!(Frame::Chunk { id: id(1), data: vec![1; MAX_CHUNK + 1] }.encode().is_err());
        assert!(Frame::Want { deployment: "d".into(), manifest: mid(1), ids: vec![] }
            .encode()
            .is_err());
        assert!(Frame::Want {
            deployment: "d".into(),
            manifest: mid(1),
            ids: vec![id(1); MAX_WANT + 1]
        }
        .encode()
        .is_err());
        let mut d = FrameDecoder::default();
        d.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong { len: MAX_FRAME + 1, limit: MAX_FRAME })
        );
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 2, 9, 4]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::Version { protocol: PROTOCOL_NAME, found: 9, speaks: VERSION })
        );
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 3, VERSION, 4, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::Malformed(_))));
    }

    /// A zip bomb (a few bytes that decompress to far more than announced) is refused
    /// within the announced length; so are short, corrupt and oversized frames, and
    /// what unpacks is the chunk that was packed.
    #[cfg(feature = "packing")]
    #[test]
    fn packed_chunks_unpack_within_their_length() {
        let data = vec![7u8; 64 << 10];
        let id = ChunkId::from(blake3::hash(&data));
        let Frame::Packed { len, data: packed, .. } = pack(id, data.clone()) else {
            panic!("a run of one byte compresses")
        };
        assert!(packed.len() < 100, "{}", packed.len());
        assert_eq!(unpack(&id, len, &packed).as_deref(), Ok(&data[..]));
        let frame = Frame::Packed { id, len, data: packed.clone() };
        assert!(!frame.verified(), "packed bytes are not the chunk");
        let plain = frame.unpacked().expect("unpacks");
        assert!(plain.verified());
        assert!(matches!(unpack(&id, len - 1, &packed), Err(UnpackError::Corrupt { .. })));
        assert!(matches!(unpack(&id, len + 1, &packed), Err(UnpackError::Short { .. })));
        assert!(matches!(unpack(&id, 0, &packed), Err(UnpackError::Length { .. })));
        let over = MAX_CHUNK as u32 + 1;
        assert!(matches!(unpack(&id, over, &packed), Err(UnpackError::Length { .. })));
        assert!(matches!(unpack(&id, len, b"not zstd"), Err(UnpackError::Corrupt { .. })));
        // What does not compress goes plain.
        let noise: Vec<u8> =
            (0..4096u32).map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0]).collect();
        assert!(matches!(pack(id, noise), Frame::Chunk { .. }));
    }

    #[test]
    fn chunks_verify_against_their_ids() {
        let data = b"hello".to_vec();
        let good = Frame::Chunk { id: ChunkId::from(blake3::hash(&data)), data: data.clone() };
        assert!(good.verified());
        assert!(!Frame::Chunk { id: id(3), data }.verified());
    }

    fn frames() -> impl Strategy<Value = Frame> {
        let id = any::<[u8; 32]>()
            .prop_filter("not zero", |b| b != &[0; 32])
            .prop_map(ChunkId::from_bytes);
        prop_oneof![
            ("[a-z0-9-]{0,40}", any::<[u8; 32]>(), proptest::collection::vec(id.clone(), 1..50))
                .prop_map(|(deployment, m, ids)| Frame::Want {
                    deployment,
                    manifest: ManifestId::from_bytes(m),
                    ids
                }),
            (1u32..).prop_map(|chunks| Frame::Credit { chunks }),
            (id.clone(), proptest::collection::vec(any::<u8>(), 1..3000))
                .prop_map(|(id, data)| Frame::Chunk { id, data }),
            (id.clone(), proptest::collection::vec(any::<u8>(), 1..300))
                .prop_map(|(id, data)| Frame::Packed { id, len: data.len() as u32 + 7, data }),
            id.prop_map(|id| Frame::Missing { id }),
            Just(Frame::Done),
            "[ -~]{0,100}".prop_map(|reason| Frame::Refused { reason }),
        ]
    }

    proptest! {
        /// Any frames, encoded back to back and fed in arbitrary pieces, decode to the
        /// same frames.
        #[test]
        fn frames_round_trip_in_any_pieces(fs in proptest::collection::vec(frames(), 1..8), cut in 1usize..200) {
            let bytes: Vec<u8> = fs.iter().flat_map(|f| f.encode().expect("encode")).collect();
            let mut d = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(cut) {
                d.push(piece);
                while let Some(f) = d.next_frame().expect("valid") {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, fs);
            prop_assert_eq!(d.pending(), 0);
        }
    }
}
