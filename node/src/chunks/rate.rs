//! Rate caps: a token bucket per direction, shared by every stream of a daemon.
//!
//! A caller takes the bytes it is about to send (or has just received) and sleeps for
//! any debt: tokens may go negative, and each caller waits until its own bytes are
//! paid for, so concurrent streams share the rate. The bucket holds at most a burst of
//! one chunk or 20 ms at the rate, whichever is more, so a cap shapes traffic the way a
//! link of that speed would.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One direction's cap.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A cap of `rate` bytes per second (more than 0).
    pub fn new(rate: f64) -> Self {
        assert!(rate > 0.0, "a rate cap must be positive");
        let burst = (rate * 0.020).max(super::protocol::MAX_CHUNK as f64);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_grows_with_what_is_taken_and_is_paid_back_by_time() {
        let r = RateLimit::new(1e6);
        assert_eq!(r.debt(262_144), Duration::ZERO, "one chunk fits the burst");
        let d = r.debt(1_000_000);
        assert!(d > Duration::from_millis(900) && d <= Duration::from_secs(1), "{d:?}");
        let more = r.debt(500_000);
        assert!(more > d, "a second caller waits behind the first: {more:?}");
    }
}
