//! Serving chunks: read `Want`s and `Credit`s; check each want against the host's
//! [`Grants`] (the peer stages that manifest for that deployment, and the manifest lists
//! every id), refusing the stream otherwise; send each wanted chunk (or `Missing`) in
//! order, never more in flight than the credit granted. What a peer can make a server
//! hold is bounded ([`ServeLimits`]): streams at once, in all and per peer (an excess
//! stream is refused with a reason, or dropped if even refusals are at their bound),
//! the time to send a request, and the time without progress while serving.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;
use vw_chunkstore::{ChunkId, ManifestId, Store};

use super::fetch::URGENT_QUIET;
use super::pass::{Passing, Step};
use super::protocol::{pack, Frame, FrameError};
use super::{read_frame, write_frame, QUIET};
use crate::access::audit::Audit;
use crate::access::grants::{Grants, Verdict};
use crate::chunks::rate::{RateLimit, UploadMeter};
use crate::peer::short;

/// How long a request for a deployment this host does not know yet waits for its
/// grant (its stage order may still be on its way) before it is refused; well within
/// a fetcher's [`QUIET`].
pub const GRANT_WAIT: Duration = Duration::from_secs(10);

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

/// Most chunk streams a host holds open before their first request, from all peers.
/// Such a stream holds no chunk, only a task, and for at most [`REQUEST_TIMEOUT`]; a
/// lazy stage keeps a few open to each holder ahead of its guests' reads
/// ([`super::spare`]), so these do not take the served streams' slots.
pub const MAX_WAITING_STREAMS: usize = 1024;

/// Most chunk streams one peer may have served here at once (and, apart, waiting for
/// their first request). A host runs at most 64 pulls at once in a stage
/// (`control::host`), each a stream to one peer, so an honest peer in one stage never
/// meets this; a peer past it cannot take the slots every other peer needs.
pub const MAX_SERVED_STREAMS_PER_PEER: usize = 64;

/// Excess streams being refused at once (each a short `Refused` frame, and an audit
/// line). Past this a stream is dropped without a reason: refusing must not itself be a
/// way to make the host hold tasks.
pub const MAX_REFUSING: usize = 32;

/// How long refusing one stream may take (writing a frame of at most 512 bytes, and
/// closing): a peer that does not read its refusal does not hold a refusal slot longer.
pub const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A background chunk is written in pieces of this many bytes, each paid for as it
/// goes and after any urgent chunk ([`Frame::Urgent`]): a chunk a guest waits on then
/// waits behind at most this much of another (1.3 ms at 100 Mbit/s, against half a
/// chunk, 5 ms, on average when chunks went whole).
pub const PIECE: usize = 16 << 10;

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
    /// A chunk passed on as it arrived could not be sent whole ([`Frame::Through`]).
    #[error("passing a chunk on: {0}; dropped the stream")]
    Passing(String),
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

    /// For a chunk this host does not have yet but stages lazily for `deployment`: its
    /// fetch (started if it is not under way), whose bytes can be passed on as they
    /// arrive ([`Frame::Through`]).
    fn pass_on(&self, deployment: &str, id: &ChunkId) -> Option<Arc<Passing>> {
        let _ = (deployment, id);
        None
    }
}

