//! Spare urgent streams: chunk streams opened to a holder ahead of a guest's next read
//! of a chunk its host lacks, so the demand fetch it makes pays no protocol
//! negotiation. Opening a stream costs a round trip through the holder's upload queue,
//! which the cascade keeps full: 11 ms of a demand fetch's 30 ms on the testnet's
//! 100 Mbit/s links.
//!
//! A holder's spares are opened one at a time (a burst of new streams can overrun the
//! holder's acceptor, decision 86), up to [`SPARES`], once a read has asked it, and
//! again each time one is taken. Each is closed unused once [`SPARE_AGE`] old, well
//! before the holder's [`REQUEST_TIMEOUT`](super::serve::REQUEST_TIMEOUT) would end it;
//! a holder no read has asked for that long has no spares left and no task tending
//! them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncWriteExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::fetch::open_stream;

/// Streams kept open ahead per holder: a guest read spans about two chunks, each
/// fetched on a stream of its own, and the kernel keeps several reads outstanding.
pub const SPARES: usize = 4;
/// Age at which an unused spare is closed: half the holder's request timeout.
pub const SPARE_AGE: Duration = Duration::from_secs(5);

/// One stage's spare urgent streams, per holder.
pub struct Spares {
    control: libp2p_stream::Control,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pools: HashMap<PeerId, Pool>,
    /// Set by [`Spares::close`]: no spare is kept or opened after it.
    closed: bool,
}

/// One holder's spares.
#[derive(Default)]
struct Pool {
    /// Open streams, oldest first, with when each was opened.
    streams: VecDeque<(Stream, Instant)>,
    /// A read has taken one since the pool was last full: open more.
    wanted: bool,
    /// A task tends this pool ([`tend`]).
    tending: bool,
    /// Wakes the tending task when a stream is taken.
    taken: Arc<Notify>,
}

/// What a pool's tending task does next.
enum Step {
    Open,
    WaitUntil(Instant, Arc<Notify>),
    End,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().expect("spares lock");
        let spares: HashMap<String, usize> = state
            .pools
            .iter()
            .map(|(peer, pool)| (crate::peer::short(peer), pool.streams.len()))
            .collect();
        f.debug_struct("Spares").field("spares", &spares).finish_non_exhaustive()
    }
}

impl Spares {
    /// No spares yet: [`Spares::take`] opens them, through `control`.
    pub fn new(control: libp2p_stream::Control) -> Arc<Self> {
        Arc::new(Spares { control, state: Mutex::default() })
    }

    /// A spare stream to `peer`, open and with nothing sent on it, if one is ready; has
    /// `peer`'s spares opened (again) either way.
    pub fn take(self: &Arc<Self>, peer: PeerId) -> Option<Stream> {
        let mut state = self.state.lock().expect("spares lock");
        if state.closed {
            return None;
        }
        let pool = state.pools.entry(peer).or_default();
        pool.wanted = true;
        let mut spare = None;
        while let Some((stream, at)) = pool.streams.pop_front() {
            if at.elapsed() < SPARE_AGE {
                spare = Some(stream);
                break;
            }
            retire(stream);
        }
        if pool.tending {
            pool.taken.notify_one();
        } else {
            pool.tending = true;
            let span = tracing::debug_span!("spares", peer = %crate::peer::short(&peer));
            tokio::spawn(tend(Arc::clone(self), peer).instrument(span));
        }
        spare
    }

    /// Closes every spare and opens none after.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("spares lock");
        state.closed = true;
        for (_, pool) in state.pools.drain() {
            pool.streams.into_iter().for_each(|(stream, _)| retire(stream));
            pool.taken.notify_one();
        }
    }

    /// Spare streams open to `peer` now.
    pub fn count(&self, peer: &PeerId) -> usize {
        let state = self.state.lock().expect("spares lock");
        state.pools.get(peer).map_or(0, |pool| pool.streams.len())
    }

    /// Retires `peer`'s stale spares, then says what its tending task does next.
    fn step(&self, peer: &PeerId) -> Step {
        let mut state = self.state.lock().expect("spares lock");
        let closed = state.closed;
        let Some(pool) = state.pools.get_mut(peer) else { return Step::End };
        while pool.streams.front().is_some_and(|(_, at)| at.elapsed() >= SPARE_AGE) {
            if let Some((stream, _)) = pool.streams.pop_front() {
                retire(stream);
            }
        }
        if pool.streams.len() >= SPARES {
            pool.wanted = false;
        }
        if closed {
            Step::End
        } else if pool.wanted {
            Step::Open
        } else if let Some((_, at)) = pool.streams.front() {
            Step::WaitUntil(*at + SPARE_AGE, Arc::clone(&pool.taken))
        } else {
            pool.tending = false;
            Step::End
        }
    }

    /// Keeps `stream`, just opened to `peer`, as a spare (closes it if the spares are).
    fn put(&self, peer: PeerId, stream: Stream) {
        let mut state = self.state.lock().expect("spares lock");
        let closed = state.closed;
        match state.pools.get_mut(&peer) {
            Some(pool) if !closed => pool.streams.push_back((stream, Instant::now())),
            _ => retire(stream),
        }
    }

    /// `peer` could not be reached: its spares are opened again at the next take.
    fn give_up(&self, peer: &PeerId) {
        let mut state = self.state.lock().expect("spares lock");
        if let Some(pool) = state.pools.get_mut(peer) {
            pool.wanted = false;
            pool.tending = false;
        }
    }
}

/// Tends `peer`'s spares until none is left to keep or open.
async fn tend(spares: Arc<Spares>, peer: PeerId) {
    let mut control = spares.control.clone();
    loop {
        match spares.step(&peer) {
            Step::Open => match open_stream(&mut control, peer).await {
                Ok(stream) => spares.put(peer, stream),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open a spare stream");
                    spares.give_up(&peer);
                    return;
                }
            },
            Step::WaitUntil(until, taken) => {
                let _ = tokio::time::timeout_at(until, taken.notified()).await;
            }
            Step::End => return,
        }
    }
}

/// Closes an unused spare: its holder sees the stream end before any request, and
/// ends it quietly.
fn retire(mut stream: Stream) {
    tokio::spawn(async move {
        let _ = stream.close().await;
    });
}
