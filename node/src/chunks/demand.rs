//! Demand fetches: a chunk a guest reads before the stage has brought it is fetched at
//! once, on a stream of its own marked urgent ([`Frame::Urgent`](super::Frame::Urgent)):
//! its sender answers from what it holds now, and the stage's other streams give way
//! while it runs. It goes through the stage's [`Intake`] like every other chunk, so it
//! is verified, stored, forwarded to this host's children and landed in the lazy disks
//! exactly once. Reads waiting for the same chunk share its one fetch.
//!
//! Holders are asked in the image's order: the chunk's planned sender first, then the
//! other planned senders (they have sent or hold most of it), then the fallback peers
//! (the source last). The planned sender is asked to pass the chunk on if it is still
//! fetching it ([`Frame::Through`](super::Frame::Through)), and fetches it at once if
//! it has not started to: the guests of a cascade that read the same chunk at once get
//! it down the plan's chain, cut through ([`super::pass`]), rather than each from the
//! source while the hosts above answer `Missing`. Only a planned sender is asked so:
//! each chunk's planned senders form the plan's tree, so a fetch that waits for
//! another never waits, through others, for itself. One that lacks the chunk
//! answers `Missing` at once and the next is asked; one that sends a bad chunk is
//! dropped for the whole stage. One that cannot be reached is asked last (and once)
//! for the next [`UNREACHABLE_FOR`], so a lost source costs each later read nothing.
//! When every holder asked was stalled (connected, yet nothing for
//! [`URGENT_QUIET`](super::fetch::URGENT_QUIET): busy, as a starved host is), they are
//! all asked again, up to [`URGENT_ROUNDS`] rounds, before the read fails.
//!
//! A chunk the cascade is about to bring is not fetched: an urgent stream makes the
//! cascade give way, and a boot that reads in the order the cascade brings (a boot
//! trace's order, or the image's) would then get each chunk a round trip apart instead
//! of at the link's rate. A read of a chunk at most [`AHEAD`] chunks past the front of
//! the stage stream that asks for it ([`Demand::follow`]) waits for it while that
//! stream moves (its front still for [`STALLED`]: it is stuck), at most
//! [`CASCADE_WAIT`], and is fetched urgently after that. A chunk further on is fetched
//! at once although the stream has asked for it already: its sender notes what it sent
//! urgently and answers it [`Frame::Sent`](super::Frame::Sent) in the stream's place,
//! so it crosses once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::RwLock;
use tracing::Instrument as _;
use vw_chunkstore::{ChunkId, ChunkRef};

use super::fetch::{
    fetch_on, fetch_stream, pull_span, Fetched, PullReport, StreamRole, URGENT_QUIET,
};
use super::pass::Passing;
use super::spare::Spares;
use super::{Intake, Purpose};
use crate::lazy::disk::Supply;
use crate::peer::{short, PeerError};

/// Longest a read made before the stage starts fetching waits for it.
const OPEN_WAIT: Duration = Duration::from_secs(60);

/// How long a holder that could not be reached is asked last.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// How far past its stream's front a chunk may be for a read to wait for the cascade:
/// the stream's next three chunks arrive about as soon as an urgent fetch would (8 ms
/// each at 100 Mbit/s, against 14–18 ms a fetch). One further on is fetched at once,
/// and its sender answers it [`Frame::Sent`](super::Frame::Sent) in the stream rather
/// than send it twice.
pub const AHEAD: usize = 2;
/// A read waiting for the cascade fetches the chunk itself once its stream's front has
/// not moved for this long.
pub const STALLED: Duration = Duration::from_millis(250);
/// Longest a read waits for the cascade before it fetches the chunk itself.
pub const CASCADE_WAIT: Duration = Duration::from_secs(2);
/// Rounds of asking every holder while each one is stalled: with one holder, a read
/// waits at most this many times [`URGENT_QUIET`] (30 s, the background streams' quiet
/// time) before it fails.
pub const URGENT_ROUNDS: u32 = 6;

