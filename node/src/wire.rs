//! Length-prefixed, versioned postcard messages: the framing both peer protocols use.
//!
//! ```text
//! frame   = length:u32 BE | version:u8 | body:postcard(M)
//! length  = bytes after the length field (version + body), at most M::MAX
//! ```
//!
//! Everything is bounded before it is allocated: the length is checked before the body
//! is read, then the message's own limits ([`Message::check`]). A frame that breaks a
//! rule is a protocol violation.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A message type of one protocol.
pub trait Message: Serialize + DeserializeOwned {
    /// The protocol's name, as libp2p negotiates it: the same in every version, so that
    /// peers of different versions meet at the first frame and say which they speak.
    const PROTOCOL: &'static str;
    /// The version byte this build speaks.
    const VERSION: u8;
    /// Largest frame after its length field.
    const MAX: usize;
    /// The message's own limits, checked after decoding and before encoding.
    fn check(&self) -> Result<(), FrameError>;
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field exceeds the protocol's limit.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An empty frame (no version byte).
    #[error("empty frame")]
    Empty,
    /// A version this build does not speak: the peer runs another release.
    #[error("the peer speaks {protocol} version {found}, this build speaks version {speaks}")]
    Version {
        /// The protocol.
        protocol: &'static str,
        /// The version byte.
        found: u8,
        /// Ours.
        speaks: u8,
    },
    /// The body is not a message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message's own limit is exceeded, or a rule broken.
    #[error("{0}")]
    Invalid(String),
}

/// The message with its length prefix, ready to write.
pub fn encode<M: Message>(m: &M) -> Result<Vec<u8>, FrameError> {
    m.check()?;
    let mut out = vec![0, 0, 0, 0, M::VERSION];
    postcard::to_io(m, &mut out).expect("writing to a Vec cannot fail");
    let len = out.len() - 4;
    if len > M::MAX {
        return Err(FrameError::TooLong { len, limit: M::MAX });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame body (version byte and postcard, without the length field).
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != M::VERSION {
        return Err(FrameError::Version {
            protocol: M::PROTOCOL,
            found: version,
            speaks: M::VERSION,
        });
    }
    let m = match postcard::take_from_bytes::<M>(rest) {
        Ok((m, [])) => m,
        Ok((_, trailing)) => {
            return Err(FrameError::Malformed(format!("{} trailing bytes", trailing.len())))
        }
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    };
    // One encoding per message: postcard also reads integers and lengths written with
    // more bytes than needed, which this build never writes.
    if !postcard::to_io(&m, Same(rest)).is_ok_and(|left| left.0.is_empty()) {
        return Err(FrameError::Malformed(
            "not the canonical encoding (an integer or length written long)".into(),
        ));
    }
    m.check()?;
    Ok(m)
}

/// A writer that takes exactly the bytes it holds, in order: whether a message encodes
/// to the bytes it was decoded from, without allocating.
struct Same<'a>(&'a [u8]);

