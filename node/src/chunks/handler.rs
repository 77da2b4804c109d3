//! Per-stream logic of `/vw/chunks`: serving chunks from the store, and fetching
//! chunks into it.
//!
//! Serving: read `Want`s and `Credit`s; check each want against the host's
//! [`Grants`] (the peer stages that manifest for that deployment, and the manifest lists
//! every id), refusing the stream otherwise; send each wanted chunk (or `Missing`) in
//! order, never more in flight than the credit granted. What a peer can make a server
//! hold is bounded ([`ServeLimits`]): streams at once, in all and per peer (an excess
//! stream is refused with a reason, or dropped if even refusals are at their bound),
//! the time to send a request, and the time without progress while serving.
//!
//! Fetching: send `Want` for the ids and a window of credit, verify each chunk against
//! its id as it arrives, hand it to the store's receiving session on its own thread
//! (bounded channel: memory in flight is the window), and grant one more credit per
//! chunk taken.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;
use vw_chunkstore::{ChunkId, ChunkRef, ManifestId, Store};

use super::protocol::{pack, unpack, Frame, FrameError, MAX_WANT};
use crate::access::audit::Audit;
use crate::access::grants::{Grants, Verdict};
use crate::peer::rate::RateLimit;
use crate::peer::{chunks_protocol, short, PeerError};

/// How long a request for a deployment this host does not know yet waits for its
/// grant (its stage order may still be on its way) before it is refused; well within
/// a fetcher's [`QUIET`].
pub const GRANT_WAIT: Duration = Duration::from_secs(10);
/// How long a fetch waits for the next frame before it gives the peer up.
pub const QUIET: Duration = Duration::from_secs(30);

/// How long a fetcher has, from opening a stream, to send its first request whole. A
/// fetcher writes its wants the moment the stream is open, so this is only network time:
/// far past any round trip and the largest want (128 KiB) on a slow link, and the
/// longest a peer that opens a stream and sends nothing, or half a frame, holds it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a served stream may go without progress: a frame written to the fetcher, or
/// the fetcher's next frame read whole. A fetcher gives a stream up after [`QUIET`]
/// without a frame, so a server waits as long and no longer. A frame is at most a chunk
/// (256 KiB): a fetcher must take one at about 70 kbit/s or better, far below any
/// download cap worth setting.
pub const STALL_TIMEOUT: Duration = QUIET;

/// Most chunk streams a host serves at once, from all peers. A stream holds about two
/// copies of a chunk while it writes one (read, then framed), so 256 streams hold at
/// most about 128 MiB; a head serving a star of a hundred hosts, two images each, fits.
pub const MAX_SERVED_STREAMS: usize = 256;

/// Most chunk streams one peer may have served here at once. A host runs at most 64
/// pulls at once in a stage (`control::host`), each a stream to one peer, so an honest
/// peer in one stage never meets this; a peer past it cannot take the slots every other
/// peer needs.
pub const MAX_SERVED_STREAMS_PER_PEER: usize = 64;

/// Excess streams being refused at once (each a short `Refused` frame, and an audit
/// line). Past this a stream is dropped without a reason: refusing must not itself be a
/// way to make the host hold tasks.
pub const MAX_REFUSING: usize = 32;

/// How long refusing one stream may take (writing a frame of at most 512 bytes, and
/// closing): a peer that does not read its refusal does not hold a refusal slot longer.
pub const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What peers may make a chunk server hold: the defaults are the constants above; tests
/// shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time from a stream opening to its first request read whole
    /// ([`REQUEST_TIMEOUT`]).
    pub request: Duration,
    /// Time a served stream may go without a frame written or read
    /// ([`STALL_TIMEOUT`]).
    pub stall: Duration,
    /// Streams served at once, from all peers ([`MAX_SERVED_STREAMS`]).
    pub streams: usize,
    /// Streams served at once to one peer ([`MAX_SERVED_STREAMS_PER_PEER`]).
    pub streams_per_peer: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            request: REQUEST_TIMEOUT,
            stall: STALL_TIMEOUT,
            streams: MAX_SERVED_STREAMS,
            streams_per_peer: MAX_SERVED_STREAMS_PER_PEER,
        }
    }
}

/// Why a served stream ended before its fetcher said `Done`.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The fetcher broke the protocol, or the stream failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No whole request within [`ServeLimits::request`].
    #[error("no request within {0:?} of the stream opening; dropped the stream")]
    NoRequest(Duration),
    /// No progress within [`ServeLimits::stall`].
    #[error("the fetcher {what} for {after:?}; dropped the stream")]
    Stalled {
        /// What it did not do: read, or send its next frame.
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
}

