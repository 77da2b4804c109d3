//! Urgent streams: chunks a guest is reading now (a lazy disk), ahead of the
//! background cascade. While any urgent stream sends (on a sender) or waits (on a
//! receiver), the other streams of that host give way before each chunk they send or
//! credit, for at most [`GIVE_WAY`] at a time, so the cascade slows but never stops.
//!
//! A sender notes each chunk it sends a peer on an urgent stream ([`SentUrgently`]),
//! for that stream's stage: the peer's background stream of the same stage may have it
//! queued still, and answers it with [`Frame::Sent`](super::Frame::Sent) in its place
//! instead of sending it twice. Another stage's stream sends it: the peer may have
//! dropped the chunk since (evicted, collected), and a stage's intake knows only its
//! own chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::watch;
use vw_chunkstore::ChunkId;

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

/// Most chunks [`SentUrgently`] keeps.
pub const MAX_SENT: usize = 1 << 16;
/// How long [`SentUrgently`] keeps a chunk once it is full: a background stream sends
/// what it was asked within its credit window, or goes quiet and ends
/// ([`QUIET`](super::QUIET)).
pub const SENT_FOR: Duration = Duration::from_secs(60);

/// The chunks a sender sent each peer on urgent streams, by stage (the deployment its
/// wants named), until a background stream of that stage to that peer comes to them
/// ([`SentUrgently::take`]). Bounded by [`MAX_SENT`]: when full, those older than
/// [`SENT_FOR`] go, and if none is, all do (a chunk forgotten is sent twice, nothing
/// worse).
#[derive(Debug, Default)]
pub struct SentUrgently(Mutex<HashMap<(PeerId, ChunkId), (String, Instant)>>);

impl SentUrgently {
    /// Notes that chunk `id` went to `peer` on an urgent stream of `stage`.
    pub fn note(&self, peer: PeerId, stage: &str, id: ChunkId) {
        let mut sent = self.0.lock().expect("sent lock");
        if sent.len() >= MAX_SENT {
            sent.retain(|_, (_, at)| at.elapsed() < SENT_FOR);
            if sent.len() >= MAX_SENT {
                sent.clear();
            }
        }
        sent.insert((peer, id), (stage.to_owned(), Instant::now()));
    }

    /// Whether chunk `id` went to `peer` on an urgent stream of `stage` (forgotten once
    /// asked).
    pub fn take(&self, peer: &PeerId, stage: &str, id: &ChunkId) -> bool {
        let mut sent = self.0.lock().expect("sent lock");
        match sent.get(&(*peer, *id)) {
            Some((noted, _)) if noted == stage => sent.remove(&(*peer, *id)).is_some(),
            _ => false,
        }
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

    /// A chunk sent urgently is known for that peer and stage only, once, and the
    /// record stays bounded.
    #[test]
    fn a_chunk_sent_urgently_is_known_once_for_its_peer_and_stage() {
        let sent = SentUrgently::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        let id = |n: u8| ChunkId::from_bytes([n; 32]);
        sent.note(p, "a", id(1));
        assert!(!sent.take(&q, "a", &id(1)), "another peer's");
        assert!(!sent.take(&p, "a", &id(2)), "another chunk");
        assert!(!sent.take(&p, "b", &id(1)), "another stage's");
        assert!(sent.take(&p, "a", &id(1)));
        assert!(!sent.take(&p, "a", &id(1)), "forgotten once asked");
        for n in 0..=MAX_SENT {
            sent.note(p, "a", ChunkId::from_bytes(blake3::hash(&n.to_le_bytes()).into()));
        }
        assert!(sent.0.lock().expect("lock").len() <= MAX_SENT, "bounded");
    }
}
