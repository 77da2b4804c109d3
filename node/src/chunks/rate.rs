//! Rate caps: a token bucket per direction, shared by every stream of a daemon (and one
//! per direction for a deployment with a cap of its own); and the meter that tells a
//! sender whether its upload has room to spare for relief.
//!
//! A caller takes the bytes it is about to send (or has just received) and sleeps for
//! any debt: tokens may go negative, and each caller waits until its own bytes are
//! paid for, so concurrent streams share the rate. The bucket holds at most a burst of
//! one piece of a chunk ([`PIECE`](super::serve::PIECE)) or 5 ms at the rate, whichever
//! is more, so a cap shapes traffic the way a link of that speed would. A larger burst
//! (it was 20 ms, or a whole chunk) lets an idle moment's tokens out at once; with the
//! cap at the link's own speed, as the testnet sets it, that burst then stands in the
//! link's queue for good (the sender never runs slower than the link to drain it), and
//! every chunk a guest waits on waited behind it: 9 ms of a demand fetch's 18.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One direction's cap.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

/// Bytes an Ethernet link carries per byte of TCP payload in full-size segments: 1448
/// bytes of payload in a 1514-byte frame (Ethernet 14, IPv4 20, TCP with timestamps 32).
pub const LINK_OVERHEAD: f64 = 1514.0 / 1448.0;

/// A sender runs relief streams only while its upload carries less than this share of
/// what its link can: the rest is what a relief may take without slowing the streams
/// it feeds already.
pub const SPARE_BELOW: f64 = 0.7;

impl RateLimit {
    /// A cap of `rate` bytes per second on a link, headers counted: the chunk bytes it
    /// lets through are [`LINK_OVERHEAD`] fewer, so that what the link carries (as its
    /// interface counters see it) stays within `rate`.
    pub fn on_link(rate: f64) -> Self {
        Self::new(rate / LINK_OVERHEAD)
    }