/// Where a server takes the chunks it sends: the store, or (in a cascade) chunks just
/// received and verified.
pub trait ChunkSource: Send + Sync + 'static {
    /// The chunk's bytes, if this host has it.
    fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>>;

    /// For a chunk this host does not have yet but is receiving: a signal that fires
    /// as chunks arrive, so a server can wait for it instead of answering `Missing`.
    fn arriving(&self, id: &ChunkId) -> Option<watch::Receiver<u64>> {
        let _ = id;
        None
    }
}

impl ChunkSource for Store {
    fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        // Reads are verified: a corrupt chunk is never sent, it is `Missing`.
        self.read_chunk(id).ok()
    }
}

/// How long an intake waits for more chunks before it syncs those it has.
const SYNC_IDLE: Duration = Duration::from_millis(200);

/// Chunks a fetcher lets be in flight on one stream (4 MiB at the mean chunk size,
/// 16 MiB at most): 64 measured 297 MB/s on loopback against 253 MB/s for 16.
pub const WINDOW: u32 = 64;

async fn read_frame(stream: &mut Stream) -> Result<Option<Frame>, FrameError> {
    crate::wire::read(stream).await
}

async fn write_frame(stream: &mut Stream, frame: &Frame) -> Result<(), FrameError> {
    crate::wire::write(stream, frame).await
}

/// How a server sends and to whom: its upload cap, whether it compresses, the grants
/// it checks every want against, and the audit log.
#[derive(Clone, Debug, Default)]
pub struct Sending {
    /// The upload cap, shared by every stream.
    pub upload: Option<Arc<RateLimit>>,
    /// Send chunks zstd-compressed when that saves at least an eighth.
    pub compress: bool,
    /// Who may fetch what (empty: nothing is served).
    pub grants: Arc<Grants>,
    /// Where served and refused streams are recorded.
    pub audit: Option<Arc<Audit>>,
    /// Streams at once, and how long a stream may idle.
    pub limits: ServeLimits,
}

/// What a fetch is for: the deployment, and the manifest (staged for it) that lists the
/// chunks wanted. The sender checks both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purpose {
    /// The deployment.
    pub deployment: String,
    /// The manifest.
    pub manifest: ManifestId,
}

impl Sending {
    /// The frame for a chunk: packed if compressing pays, plain otherwise.
    fn frame(&self, id: ChunkId, data: Vec<u8>) -> Frame {
        if self.compress {
            pack(id, data)
        } else {
            Frame::Chunk { id, data }
        }
    }
}

/// Serves every incoming chunk stream until `stop` is set, then ends every stream still
/// served and waits for each.
///
/// Streams wait in libp2p-stream's queue of one (a stream arriving while it is full is
/// dropped there); this loop takes each at once and never waits for a slot: a stream
/// past [`ServeLimits::streams`] or [`ServeLimits::streams_per_peer`] is refused with a
/// reason (at most [`MAX_REFUSING`] at a time, each for at most [`REFUSE_TIMEOUT`]), or
/// dropped. So the tasks it runs are bounded too.
pub async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    source: Arc<dyn ChunkSource>,
    sending: Sending,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(OpenStreams::new(sending.limits));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a chunk stream's task panicked");
                    }
                }
            }
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                // A span per incoming stream: which peer, which protocol.
                let span = tracing::info_span!("stream", what = "chunk", peer = %short(&peer));
                let reason = match open.take(peer) {
                    Ok(slot) => {
                        let (source, sending) = (Arc::clone(&source), sending.clone());
                        let work = async move {
                            let served = serve_one(peer, stream, source.as_ref(), &sending).await;
                            if let Err(e) = served {
                                tracing::warn!(error = %e, "chunk stream failed");
                            }
                            drop(slot);
                        };
                        tasks.spawn(work.instrument(span));
                        continue;
                    }
                    Err(reason) => reason,
                };
                let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() else {
                    let why = "dropped a chunk stream unanswered: too many refusals under way";
                    tracing::debug!(parent: &span, %reason, "{why}");
                    continue;
                };
                let audit = sending.audit.clone();
                let work = async move {
                    refuse(peer, stream, reason, audit.as_deref()).await;
                    drop(permit);
                };
                tasks.spawn(work.instrument(span));
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Tells `peer` why its stream is not served, and closes it, within [`REFUSE_TIMEOUT`].
async fn refuse(peer: PeerId, mut stream: Stream, reason: String, audit: Option<&Audit>) {
    // Debug, not a warning: a flooding peer would flood the journal. The audit line
    // stays (repeats of it are collapsed there).
    tracing::debug!(%reason, "refused a chunk stream");
    if let Some(a) = audit {
        a.record("-", &peer.to_string(), "chunks", "-", "refused", &reason);
    }
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        let _ = write_frame(&mut stream, &Frame::Refused { reason }).await;
        linger(&mut stream).await;
    })
    .await;
}

