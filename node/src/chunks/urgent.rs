//! Urgent streams: chunks a guest is reading now (a lazy disk), ahead of the
//! background cascade. While any urgent stream sends (on a sender) or waits (on a
//! receiver), the other streams of that host give way before each chunk they send or
//! credit, for at most [`GIVE_WAY`] at a time, so the cascade slows but never stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Longest a background stream waits for urgent ones before its next chunk.
pub const GIVE_WAY: Duration = Duration::from_millis(500);

/// The urgent streams in progress on one host (or one stage).
#[derive(Debug)]
pub struct Urgency {
    count: watch::Sender<usize>,
}

impl Default for Urgency {
    fn default() -> Self {
        Urgency { count: watch::channel(0).0 }
    }
}

/// One urgent stream in progress; counted until dropped.
#[derive(Debug)]
pub struct UrgentGuard(Arc<Urgency>);

impl Urgency {
    /// Counts an urgent stream until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> UrgentGuard {
        self.count.send_modify(|c| *c += 1);
        UrgentGuard(Arc::clone(self))
    }

    /// Urgent streams in progress.
    pub fn active(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until no urgent stream is in progress, or [`GIVE_WAY`]. Cancel-safe.
    pub async fn give_way(&self) {
        if self.active() == 0 {
            return;
        }
        let mut rx = self.count.subscribe();
        let _ = tokio::time::timeout(GIVE_WAY, rx.wait_for(|c| *c == 0)).await;
    }
}

impl Drop for UrgentGuard {
    fn drop(&mut self) {
        self.0.count.send_modify(|c| *c -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background stream waits while an urgent one runs and goes on when it ends,
    /// or when it has waited its while: it is never held for good.
    #[tokio::test]
    async fn background_streams_give_way_until_the_urgent_ones_end() {
        let u = Arc::new(Urgency::default());
        u.give_way().await; // nothing urgent: at once
        let guard = u.begin();
        assert_eq!(u.active(), 1);
        // Held for good, it still goes on (after its while).
        tokio::time::timeout(GIVE_WAY * 10, u.give_way()).await.expect("never held for good");
        let waiting = tokio::spawn({
            let u = Arc::clone(&u);
            async move { u.give_way().await }
        });
        tokio::task::yield_now().await;
        drop(guard);
        assert_eq!(u.active(), 0);
        waiting.await.expect("released with the guard");
        let (a, b) = (u.begin(), u.begin());
        assert_eq!(u.active(), 2);
        drop((a, b));
        assert_eq!(u.active(), 0, "every guard counted down");
    }
}
