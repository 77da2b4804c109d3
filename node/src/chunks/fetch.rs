//! Fetching: send `Want` for the ids and a window of credit, verify each chunk against
//! its id as it arrives, hand it to the [`Intake`] (bounded: memory in flight is the
//! window), and grant one more credit per chunk taken; a sender that falls below its
//! progress floor is dropped, and [`fetch_from_any`] goes on with the next peer. A
//! planned sender that runs slow (below half its planned rate) is relieved: the chunks
//! not asked of it yet go to a holder with upload to spare (`relief`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use vw_chunkstore::{ChunkRef, Store};

use super::chunks_protocol;
use super::pass::{Passing, Tee};
use super::protocol::{unpack, Frame, FrameError, MAX_WANT};
use super::relief::{relieve, Ask, Pace};
use super::{write_frame, Intake, Purpose, QUIET, WINDOW};
use crate::peer::{short, PeerError};

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

impl std::ops::AddAssign for Fetched {
    fn add_assign(&mut self, o: Fetched) {
        self.chunks += o.chunks;
        self.bytes += o.bytes;
        self.wire += o.wire;
        self.missing += o.missing;
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
    let (got, result) = fetch_stream(control, peer, purpose, wanted, intake, StreamRole::default())
        .instrument(pull_span(&peer))
        .await;
    result.map(|()| got)
}

/// The span of one outgoing chunk stream: the peer it pulls from.
pub(super) fn pull_span(peer: &PeerId) -> tracing::Span {
    tracing::info_span!("pull", peer = %short(peer))
}

/// How one stream is run: the floor its sender is held to, and its part in relief.
#[derive(Debug, Default)]
pub(super) struct StreamRole<'a> {
    /// The rate the sender must keep up.
    pub floor: Floor,
    /// A planned stream: when its sender runs slow ([`Pace`]), ask here whether other
    /// holders take the chunks not yet asked of it.
    pub handoff: Option<&'a mpsc::Sender<Ask>>,
    /// A relief stream: the sender may refuse it for want of upload to spare
    /// ([`Frame::IfSpare`]); told, at its first answer, whether it sends.
    pub relief: Option<oneshot::Sender<bool>>,
    /// A guest waits on these chunks ([`Frame::Urgent`]): the stage's other streams
    /// give way while it runs.
    pub urgent: bool,
    /// The sender is this host's planned sender of the chunk ([`Frame::Through`]): it
    /// passes the chunk on as it arrives if it is still fetching it.
    pub through: bool,
    /// Where the answer's bytes go as they arrive, to be passed on to the hosts below
    /// this one ([`super::pass`]).
    pub pass: Option<&'a Passing>,
}

/// [`fetch_into`] as `role` says, returning what arrived even when the stream then
/// failed.
pub(super) async fn fetch_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
    role: StreamRole<'_>,
) -> (Fetched, Result<(), PeerError>) {
    match open_stream(control, peer).await {
        Ok(stream) => fetch_on(stream, peer, purpose, wanted, intake, role).await,
        Err(e) => (Fetched::default(), Err(e)),
    }
}

/// Opens a chunk stream to `peer` (the protocol negotiated: a round trip).
pub(super) async fn open_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
) -> Result<Stream, PeerError> {
    // A peer that refuses this host closes the connection: it looks like one gone.
    control.open_stream(peer, chunks_protocol()).await.map_err(|e| PeerError::Stream {
        peer,
        reason: format!(
            "cannot open a chunk stream ({e}): the peer is gone, or this host is not on its allow list"
        ),
    })
}