/// Closes a refused stream once the fetcher has read why: what it sends meanwhile (the
/// request it wrote before reading) is read and thrown away, until it closes its side.
/// A stream dropped at once is reset, and the fetcher's next write fails before it
/// reads the reason. Callers bound the time.
async fn linger(stream: &mut Stream) {
    use futures::AsyncReadExt as _;
    let _ = stream.close().await;
    let mut sink = [0u8; 8192];
    while let Ok(1..) = stream.read(&mut sink).await {}
}

/// The chunk streams served now: in all, and per peer.
#[derive(Debug)]
struct OpenStreams {
    limits: ServeLimits,
    /// Streams in all, and those of each peer that has any.
    counts: Mutex<(usize, HashMap<PeerId, usize>)>,
}

/// One served stream, counted until dropped.
#[derive(Debug)]
struct StreamSlot(Arc<OpenStreams>, PeerId);

impl OpenStreams {
    fn new(limits: ServeLimits) -> Self {
        OpenStreams { limits, counts: Mutex::default() }
    }

    /// A slot for one more stream of `peer`, or why not (the reason sent to it).
    fn take(self: &Arc<Self>, peer: PeerId) -> Result<StreamSlot, String> {
        let mut counts = self.counts.lock().expect("open streams lock");
        let (all, by_peer) = &mut *counts;
        let ServeLimits { streams, streams_per_peer, .. } = self.limits;
        if by_peer.get(&peer).copied().unwrap_or(0) >= streams_per_peer {
            return Err(format!(
                "peer {peer} has {streams_per_peer} chunk streams open here already, \
                 the most one peer may; retry when one ends"
            ));
        }
        if *all >= streams {
            return Err(format!(
                "this host serves {streams} chunk streams already, the most it serves at once; \
                 retry later or pull from another peer"
            ));
        }
        *all += 1;
        *by_peer.entry(peer).or_default() += 1;
        Ok(StreamSlot(Arc::clone(self), peer))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().expect("open streams lock");
        let (all, by_peer) = &mut *counts;
        *all -= 1;
        if let Some(n) = by_peer.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.1);
            }
        }
    }
}

/// The chunk, waiting (up to [`QUIET`] without progress) if it is still arriving: how a
/// relay forwards a chunk as soon as it has it.
async fn wait_for(source: &dyn ChunkSource, id: &ChunkId) -> Option<Vec<u8>> {
    loop {
        if let Some(data) = source.chunk(id) {
            return Some(data);
        }
        let mut signal = source.arriving(id)?;
        // Look again: it may have arrived between the two calls.
        if let Some(data) = source.chunk(id) {
            return Some(data);
        }
        if tokio::time::timeout(QUIET, signal.changed()).await.map_or(true, |r| r.is_err()) {
            tracing::debug!(chunk = %format!("{id:#}"), "gave up waiting for a chunk to arrive");
            return None;
        }
    }
}

