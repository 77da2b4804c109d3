//! A host's side of `/vw/control/1`: requests from the head, served from the manager
//! and the store.
//!
//! A stage order runs in two parts. First the chunks: every planned stream at once,
//! each pulling from its sender and, if that fails (the sender died, sent a bad chunk,
//! or lacks chunks), from the fallback peers in order; every chunk verified, written by
//! one store writer, and forwarded to this host's own children through the relay as
//! soon as it arrives. Chunks the store already holds (a previous, interrupted stage)
//! are never fetched again. Then the manager records this host's share of the
//! deployment and stages its VMs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, watch};
use vw_chunkstore::{ChunkRef, ImageRef, Manifest, Store};

use super::protocol::{
    bitmap, Answer, ImageOrder, InventoryReport, Phase, Progress, Reply, Request, StageOrder,
    StageReport,
};
use crate::chunks::handler::{fetch_from_any, Intake, PullReport, Relay, QUIET};
use crate::lifecycle::Op;
use crate::manager::Manager;
use crate::peer::rate::RateLimit;
use crate::peer::PeerBook;
use crate::wire;

/// How often a stage reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often a host repeats its last progress while a request runs.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a host serves control requests with.
pub struct HostService {
    manager: Arc<Mutex<Manager>>,
    store: Arc<Store>,
    relay: Arc<Relay>,
    chunks: libp2p_stream::Control,
    book: PeerBook,
    caps: (Option<f64>, Option<f64>),
    rack: Option<String>,
    download: Option<Arc<RateLimit>>,
    heads: Vec<PeerId>,
}

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService").field("heads", &self.heads).finish_non_exhaustive()
    }
}

impl HostService {
    /// A service over `manager`, fetching through `chunks` (from the peers of `book`)
    /// into the store and forwarding through `relay`; only `heads` may send requests.
    pub fn new(
        manager: Manager,
        relay: Arc<Relay>,
        chunks: libp2p_stream::Control,
        book: PeerBook,
        caps: (Option<f64>, Option<f64>),
        rack: Option<String>,
        heads: Vec<PeerId>,
    ) -> Self {
        let store = manager.shared_store();
        HostService {
            manager: Arc::new(Mutex::new(manager)),
            store,
            relay,
            chunks,
            book,
            caps,
            rack,
            download: caps.1.map(|r| Arc::new(RateLimit::new(r))),
            heads,
        }
    }

    /// The cluster's peers.
    pub(crate) fn book(&self) -> &PeerBook {
        &self.book
    }