/// One image a stage stages: what its chunks are fetched for, and from whom.
#[derive(Clone, Debug)]
pub struct DemandImage {
    /// The deployment and manifest the chunks are asked for.
    pub purpose: Purpose,
    /// Holders, in the order asked.
    pub peers: Vec<PeerId>,
    /// Each chunk's planned sender (of those this host lacks), asked first and to pass
    /// it on ([`Frame::Through`](super::Frame::Through)).
    pub planned: HashMap<ChunkId, PeerId>,
    /// The image's distinct chunks.
    pub chunks: Vec<ChunkRef>,
}

/// A stage's demand fetches: the [`Supply`] of its lazy disks.
#[derive(Clone, Debug)]
pub struct Demand(Arc<Inner>);

struct Inner {
    control: libp2p_stream::Control,
    images: Vec<DemandImage>,
    /// Which image each chunk is asked for as, and its length.
    of: HashMap<ChunkId, (usize, u32)>,
    /// The stage's intake, until the stage ends ([`Demand::close`]). Not owned: the
    /// intake lands chunks in the lazy disks, whose supply this is, and a stage that
    /// ends without closing (an error) must not leave that cycle, and the intake's
    /// writer thread, alive.
    intake: RwLock<Option<Weak<Intake>>>,
    /// Set once the intake is given ([`Demand::open`]): a read before waits for it (the
    /// kernel reads a device as soon as it is attached, before the stage has started).
    opened: tokio::sync::watch::Sender<bool>,
    /// Holders whose streams could not be opened, and when.
    unreachable: Mutex<HashMap<PeerId, Instant>>,
    /// The order the stage's streams ask for chunks in.
    queues: Mutex<Queues>,
    /// The fetches under way: each chunk's answer to come, and its bytes as they arrive.
    flying: Mutex<HashMap<ChunkId, (Answer, Arc<Passing>)>>,
    /// Streams opened ahead to the holders reads have asked.
    spares: Arc<Spares>,
    /// What each holder sent, for the stage's report.
    fetched: Mutex<Vec<(PeerId, Fetched)>>,
}

/// A fetch's result, once it has one.
type Answer = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demand").field("images", &self.images).finish_non_exhaustive()
    }
}

impl Demand {
    /// Demand fetches of `images`' chunks, once [`Demand::open`] gives them the stage's
    /// intake (a demand before fails).
    pub fn new(control: libp2p_stream::Control, images: Vec<DemandImage>) -> Self {
        let mut of = HashMap::new();
        for (i, image) in images.iter().enumerate() {
            for c in &image.chunks {
                of.entry(c.id).or_insert((i, c.len));
            }
        }
        let opened = tokio::sync::watch::channel(false).0;
        Demand(Arc::new(Inner {
            spares: Spares::new(control.clone()),
            control,
            images,
            of,
            intake: RwLock::new(None),
            opened,
            unreachable: Mutex::default(),
            queues: Mutex::default(),
            flying: Mutex::default(),
            fetched: Mutex::default(),
        }))
    }

    /// The stage's streams, each the chunks it asks for in order: a read of a chunk
    /// near a stream's front waits for the stream (see the module doc).
    pub fn follow(&self, streams: impl IntoIterator<Item = Vec<ChunkId>>) {
        *self.0.queues.lock().expect("demand lock") = Queues::new(streams);
    }

    /// Starts demand fetching into `intake`.
    pub async fn open(&self, intake: &Arc<Intake>) {
        *self.0.intake.write().await = Some(Arc::downgrade(intake));
        self.0.opened.send_replace(true);
    }

    /// Chunk `id`'s bytes as this host fetches them, for a host below it in the plan
    /// ([`Frame::Through`](super::Frame::Through)): its fetch is started if it is not
    /// under way. `None`: no image of the stage lists it.
    pub fn pass_on(&self, id: &ChunkId) -> Option<Arc<Passing>> {
        let &(_, len) = self.0.of.get(id)?;
        Some(Inner::start(&self.0, *id, len).1)
    }

    /// A handle that does not keep the stage's demand alive.
    pub fn downgrade(&self) -> WeakDemand {
        WeakDemand(Arc::downgrade(&self.0))
    }

    /// Spare streams open to `peer` now, for reads to come ([`super::spare`]).
    pub fn spares(&self, peer: &PeerId) -> usize {
        self.0.spares.count(peer)
    }

    /// Ends demand fetching once those in flight are done. A demand after this fails
    /// (the chunks are then in the store).
    pub async fn close(&self) {
        self.0.intake.write().await.take();
        self.0.spares.close();
    }