/// Serves one stream: wanted ids in order, within the credit granted. The first request
/// must arrive whole within [`ServeLimits::request`]; after it, each frame written and
/// each frame read within [`ServeLimits::stall`].
async fn serve_one(
    peer: PeerId,
    mut stream: Stream,
    source: &dyn ChunkSource,
    sending: &Sending,
) -> Result<(), ServeError> {
    let limits = sending.limits;
    let mut queue: VecDeque<ChunkId> = VecDeque::new();
    let mut credit: u64 = 0;
    let mut sent = 0u64;
    let mut first = true;
    // The (VO, deployment, manifest) of the wants allowed so far, for the audit log.
    let mut served: Vec<(String, String, ManifestId)> = Vec::new();
    // Bytes sent, counted under the deployment of the stream's first allowed want (a
    // fetcher asks for one deployment per stream).
    let mut sent_bytes: Option<metrics::Counter> = None;
    let audit = |vo: &str, deployment: &str, outcome: &str, detail: &str| {
        if let Some(a) = &sending.audit {
            a.record(vo, &peer.to_string(), "chunks", deployment, outcome, detail);
        }
    };
    loop {
        while credit > 0 {
            let Some(id) = queue.pop_front() else { break };
            let frame = match wait_for(source, &id).await {
                Some(data) => {
                    let frame = sending.frame(id, data);
                    if let (Some(cap), Frame::Chunk { data, .. } | Frame::Packed { data, .. }) =
                        (&sending.upload, &frame)
                    {
                        cap.take(data.len() as u64).await;
                    }
                    frame
                }
                None => Frame::Missing { id },
            };
            send(&mut stream, &frame, limits.stall).await?;
            if let (Some(counter), Frame::Chunk { data, .. } | Frame::Packed { data, .. }) =
                (&sent_bytes, &frame)
            {
                counter.increment(data.len() as u64);
            }
            credit -= 1;
            sent += 1;
        }
        let next = if std::mem::take(&mut first) {
            tokio::time::timeout(limits.request, read_frame(&mut stream))
                .await
                .map_err(|_| ServeError::NoRequest(limits.request))?
        } else {
            tokio::time::timeout(limits.stall, read_frame(&mut stream))
                .await
                .map_err(|_| ServeError::Stalled { what: "sent nothing", after: limits.stall })?
        };
        if let Err(e @ FrameError::Version { .. }) = &next {
            // A fetcher of another release: it is told which versions, and refused.
            audit("-", "-", "refused", &e.to_string());
            let refusal = Frame::Refused { reason: e.to_string() };
            let _ = send(&mut stream, &refusal, limits.stall).await;
        }
        match next? {
            Some(Frame::Want { deployment, manifest, ids }) => {
                let verdict =
                    sending.grants.check_within(&peer, &deployment, &manifest, &ids, GRANT_WAIT);
                match verdict.await {
                    Verdict::Allowed { vo } => {
                        if sent_bytes.is_none() {
                            sent_bytes = Some(crate::metrics::sent(&peer, &deployment));
                        }
                        if !served.iter().any(|(_, d, m)| *d == deployment && *m == manifest) {
                            served.push((vo, deployment, manifest));
                        }
                        queue.extend(ids);
                    }
                    Verdict::Refused { vo, reason } => {
                        tracing::warn!(peer = %short(&peer), %reason, "refused a chunk request");
                        audit(vo.as_deref().unwrap_or("-"), &deployment, "refused", &reason);
                        send(&mut stream, &Frame::Refused { reason }, limits.stall).await?;
                        let _ = tokio::time::timeout(REFUSE_TIMEOUT, linger(&mut stream)).await;
                        return Ok(());
                    }
                }
            }
            Some(Frame::Credit { chunks }) => credit += u64::from(chunks),
            Some(Frame::Done) | None => break,
            Some(other) => {
                return Err(
                    FrameError::Invalid(format!("unexpected {other:?} from a fetcher")).into()
                );
            }
        }
    }
    tracing::debug!(peer = %short(&peer), sent, "served");
    for (vo, deployment, manifest) in &served {
        audit(
            vo,
            deployment,
            "ok",
            &format!("manifest {manifest}: {sent} chunks sent on this stream"),
        );
    }
    let _ = tokio::time::timeout(limits.stall, stream.close()).await;
    Ok(())
}

/// Writes a frame to a fetcher, which must take it within `stall`.
async fn send(stream: &mut Stream, frame: &Frame, stall: Duration) -> Result<(), ServeError> {
    tokio::time::timeout(stall, write_frame(stream, frame))
        .await
        .map_err(|_| ServeError::Stalled { what: "read nothing", after: stall })?
        .map_err(ServeError::from)
}

/// What a fetch moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    /// Chunks received and verified.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes on the wire (less than `bytes` when the sender compressed).
    pub wire: u64,
    /// Chunks the sender did not have.
    pub missing: u64,
}

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
/// host do not queue for the pack writer. Each chunk is also handed to the relay (if
/// this host forwards) and counted for progress.
pub struct Intake {
    tx: tokio::sync::mpsc::Sender<Queued>,
    buffer: Arc<Semaphore>,
    writer: tokio::task::JoinHandle<Result<(), vw_chunkstore::Error>>,
    store: Arc<Store>,
    relay: Option<Arc<Relay>>,
    received: Mutex<std::collections::HashSet<ChunkId>>,
    bytes: std::sync::atomic::AtomicU64,
    download: Option<Arc<RateLimit>>,
    /// Peers that sent a bad chunk in this stage: no other stream of the stage asks
    /// them again.
    dropped: Mutex<std::collections::HashSet<PeerId>>,
    /// Chunks the store holds that this stage must receive all the same (held only for
    /// images of an isolated VO).
    hidden: std::collections::HashSet<ChunkId>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("bytes", &self.bytes()).finish_non_exhaustive()
    }
}

