//! Relief: a planned stream whose sender runs slow hands the chunks it has not asked
//! of it yet to another holder with upload to spare, while it keeps what is in flight.
//!
//! A chain runs at the speed of its slowest member for everyone below it: a host whose
//! link slows for seconds holds back its whole subtree. The receiver watches each
//! planned stream's pace against the rate the plan expects of it ([`Pace`]); below
//! [`SLOW_FRACTION`] of it over [`SLOW_WINDOW`], it withholds further credit and asks
//! ([`Ask`]) the stream's other peers in order (the sender's own senders up to the
//! source, then other holders: the stage order's fallback list) to send the rest. A
//! relief stream opens with [`Frame::IfSpare`](super::Frame::IfSpare): a sender whose
//! upload is busy refuses it at once, so relief never takes a busy host's upload from
//! the children it feeds (a slow receiver, whose own link is the trouble, finds every
//! holder busy and keeps its sender). The first that sends takes the rest; the slow
//! stream ends with the chunks already in flight, so no chunk is asked of two senders.
//! If none takes it, the slow sender gets its credit back and is watched again.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use vw_chunkstore::ChunkRef;

use super::fetch::{fetch_stream, pull_span, StreamRole};
use super::{Fetched, Floor, Intake, Purpose};
use crate::peer::{short, PeerError};

/// A planned sender that delivers less than this share of the rate the plan expects of
/// it, over [`SLOW_WINDOW`], is relieved of what it has not been asked for yet. Half: a
/// healthy chain's worst dip measured on the testnet was half speed for about 5 s (with
/// the base OS cached), and relief costs nothing when no holder has upload to spare; a
/// link slowed to 30% holds everyone below it to 30%.
pub const SLOW_FRACTION: f64 = 0.5;
/// How long a planned sender's pace is measured: a few times TCP's recovery from a loss
/// at 100 Mbit/s, and short against the tens of seconds a slowed link lasts.
pub const SLOW_WINDOW: Duration = Duration::from_secs(3);

/// A stream's sender runs slow: may the chunks from `at` (in the stream's `wanted`)
/// go to another holder? The verdict says whether one took them.
#[derive(Debug)]
pub(super) struct Ask {
    /// Where the rest starts.
    pub at: usize,
    /// The share of the planned rate the sender kept up.
    pub share: f64,
    /// True once another holder sends the rest; false if none would.
    pub verdict: oneshot::Sender<bool>,
}

/// A planned stream's pace: bytes over [`SLOW_WINDOW`] windows, against the plan.
#[derive(Debug)]
pub(super) struct Pace {
    since: Instant,
    got: u64,
    planned: u64,
    slow: Option<f64>,
}

impl Pace {
    /// Watching from `now` a sender the plan expects `planned` bytes per second of.
    pub fn new(now: Instant, planned: u64) -> Self {
        Pace { since: now, got: 0, planned, slow: None }
    }

    /// `bytes` more arrived.
    pub fn add(&mut self, bytes: u64) {
        self.got += bytes;
    }

    /// The receiver spent `d` on its own work: the window ends that much later.
    pub fn pause(&mut self, d: Duration) {
        self.since += d;
    }

    /// When the current window ends.
    pub fn window_end(&self) -> Instant {
        self.since + SLOW_WINDOW
    }

    /// At `now`, the end of a window or later: notes the sender as slow (with the share
    /// of the plan it kept up) if it delivered less than [`SLOW_FRACTION`] of the plan,
    /// and starts the next window.
    pub fn check(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < SLOW_WINDOW {
            return;
        }
        let share = self.got as f64 / (self.planned as f64 * elapsed.as_secs_f64());
        if share < SLOW_FRACTION {
            self.slow = Some(share);
        }
        (self.since, self.got) = (now, 0);
    }

    /// Whether the sender was found slow since this was last asked.
    pub fn take_slow(&mut self) -> Option<f64> {
        self.slow.take()
    }
}

/// A relief that took place: who sent the rest, what it brought, and a line for the
/// stage report.
#[derive(Debug)]
pub(super) struct Relieved {
    pub by: PeerId,
    pub got: Fetched,
    pub result: Result<(), PeerError>,
    pub what: String,
}

/// Answers a planned stream's [`Ask`]s (until it ends and closes `asked`): offers the
/// rest of `wanted` to `others` in order, as relief streams, and lets the first that
/// sends take it, running its stream to the end. Returns that relief, if one was made.
pub(super) async fn relieve(
    mut control: libp2p_stream::Control,
    mut asked: mpsc::Receiver<Ask>,
    others: &[PeerId],
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
) -> Option<Relieved> {
    while let Some(Ask { at, share, verdict }) = asked.recv().await {
        let rest = &wanted[at.min(wanted.len())..];
        for &by in others.iter().filter(|p| !intake.is_dropped(p)) {
            let (told, answer) = oneshot::channel();
            let role = StreamRole {
                floor: Floor::Fixed,
                handoff: None,
                relief: Some(told),
                ..StreamRole::default()
            };
            let stream = fetch_stream(&mut control, by, purpose, rest, intake, role)
                .instrument(pull_span(&by));
            tokio::pin!(stream);
            let sends = tokio::select! {
                sends = answer => sends.unwrap_or(false),
                // Over before it answered: it could not be reached.
                _ = &mut stream => false,
            };
            if !sends {
                tracing::debug!(peer = %short(&by), "no upload to spare for relief");
                continue;
            }
            let _ = verdict.send(true);
            let bytes: u64 = rest.iter().map(|c| u64::from(c.len)).sum();
            tracing::info!(
                to = %short(&by),
                chunks = rest.len(),
                bytes,
                share = %format!("{:.0}%", share * 100.0),
                "the sender runs slow: another holder sends the rest"
            );
            let (got, result) = stream.await;
            let what = format!(
                "slow ({:.0}% of the planned rate over {} s): {} chunks ({bytes} bytes) moved to {by}",
                share * 100.0,
                SLOW_WINDOW.as_secs(),
                rest.len(),
            );
            return Some(Relieved { by, got, result, what });
        }
        // Nobody had upload to spare: the sender keeps them.
        let _ = verdict.send(false);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender under half its planned rate over a window is noted slow, once, with the
    /// share it kept up; one at the plan is not; time the receiver spends on its own
    /// work moves the window.
    #[test]
    fn a_sender_under_half_its_plan_is_noted_slow() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pace = Pace::new(t0, 10_000_000);
        pace.add(9_000_000);
        pace.check(at(2_000));
        assert_eq!(pace.take_slow(), None, "the window is not over");
        pace.check(at(3_000));
        let share = pace.take_slow().expect("slow");
        assert!((share - 0.3).abs() < 1e-9, "{share}");
        assert_eq!(pace.take_slow(), None, "noted once");

        let mut steady = Pace::new(t0, 10_000_000);
        for s in 1..=9 {
            steady.add(10_000_000);
            steady.check(at(s * 1000));
            assert_eq!(steady.take_slow(), None, "at {s} s");
        }

        let mut paused = Pace::new(t0, 10_000_000);
        paused.pause(Duration::from_secs(2));
        assert_eq!(paused.window_end(), at(5_000));
    }
}