impl ChunkSource for Store {
    fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        // Reads are verified: a corrupt chunk is never sent, it is `Missing`.
        self.read_chunk(id).ok()
    }
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
    /// What this host's upload carries against its link: a relief stream
    /// ([`Frame::IfSpare`]) is refused when it has no room to spare. `None`: every
    /// relief stream is served.
    pub spare: Option<Arc<UploadMeter>>,
    /// The urgent streams this host sends ([`Frame::Urgent`]): the others give way.
    pub urgency: Arc<super::urgent::Urgency>,
    /// The chunks sent on urgent streams, which the others answer [`Frame::Sent`].
    pub sent_urgently: Arc<super::urgent::SentUrgently>,
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
    let waiting =
        Arc::new(OpenStreams::new(ServeLimits { streams: MAX_WAITING_STREAMS, ..sending.limits }));
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
                // A slot to wait for its first request in, then one to be served in.
                let reason = match waiting.take(peer) {
                    Ok(waiting_slot) => {
                        let (source, sending) = (Arc::clone(&source), sending.clone());
                        let (open, refusing) = (Arc::clone(&open), Arc::clone(&refusing));
                        let work = async move {
                            let mut stream = stream;
                            let first = tokio::time::timeout(
                                sending.limits.request,
                                read_frame(&mut stream),
                            )
                            .await;
                            drop(waiting_slot);
                            let Ok(first) = first else {
                                let e = ServeError::NoRequest(sending.limits.request);
                                tracing::warn!(error = %e, "chunk stream failed");
                                return;
                            };
                            if matches!(first, Ok(None)) {
                                return; // closed before any request: a spare not needed
                            }
                            match open.take(peer) {
                                Ok(slot) => {
                                    let served =
                                        serve_one(peer, stream, first, source.as_ref(), &sending)
                                            .await;
                                    if let Err(e) = served {
                                        tracing::warn!(error = %e, "chunk stream failed");
                                    }
                                    drop(slot);
                                }
                                Err(reason) => {
                                    turn_away(peer, stream, reason, &refusing, &sending).await;
                                }
                            }
                        };
                        tasks.spawn(work.instrument(span));
                        continue;
                    }
                    Err(reason) => reason,
                };
                let (refusing, sending) = (Arc::clone(&refusing), sending.clone());
                tasks.spawn(
                    async move { turn_away(peer, stream, reason, &refusing, &sending).await }
                        .instrument(span),
                );
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Refuses `peer`'s stream with `reason` if a refusal slot is free, else drops it
/// unanswered: refusing must not itself be a way to make the host hold tasks.
async fn turn_away(
    peer: PeerId,
    stream: Stream,
    reason: String,
    refusing: &Arc<Semaphore>,
    sending: &Sending,
) {
    let Ok(permit) = Arc::clone(refusing).try_acquire_owned() else {
        let why = "dropped a chunk stream unanswered: too many refusals under way";
        tracing::debug!(%reason, "{why}");
        return;
    };
    refuse(peer, stream, reason, sending.audit.as_deref()).await;
    drop(permit);
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

/// Serves one stream, whose `first` frame has been read (within
/// [`ServeLimits::request`]): wanted ids in order, within the credit granted; each frame
/// written and each frame read within [`ServeLimits::stall`].
async fn serve_one(
    peer: PeerId,
    mut stream: Stream,
    first: Result<Option<Frame>, FrameError>,
    source: &dyn ChunkSource,
    sending: &Sending,
) -> Result<(), ServeError> {
    let limits = sending.limits;
    let mut queue: VecDeque<ChunkId> = VecDeque::new();
    let mut credit: u64 = 0;
    let mut sent = 0u64;
    let mut first = Some(first);
    // The (VO, deployment, manifest) of the wants allowed so far, for the audit log.
    let mut served: Vec<(String, String, ManifestId)> = Vec::new();
    // Bytes sent, counted under the deployment of the stream's first allowed want (a
    // fetcher asks for one deployment per stream).
    let mut sent_bytes: Option<metrics::Counter> = None;
    // Whether the fetcher asked for relief, before its first want, and this host's
    // relief slot while it serves one.
    let mut relief = false;
    let mut relief_slot = None;
    // Whether a guest waits on this stream's chunks (it asked before its first want),
    // and whether this host is the fetcher's planned sender of them.
    let mut urgent = false;
    let mut through = false;
    let mut first_want = true;
    // The deployment's own cap on what this host sends of it, if it has one.
    let mut stage_cap: Option<Arc<RateLimit>> = None;
    let audit = |vo: &str, deployment: &str, outcome: &str, detail: &str| {
        if let Some(a) = &sending.audit {
            a.record(vo, &peer.to_string(), "chunks", deployment, outcome, detail);
        }
    };
    loop {
        while credit > 0 {
            let Some(id) = queue.pop_front() else { break };
            // An urgent stream is answered from what is here now, and the others give
            // way while it sends.
            let _urgent = if urgent {
                Some(sending.urgency.begin())
            } else {
                sending.urgency.give_way().await;
                None
            };
            // The stage the stream's wants are for (a fetcher asks for one per stream).
            let stage = served.first().map(|(_, stage, _)| stage.as_str());
            // A chunk that went to this peer on an urgent stream of the same stage since
            // it was asked for here is answered `Sent`, not sent again.
            let sent_already =
                !urgent && stage.is_some_and(|stage| sending.sent_urgently.take(&peer, stage, &id));
            let mut data = if sent_already {
                None
            } else if urgent {
                source.chunk(&id)
            } else {
                wait_for(source, &id).await
            };
            let caps = || sending.upload.iter().chain(&stage_cap);
            // A chunk this host is still fetching, for a host below it: passed on as it
            // arrives. The stream's wants are all for its first one's deployment.
            let pass = (data.is_none() && urgent && through)
                .then(|| source.pass_on(stage?, &id))
                .flatten();
            let passed = match &pass {
                Some(pass) => pass_on(&mut stream, pass, id, caps(), limits.stall).await?,
                None => None,
            };
            if pass.is_some() && passed.is_none() {
                data = source.chunk(&id); // it came otherwise, or could not be had
            }
            // The chunk bytes sent (0 for a `Missing` or `Sent`).
            let payload = match passed {
                Some(bytes) => bytes,
                None => {
                    let frame = match data {
                        Some(data) => sending.frame(id, data),
                        None if sent_already => Frame::Sent { id },
                        None => Frame::Missing { id },
                    };
                    let give_way = (!urgent).then_some(&*sending.urgency);
                    send_answer(&mut stream, &frame, caps(), give_way, limits.stall).await?
                }
            };
            if payload > 0 {
                if let Some(stage) = stage.filter(|_| urgent) {
                    sending.sent_urgently.note(peer, stage, id);
                }
                if let Some(meter) = &sending.spare {
                    meter.sent(payload);
                }
                if let Some(counter) = &sent_bytes {
                    counter.increment(payload);
                }
            }
            credit -= 1;
            sent += 1;
        }
        let next = if let Some(first) = first.take() {
            first
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
                first_want = false;
                let verdict =
                    sending.grants.check_within(&peer, &deployment, &manifest, &ids, GRANT_WAIT);
                // A relief stream is for a host with upload to spare, one at a time.
                let no_room = std::mem::take(&mut relief)
                    && sending.spare.as_ref().is_some_and(|meter| {
                        relief_slot = meter.relieve();
                        relief_slot.is_none()
                    });
                match verdict.await {
                    Verdict::Allowed { .. } if no_room => {
                        tracing::debug!(peer = %short(&peer), "no upload to spare for relief");
                        let reason = "no upload to spare for relief".to_owned();
                        send(&mut stream, &Frame::Refused { reason }, limits.stall).await?;
                        let _ = tokio::time::timeout(REFUSE_TIMEOUT, linger(&mut stream)).await;
                        return Ok(());
                    }
                    Verdict::Allowed { vo } => {
                        if sent_bytes.is_none() {
                            sent_bytes = Some(crate::metrics::sent(&peer, &deployment));
                            stage_cap = sending.grants.cap_of(&deployment);
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
            Some(Frame::IfSpare) if first_want => relief = true,
            Some(Frame::Urgent) if first_want => urgent = true,
            Some(Frame::Through) if first_want => through = true,
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

/// Writes `frame`, the answer for one wanted chunk, and returns the chunk bytes it
/// carries (0 for a `Missing` or `Sent`, which `caps` do not pay for). On an urgent
/// stream (no `give_way`) it goes at once, charged to `caps` ahead of the debt the
/// other streams ran up, and they pay for it; otherwise in pieces of [`PIECE`], each
/// paid for as it goes and each after the urgent streams of `give_way`, so a guest's
/// chunk waits behind at most a piece of this one.
async fn send_answer<'a>(
    stream: &mut Stream,
    frame: &Frame,
    caps: impl Iterator<Item = &'a Arc<RateLimit>> + Clone,
    give_way: Option<&super::urgent::Urgency>,
    stall: Duration,
) -> Result<u64, ServeError> {
    let payload = match frame {
        Frame::Chunk { data, .. } | Frame::Packed { data, .. } => data.len() as u64,
        _ => 0,
    };
    let caps = caps.filter(|_| payload > 0);
    let bytes = frame.encode()?;
    match give_way {
        None => {
            caps.for_each(|cap| cap.charge(bytes.len() as u64));
            write(stream, &bytes, stall).await?;
        }
        Some(urgency) => {
            for piece in bytes.chunks(PIECE) {
                for cap in caps.clone() {
                    cap.take(piece.len() as u64).await;
                }
                urgency.give_way().await;
                write(stream, piece, stall).await?;
            }
        }
    }
    Ok(payload)
}

/// Passes chunk `id` on to the fetcher as this host's fetch of it receives it
/// ([`Frame::Through`]), each piece charged to `caps`: the bytes sent once the whole
/// frame has gone; `None` if nothing was sent (the chunk is then in the store, or could
/// not be fetched: the caller answers from the store). A fetch that fails halfway ends
/// the stream: the fetcher asks again.
async fn pass_on<'a>(
    stream: &mut Stream,
    pass: &Passing,
    id: ChunkId,
    caps: impl Iterator<Item = &'a Arc<RateLimit>> + Clone,
    stall: Duration,
) -> Result<Option<u64>, ServeError> {
    let mut forward = pass.forward(id, URGENT_QUIET);
    let mut sent = 0u64;
    loop {
        match forward.step().await {
            Step::Bytes(bytes) => {
                caps.clone().for_each(|cap| cap.charge(bytes.len() as u64));
                write(stream, &bytes, stall).await?;
                sent += bytes.len() as u64;
            }
            Step::Sent => return Ok(Some(sent)),
            Step::Unsent => return Ok(None),
            Step::Broken(why) => return Err(ServeError::Passing(why)),
        }
    }
}

/// Writes a frame to a fetcher, which must take it within `stall`.
async fn send(stream: &mut Stream, frame: &Frame, stall: Duration) -> Result<(), ServeError> {
    write(stream, &frame.encode()?, stall).await
}

/// Writes `bytes` (frames, or a piece of one) within `stall`.
async fn write(stream: &mut Stream, bytes: &[u8], stall: Duration) -> Result<(), ServeError> {
    tokio::time::timeout(stall, stream.write_all(bytes))
        .await
        .map_err(|_| ServeError::Stalled { what: "read nothing", after: stall })?
        .map_err(|e| ServeError::Frame(FrameError::Malformed(e.to_string())))
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
}