impl Intake {
    /// Starts the writer. `relay`: forward chunks to this host's children as they come.
    pub fn start(store: Arc<Store>, relay: Option<Arc<Relay>>) -> Self {
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
            download: None,
            dropped: Default::default(),
            hidden: Default::default(),
        }
    }

    /// Caps what every stream into this intake receives, together.
    pub fn with_download_cap(mut self, cap: Option<Arc<RateLimit>>) -> Self {
        self.download = cap;
        self
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
    fn drop_peer(&self, peer: PeerId) {
        self.dropped.lock().expect("intake lock").insert(peer);
    }

    /// Whether `peer` was dropped.
    fn is_dropped(&self, peer: &PeerId) -> bool {
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
    /// [`Intake::finish`]).
    async fn deliver(&self, id: ChunkId, data: Vec<u8>, wire: usize) -> bool {
        // Paying for the bytes on the wire before taking them delays the next credit:
        // the sender slows to the cap.
        if let Some(cap) = &self.download {
            cap.take(wire as u64).await;
        }
        if !self.received.lock().expect("intake lock").insert(id) {
            return true; // another stream brought it first
        }
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

/// Fetches `wanted` from `peer` into `store` for `purpose` and waits until the
/// chunks are durable. Every chunk is verified before it is stored; a bad one ends the
/// fetch with [`PeerError::BadChunk`] (the caller drops the peer and fetches the rest
/// elsewhere).
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    purpose: &Purpose,
    wanted: &[ChunkRef],
    store: Arc<Store>,
) -> Result<Fetched, PeerError> {
    let intake = Intake::start(store, None);
    let got = fetch_into(control, peer, purpose, wanted, &intake).await;
    let written = intake.finish().await;
    let got = got?;
    written.map(|()| got)
}

/// Fetches `wanted` from `peer` into `intake` (which may also relay each chunk to this
/// host's children). Not cancel-safe: cancelling drops the stream, and chunks in
/// flight are fetched again later.
pub async fn fetch_into(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
) -> Result<Fetched, PeerError> {
    let (got, result) = fetch_stream(control, peer, purpose, wanted, intake, Floor::Fixed)
        .instrument(pull_span(&peer))
        .await;
    result.map(|()| got)
}

/// The span of one outgoing chunk stream: the peer it pulls from.
fn pull_span(peer: &PeerId) -> tracing::Span {
    tracing::info_span!("pull", peer = %short(peer))
}

/// [`fetch_into`] with the sender held to `floor`, returning what arrived even when
/// the stream then failed.
async fn fetch_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
    floor: Floor,
) -> (Fetched, Result<(), PeerError>) {
    let fail = |reason: String| PeerError::Stream { peer, reason };
    let mut got = Fetched::default();
    let opened = control.open_stream(peer, chunks_protocol()).await.map_err(|e| {
        fail(format!("cannot open a chunk stream ({e}); is this host on the peer's allow list?"))
    });
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => return (got, Err(e)),
    };
    for ids in wanted.chunks(MAX_WANT) {
        let want = Frame::Want {
            deployment: purpose.deployment.clone(),
            manifest: purpose.manifest,
            ids: ids.iter().map(|c| c.id).collect(),
        };
        if let Err(e) = write_frame(&mut stream, &want).await {
            return (got, Err(fail(e.to_string())));
        }
    }
    if let Err(e) = write_frame(&mut stream, &Frame::Credit { chunks: WINDOW }).await {
        return (got, Err(fail(e.to_string())));
    }

    let mut result = Ok(());
    let mut floor =
        ProgressFloor::new(Instant::now(), wanted.iter().map(|c| u64::from(c.len)).sum(), floor);
    let received = crate::metrics::received(&peer, &purpose.deployment);
    for expected in wanted {
        let next = match next_frame(&mut stream, &mut floor).await {
            Ok(next) => next,
            Err(why) => {
                result = Err(fail(why));
                break;
            }
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => {
                result = Err(fail(format!(
                    "stream ended after {} of {} chunks",
                    got.chunks + got.missing,
                    wanted.len()
                )));
                break;
            }
            Err(e) => {
                result = Err(fail(e.to_string()));
                break;
            }
        };
        let (id, data, wire) = match frame {
            Frame::Chunk { id, data } if id == expected.id => {
                let wire = data.len();
                (id, data, wire)
            }
            Frame::Packed { id, len, data } if id == expected.id => {
                // Bounded: never more than the announced length (at most a chunk).
                match unpack(&id, len, &data) {
                    Ok(plain) => (id, plain, data.len()),
                    Err(_) => {
                        result = Err(PeerError::BadChunk { peer, chunk: format!("{id:#}") });
                        break;
                    }
                }
            }
            Frame::Refused { reason } => {
                result = Err(fail(format!("refused: {reason}")));
                break;
            }
            Frame::Missing { id } if id == expected.id => {
                got.missing += 1;
                floor.add(u64::from(expected.len));
                if let Err(e) = write_frame(&mut stream, &Frame::Credit { chunks: 1 }).await {
                    result = Err(fail(format!("the peer went away: {e}")));
                    break;
                }
                continue;
            }
            other => {
                result = Err(fail(format!("expected chunk {:#}, got {other:?}", expected.id)));
                break;
            }
        };
        if blake3::hash(&data) != blake3::Hash::from_bytes(*id.as_bytes()) {
            result = Err(PeerError::BadChunk { peer, chunk: format!("{id:#}") });
            break;
        }
        got.chunks += 1;
        floor.add(u64::from(expected.len));
        got.bytes += data.len() as u64;
        got.wire += wire as u64;
        received.increment(data.len() as u64);
        // Time this host's writer keeps the chunk waiting is not the sender's.
        let delivering = Instant::now();
        if !intake.deliver(id, data, wire).await {
            break; // the writer failed; its error comes from Intake::finish
        }
        floor.pause(delivering.elapsed());
        if let Err(e) = write_frame(&mut stream, &Frame::Credit { chunks: 1 }).await {
            result = Err(fail(format!("the peer went away: {e}")));
            break;
        }
    }
    let _ = write_frame(&mut stream, &Frame::Done).await;
    let _ = stream.close().await;
    (got, result)
}

