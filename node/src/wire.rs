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
    /// A version this build does not speak.
    #[error("frame version {found}, this build speaks {speaks}")]
    Version {
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
        return Err(FrameError::Version { found: version, speaks: M::VERSION });
    }
    let m = match postcard::take_from_bytes::<M>(rest) {
        Ok((m, [])) => m,
        Ok((_, trailing)) => {
            return Err(FrameError::Malformed(format!("{} trailing bytes", trailing.len())))
        }
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    };
    m.check()?;
    Ok(m)
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

/// Reads one message; `None` at a clean end of stream.
#[cfg(feature = "host")]
pub async fn read<M: Message, S: futures::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<M>, FrameError> {
    use futures::AsyncReadExt as _;
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    }
    let len = frame_len::<M>(len)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| FrameError::Malformed(e.to_string()))?;
    decode_body(&body).map(Some)
}

/// Writes one message.
#[cfg(feature = "host")]
pub async fn write<M: Message, S: futures::AsyncWrite + Unpin>(
    stream: &mut S,
    m: &M,
) -> Result<(), FrameError> {
    use futures::AsyncWriteExt as _;
    let bytes = encode(m)?;
    stream.write_all(&bytes).await.map_err(|e| FrameError::Malformed(e.to_string()))
}