    /// A cap of `rate` bytes per second (more than 0).
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0, "a rate cap must be positive");
        let burst = (rate * 0.005).max(super::serve::PIECE as f64);
        RateLimit { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// The cap, bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How long a caller taking `n` bytes now must wait.
    fn debt(&self, n: u64) -> Duration {
        let mut st = self.state.lock().expect("rate lock");
        let now = Instant::now();
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst)
            - n as f64;
        *st = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Takes `n` bytes, sleeping while the bucket is in debt.
    pub async fn take(&self, n: u64) {
        let wait = self.debt(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes at once, into debt if need be: the next takers wait it out, so
    /// the rate over time stays within the cap (over by at most these bytes at a time).
    /// For a chunk a guest waits on, which would otherwise wait behind the debt of
    /// every chunk sent before it.
    pub fn charge(&self, n: u64) {
        let _ = self.debt(n);
    }
}

/// What a host's upload carries, measured over the last second, against what its link
/// can carry: whether a relief stream may be served ([`SPARE_BELOW`]). A host that
/// found one of its own senders slow lately offers no relief either
/// ([`UploadMeter::receiving_slowly`]): an idle upload on a slowed link is not spare.
/// It serves one relief stream at a time ([`UploadMeter::relieve`]).
#[derive(Debug)]
pub struct UploadMeter {
    capacity: f64,
    /// The current window's start and bytes, and the last full window's rate.
    state: Mutex<(Instant, u64, f64)>,
    /// Until when this host counts as receiving slowly.
    slow_until: Mutex<Option<Instant>>,
    /// Whether it is serving a relief stream.
    relieving: AtomicBool,
}

/// A host's one relief stream, held while it is served.
#[derive(Debug)]
pub struct ReliefSlot(Arc<UploadMeter>);

impl Drop for ReliefSlot {
    fn drop(&mut self) {
        self.0.relieving.store(false, Ordering::Release);
    }
}

impl UploadMeter {
    /// How long one measurement lasts.
    const WINDOW: Duration = Duration::from_secs(1);

    /// A meter for an upload of `capacity` bytes per second.
    pub fn new(capacity: f64) -> Self {
        UploadMeter {
            capacity,
            state: Mutex::new((Instant::now(), 0, 0.0)),
            slow_until: Mutex::new(None),
            relieving: AtomicBool::new(false),
        }
    }

    /// `bytes` were sent.
    pub fn sent(&self, bytes: u64) {
        let mut st = self.state.lock().expect("meter lock");
        Self::roll(&mut st, Instant::now());
        st.1 += bytes;
    }

    /// Ends the window if it is over: its rate is kept, a new one starts.
    fn roll(st: &mut (Instant, u64, f64), now: Instant) {
        let elapsed = now.saturating_duration_since(st.0);
        if elapsed >= Self::WINDOW {
            // A window that ended long ago says the upload has been idle since.
            let rate = if elapsed >= 2 * Self::WINDOW { 0.0 } else { st.1 as f64 };
            *st = (now, 0, rate / elapsed.as_secs_f64().max(1.0));
        }
    }

    /// Bytes per second sent: over the last full second, or the current one so far if
    /// it already shows more.
    pub fn rate(&self) -> f64 {
        let mut st = self.state.lock().expect("meter lock");
        let now = Instant::now();
        Self::roll(&mut st, now);
        let so_far = now.saturating_duration_since(st.0).as_secs_f64();
        let current = if so_far > 0.25 { st.1 as f64 / so_far } else { 0.0 };
        st.2.max(current)
    }

    /// How long a host that found its own sender slow offers no relief: two of the
    /// receiver's pace windows, so a link that stays slow keeps it refusing.
    pub const SLOW_HOLD: Duration = Duration::from_secs(6);

    /// This host found one of its own senders slow: its link may be what is slow, and
    /// for [`Self::SLOW_HOLD`] it offers no relief.
    pub fn receiving_slowly(&self) {
        *self.slow_until.lock().expect("meter lock") = Some(Instant::now() + Self::SLOW_HOLD);
    }

    /// Whether the upload has room for a relief stream (and this host is not receiving
    /// slowly itself).
    pub fn has_spare(&self) -> bool {
        let slow = self.slow_until.lock().expect("meter lock").is_some_and(|t| Instant::now() < t);
        !slow && self.rate() < self.capacity * SPARE_BELOW
    }

    /// A relief stream may be served: the slot while it is, if the upload has room to
    /// spare and serves no other relief stream. One at a time: the meter sees a new
    /// stream's load only over the next second, and the hosts below a slowed one all
    /// find their senders slow within that second; serving them all split one upload
    /// between them (the testnet's N = 8 chain: three hosts relieved by one within a
    /// second, and the chain took 1.7 times as long).
    pub fn relieve(self: &Arc<Self>) -> Option<ReliefSlot> {
        if !self.has_spare() {
            return None;
        }
        self.relieving.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok()?;
        Some(ReliefSlot(Arc::clone(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_charge_goes_ahead_and_the_next_take_pays_for_it() {
        let cap = RateLimit::new(1_000_000.0); // burst: one piece
        cap.take(super::super::serve::PIECE as u64).await; // the bucket is empty
        let start = tokio::time::Instant::now();
        cap.charge(500_000);
        assert_eq!(start.elapsed(), Duration::ZERO, "a charge does not wait");
        cap.take(500_000).await;
        // Both were paid for at the cap's rate.
        let waited = start.elapsed().as_secs_f64();
        assert!((waited - 1.0).abs() < 0.01, "waited {waited} s");
    }

    #[test]
    fn an_upload_has_spare_until_it_carries_most_of_its_link() {
        let m = UploadMeter::new(1e6);
        assert!(m.has_spare(), "idle");
        m.sent(900_000);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!m.has_spare(), "900 KB in 0.3 s of a 1 MB/s link: {}", m.rate());
        let idle = UploadMeter::new(1e6);
        idle.receiving_slowly();
        assert!(!idle.has_spare(), "a host receiving slowly offers no relief");
        let meter = Arc::new(UploadMeter::new(1e6));
        let slot = meter.relieve().expect("idle: room for a relief");
        assert!(meter.relieve().is_none(), "one relief stream at a time");
        drop(slot);
        assert!(meter.relieve().is_some(), "the slot is free again");
        let link = RateLimit::on_link(1514.0);
        assert!((link.rate() - 1448.0).abs() < 1e-9, "headers counted: {}", link.rate());
    }

    #[test]
    fn debt_grows_with_what_is_taken_and_is_paid_back_by_time() {
        let r = RateLimit::new(1e6);
        let piece = super::super::serve::PIECE as u64;
        assert_eq!(r.debt(piece), Duration::ZERO, "a piece fits the burst");
        let d = r.debt(1_000_000);
        assert!(d > Duration::from_millis(900) && d <= Duration::from_secs(1), "{d:?}");
        let more = r.debt(500_000);
        assert!(more > d, "a second caller waits behind the first: {more:?}");
    }
}