/// Bytes per second any sender must keep up, measured over [`FLOOR_WINDOW`]: far below
/// any link vw stages over (a 100 Mbit/s link split 16 ways is 780 KiB/s; the nested
/// Xen lab moves 6 MB/s), far above a sender that trickles a frame every few seconds
/// to keep a deployment alive for ever.
pub const FLOOR_RATE: u64 = 256 << 10;
/// How long a sender's rate is measured before it is held to [`FLOOR_RATE`].
pub const FLOOR_WINDOW: Duration = Duration::from_secs(20);
/// A planned sender is dropped below this fraction of the rate the plan expects of
/// its stream. Far below: the testnet's worst dip of a healthy chain was half speed
/// for about 5 s, so an eighth leaves four times that margin; a sender this slow
/// holds back everyone below it in the chain, and its parents can do better.
pub const PLAN_FRACTION: u64 = 8;
/// How long a planned sender's rate is measured before it is held to its floor: past
/// TCP's slow start and a few backed-off retransmissions (0.2 + 0.4 + 0.8 s), short
/// enough that a stalled sender is dropped in seconds, not after [`QUIET`].
pub const PLAN_WINDOW: Duration = Duration::from_secs(5);

/// The rate a stream's sender must keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// [`FLOOR_RATE`] over [`FLOOR_WINDOW`]: for a sender no plan chose (a fallback),
    /// or one whose rate the plan could not predict.
    Fixed,
    /// A planned sender the plan expects this many bytes per second of, on average:
    /// held to 1/[`PLAN_FRACTION`] of it (never less than [`FLOOR_RATE`]) over
    /// [`PLAN_WINDOW`].
    Planned(u64),
}

impl Floor {
    /// The floor for a planned stream the plan expects `rate` bytes per second of (0:
    /// it cannot say).
    pub fn planned(rate: u64) -> Self {
        if rate == 0 {
            Floor::Fixed
        } else {
            Floor::Planned(rate)
        }
    }

    /// Bytes per second the sender must keep up.
    fn rate(self) -> u64 {
        match self {
            Floor::Fixed => FLOOR_RATE,
            Floor::Planned(expected) => (expected / PLAN_FRACTION).max(FLOOR_RATE),
        }
    }

    /// How long its rate is measured.
    fn window(self) -> Duration {
        match self {
            Floor::Fixed => FLOOR_WINDOW,
            Floor::Planned(_) => PLAN_WINDOW,
        }
    }
}

/// A stage's progress floor on one stream: a sender that delivers less than its
/// [`Floor`] over a window (while more than that is still wanted) is dropped, and the
/// receiver pulls the rest from other holders, as when a host dies.
#[derive(Debug)]
struct ProgressFloor {
    since: Instant,
    got: u64,
    left: u64,
    floor: Floor,
}

impl ProgressFloor {
    fn new(now: Instant, wanted: u64, floor: Floor) -> Self {
        ProgressFloor { since: now, got: 0, left: wanted, floor }
    }

    /// `bytes` more arrived (or were answered missing).
    fn add(&mut self, bytes: u64) {
        self.got += bytes;
        self.left = self.left.saturating_sub(bytes);
    }

    /// The receiver spent `d` on its own work: the window ends that much later.
    fn pause(&mut self, d: Duration) {
        self.since += d;
    }

    /// When the current window ends.
    fn window_end(&self) -> Instant {
        self.since + self.floor.window()
    }

    /// At `now`: an error if the window has passed with less than the floor's worth,
    /// else a new window starts when the last one is over.
    fn check(&mut self, now: Instant) -> Result<(), String> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < self.floor.window() {
            return Ok(());
        }
        let floor = (self.floor.rate() as f64 * elapsed.as_secs_f64()) as u64;
        if self.got < floor.min(self.got + self.left) {
            let plan = match self.floor {
                Floor::Planned(e) => {
                    format!(" (1/{PLAN_FRACTION} of the {} KiB/s planned)", e >> 10)
                }
                Floor::Fixed => String::new(),
            };
            return Err(format!(
                "too slow: {} bytes in {:.0} s, below the floor of {} KiB/s{plan}",
                self.got,
                elapsed.as_secs_f64(),
                self.floor.rate() >> 10
            ));
        }
        (self.since, self.got) = (now, 0);
        Ok(())
    }
}

