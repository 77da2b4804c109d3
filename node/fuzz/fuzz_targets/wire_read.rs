//! `wire::read`, what the daemon reads every frame of both protocols with, over a
//! stream that hands out any bytes in any pieces (and sometimes is not ready). The
//! first byte picks the message type (chunk frames, control requests, control
//! replies), the piece size and whether the stream stalls; the rest is the stream.
//!
//! Each read must give a message, a clean end (only between frames) or an error, never
//! panic; a message must be exactly the bytes it was read from, re-encoded (one
//! encoding per message). Memory follows the bytes read, never the announced length:
//! no single allocation beyond what arrived (twice, plus one read step, plus serde's
//! 1 MiB preallocation cap), and nothing beyond the frame limit in all.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use vw_node::chunks::Frame;
use vw_node::control::protocol::Reply;
use vw_node::control::Request;
use vw_node::wire::{self, Message, READ_STEP};

#[path = "../support/metered.rs"]
mod metered;

#[global_allocator]
static ALLOC: metered::Metered = metered::Metered;

/// serde preallocates at most this much for a sequence whose length it is told.
const SERDE_PREALLOC: usize = 1 << 20;

/// A stream over `bytes`, at most `piece` bytes per read, not ready every other poll
/// if `stall`.
struct Pieces<'a> {
    bytes: &'a [u8],
    at: usize,
    piece: usize,
    stall: bool,
    polls: u64,
}

impl futures::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        self.polls += 1;
        if self.stall && self.polls % 2 == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(self.piece).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

fn run<M: Message + std::fmt::Debug>(stream: &mut Pieces<'_>) {
    loop {
        let start = stream.at;
        let mark = metered::start();
        let read = block_on(wire::read::<M, _>(stream));
        let (largest, peak) = mark.since();
        let arrived = stream.at - start;
        assert!(
            largest <= 2 * arrived + READ_STEP + SERDE_PREALLOC,
            "an allocation of {largest} bytes for {arrived} bytes read"
        );
        assert!(peak <= 4 + M::MAX, "{peak} bytes live for a frame of at most {}", M::MAX);
        match read {
            Ok(Some(m)) => {
                let again = wire::encode(&m).expect("a message read is within its limits");
                assert_eq!(again, &stream.bytes[start..stream.at], "{m:?} re-encodes otherwise");
            }
            Ok(None) => {
                assert_eq!((start, stream.at), (stream.bytes.len(), stream.bytes.len()));
                return;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let piece = [1, 2, 3, 4, 7, 64, 4096, usize::MAX][usize::from(first >> 2) & 7];
    let mut stream = Pieces { bytes, at: 0, piece, stall: first & 0x20 != 0, polls: 0 };
    match first & 3 {
        1 => run::<Request>(&mut stream),
        2 => run::<Reply>(&mut stream),
        _ => run::<Frame>(&mut stream),
    }
});
