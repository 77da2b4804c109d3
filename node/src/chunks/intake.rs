//! Where fetched chunks go: one store writer per stage, fed through a channel bounded
//! by bytes, and the relay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::Semaphore;
use vw_chunkstore::{Assembly, ChunkId, Store};

use super::urgent::Urgency;
use super::Relay;
use crate::chunks::rate::{RateLimit, UploadMeter};
use crate::lazy::disk::LazyDisk;
use crate::peer::PeerError;

/// How long an intake waits for more chunks before it syncs those it has.
const SYNC_IDLE: Duration = Duration::from_millis(200);
/// Bytes of verified chunks that may wait for the store writer. A writer stall (a slow
/// sync on a busy disk) must not stop this host's download at once: in a chain that
/// stalls every host below it, and the time is never made up. 16 MiB rides out about
/// 1.3 s at 100 Mbit/s.
pub const WRITE_BUFFER: usize = 16 << 20;

/// The writer syncs after this many bytes put (and whenever chunks pause).
const SYNC_EVERY: usize = 8 << 20;

// A chunk the relay forgets is durable: 32 MiB arrived after it, at most WRITE_BUFFER of
// them still queued, so at least SYNC_EVERY were put after it, and a sync followed.
const _: () = assert!(Relay::KEEP_BYTES >= WRITE_BUFFER + SYNC_EVERY);

/// A chunk for the writer, with its share of [`WRITE_BUFFER`] (released once stored).
type Queued = (ChunkId, Vec<u8>, tokio::sync::OwnedSemaphorePermit);

/// Where verified chunks go: one store writer (a receiving session on its own thread)
/// for every stream of a stage, fed through a channel bounded by bytes
/// ([`WRITE_BUFFER`]), so memory in flight is bounded and concurrent streams into one
/// host do not queue for the pack writer. The writer also places each chunk in the
/// stage's images as they are assembled ([`Assembly`]). Each chunk is also handed to the
/// relay (if this host forwards) and counted for progress.
pub struct Intake {
    tx: tokio::sync::mpsc::Sender<Queued>,
    buffer: Arc<Semaphore>,
    writer: tokio::task::JoinHandle<Result<(), vw_chunkstore::Error>>,
    store: Arc<Store>,
    relay: Option<Arc<Relay>>,
    received: Mutex<std::collections::HashSet<ChunkId>>,
    bytes: std::sync::atomic::AtomicU64,
    download: Vec<Arc<RateLimit>>,
    /// This host's upload meter, told when a sender of this stage runs slow.
    meter: Option<Arc<UploadMeter>>,
    /// Peers that sent a bad chunk in this stage: no other stream of the stage asks
    /// them again.
    dropped: Mutex<std::collections::HashSet<PeerId>>,
    /// Chunks the store holds that this stage must receive all the same (held only for
    /// images of an isolated VO).
    hidden: std::collections::HashSet<ChunkId>,
    /// The stage's lazy disks: each chunk lands in them as it is taken.
    lazy: Vec<Arc<LazyDisk>>,
    /// The stage's urgent fetches: its other streams give way to them.
    urgency: Arc<Urgency>,
    /// Chunks taken so far: a guest waiting for one the cascade brings watches it.
    arrivals: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("bytes", &self.bytes()).finish_non_exhaustive()
    }
}

impl Intake {
    /// Starts the writer. `relay`: forward chunks to this host's children as they come.
    pub fn start(store: Arc<Store>, relay: Option<Arc<Relay>>) -> Self {
        Self::assembling(store, relay, Vec::new())
    }