/// The next frame of a fetch, or why the sender is given up: it fell below `floor`
/// (checked at the end of each window, whether or not a frame arrives), or sent
/// nothing for [`QUIET`].
async fn next_frame(
    stream: &mut Stream,
    floor: &mut ProgressFloor,
) -> Result<Result<Option<Frame>, FrameError>, String> {
    let quiet_at = Instant::now() + QUIET;
    let read = read_frame(stream);
    tokio::pin!(read);
    loop {
        let wake = tokio::time::Instant::from_std(floor.window_end().min(quiet_at));
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                floor.check(now)?;
                if now >= quiet_at {
                    return Err(format!(
                        "nothing for {} s; the peer is stalled or gone",
                        QUIET.as_secs()
                    ));
                }
            }
            frame = &mut read => return Ok(frame),
        }
    }
}

/// What [`fetch_from_any`] did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PullReport {
    /// What each peer delivered, in the order tried.
    pub fetched: Vec<(String, Fetched)>,
    /// Peers dropped for this deployment, and why.
    pub dropped: Vec<(String, String)>,
}

/// Pulls `wanted` from `peers` in order into `intake`: a peer that sends a bad chunk is
/// dropped for the whole stage (every stream of the intake skips it), one whose stream
/// breaks or stalls, falls below its floor, or that lacks chunks only for this pull,
/// and the chunks still missing are fetched from the next. The first peer is held to
/// `first` (its place in the plan), the others to [`Floor::Fixed`]. Ends with every
/// wanted chunk taken, or an error naming what is still missing after every peer was
/// tried.
pub async fn fetch_from_any(
    control: &mut libp2p_stream::Control,
    peers: &[PeerId],
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
    first: Floor,
) -> Result<PullReport, PeerError> {
    let mut report = PullReport::default();
    let still_missing = || -> Result<Vec<ChunkRef>, PeerError> {
        let mut out = Vec::new();
        for c in wanted {
            if !intake.has(&c.id)? {
                out.push(*c);
            }
        }
        Ok(out)
    };
    let mut remaining = still_missing()?;
    for (i, &peer) in peers.iter().enumerate() {
        if remaining.is_empty() {
            break;
        }
        let floor = if i == 0 { first } else { Floor::Fixed };
        if intake.is_dropped(&peer) {
            continue;
        }
        let mut attempt = 0;
        let (got, result) = loop {
            let (got, result) = fetch_stream(control, peer, purpose, &remaining, intake, floor)
                .instrument(pull_span(&peer))
                .await;
            // A stream that failed before anything arrived (a busy peer can drop a
            // stream it has not accepted yet) is opened again, twice at most.
            let nothing = got.chunks == 0 && got.missing == 0;
            if attempt < 2 && nothing && matches!(result, Err(PeerError::Stream { .. })) {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                continue;
            }
            break (got, result);
        };
        if got.chunks > 0 || result.is_ok() {
            report.fetched.push((peer.to_string(), got));
        }
        match result {
            Ok(()) if got.missing > 0 => {
                report.dropped.push((peer.to_string(), format!("lacked {} chunks", got.missing)));
            }
            Ok(()) => {}
            Err(e) => {
                // A bad chunk is deliberate or a broken peer: no stream of this stage asks
                // it again. A broken stream may be passing (the final pass of a stage
                // tries every peer again).
                if matches!(e, PeerError::BadChunk { .. }) {
                    intake.drop_peer(peer);
                }
                tracing::warn!(peer = %short(&peer), error = %e, "dropping the peer for this pull");
                report.dropped.push((peer.to_string(), e.to_string()));
            }
        }
        remaining = still_missing()?;
    }
    if let Some(first) = remaining.first() {
        return Err(PeerError::Unfetched {
            missing: remaining.len(),
            first: format!("{:#}", first.id),
            tried: peers.len(),
        });
    }
    Ok(report)
}

/// Chunks a host is receiving and forwarding at once (a cascade): served to its
/// children from memory as soon as each is verified, before its own image is complete,
/// and from the store once written. Memory is bounded: the most recent
/// [`Relay::KEEP_BYTES`] of chunks.
pub struct Relay {
    store: Arc<Store>,
    state: Mutex<RelayState>,
    signal: watch::Sender<u64>,
}

#[derive(Default)]
struct RelayState {
    recent: HashMap<ChunkId, Vec<u8>>,
    order: VecDeque<ChunkId>,
    bytes: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// Bytes of chunks kept in memory. A child in a cascade asks for chunks moments
    /// after its parent receives them; one that falls further behind waits for the
    /// store's next sync (at most a second) and reads them from there.
    pub const KEEP_BYTES: usize = 32 << 20;

