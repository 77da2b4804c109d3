//! Passing a chunk on as it arrives (cut-through): a host fetching a chunk a guest
//! waits on shares the answer's bytes, as they come off its urgent stream, with the
//! servers of the hosts below it in the plan that asked it for that chunk
//! ([`Frame::Through`](super::Frame::Through)). Each forwards the bytes at once, all
//! but the last until the whole chunk is verified here: a child never gets a whole
//! chunk this host has not checked, and a chunk the guests of a whole chain read at
//! once crosses each link once, a few milliseconds behind the one above.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use vw_chunkstore::ChunkId;

use super::protocol::{carried, Carried};

/// One chunk's fetch as it goes: the answer of the holder now asked, byte by byte.
#[derive(Debug)]
pub struct Passing {
    state: watch::Sender<Answer>,
}

/// The answer of the holder being asked.
#[derive(Debug, Default)]
struct Answer {
    /// Which holder's answer the bytes are: one more for each holder asked.
    attempt: u32,
    /// The answer's bytes so far, as they came off the stream (the length field
    /// included): one frame at most, since an urgent stream asks for one chunk.
    bytes: Vec<u8>,
    /// The answer is a whole chunk, and it hashed to its id here.
    verified: bool,
    /// The fetch is over.
    over: bool,
}

impl Passing {
    /// A fetch about to ask its first holder.
    pub fn new() -> Arc<Self> {
        Arc::new(Passing { state: watch::channel(Answer::default()).0 })
    }

    /// A holder is asked: the bytes from here on are its answer.
    pub fn asking(&self) {
        self.state.send_modify(|a| {
            a.attempt += 1;
            a.bytes.clear();
            a.verified = false;
        });
    }

    /// The answer's bytes hash to the chunk's id: the last byte may go.
    pub fn verified(&self) {
        self.state.send_modify(|a| a.verified = true);
    }

    /// The fetch is over (the chunk is in this host's store, or could not be fetched).
    pub fn over(&self) {
        self.state.send_modify(|a| a.over = true);
    }

    /// A forwarder of chunk `id`'s bytes that waits at most `quiet` for the next.
    pub fn forward(&self, id: ChunkId, quiet: Duration) -> Forward {
        Forward { answer: self.state.subscribe(), id, attempt: None, sent: 0, quiet }
    }
}

/// A reader whose bytes are also a [`Passing`]'s answer.
#[derive(Debug)]
pub struct Tee<'a, R> {
    inner: &'a mut R,
    pass: Option<&'a Passing>,
}

impl<'a, R> Tee<'a, R> {
    /// `inner`, whose reads are also taken as `pass`'s answer's bytes (none: only read).
    pub fn new(inner: &'a mut R, pass: Option<&'a Passing>) -> Self {
        Tee { inner, pass }
    }
}

impl<R: futures::AsyncRead + Unpin> futures::AsyncRead for Tee<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(pass)) = (&polled, this.pass) {
            if *n > 0 {
                pass.state.send_modify(|a| a.bytes.extend_from_slice(&buf[..*n]));
            }
        }
        polled
    }
}

/// What a [`Forward`] has next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// These bytes of the chunk's frame, to write now.
    Bytes(Vec<u8>),
    /// The whole frame has gone.
    Sent,
    /// Nothing was forwarded and nothing will be: the fetch is over (the chunk is in
    /// the store, or could not be fetched), or no holder has started to send it within
    /// the quiet time.
    Unsent,
    /// Part of a frame has gone and the rest never will (its holder failed halfway, or
    /// its bytes were bad): the stream must end, and its fetcher asks again.
    Broken(String),
}

/// The bytes of one chunk's frame, taken from a [`Passing`] as they arrive.
#[derive(Debug)]
pub struct Forward {
    answer: watch::Receiver<Answer>,
    id: ChunkId,
    /// The attempt whose bytes are forwarded, once one is looked at.
    attempt: Option<u32>,
    /// Bytes of it forwarded.
    sent: usize,
    quiet: Duration,
}