    /// [`Intake::start`], also writing each chunk into `images` at its offsets.
    pub fn assembling(
        store: Arc<Store>,
        relay: Option<Arc<Relay>>,
        images: Vec<Arc<Assembly>>,
    ) -> Self {
        // The byte budget binds first: no chunk is smaller than the chunker's minimum.
        let slots = WRITE_BUFFER / vw_chunkstore::chunker::ChunkerParams::DEFAULT.min as usize;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(slots);
        let writing = Arc::clone(&store);
        let waking = relay.clone();
        let runtime = tokio::runtime::Handle::current();
        let writer = tokio::task::spawn_blocking(move || {
            let mut session = writing.receiving();
            // Chunks put but not yet synced cannot be read back from the store. Sync
            // before the relay could forget them, and when chunks pause, and wake the
            // servers waiting for them: a child must never wait on chunks that are
            // here but unreadable (with striped plans, that wait can be a cycle).
            let mut unsynced = 0usize;
            let synced = |session: &mut vw_chunkstore::Receiving<'_>| {
                session.sync()?;
                if let Some(relay) = &waking {
                    relay.poke();
                }
                Ok::<_, vw_chunkstore::Error>(())
            };
            loop {
                let next = if unsynced == 0 {
                    rx.blocking_recv()
                } else {
                    match runtime.block_on(tokio::time::timeout(SYNC_IDLE, rx.recv())) {
                        Ok(next) => next,
                        Err(_) => {
                            synced(&mut session)?;
                            unsynced = 0;
                            continue;
                        }
                    }
                };
                let Some((id, data, _permit)) = next else { break };
                session.put(&id, &data)?;
                for image in &images {
                    image.place(&id, &data)?;
                }
                unsynced += data.len();
                if unsynced >= SYNC_EVERY {
                    synced(&mut session)?;
                    unsynced = 0;
                }
            }
            synced(&mut session)
        });
        Intake {
            tx,
            buffer: Arc::new(Semaphore::new(WRITE_BUFFER)),
            writer,
            store,
            relay,
            received: Default::default(),
            bytes: Default::default(),
            download: Vec::new(),
            meter: None,
            dropped: Default::default(),
            hidden: Default::default(),
            lazy: Vec::new(),
            urgency: Arc::default(),
            arrivals: tokio::sync::watch::channel(0).0,
        }
    }

    /// Lands each chunk taken in `disks` too, as it is taken (before it is stored):
    /// guests reading them wait no longer than the chunk's verification.
    pub fn with_lazy(mut self, disks: Vec<Arc<LazyDisk>>) -> Self {
        self.lazy = disks;
        self
    }

    /// The stage's urgent fetches, which its other streams give way to.
    pub fn urgency(&self) -> &Arc<Urgency> {
        &self.urgency
    }

    /// Changes each time a chunk is taken (counting them).
    pub fn arrivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// Caps what every stream into this intake receives, together (beside any cap
    /// given before: each holds).
    pub fn with_download_cap(mut self, cap: Option<Arc<RateLimit>>) -> Self {
        self.download.extend(cap);
        self
    }

    /// Tells `meter` when a sender of this stage runs slow, so this host offers no
    /// relief meanwhile.
    pub fn with_meter(mut self, meter: Option<Arc<UploadMeter>>) -> Self {
        self.meter = meter;
        self
    }

    /// A sender of this stage runs slow: this host may be on a slow link.
    pub(super) fn sender_slow(&self) {
        if let Some(m) = &self.meter {
            m.receiving_slowly();
        }
    }

    /// Chunks to receive even though the store holds them: they count as lacked for
    /// this stage (an isolated VO's), so they cross the network like any other.
    pub fn with_hidden(mut self, hidden: std::collections::HashSet<ChunkId>) -> Self {
        self.hidden = hidden;
        self
    }

    /// Bytes received so far (for progress).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops `peer` for the rest of this stage.
    pub(super) fn drop_peer(&self, peer: PeerId) {
        self.dropped.lock().expect("intake lock").insert(peer);
    }

    /// Whether `peer` was dropped.
    pub fn is_dropped(&self, peer: &PeerId) -> bool {
        self.dropped.lock().expect("intake lock").contains(peer)
    }

    /// Chunks received so far.
    pub fn chunks(&self) -> u64 {
        self.received.lock().expect("intake lock").len() as u64
    }

    /// Whether the chunk was received in this stage, or is held (and not hidden).
    pub fn has(&self, id: &ChunkId) -> Result<bool, PeerError> {
        Ok(self.received.lock().expect("intake lock").contains(id)
            || (!self.hidden.contains(id) && self.store.holds(id)?))
    }

    /// Takes a verified chunk; false if the writer has failed (its error comes from
    /// [`Intake::finish`]). An `urgent` one (a guest waits on it) goes ahead of the
    /// download cap's debt, and the other streams pay for it.
    pub(super) async fn deliver(
        &self,
        id: ChunkId,
        data: Vec<u8>,
        wire: usize,
        urgent: bool,
    ) -> bool {
        // Paying for the bytes on the wire before taking them delays the next credit:
        // the sender slows to the cap.
        for cap in &self.download {
            if urgent {
                cap.charge(wire as u64);
            } else {
                cap.take(wire as u64).await;
            }
        }
        if self.received.lock().expect("intake lock").contains(&id) {
            return true; // another stream brought it first
        }
        // Landed before it counts as here: a guest told it has arrived finds it in its
        // disk. Two streams bringing it at once both land it, which writes nothing twice.
        for disk in &self.lazy {
            if let Err(e) = disk.place(&id, &data) {
                // The guest's read of it fails, naming it; the stage goes on.
                tracing::warn!(disk = ?disk, error = %e, "a chunk did not land in a lazy disk");
            }
        }
        if !self.received.lock().expect("intake lock").insert(id) {
            return true;
        }
        self.arrivals.send_modify(|n| *n += 1);
        self.bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            relay.arrived(id, data.clone());
        }
        let bytes = u32::try_from(data.len()).unwrap_or(u32::MAX).min(WRITE_BUFFER as u32);
        let Ok(permit) = Arc::clone(&self.buffer).acquire_many_owned(bytes).await else {
            return false;
        };
        self.tx.send((id, data, permit)).await.is_ok()
    }

    /// Whether the writer has stopped (it failed; its error comes from
    /// [`Intake::finish`]): nothing more can be taken.
    pub fn is_broken(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until every chunk taken is durable in the store.
    pub async fn finish(self) -> Result<(), PeerError> {
        drop(self.tx);
        let written = self
            .writer
            .await
            .map_err(|e| PeerError::Transport(format!("the store's writer thread failed: {e}")))?;
        Ok(written?)
    }
}