    /// A relay over `store`.
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        let (signal, _) = watch::channel(0);
        Arc::new(Relay { store, state: Default::default(), signal })
    }

    /// A verified chunk has arrived.
    pub fn arrived(&self, id: ChunkId, data: Vec<u8>) {
        let mut st = self.state.lock().expect("relay lock");
        let len = data.len();
        if st.recent.insert(id, data).is_none() {
            st.order.push_back(id);
            st.bytes += len;
        }
        while st.bytes > Self::KEEP_BYTES {
            let Some(old) = st.order.pop_front() else { break };
            if let Some(gone) = st.recent.remove(&old) {
                st.bytes -= gone.len();
            }
        }
        drop(st);
        self.signal.send_modify(|n| *n += 1);
    }

    /// Something changed that waiting servers should look at again (a store sync).
    pub fn poke(&self) {
        self.signal.send_modify(|n| *n += 1);
    }
}

impl ChunkSource for Relay {
    fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if let Some(data) = self.state.lock().expect("relay lock").recent.get(id) {
            return Some(data.clone());
        }
        self.store.chunk(id)
    }

    /// Any chunk may still arrive: a child's request can reach this host before the
    /// head's stage order does. A server waits while chunks keep arriving, and answers
    /// `Missing` after [`QUIET`] without one.
    fn arriving(&self, _id: &ChunkId) -> Option<watch::Receiver<u64>> {
        Some(self.signal.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_per_peer_and_in_all_and_slots_come_back() {
        let limits = ServeLimits { streams: 3, streams_per_peer: 2, ..ServeLimits::default() };
        let open = Arc::new(OpenStreams::new(limits));
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let a1 = open.take(a).expect("a's first");
        let a2 = open.take(a).expect("a's second");
        let why = open.take(a).expect_err("a's third is past its share");
        assert!(why.contains("the most one peer may"), "{why}");
        let b1 = open.take(b).expect("b is served while a is at its share");
        let why = open.take(c).expect_err("the host is full");
        assert!(why.contains("the most it serves at once"), "{why}");
        drop(a1);
        let c1 = open.take(c).expect("a slot came back");
        drop((a2, b1, c1));
        assert_eq!(
            *open.counts.lock().expect("lock"),
            (0, HashMap::new()),
            "nothing is left counted"
        );
    }

    #[test]
    fn refusal_reasons_fit_a_frame() {
        for limits in [(0, 1), (1, 0)] {
            let (streams, streams_per_peer) = limits;
            let limits = ServeLimits { streams, streams_per_peer, ..Default::default() };
            let open = Arc::new(OpenStreams::new(limits));
            let why = open.take(PeerId::random()).expect_err("full");
            Frame::Refused { reason: why }.encode().expect("a refusal fits its frame");
        }
    }

    /// A sender that trickles a frame every 29 s (never quiet for the 30 s that drops
    /// a silent one) is dropped at the first frame past the window; one at the floor is
    /// not, nor one that has sent all but the last few bytes slowly.
    #[test]
    fn a_trickling_sender_falls_below_the_progress_floor() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut trickle = ProgressFloor::new(t0, 1 << 30, Floor::Fixed);
        trickle.check(at(0)).expect("at the start");
        trickle.add(64 << 10);
        let err = trickle.check(at(29)).expect_err("below the floor");
        assert!(err.contains("too slow: 65536 bytes in 29 s"), "{err}");

        let mut steady = ProgressFloor::new(t0, 1 << 30, Floor::Fixed);
        for s in 0..=60 {
            steady.check(at(s)).expect("at the floor");
            steady.add(FLOOR_RATE);
        }
        // A stream that wanted little is held to what it wanted, not to the floor.
        let mut small = ProgressFloor::new(t0, 100, Floor::Fixed);
        small.add(100);
        small.check(at(25)).expect("it sent all it was asked for");
    }

    /// A planned sender answers to the plan: an eighth of what the plan expects, over
    /// five seconds, where the fixed floor would have waited twenty and let it pass.
    #[test]
    fn a_planned_sender_is_held_to_a_fraction_of_the_planned_rate() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let planned = 80 << 20; // 80 MiB/s expected: the floor is 10 MiB/s
        let mut slow = ProgressFloor::new(t0, 1 << 34, Floor::planned(planned));
        assert_eq!(slow.window_end(), at(5));
        slow.add(40 << 20); // 8 MiB/s over the window: fine for the fixed floor
        let err = slow.check(at(5)).expect_err("below an eighth of the plan");
        assert!(err.contains("below the floor of 10240 KiB/s (1/8 of the 81920 KiB/s planned)"));

        let mut ok = ProgressFloor::new(t0, 1 << 34, Floor::planned(planned));
        for s in 1..=30 {
            ok.add(10 << 20);
            ok.check(at(s)).expect("at an eighth of the plan");
        }
        // A plan that expects less than the fixed floor does not lower it.
        assert_eq!(Floor::planned(1000).rate(), FLOOR_RATE);
        assert_eq!(Floor::planned(0), Floor::Fixed);
    }
}