/// [`fetch_stream`] on a stream already open to `peer`, nothing sent on it yet.
pub(super) async fn fetch_on(
    mut stream: Stream,
    peer: PeerId,
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
    mut role: StreamRole<'_>,
) -> (Fetched, Result<(), PeerError>) {
    let fail = |reason: String| PeerError::Stream { peer, reason };
    let mut got = Fetched::default();
    let began = Instant::now();
    let mut answered_in = None;
    if role.relief.is_some() {
        if let Err(e) = write_frame(&mut stream, &Frame::IfSpare).await {
            return (got, Err(fail(e.to_string())));
        }
    }
    let _urgent = role.urgent.then(|| intake.urgency().begin());
    let asks = [(role.urgent, Frame::Urgent), (role.urgent && role.through, Frame::Through)];
    for (_, ask) in asks.iter().filter(|(on, _)| *on) {
        if let Err(e) = write_frame(&mut stream, ask).await {
            return (got, Err(fail(e.to_string())));
        }
    }
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
    let now = Instant::now();
    let wanted_bytes = wanted.iter().map(|c| u64::from(c.len)).sum();
    let mut floor = ProgressFloor::new(now, wanted_bytes, role.floor);
    let mut pace = match (role.floor, role.handoff) {
        (Floor::Planned(rate), Some(_)) => Some(Pace::new(now, rate)),
        _ => None,
    };
    // Chunks asked of the sender (credit granted), where the stream ends, and while a
    // handoff is asked, the credit withheld and the verdict to come.
    let mut credited = (WINDOW as usize).min(wanted.len());
    let mut end = wanted.len();
    let mut withheld = 0u32;
    let mut asking: Option<(usize, oneshot::Receiver<bool>)> = None;
    let received = crate::metrics::received(&peer, &purpose.deployment);
    let mut next = 0;
    while next < end {
        if let Some((at, verdict)) = &mut asking {
            // Waited for when nothing is in flight; else looked at between chunks.
            let moved = if next >= credited {
                Some(verdict.await.unwrap_or(false))
            } else {
                match verdict.try_recv() {
                    Ok(moved) => Some(moved),
                    Err(oneshot::error::TryRecvError::Empty) => None,
                    Err(oneshot::error::TryRecvError::Closed) => Some(false),
                }
            };
            if let Some(moved) = moved {
                if moved {
                    end = *at;
                } else if withheld > 0 {
                    // Nobody took them: the sender keeps them, and is watched again.
                    credited += withheld as usize;
                    let more = Frame::Credit { chunks: std::mem::take(&mut withheld) };
                    if let Err(e) = write_frame(&mut stream, &more).await {
                        result = Err(fail(format!("the peer went away: {e}")));
                        break;
                    }
                }
                if let (Floor::Planned(rate), false) = (role.floor, moved) {
                    pace = Some(Pace::new(Instant::now(), rate));
                }
                asking = None;
                continue;
            }
        }
        let expected = &wanted[next];
        next += 1;
        let quiet = if role.urgent { URGENT_QUIET } else { QUIET };
        let frame = match next_frame(&mut stream, &mut floor, pace.as_mut(), quiet, role.pass).await
        {
            Ok(frame) => frame,
            Err(why) => {
                result = Err(fail(why));
                break;
            }
        };
        answered_in.get_or_insert_with(|| began.elapsed());
        if let Some(relief) = role.relief.take() {
            let _ = relief.send(!matches!(frame, Ok(Some(Frame::Refused { .. }))));
        }
        if let (Some(share), Some(handoff)) =
            (pace.as_mut().and_then(Pace::take_slow), role.handoff)
        {
            intake.sender_slow();
            if asking.is_none() && credited < wanted.len() {
                let (tx, rx) = oneshot::channel();
                if handoff.try_send(Ask { at: credited, share, verdict: tx }).is_ok() {
                    asking = Some((credited, rx));
                }
            }
        }
        let frame = match frame {
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
            Frame::Missing { id } | Frame::Sent { id } if id == expected.id => {
                // `Sent`: it came on an urgent stream, and is missing only if not here.
                let here = matches!(frame, Frame::Sent { .. }) && intake.has(&id).unwrap_or(false);
                if !here {
                    got.missing += 1;
                }
                floor.add(u64::from(expected.len));
                if let Some(p) = &mut pace {
                    p.add(u64::from(expected.len));
                }
                if asking.is_some() {
                    withheld += 1;
                    continue;
                }
                if !role.urgent {
                    intake.urgency().give_way().await;
                }
                if let Err(e) = credit(&mut stream, &mut credited, wanted.len()).await {
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
        if let Some(pass) = role.pass {
            pass.verified();
        }
        got.chunks += 1;
        floor.add(u64::from(expected.len));
        if let Some(p) = &mut pace {
            p.add(u64::from(expected.len));
        }
        got.bytes += data.len() as u64;
        got.wire += wire as u64;
        received.increment(data.len() as u64);
        // Time this host's writer keeps the chunk waiting is not the sender's.
        let delivering = Instant::now();
        if !intake.deliver(id, data, wire, role.urgent).await {
            break; // the writer failed; its error comes from Intake::finish
        }
        floor.pause(delivering.elapsed());
        if let Some(p) = &mut pace {
            p.pause(delivering.elapsed());
        }
        if asking.is_some() {
            withheld += 1;
            continue;
        }
        if !role.urgent {
            intake.urgency().give_way().await;
        }
        if let Err(e) = credit(&mut stream, &mut credited, wanted.len()).await {
            result = Err(fail(format!("the peer went away: {e}")));
            break;
        }
    }
    if role.urgent {
        tracing::debug!(
            answered_ms = answered_in.unwrap_or_default().as_secs_f64() * 1e3,
            done_ms = began.elapsed().as_secs_f64() * 1e3,
            chunks = got.chunks,
            "urgent fetch"
        );
    }
    let _ = write_frame(&mut stream, &Frame::Done).await;
    let _ = stream.close().await;
    (got, result)
}

/// How long an urgent stream (one chunk a guest waits for) waits for its answer before
/// the next holder is asked: a holder answers an urgent want at once, from what it has.
pub const URGENT_QUIET: Duration = Duration::from_secs(5);

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Floor {
    /// [`FLOOR_RATE`] over [`FLOOR_WINDOW`]: for a sender no plan chose (a fallback),
    /// or one whose rate the plan could not predict.
    #[default]
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

/// Grants the sender one more chunk, unless all `wanted` chunks are asked already.
async fn credit(
    stream: &mut Stream,
    credited: &mut usize,
    wanted: usize,
) -> Result<(), FrameError> {
    if *credited >= wanted {
        return Ok(());
    }
    *credited += 1;
    write_frame(stream, &Frame::Credit { chunks: 1 }).await
}

/// The next frame of a fetch, or why the sender is given up: it fell below `floor`
/// (checked at the end of each window, whether or not a frame arrives), or sent
/// nothing for [`QUIET`]. `pace` is checked at its windows' ends too, and notes a
/// sender that runs slow ([`Pace::take_slow`]) while the frame is still awaited. The
/// frame's bytes also go to `pass` as they arrive.
async fn next_frame(
    stream: &mut Stream,
    floor: &mut ProgressFloor,
    mut pace: Option<&mut Pace>,
    quiet: Duration,
    pass: Option<&Passing>,
) -> Result<Result<Option<Frame>, FrameError>, String> {
    let quiet_at = Instant::now() + quiet;
    let mut tee = Tee::new(stream, pass);
    let read = crate::wire::read::<Frame, _>(&mut tee);
    tokio::pin!(read);
    loop {
        let mut wake = floor.window_end().min(quiet_at);
        if let Some(p) = &pace {
            wake = wake.min(p.window_end());
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                floor.check(now)?;
                if let Some(p) = pace.as_mut() {
                    p.check(now);
                }
                if now >= quiet_at {
                    return Err(format!(
                        "nothing for {} s; the peer is stalled or gone",
                        quiet.as_secs()
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
    /// Planned senders that ran slow, and which holder sent the rest in their place.
    pub relieved: Vec<(String, String)>,
}

impl PullReport {
    /// Adds `other`'s entries to this one's.
    pub fn merge(&mut self, other: PullReport) {
        self.fetched.extend(other.fetched);
        self.dropped.extend(other.dropped);
        self.relieved.extend(other.relieved);
    }
}

/// Pulls `wanted` from `peers` in order into `intake`: a peer that sends a bad chunk is
/// dropped for the whole stage (every stream of the intake skips it), one whose stream
/// breaks or stalls, falls below its floor, or that lacks chunks only for this pull,
/// and the chunks still missing are fetched from the next. The first peer is held to
/// `first` (its place in the plan), the others to [`Floor::Fixed`]. A planned first
/// peer that runs slow keeps the chunks asked of it already, and the next peer with
/// upload to spare sends the rest at the same time (`relief`): no chunk is asked of two.
/// Ends with every wanted chunk taken, or an error naming what is still missing after
/// every peer was tried; either way with the report of what each peer delivered.
pub async fn fetch_from_any(
    control: &mut libp2p_stream::Control,
    peers: &[PeerId],
    purpose: &Purpose,
    wanted: &[ChunkRef],
    intake: &Intake,
    first: Floor,
) -> (PullReport, Result<(), PeerError>) {
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
    let mut remaining = match still_missing() {
        Ok(remaining) => remaining,
        Err(e) => return (report, Err(e)),
    };
    for (i, &peer) in peers.iter().enumerate() {
        if remaining.is_empty() || intake.is_broken() {
            break;
        }
        let floor = if i == 0 { first } else { Floor::Fixed };
        if intake.is_dropped(&peer) {
            continue;
        }
        let (asks, asked) = mpsc::channel::<Ask>(1);
        let planned = i == 0 && matches!(floor, Floor::Planned(_));
        let mut stream_control = control.clone();
        let stream = async {
            // Dropped at the end: the relief below then ends too.
            let asks = asks;
            let mut attempt = 0;
            loop {
                let role = StreamRole {
                    floor,
                    handoff: planned.then_some(&asks),
                    relief: None,
                    ..StreamRole::default()
                };
                let (got, result) =
                    fetch_stream(&mut stream_control, peer, purpose, &remaining, intake, role)
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
            }
        };
        let relief = relieve(control.clone(), asked, &peers[i + 1..], purpose, &remaining, intake);
        let ((got, result), relieved) = futures::join!(stream, relief);
        if let Some(r) = relieved {
            report.relieved.push((peer.to_string(), r.what));
            report.fetched.push((r.by.to_string(), r.got));
            if let Err(e) = r.result {
                // What it did not bring is pulled below, from the next peers.
                tracing::warn!(peer = %short(&r.by), error = %e, "the relief stream failed");
                report.dropped.push((r.by.to_string(), e.to_string()));
            }
        }
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
        remaining = match still_missing() {
            Ok(remaining) => remaining,
            Err(e) => return (report, Err(e)),
        };
    }
    let result = match remaining.first() {
        Some(first) => Err(PeerError::Unfetched {
            missing: remaining.len(),
            first: format!("{:#}", first.id),
            tried: peers.len(),
        }),
        None => Ok(()),
    };
    (report, result)
}

#[cfg(test)]
mod tests {
    use super::*;

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