impl std::io::Write for Same<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.strip_prefix(buf) {
            Some(rest) => {
                self.0 = rest;
                Ok(buf.len())
            }
            None => Err(std::io::Error::other("the encoding differs")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The body length a frame's 4-byte header announces, checked against the limit
/// before anything is allocated for it.
pub fn frame_len<M: Message>(head: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(head) as usize;
    if len > M::MAX {
        return Err(FrameError::TooLong { len, limit: M::MAX });
    }
    Ok(len)
}

/// Splits a byte stream into messages, holding at most one frame's bytes.
#[derive(Debug)]
pub struct Decoder<M> {
    buf: Vec<u8>,
    _m: std::marker::PhantomData<M>,
}

impl<M> Default for Decoder<M> {
    fn default() -> Self {
        Decoder { buf: Vec::new(), _m: std::marker::PhantomData }
    }
}

impl<M: Message> Decoder<M> {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if the bytes so far hold one. An error ends the stream.
    pub fn next_frame(&mut self) -> Result<Option<M>, FrameError> {
        let Some(head) = self.buf.get(..4) else { return Ok(None) };
        let len = frame_len::<M>(head.try_into().expect("four bytes"))?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let m = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        m.map(Some)
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// What [`read`] allocates ahead of the bytes that have arrived.
#[cfg(feature = "io")]
pub const READ_STEP: usize = 64 << 10;

/// Reads one message; `None` at a clean end of stream (before a frame starts: a stream
/// that ends inside one is malformed).
///
/// Memory follows the bytes that arrive, never the length a peer announces: the body
/// buffer grows in steps of at most what has arrived so far (at least [`READ_STEP`]),
/// so a header announcing a full-size frame costs nothing until its body comes, and
/// the buffer never exceeds the checked length. Not cancel-safe: a frame partly read
/// is lost with the future (callers that time a read out drop the stream).
#[cfg(feature = "io")]
pub async fn read<M: Message, S: futures::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<M>, FrameError> {
    use futures::AsyncReadExt as _;
    use std::io::ErrorKind;
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match stream.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Err(e) if got == 0 && e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Malformed(format!(
                    "the stream ended {got} bytes into a frame's length"
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Malformed(e.to_string())),
        }
    }
    let len = frame_len::<M>(len)?;
    let mut body = Vec::new();
    while body.len() < len {
        let start = body.len();
        let step = (len - start).min(start.max(READ_STEP));
        body.reserve_exact(step);
        body.resize(start + step, 0);
        stream.read_exact(&mut body[start..]).await.map_err(|e| {
            FrameError::Malformed(format!("{e} after {start} of a {len}-byte frame"))
        })?;
    }
    decode_body(&body).map(Some)
}

/// Writes one message. Not cancel-safe: a frame partly written leaves the stream
/// unusable.
#[cfg(feature = "io")]
pub async fn write<M: Message, S: futures::AsyncWrite + Unpin>(
    stream: &mut S,
    m: &M,
) -> Result<(), FrameError> {
    use futures::AsyncWriteExt as _;
    let bytes = encode(m)?;
    stream.write_all(&bytes).await.map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(all(test, feature = "io"))]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::executor::block_on;

    use super::*;
    use crate::chunks::protocol::{Frame, MAX_FRAME};

    /// Hands out its bytes a few at a time and records the size of every buffer it is
    /// asked to fill: how much `read` had allocated ahead of what arrived.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        asked: Vec<usize>,
    }

    impl futures::AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            self.asked.push(buf.len());
            let n = buf.len().min(self.bytes.len() - self.at).min(1000);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn frames_are_read_back_to_back_then_a_clean_end() {
        let frames = [Frame::Credit { chunks: 3 }, Frame::Done];
        let bytes = frames.iter().flat_map(|f| encode(f).expect("encode")).collect();
        let mut s = Trickle { bytes, at: 0, asked: vec![] };
        for f in &frames {
            assert_eq!(block_on(read::<Frame, _>(&mut s)).as_ref(), Ok(&Some(f.clone())));
        }
        assert_eq!(block_on(read::<Frame, _>(&mut s)), Ok(None));
    }

    /// A number written with more bytes than needed decodes in postcard, but each
    /// message has one encoding: the long form is refused, the short one read.
    #[test]
    fn only_the_canonical_encoding_is_read() {
        let v = crate::chunks::protocol::VERSION;
        assert_eq!(encode(&Frame::Credit { chunks: 3 }), Ok(vec![0, 0, 0, 3, v, 1, 3]));
        assert_eq!(decode_body::<Frame>(&[v, 1, 3]), Ok(Frame::Credit { chunks: 3 }));
        let long = decode_body::<Frame>(&[v, 1, 0x83, 0x00]).expect_err("a long 3");
        assert!(matches!(long, FrameError::Malformed(m) if m.contains("canonical")));
        let long_tag = decode_body::<Frame>(&[v, 0x81, 0x00, 3]).expect_err("a long variant");
        assert!(matches!(long_tag, FrameError::Malformed(_)));
    }

    /// A stream that ends inside a frame's length is cut short, not ended cleanly.
    #[test]
    fn a_stream_ending_inside_a_length_is_malformed() {
        for cut in 1..4 {
            let mut s = Trickle { bytes: vec![0; cut], at: 0, asked: vec![] };
            let err = block_on(read::<Frame, _>(&mut s)).expect_err("cut short");
            assert_eq!(
                err,
                FrameError::Malformed(format!(
                    "the stream ended {cut} bytes into a frame's length"
                ))
            );
        }
    }

    /// A header announcing a full-size frame, then a little of it: the body buffer grows
    /// with what arrives (one step at first, then at most doubling), and the truncated
    /// frame is refused saying how far it got.
    #[test]
    fn memory_follows_the_bytes_not_the_announced_length() {
        let arrived = 2 * READ_STEP + 5;
        let mut bytes = (MAX_FRAME as u32).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(2u8, arrived));
        let mut s = Trickle { bytes, at: 0, asked: vec![] };
        let err = block_on(read::<Frame, _>(&mut s)).expect_err("truncated");
        let FrameError::Malformed(why) = err else { panic!("{err:?}") };
        assert!(why.contains(&format!("after {} of a {MAX_FRAME}-byte frame", 2 * READ_STEP)));
        assert!(s.asked.iter().all(|&n| n <= 2 * READ_STEP), "{:?}", s.asked);
        const { assert!(MAX_FRAME > 3 * READ_STEP, "the frame is longer than what arrived") };
    }
}