impl Forward {
    /// The next step. Cancel-safe.
    pub async fn step(&mut self) -> Step {
        loop {
            if let Some(step) = self.look() {
                return step;
            }
            match tokio::time::timeout(self.quiet, self.answer.changed()).await {
                Ok(Ok(())) => {}
                // The fetch is gone without a word, or nothing came for the quiet time.
                gone => {
                    let why = match gone {
                        Ok(Err(_)) => "the fetch ended without an answer".to_owned(),
                        _ => format!("nothing arrived for {} s", self.quiet.as_secs()),
                    };
                    return if self.sent == 0 { Step::Unsent } else { Step::Broken(why) };
                }
            }
        }
    }

    /// The step the answer allows now, if any.
    fn look(&mut self) -> Option<Step> {
        let a = self.answer.borrow_and_update();
        if self.attempt != Some(a.attempt) {
            if self.sent > 0 {
                return Some(Step::Broken(format!(
                    "the holder sending chunk {:#} failed after {} bytes; another is asked",
                    self.id, self.sent
                )));
            }
            self.attempt = Some(a.attempt);
        }
        let ours = matches!(carried(&a.bytes), Carried::Chunk(id) if id == self.id);
        if ours {
            // All of it once verified, else all but the last byte of the frame.
            let whole = a.bytes.get(..4).map_or(usize::MAX, |len| {
                4 + u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize
            });
            let upto =
                if a.verified { a.bytes.len() } else { a.bytes.len().min(whole.saturating_sub(1)) };
            if upto > self.sent {
                let bytes = a.bytes[self.sent..upto].to_vec();
                self.sent = upto;
                return Some(Step::Bytes(bytes));
            }
            if a.verified && self.sent == a.bytes.len() {
                return Some(Step::Sent);
            }
        }
        match (a.over, self.sent) {
            (false, _) => None,
            (true, 0) => Some(Step::Unsent),
            (true, sent) => Some(Step::Broken(format!(
                "the fetch of chunk {:#} ended after {sent} bytes were passed on",
                self.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::Frame;

    fn chunk(seed: u8) -> (ChunkId, Vec<u8>) {
        let data = vec![seed; 3000];
        let id = ChunkId::from(blake3::hash(&data));
        let frame = Frame::Chunk { id, data }.encode().expect("encode");
        (id, frame)
    }

    /// Bytes are passed on as they arrive, all but the frame's last until it is
    /// verified; a `Missing` answer is not passed on, and the next holder's is.
    #[tokio::test]
    async fn a_chunk_is_passed_on_as_it_arrives_and_ends_once_verified() {
        let (id, frame) = chunk(1);
        let pass = Passing::new();
        let mut fwd = pass.forward(id, Duration::from_secs(5));
        pass.asking();
        let missing = Frame::Missing { id }.encode().expect("encode");
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&missing));
        pass.asking(); // the next holder
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame[..10]));
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame[10..100]));
        assert_eq!(fwd.step().await, Step::Bytes(frame[..100].to_vec()));
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame[100..]));
        let n = frame.len();
        assert_eq!(fwd.step().await, Step::Bytes(frame[100..n - 1].to_vec()), "held: the last");
        pass.verified();
        assert_eq!(fwd.step().await, Step::Bytes(frame[n - 1..].to_vec()));
        assert_eq!(fwd.step().await, Step::Sent);
    }

    /// A holder that fails halfway breaks the forward; one that fails before a byte
    /// went leaves the forward waiting for the next; a fetch that ends with nothing
    /// passed on says whether the chunk is here; a quiet one ends unsent.
    #[tokio::test]
    async fn a_forward_ends_as_its_fetch_does() {
        let (id, frame) = chunk(2);
        let pass = Passing::new();
        let mut fwd = pass.forward(id, Duration::from_secs(5));
        pass.asking();
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame[..50]));
        assert!(matches!(fwd.step().await, Step::Bytes(_)));
        pass.asking();
        assert!(matches!(fwd.step().await, Step::Broken(_)), "half a frame went");

        let mut fwd = pass.forward(id, Duration::from_secs(5));
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame[..37]));
        pass.over();
        assert_eq!(fwd.step().await, Step::Unsent, "the cascade brought it");

        let (other, _) = chunk(3);
        let pass = Passing::new();
        pass.asking();
        pass.state.send_modify(|a| a.bytes.extend_from_slice(&frame));
        pass.verified();
        let mut fwd = pass.forward(other, Duration::from_millis(20));
        assert_eq!(fwd.step().await, Step::Unsent, "another chunk's frame");
    }
}