    /// The store.
    pub(crate) fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Runs `f` on the manager on a blocking thread.
    pub(crate) async fn with_manager<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Manager) -> T + Send + 'static,
    ) -> Result<T, String> {
        let m = Arc::clone(&self.manager);
        tokio::task::spawn_blocking(move || f(&m.lock().expect("manager lock")))
            .await
            .map_err(|e| format!("the manager's thread failed: {e}"))
    }

    /// Answers one request, sending progress to `progress` as it goes.
    pub async fn handle(&self, request: Request, progress: mpsc::Sender<Progress>) -> Answer {
        let result = match request {
            Request::Inventory { images } => self.inventory(images).await.map(Answer::Inventory),
            Request::Stage(order) => self.stage(*order, progress).await.map(Answer::Staged),
            Request::Run { deployment, op } => self
                .with_manager(move |m| m.run(&deployment, None, op).map_err(|e| e.to_string()))
                .await
                .and_then(|r| r)
                .map(Answer::Ran),
            Request::Status { deployment } => self
                .with_manager(move |m| {
                    m.status(deployment.as_deref())
                        .map(|v| v.into_iter().map(|s| (s.record, s.domain)).collect())
                        .map_err(|e| e.to_string())
                })
                .await
                .and_then(|r| r)
                .map(Answer::Status),
        };
        result.unwrap_or_else(Answer::Failed)
    }

    async fn inventory(
        &self,
        images: Vec<super::protocol::ImageChunks>,
    ) -> Result<InventoryReport, String> {
        let (caps, rack) = (self.caps, self.rack.clone());
        let store = Arc::clone(&self.store);
        self.with_manager(move |m| {
            let (committed, addresses) = m.committed().map_err(|e| e.to_string())?;
            let mut held = Vec::new();
            for image in &images {
                let mut map = Vec::with_capacity(image.chunks.len());
                for id in &image.chunks {
                    map.push(store.holds(id).map_err(|e| e.to_string())?);
                }
                held.push(bitmap(map.len(), |i| map[i]));
            }
            Ok(InventoryReport { capacity: m.host(), caps, rack, committed, addresses, held })
        })
        .await
        .and_then(|r| r)
    }

    async fn stage(
        &self,
        order: StageOrder,
        progress: mpsc::Sender<Progress>,
    ) -> Result<StageReport, String> {
        let spec = crate::workspace::parse(&order.workspace, "(the head's stage order)")
            .map_err(|e| e.to_string())?;
        let span = tracing::info_span!("stage", deployment = %spec.name);
        tracing::Instrument::instrument(
            self.stage_spec(spec, order.share, order.images, progress),
            span,
        )
        .await
    }

    async fn stage_spec(
        &self,
        spec: crate::workspace::WorkspaceSpec,
        share: crate::report::ClusterShare,
        orders: Vec<ImageOrder>,
        progress: mpsc::Sender<Progress>,
    ) -> Result<StageReport, String> {
        let mut report = StageReport::default();
        let started = Instant::now();

        // Decode and check every manifest first: nothing is fetched for a bad order.
        let mut images: Vec<(ImageOrder, Manifest, Vec<ChunkRef>)> = Vec::new();
        for image in orders {
            let reference: ImageRef =
                image.image.parse().map_err(|e| format!("image `{}`: {e}", image.image))?;
            let manifest =
                Manifest::decode(&image.manifest).map_err(|e| format!("image {reference}: {e}"))?;
            if let ImageRef::Id(id) = &reference {
                if *id != manifest.id() {
                    return Err(format!(
                        "image {reference}: the manifest sent is {}",
                        manifest.id()
                    ));
                }
            }
            let lacked = self.store.missing(&manifest).map_err(|e| e.to_string())?.chunks;
            images.push((image, manifest, lacked));
        }
        let lacked: Vec<ChunkRef> = {
            let mut seen = HashSet::new();
            images.iter().flat_map(|(_, _, l)| l).filter(|c| seen.insert(c.id)).copied().collect()
        };
        report.lacked = lacked.iter().map(|c| u64::from(c.len)).sum();
        tracing::info!(
            lacked = report.lacked,
            chunks = lacked.len(),
            "fetching what this host lacks"
        );

        let pulled = self.fetch(&spec.name, &images, &lacked, report.lacked, &progress).await?;
        report.received = pulled.1;
        report.chunks = pulled.2;
        for (peer, got) in &pulled.0.fetched {
            match report.from.iter_mut().find(|(p, _)| p == peer) {
                Some((_, b)) => *b += got.bytes,
                None => report.from.push((peer.clone(), got.bytes)),
            }
        }
        report.wire = pulled.0.fetched.iter().map(|(_, f)| f.wire).sum();
        report.dropped = pulled.0.dropped;
        report.fetch_micros = started.elapsed().as_micros() as u64;

        // Every chunk is here: record the manifests under their names, then stage.
        let store = Arc::clone(&self.store);
        let named: Vec<(Manifest, Option<vw_chunkstore::ImageName>)> = images
            .into_iter()
            .map(|(o, m, _)| {
                let name = match o.image.parse::<ImageRef>() {
                    Ok(ImageRef::Name(n)) => Some(n),
                    _ => None,
                };
                (m, name)
            })
            .collect();
        let _ = progress.try_send(Progress::started(Phase::Stage));
        let staging = Instant::now();
        let vms = self
            .with_manager(move |m| -> Result<_, String> {
                for (manifest, name) in &named {
                    store.receiving().finish(manifest, name.as_ref()).map_err(|e| e.to_string())?;
                }
                m.submit_share(&spec, share).map_err(|e| e.to_string())?;
                m.run(&spec.name, None, Op::Stage).map_err(|e| e.to_string())
            })
            .await??;
        report.stage_micros = staging.elapsed().as_micros() as u64;
        report.vms = vms;
        tracing::info!(
            received = report.received,
            fetch_ms = report.fetch_micros / 1000,
            stage_ms = report.stage_micros / 1000,
            "staged"
        );
        Ok(report)
    }

    /// Runs every planned stream at once, then pulls whatever is still missing from
    /// the fallback peers. Returns what each peer sent, and the bytes and chunks taken.
    async fn fetch(
        &self,
        deployment: &str,
        images: &[(ImageOrder, Manifest, Vec<ChunkRef>)],
        lacked: &[ChunkRef],
        total: u64,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(PullReport, u64, u64), String> {
        let intake = Intake::start(Arc::clone(&self.store), Some(Arc::clone(&self.relay)))
            .with_download_cap(self.download.clone());
        let by_id: HashMap<_, _> = lacked.iter().map(|c| (c.id, *c)).collect();
        let peer = |s: &str| s.parse::<PeerId>().map_err(|e| format!("peer id `{s}`: {e}"));

        let mut streams = Vec::new();
        for (order, _, _) in images {
            let fallback = order.fallback.iter().map(|p| peer(p)).collect::<Result<Vec<_>, _>>()?;
            for pull in &order.pulls {
                let from = peer(&pull.from)?;
                let mut peers = vec![from];
                peers.extend(fallback.iter().filter(|p| **p != from));
                // Only chunks of this image that this host lacks.
                let wanted: Vec<ChunkRef> =
                    pull.chunks.iter().filter_map(|id| by_id.get(id).copied()).collect();
                streams.push((peers, wanted));
            }
        }
        let mut pulls =
            futures::stream::iter(
                streams.into_iter().map(|(peers, wanted)| {
                    let mut control = self.chunks.clone();
                    let intake = &intake;
                    async move {
                        fetch_from_any(&mut control, &peers, deployment, &wanted, intake).await
                    }
                }),
            )
            .buffer_unordered(64);

        let mut report = PullReport::default();
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let mut meter = RateMeter::default();
        let mut fetched =
            |bytes: u64| Progress { phase: Phase::Fetch, bytes, total, rate: meter.rate(bytes) };
        let mut failure = None;
        loop {
            tokio::select! {
                next = pulls.next() => match next {
                    None => break,
                    Some(Ok(r)) => merge(&mut report, r),
                    Some(Err(e)) => failure = Some(e.to_string()),
                },
                _ = tick.tick() => {
                    let _ = progress.try_send(fetched(intake.bytes()));
                }
            }
        }
        drop(pulls);
        // Chunks no planned stream named (or whose streams all failed): any fallback.
        let rest: Vec<ChunkRef> = {
            let mut out = Vec::new();
            for c in lacked {
                if !intake.has(&c.id).map_err(|e| e.to_string())? {
                    out.push(*c);
                }
            }
            out
        };
        if !rest.is_empty() {
            let mut peers: Vec<PeerId> = Vec::new();
            for (order, _, _) in images {
                for p in order.fallback.iter().chain(order.pulls.iter().map(|p| &p.from)) {
                    let p = peer(p)?;
                    if !peers.contains(&p) {
                        peers.push(p);
                    }
                }
            }
            tracing::info!(
                chunks = rest.len(),
                peers = peers.len(),
                "pulling what the plan did not bring"
            );
            let mut control = self.chunks.clone();
            match fetch_from_any(&mut control, &peers, deployment, &rest, &intake).await {
                Ok(r) => {
                    merge(&mut report, r);
                    failure = None;
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let (bytes, chunks) = (intake.bytes(), intake.chunks());
        let _ = progress.try_send(fetched(bytes));
        intake.finish().await.map_err(|e| e.to_string())?;
        match failure {
            Some(e) => Err(e),
            None => Ok((report, bytes, chunks)),
        }
    }
}

fn merge(into: &mut PullReport, r: PullReport) {
    into.fetched.extend(r.fetched);
    into.dropped.extend(r.dropped);
}

/// Serves every incoming control stream until `stop` is set.
pub async fn serve(
    incoming: libp2p_stream::IncomingStreams,
    host: Arc<HostService>,
    stop: watch::Receiver<bool>,
) {
    crate::peer::accept(incoming, stop, "control", move |peer, stream| {
        let host = Arc::clone(&host);
        async move { serve_one(peer, stream, &host).await }
    })
    .await;
}

async fn serve_one(peer: PeerId, mut stream: Stream, host: &HostService) -> Result<(), String> {
    let request = match tokio::time::timeout(QUIET, wire::read::<Request, _>(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let answer = Answer::Refused(format!("malformed request: {e}"));
            let _ = wire::write(&mut stream, &Reply::Done(answer)).await;
            return Err(format!("malformed request: {e}"));
        }
        Err(_) => return Err("no request within the timeout".into()),
    };
    if !host.heads.contains(&peer) {
        tracing::warn!(peer = %peer, "refused a control request: the peer is not a head in this host's config");
        let answer = Answer::Refused(format!(
            "peer {peer} may not send control requests to this host (it is not a head in its config)"
        ));
        return wire::write(&mut stream, &Reply::Done(answer)).await.map_err(|e| e.to_string());
    }
    let (tx, mut rx) = mpsc::channel(16);
    let work = host.handle(request, tx);
    tokio::pin!(work);
    // Progress as it comes, and the last again every few seconds so the head knows
    // this host is alive through long quiet steps. A head that stops reading does not
    // stop the work.
    let mut last = Progress::started(Phase::Fetch);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let answer = loop {
        tokio::select! {
            answer = &mut work => break answer,
            Some(p) = rx.recv() => {
                last = p;
                let _ = wire::write(&mut stream, &Reply::Progress(p)).await;
            }
            _ = beat.tick() => {
                let _ = wire::write(&mut stream, &Reply::Progress(last)).await;
            }
        }
    };
    wire::write(&mut stream, &Reply::Done(answer)).await.map_err(|e| e.to_string())?;
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    Ok(())
}

/// Bytes per second between successive readings of a growing count.
#[derive(Debug, Default)]
struct RateMeter {
    last: Option<(Instant, u64)>,
}

impl RateMeter {
    /// The rate since the previous reading (0 at the first).
    fn rate(&mut self, bytes: u64) -> u64 {
        let now = Instant::now();
        let rate = self.last.map_or(0, |(at, before)| {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                (bytes.saturating_sub(before) as f64 / secs) as u64
            } else {
                0
            }
        });
        self.last = Some((now, bytes));
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_growth_since_the_last_reading() {
        let mut meter = RateMeter::default();
        assert_eq!(meter.rate(1_000), 0, "no rate before a second reading");
        std::thread::sleep(Duration::from_millis(20));
        let rate = meter.rate(1_000_000);
        // 999,000 bytes in at least 20 ms: at most 49.95 MB/s, and not nothing.
        assert!(rate > 0 && rate <= 49_950_000, "{rate}");
        assert_eq!(meter.rate(1_000_000).min(1), 0, "no growth, no rate");
    }
}
