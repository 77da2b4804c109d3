//! The wire format of `/vw/chunks/2`: length-prefixed frames, each a version byte and
//! a postcard-encoded [`Frame`].
//!
//! ```text
//! frame   = length:u32 BE | version:u8 (2) | body:postcard(Frame)
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
pub const PROTOCOL_NAME: &str = "/vw/chunks/2";
/// The frame format version this build speaks (2: a want names its manifest).
pub const VERSION: u8 = 2;
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
    /// stores or forwards anything).
    pub fn verified(&self) -> bool {
        match self {
            Frame::Chunk { id, data } => ChunkId::from(blake3::hash(data)) == *id,
            _ => true,
        }
    }
}

/// The body length a frame's 4-byte header announces, checked against [`MAX_FRAME`]
/// before anything is allocated for it.
pub fn frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    wire::frame_len::<Frame>(head)
}

/// Splits a byte stream into frames, holding at most one frame's bytes.
pub type FrameDecoder = wire::Decoder<Frame>;

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
        assert_eq!(hex(&want), format!("0000004502000167{}01{}", "03".repeat(32), "01".repeat(32)));
        let chunk = Frame::Chunk { id: id(2), data: vec![7, 8, 9] }.encode().expect("encode");
        assert_eq!(hex(&chunk), format!("000000260202{}03070809", "02".repeat(32)));
        assert_eq!(
            hex(&Frame::Credit { chunks: 300 }.encode().expect("encode")),
            "000000040201ac02"
        );
        assert_eq!(hex(&Frame::Done.encode().expect("encode")), "000000020204");
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
        assert_eq!(d.next_frame(), Err(FrameError::Version { found: 9, speaks: 2 }));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 3, 2, 4, 0]);
        assert!(matches!(d.next_frame(), Err(FrameError::Malformed(_))));
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
