//! Demand fetches: a chunk a guest reads before the stage has brought it is fetched at
//! once, on a stream of its own marked urgent ([`Frame::Urgent`](super::Frame::Urgent)):
//! its sender answers from what it holds now, and the stage's other streams give way
//! while it runs. It goes through the stage's [`Intake`] like every other chunk, so it
//! is verified, stored, forwarded to this host's children and landed in the lazy disks
//! exactly once.
//!
//! Holders are asked in the image's order: the planned senders (they have sent or hold
//! most of it), then the fallback peers (the source last). One that lacks the chunk
//! answers `Missing` at once and the next is asked; one that sends a bad chunk is
//! dropped for the whole stage. One that cannot be reached is asked last (and once)
//! for the next [`UNREACHABLE_FOR`], so a lost source costs each later read nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::RwLock;
use tracing::Instrument as _;
use vw_chunkstore::{ChunkId, ChunkRef};

use super::fetch::{fetch_stream, pull_span, Floor, StreamRole};
use super::{Intake, Purpose};
use crate::lazy::disk::Supply;
use crate::peer::{short, PeerError};

/// Longest a read made before the stage starts fetching waits for it.
const OPEN_WAIT: Duration = Duration::from_secs(60);

/// How long a holder that could not be reached is asked last.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// One image a stage stages: what its chunks are fetched for, and from whom.
#[derive(Clone, Debug)]
pub struct DemandImage {
    /// The deployment and manifest the chunks are asked for.
    pub purpose: Purpose,
    /// Holders, in the order asked.
    pub peers: Vec<PeerId>,
    /// The image's distinct chunks.
    pub chunks: Vec<ChunkId>,
}

/// A stage's demand fetches: the [`Supply`] of its lazy disks.
#[derive(Clone, Debug)]
pub struct Demand(Arc<Inner>);

struct Inner {
    control: libp2p_stream::Control,
    images: Vec<DemandImage>,
    /// Which image each chunk is asked for as.
    of: HashMap<ChunkId, usize>,
    /// The stage's intake, until the stage ends ([`Demand::close`]).
    intake: RwLock<Option<Arc<Intake>>>,
    /// Set once the intake is given ([`Demand::open`]): a read before waits for it (the
    /// kernel reads a device as soon as it is attached, before the stage has started).
    opened: tokio::sync::watch::Sender<bool>,
    /// Holders whose streams could not be opened, and when.
    unreachable: Mutex<HashMap<PeerId, Instant>>,
}

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
            for id in &image.chunks {
                of.entry(*id).or_insert(i);
            }
        }
        let opened = tokio::sync::watch::channel(false).0;
        Demand(Arc::new(Inner {
            control,
            images,
            of,
            intake: RwLock::new(None),
            opened,
            unreachable: Mutex::default(),
        }))
    }

    /// Starts demand fetching into `intake`.
    pub async fn open(&self, intake: Arc<Intake>) {
        *self.0.intake.write().await = Some(intake);
        self.0.opened.send_replace(true);
    }

    /// Ends demand fetching once those in flight are done, and gives the intake back.
    /// A demand after this fails (the chunks are then in the store).
    pub async fn close(&self) -> Option<Arc<Intake>> {
        self.0.intake.write().await.take()
    }
}

impl Supply for Demand {
    fn fetch(&self, id: ChunkId, len: u32) -> BoxFuture<'static, Result<(), String>> {
        let inner = Arc::clone(&self.0);
        Box::pin(async move {
            let mut opened = inner.opened.subscribe();
            if tokio::time::timeout(OPEN_WAIT, opened.wait_for(|o| *o)).await.is_err() {
                return Err(format!("the stage did not start fetching within {OPEN_WAIT:?}"));
            }
            let intake = inner.intake.read().await;
            let Some(intake) = intake.as_ref() else {
                return Err("the stage is over".to_owned());
            };
            if intake.has(&id).map_err(|e| e.to_string())? {
                return Ok(()); // it arrived meanwhile
            }
            let Some(image) = inner.of.get(&id).map(|&i| &inner.images[i]) else {
                return Err("no image of this stage lists it".to_owned());
            };
            inner.fetch_urgent(image, ChunkRef { id, len }, intake).await
        })
    }
}

impl Inner {
    /// Fetches one chunk on an urgent stream from the first of `image`'s holders that
    /// sends it, into `intake`. Holders found unreachable lately are asked last, once;
    /// the others are asked again (twice) if their stream fails at once, since a stream
    /// may fail while a connection is still being set up. The error names every holder
    /// asked and what each said.
    async fn fetch_urgent(
        &self,
        image: &DemandImage,
        chunk: ChunkRef,
        intake: &Intake,
    ) -> Result<(), String> {
        let lately = |peer: &PeerId| {
            let unreachable = self.unreachable.lock().expect("demand lock");
            unreachable.get(peer).is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
        };
        let (first, last): (Vec<PeerId>, Vec<PeerId>) =
            image.peers.iter().filter(|p| !intake.is_dropped(p)).partition(|p| !lately(p));
        let mut control = self.control.clone();
        let mut tried = Vec::new();
        for (peer, retries) in
            first.into_iter().map(|p| (p, 2)).chain(last.into_iter().map(|p| (p, 0)))
        {
            let mut attempt = 0;
            let (got, result) = loop {
                let role =
                    StreamRole { floor: Floor::Fixed, handoff: None, relief: None, urgent: true };
                let began = Instant::now();
                let (got, result) =
                    fetch_stream(&mut control, peer, &image.purpose, &[chunk], intake, role)
                        .instrument(pull_span(&peer))
                        .await;
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
                break (got, result);
            };
            if intake.has(&chunk.id).map_err(|e| e.to_string())? {
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
            "no holder is left to ask".to_owned()
        } else {
            format!("asked {} holders: {}", tried.len(), tried.join("; "))
        })
    }
}