    /// What each holder has sent so far, as a pull's report (once closed, all it sent).
    pub fn pulled(&self) -> PullReport {
        let fetched = self.0.fetched.lock().expect("demand lock");
        PullReport {
            fetched: fetched.iter().map(|(peer, got)| (peer.to_string(), *got)).collect(),
            ..PullReport::default()
        }
    }
}

impl Supply for Demand {
    /// One fetch per chunk however many reads wait for it (concurrent requests of a
    /// guest often share a chunk); it runs to its end even if they give up.
    fn fetch(&self, id: ChunkId, len: u32) -> BoxFuture<'static, Result<(), String>> {
        let (mut answer, _) = Inner::start(&self.0, id, len);
        Box::pin(async move {
            match answer.wait_for(Option::is_some).await {
                Ok(result) => result.clone().unwrap_or_else(|| Err("no answer".to_owned())),
                Err(_) => Err("the fetch ended without an answer".to_owned()),
            }
        })
    }
}

/// A [`Demand`] that may be gone (its stage over).
#[derive(Clone, Debug)]
pub struct WeakDemand(Weak<Inner>);

impl WeakDemand {
    /// The demand, while its stage lasts.
    pub fn upgrade(&self) -> Option<Demand> {
        self.0.upgrade().map(Demand)
    }
}

impl Inner {
    /// Chunk `id`'s fetch, started unless it is under way: its answer to come, and its
    /// bytes as they arrive.
    fn start(this: &Arc<Self>, id: ChunkId, len: u32) -> (Answer, Arc<Passing>) {
        let mut flying = this.flying.lock().expect("demand lock");
        if let Some((answer, pass)) = flying.get(&id) {
            return (answer.clone(), Arc::clone(pass));
        }
        let (tx, answer) = tokio::sync::watch::channel(None);
        let pass = Passing::new();
        flying.insert(id, (answer.clone(), Arc::clone(&pass)));
        let (fetching, passing) = (Arc::clone(this), Arc::clone(&pass));
        let task = async move {
            let result = fetching.fetch_once(id, len, &passing).await;
            fetching.flying.lock().expect("demand lock").remove(&id);
            passing.over();
            tx.send_replace(Some(result));
        };
        tokio::spawn(task.in_current_span());
        (answer, pass)
    }

    /// Fetches chunk `id` at once, unless it is here or the cascade is about to bring it,
    /// its bytes going to `pass` as they arrive.
    async fn fetch_once(&self, id: ChunkId, len: u32, pass: &Passing) -> Result<(), String> {
        let mut opened = self.opened.subscribe();
        if tokio::time::timeout(OPEN_WAIT, opened.wait_for(|o| *o)).await.is_err() {
            return Err(format!("the stage did not start fetching within {OPEN_WAIT:?}"));
        }
        // Held until the fetch ends: the stage's close waits for it.
        let open = self.intake.read().await;
        let Some(intake) = open.as_ref().and_then(Weak::upgrade) else {
            return Err("the stage is over".to_owned());
        };
        let intake = &*intake;
        let waiting = Instant::now();
        if self.brought_by_cascade(id, intake).await.map_err(|e| e.to_string())? {
            // It arrived meanwhile, or the cascade brought it.
            let ms = waiting.elapsed().as_secs_f64() * 1e3;
            tracing::debug!(chunk = %id, ms, "a read's chunk came with the cascade");
            return Ok(());
        }
        let Some(image) = self.of.get(&id).map(|&(i, _)| &self.images[i]) else {
            return Err("no image of this stage lists it".to_owned());
        };
        self.fetch_urgent(image, ChunkRef { id, len }, intake, pass).await
    }

    /// Whether chunk `id` is here, once the cascade has brought it if it is about to
    /// (see the module doc). Cancel-safe.
    async fn brought_by_cascade(&self, id: ChunkId, intake: &Intake) -> Result<bool, PeerError> {
        let mut arrivals = intake.arrivals();
        let until = Instant::now() + CASCADE_WAIT;
        let mut last: Option<(usize, Instant)> = None;
        loop {
            if intake.has(&id)? {
                return Ok(true);
            }
            let mut has = |c: &ChunkId| intake.has(c).unwrap_or(false);
            let Some(place) = self.queues.lock().expect("demand lock").place(&id, &mut has) else {
                return Ok(false);
            };
            let now = Instant::now();
            // When the stream's front last moved.
            let moved = match last {
                Some((front, at)) if front == place.front => at,
                _ => now,
            };
            last = Some((place.front, moved));
            let wait = until.min(moved + STALLED).saturating_duration_since(now);
            if place.ahead > AHEAD || wait.is_zero() {
                return Ok(false);
            }
            if let Ok(Err(_)) = tokio::time::timeout(wait, arrivals.changed()).await {
                return intake.has(&id); // the intake is gone
            }
        }
    }

    /// Fetches one chunk on an urgent stream from the first of `image`'s holders that
    /// sends it, into `intake`, asking them all again while every one was stalled (it
    /// answered nothing for [`URGENT_QUIET`]), up to [`URGENT_ROUNDS`] times: a busy
    /// holder keeps the guest waiting, where only holders that lack the chunk, send a
    /// bad one or cannot be reached fail its read.
    async fn fetch_urgent(
        &self,
        image: &DemandImage,
        chunk: ChunkRef,
        intake: &Intake,
        pass: &Passing,
    ) -> Result<(), String> {
        let mut round = 1;
        loop {
            match self.ask_holders(image, chunk, intake, pass).await {
                Err((why, true)) if round < URGENT_ROUNDS => {
                    tracing::info!(chunk = %chunk.id, round, why = %why, "every holder stalled: asking again");
                    round += 1;
                }
                done => return done.map_err(|(why, _)| why),
            }
        }
    }

    /// Adds what `peer` sent on one stream to the stage's report.
    fn tally(&self, peer: PeerId, got: Fetched) {
        let mut fetched = self.fetched.lock().expect("demand lock");
        match fetched.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, sum)) => *sum += got,
            None => fetched.push((peer, got)),
        }
    }

    /// One round of [`Inner::fetch_urgent`]: asks each of `image`'s holders in turn, the
    /// chunk's planned sender first. Holders found unreachable lately are asked last,
    /// once; the others are asked again (twice) if their stream fails at once, since a
    /// stream may fail while a connection is still being set up. The error names every holder asked and what
    /// each said, and whether every one of them was stalled.
    async fn ask_holders(
        &self,
        image: &DemandImage,
        chunk: ChunkRef,
        intake: &Intake,
        pass: &Passing,
    ) -> Result<(), (String, bool)> {
        let lately = |peer: &PeerId| {
            let unreachable = self.unreachable.lock().expect("demand lock");
            unreachable.get(peer).is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
        };
        let planned = image.planned.get(&chunk.id);
        let (first, last): (Vec<PeerId>, Vec<PeerId>) = planned
            .into_iter()
            .chain(image.peers.iter().filter(|p| Some(*p) != planned))
            .filter(|p| !intake.is_dropped(p))
            .partition(|p| !lately(p));
        let mut control = self.control.clone();
        let mut tried = Vec::new();
        let mut all_stalled = true;
        for (peer, retries) in
            first.into_iter().map(|p| (p, 2)).chain(last.into_iter().map(|p| (p, 0)))
        {
            let mut attempt = 0;
            let (got, result) = loop {
                let role = StreamRole {
                    urgent: true,
                    through: planned == Some(&peer),
                    pass: Some(pass),
                    ..StreamRole::default()
                };
                pass.asking();
                let began = Instant::now();
                // A holder reachable of late has streams opened ahead (not one it failed).
                let spare = (retries > 0 && attempt == 0).then(|| self.spares.take(peer)).flatten();
                let (got, result) = match spare {
                    Some(stream) => {
                        fetch_on(stream, peer, &image.purpose, &[chunk], intake, role)
                            .instrument(pull_span(&peer))
                            .await
                    }
                    None => {
                        fetch_stream(&mut control, peer, &image.purpose, &[chunk], intake, role)
                            .instrument(pull_span(&peer))
                            .await
                    }
                };
                self.tally(peer, got);
                let at_once = got.chunks == 0
                    && got.missing == 0
                    && began.elapsed() < Duration::from_secs(1)
                    && matches!(result, Err(PeerError::Stream { .. }));
                if at_once && attempt < retries {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    continue;
                }
                let mut unreachable = self.unreachable.lock().expect("demand lock");
                if at_once {
                    unreachable.insert(peer, Instant::now());
                } else {
                    unreachable.remove(&peer);
                }
                // Connected, and nothing for the quiet time: busy, not gone.
                let stalled = got.chunks == 0
                    && got.missing == 0
                    && began.elapsed() >= URGENT_QUIET
                    && matches!(result, Err(PeerError::Stream { .. }));
                all_stalled &= stalled;
                break (got, result);
            };
            if intake.has(&chunk.id).map_err(|e| (e.to_string(), false))? {
                return Ok(());
            }
            let why = match result {
                Ok(()) if got.missing > 0 => "does not hold it".to_owned(),
                Ok(()) => "sent nothing".to_owned(),
                Err(e) => {
                    if matches!(e, PeerError::BadChunk { .. }) {
                        intake.drop_peer(peer);
                    }
                    e.to_string()
                }
            };
            tried.push(format!("{}: {why}", short(&peer)));
        }
        Err(if tried.is_empty() {
            ("no holder is left to ask".to_owned(), false)
        } else {
            (format!("asked {} holders: {}", tried.len(), tried.join("; ")), all_stalled)
        })
    }
}

/// The stage's streams' queues: where each chunk is in the stream that asks for it, and
/// how far each stream has come.
#[derive(Debug, Default)]
struct Queues {
    queues: Vec<Vec<ChunkId>>,
    /// Each chunk's stream and place in it (the first stream that asks for it).
    at: HashMap<ChunkId, (usize, usize)>,
    /// Each stream's front: its first chunk not yet here (or past, none).
    fronts: Vec<usize>,
}

impl Queues {
    fn new(streams: impl IntoIterator<Item = Vec<ChunkId>>) -> Self {
        let queues: Vec<Vec<ChunkId>> = streams.into_iter().collect();
        let mut at = HashMap::new();
        for (q, queue) in queues.iter().enumerate() {
            for (i, id) in queue.iter().enumerate() {
                at.entry(*id).or_insert((q, i));
            }
        }
        let fronts = vec![0; queues.len()];
        Queues { queues, at, fronts }
    }

    /// Where `id` is in the stream that asks for it, moving that stream's front past
    /// the chunks `has` says are here; `None` if no stream asks for it.
    fn place(&mut self, id: &ChunkId, has: &mut impl FnMut(&ChunkId) -> bool) -> Option<Place> {
        let &(q, i) = self.at.get(id)?;
        let (queue, front) = (&self.queues[q], &mut self.fronts[q]);
        while *front < queue.len() && has(&queue[*front]) {
            *front += 1;
        }
        Some(Place { front: *front, ahead: i.saturating_sub(*front) })
    }
}

/// A chunk's place in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    /// The stream's front: how many of its chunks, from its start, are here.
    front: usize,
    /// How many chunks past the front the chunk is (0: it is next).
    ahead: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    #[test]
    fn a_chunk_is_as_far_ahead_as_its_stream_has_yet_to_bring() {
        let mut q = Queues::new([vec![id(1), id(2), id(3), id(4)], vec![id(5), id(2)]]);
        let mut here: Vec<ChunkId> = Vec::new();
        let ahead = |q: &mut Queues, c: u8, here: &[ChunkId]| {
            q.place(&id(c), &mut |x| here.contains(x)).map(|p| (p.front, p.ahead))
        };
        assert_eq!(ahead(&mut q, 4, &here), Some((0, 3)));
        assert_eq!(ahead(&mut q, 1, &here), Some((0, 0)));
        // The second stream's chunk 2 is the first stream's: its place there counts.
        assert_eq!(ahead(&mut q, 2, &here), Some((0, 1)));
        here.extend([id(1), id(2)]);
        assert_eq!(ahead(&mut q, 4, &here), Some((2, 1)));
        assert_eq!(ahead(&mut q, 5, &here), Some((0, 0)));
        // A chunk that arrived out of order does not move the front past one missing.
        here.push(id(4));
        assert_eq!(ahead(&mut q, 4, &here), Some((2, 1)));
        assert_eq!(ahead(&mut q, 9, &here), None);
    }
}
