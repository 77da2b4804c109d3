//! A host's side of `/vw/control`: requests from the head, served from the manager
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
use vw_chunkstore::{Assembly, ChunkId, ChunkRef, Manifest, ManifestId, Seal, Store};

use super::check;
use super::error::{ControlError, Failure, FailureKind};
use super::lazy::{booted, started, LazyStage, LazyVms, Settling, Went};
use super::manifests::Received;
use super::protocol::{
    bitmap, Answer, HostStatus, ImageManifest, ImageOrder, InventoryReport, ManifestPiece, Phase,
    Progress, Pull, Reply, Request, StageOrder, StageReport, VmSeen,
};
use super::serial::Serialized;
use super::usage::{check_host, HostShare};
use crate::access::{shareable, Gate};
use crate::chunks::demand::{Demand, DemandImage};
use crate::chunks::rate::{RateLimit, UploadMeter};
use crate::chunks::{fetch_from_any, Floor, Intake, PullReport, Purpose, Relay, QUIET};
use crate::config::{DriverKind, LazyFetch};
use crate::lazy::disk::LazyDisk;
use crate::lifecycle::Op;
use crate::machine::LinkRate;
use crate::manager::ready::{self, ReadyWait};
use crate::manager::LazyImages;
use crate::manager::Manager;
use crate::peer::PeerBook;
use crate::wire;

/// How often a stage reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often a host repeats its last progress while a request runs.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a host says of its network in its inventory.
#[derive(Clone, Debug)]
pub struct HostLinks {
    /// Upload and download caps the operator set, bytes per second (none: uncapped).
    pub caps: (Option<f64>, Option<f64>),
    /// Its link's speed, and where that came from.
    pub link: LinkRate,
    /// Its rack (switch), if configured.
    pub rack: Option<String>,
    /// What its upload carries (its chunk server's meter), told when a sender of a
    /// stage here runs slow.
    pub meter: Option<Arc<UploadMeter>>,
}

/// What a host serves control requests with.
pub struct HostService {
    /// The manager: operations that change things (stage, lifecycle, records) run one
    /// at a time; reads (status, quotas) never wait for them.
    manager: Serialized<Manager>,
    store: Arc<Store>,
    /// Manifests the head sent, until a stage records them in the store.
    received: Arc<Received>,
    relay: Arc<Relay>,
    chunks: libp2p_stream::Control,
    book: PeerBook,
    links: HostLinks,
    download: Option<Arc<RateLimit>>,
    heads: Vec<PeerId>,
    gate: Gate,
    /// Per (VO, deployment), what its VMs take on this host, from when its order was
    /// admitted until it is unstaged (or its stage fails): the host's quota check
    /// counts stages still running.
    admitted: Mutex<HashMap<(String, String), HostShare>>,
    /// One stage at a time per manifest: a second deployment of an image this host is
    /// still receiving for another waits for that stage, then lacks none of it, so no
    /// chunk is fetched twice (the head plans it as a holder: `flowing`).
    staging: ManifestLocks,
    /// The lazy disks of this host's VMs, served while their domains may read them.
    lazy: LazyVms,
    /// Lazy stages still fetching after their answer.
    settling: Settling,
}

/// A lock per manifest, taken by a stage for all its manifests at once (in order, so
/// two stages never wait on each other).
#[derive(Debug, Default)]
struct ManifestLocks {
    locks: Mutex<HashMap<ManifestId, Arc<tokio::sync::Mutex<()>>>>,
}

impl ManifestLocks {
    /// Waits until no other stage holds any of `ids`, and holds them.
    async fn hold(&self, ids: &[ManifestId]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let locks: Vec<_> = {
            let mut map = self.locks.lock().expect("manifest locks");
            // Forget the locks no stage holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            ids.iter().map(|id| Arc::clone(map.entry(*id).or_default())).collect()
        };
        let mut held = Vec::with_capacity(locks.len());
        for lock in locks {
            held.push(lock.lock_owned().await);
        }
        held
    }
}

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService").field("heads", &self.heads).finish_non_exhaustive()
    }
}

impl HostService {
    /// A service over `manager`, fetching through `chunks` (from the peers of `book`)
    /// into the store and forwarding through `relay`; only `heads` may send requests,
    /// and `gate` checks what they ask.
    pub fn new(
        manager: Manager,
        relay: Arc<Relay>,
        chunks: libp2p_stream::Control,
        book: PeerBook,
        links: HostLinks,
        heads: Vec<PeerId>,
        gate: Gate,
    ) -> Self {
        let store = manager.shared_store();
        HostService {
            manager: Serialized::new(manager),
            store,
            received: Arc::default(),
            relay,
            chunks,
            book,
            download: links.caps.1.map(|r| Arc::new(RateLimit::on_link(r))),
            links,
            heads,
            gate,
            admitted: Mutex::default(),
            staging: ManifestLocks::default(),
            lazy: LazyVms::default(),
            settling: Settling::default(),
        }
    }

    /// The VO checks, grants and audit log.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The cluster's peers.
    pub(crate) fn book(&self) -> &PeerBook {
        &self.book
    }

    /// The store.
    pub(crate) fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Runs `f`, which changes things, on the manager on a blocking thread, after every
    /// other such operation here (a stage, with its image tools, is one).
    pub(crate) async fn with_manager<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Manager) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        self.manager.op(f).await.map_err(|e| ControlError::thread("the manager", e))
    }

    /// Runs `f`, which only reads (records, the hypervisor's view), on the manager on a
    /// blocking thread, without waiting for a stage or lifecycle operation in progress:
    /// `vw status` answers while a stage runs its image tools. (An inventory still
    /// waits: what a stage in progress will commit is not recorded until it ends.)
    pub(crate) async fn read_manager<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Manager) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        self.manager.read(f).await.map_err(|e| ControlError::thread("the manager", e))
    }

    /// Answers one request from `peer`, sending progress to `progress` as it goes.
    /// Stages and lifecycle operations are written to the audit log.
    pub async fn handle(
        self: &Arc<Self>,
        peer: &str,
        request: Request,
        progress: mpsc::Sender<Progress>,
    ) -> Answer {
        let result = match request {
            Request::Inventory { vo, images } => {
                self.inventory(vo, images).await.map(Answer::Inventory)
            }
            Request::Manifest(piece) => {
                return self.manifest_piece(piece).await.map_or_else(
                    |e| {
                        // Bytes that are not the manifest they came as, or too many: the
                        // head is refused, on the record.
                        let failure = e.failure();
                        self.gate.audit.record(
                            "-",
                            peer,
                            "manifest",
                            "-",
                            "refused",
                            &failure.message,
                        );
                        Answer::Failed(failure)
                    },
                    Answer::Manifest,
                );
            }
            Request::Stage(order) => {
                return self.stage(peer, *order, progress).await;
            }
            Request::Run { deployment, op } => {
                let d = deployment.clone();
                let (vo, ran) = self
                    .with_manager(move |m| {
                        let vo = m.deployment(&d).ok().flatten().and_then(|r| r.vo);
                        let ran = match m.run(&d, None, op) {
                            // A host without the deployment (its stage failed, or it was
                            // lost before) has nothing to stop or release: done.
                            Err(crate::manager::ManagerError::UnknownDeployment { .. })
                                if matches!(op, Op::Stop | Op::Unstage) =>
                            {
                                Ok(Vec::new())
                            }
                            other => other.map_err(ControlError::from),
                        };
                        (vo, ran)
                    })
                    .await
                    .unwrap_or_else(|e| (None, Err(e)));
                let (outcome, detail) = match &ran {
                    Ok(vms) => ("ok", format!("{} VMs", vms.len())),
                    Err(e) => ("failed", e.to_string()),
                };
                let vo = vo.as_deref().unwrap_or("-");
                self.gate.audit.record(vo, peer, &op.to_string(), &deployment, outcome, &detail);
                if op == Op::Create {
                    // Every domain of the deployment is made: a lazy stage that waits
                    // for it starts its background fetch.
                    self.settling.started(&deployment);
                }
                if let (Op::Stop | Op::Unstage, Ok(vms)) = (op, &ran) {
                    // Their domains are gone: a later load reads the local copies.
                    self.lazy.release(vms.iter().map(|v| v.vm.to_string()).collect()).await;
                }
                if op == Op::Unstage && ran.is_ok() {
                    self.gate.grants.revoke(&deployment);
                    self.admitted
                        .lock()
                        .expect("admitted lock")
                        .retain(|(_, d), _| *d != deployment);
                }
                ran.map(Answer::Ran)
            }
            Request::Status { deployment } => self
                .read_manager(move |m| {
                    // A host without the deployment has none of its VMs.
                    let vms = match m.status(deployment.as_deref()) {
                        Err(crate::manager::ManagerError::UnknownDeployment { .. }) => Vec::new(),
                        other => other?,
                    };
                    let vms = vms.iter().map(|s| VmSeen::of(&s.record, s.domain)).collect();
                    Ok::<_, ControlError>(HostStatus { driver: m.driver().kind(), vms })
                })
                .await
                .and_then(|r| r)
                .map(Answer::Status),
            Request::AwaitReady { deployment, timeout_s } => {
                self.await_ready(deployment, timeout_s).await.map(Answer::Ready)
            }
            Request::Settle { stage } => self.settling.settle(&stage).await.map(Answer::Staged),
            Request::StageOver { stage } => {
                let before = self.gate.grants.len();
                self.gate.grants.revoke_stage(&stage);
                let gone = before.saturating_sub(self.gate.grants.len());
                Ok(Answer::Revoked(u32::try_from(gone).unwrap_or(u32::MAX)))
            }
        };
        result.unwrap_or_else(|e| Answer::Failed(e.failure()))
    }

    /// What `vm`'s lazy disks did, and the reads that failed (chunk: why).
    fn lazy_counts(&self, vm: &str) -> Option<(crate::report::LazyCounts, Vec<String>)> {
        let (counts, failures) = self.lazy.answered(vm)?;
        Some((
            counts,
            failures.into_iter().map(|f| format!("chunk {}: {}", f.chunk, f.why)).collect(),
        ))
    }

    /// Probes the guests of `deployment` as often as the driver says
    /// ([`crate::xen::Driver::ready_poll`]) until each has reported
    /// or `timeout_s` has passed; the manager is held only while it probes.
    async fn await_ready(
        &self,
        deployment: String,
        timeout_s: u64,
    ) -> Result<Vec<crate::report::VmReady>, ControlError> {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let poll = self.with_manager(|m| m.driver().ready_poll()).await?;
        let mut wait = ReadyWait::default();
        loop {
            let (d, answered) = (deployment.clone(), wait.answered());
            let probes = self.with_manager(move |m| m.probe_ready(&d, &answered)).await??;
            let done = wait.absorb(probes, crate::manager::now_ms());
            wait.note_lazy(false, |vm| self.lazy_counts(vm));
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        wait.note_lazy(true, |vm| self.lazy_counts(vm));
        self.with_manager(move |m| {
            wait.finish(timeout_s, |vm| m.driver().console_tail(vm, ready::CONSOLE_LINES))
        })
        .await
    }

    /// Takes a piece of a manifest the head will name; answers how many of its bytes
    /// are here (all of them at once if the store records it).
    async fn manifest_piece(&self, piece: ManifestPiece) -> Result<u64, ControlError> {
        let (store, received) = (Arc::clone(&self.store), Arc::clone(&self.received));
        tokio::task::spawn_blocking(move || {
            if !received.knows(&piece.id) && store.has_manifest(&piece.id)? {
                return Ok(piece.len);
            }
            received.put(piece, Instant::now()).map_err(ControlError::Refused)
        })
        .await
        .map_err(|e| ControlError::thread("taking a manifest piece", e))?
    }

    async fn inventory(
        &self,
        vo: String,
        images: Vec<ImageManifest>,
    ) -> Result<InventoryReport, ControlError> {
        let links = self.links.clone();
        let (store, received) = (Arc::clone(&self.store), Arc::clone(&self.received));
        let config = Arc::clone(&self.gate.config);
        self.with_manager(move |m| {
            let crate::report::Commitments { vms: committed, addresses } = m.committed()?;
            let visible = visible_chunks(&store, &config, &vo)?;
            let mut held = Vec::new();
            for image in &images {
                let manifest =
                    held_manifest(&received, &store, &image.manifest)?.ok_or_else(|| {
                        ControlError::ManifestNotSent {
                            image: image.image.clone(),
                            manifest: image.manifest,
                        }
                    })?;
                let distinct = manifest.distinct();
                let mut map = Vec::with_capacity(distinct.len());
                for c in &distinct {
                    let shareable = visible.as_ref().is_none_or(|v| v.contains(&c.id));
                    map.push(shareable && store.holds(&c.id)?);
                }
                held.push(bitmap(map.len(), |i| map[i]));
            }
            Ok::<_, ControlError>(InventoryReport {
                driver: m.driver().kind(),
                capacity: m.host()?,
                link: links.link,
                caps: links.caps,
                rack: links.rack,
                committed,
                addresses,
                held,
            })
        })
        .await
        .and_then(|r| r)
    }

    /// Checks and runs a stage order from `peer`, and audits it.
    async fn stage(
        self: &Arc<Self>,
        peer: &str,
        order: StageOrder,
        progress: mpsc::Sender<Progress>,
    ) -> Answer {
        let audit = |vo: &str, deployment: &str, outcome: &str, detail: &str| {
            self.gate.audit.record(vo, peer, "stage", deployment, outcome, detail);
        };
        let (spec, vo, images) = match self.admit_order(&order).await {
            Ok(c) => c,
            Err(e) => {
                // Name the deployment in the audit log if the document says which.
                let name = crate::workspace::parse(&order.workspace, "(the head's stage order)")
                    .map(|s| s.name)
                    .unwrap_or_else(|_| "-".to_owned());
                let failure = e.failure();
                let outcome =
                    if failure.kind == FailureKind::Refused { "refused" } else { "failed" };
                tracing::warn!(deployment = %name, error = %e, "{outcome} a stage order");
                audit("-", &name, outcome, &failure.message);
                return Answer::Failed(failure);
            }
        };
        let deployment = spec.name.clone();
        if order.share.here.is_empty() {
            // No VM of the deployment here: the order only grants what this host sends
            // in the plan, until the head ends the stage. Nothing is staged or recorded.
            self.admitted.lock().expect("admitted lock").remove(&(vo.clone(), deployment.clone()));
            let served: Vec<String> = order.serves.iter().map(|s| s.image.clone()).collect();
            audit(&vo, &deployment, "ok", &format!("serving {}", served.join(", ")));
            return Answer::Staged(StageReport::default());
        }
        if let Some(key) = order.munge_key.clone() {
            let name = deployment.clone();
            if let Err(e) = self.with_manager(move |m| m.keep_munge_key(&name, key)).await {
                return Answer::Failed(e.failure());
            }
        }
        let span = tracing::info_span!("stage", stage = %order.stage, vo = %vo);
        let staged = tracing::Instrument::instrument(
            self.stage_spec(spec, &vo, &order, images, progress),
            span,
        )
        .await;
        match staged {
            Ok(report) => {
                audit(&vo, &deployment, "ok", &format!("{} bytes received", report.received));
                Answer::Staged(report)
            }
            Err(e) => {
                self.admitted
                    .lock()
                    .expect("admitted lock")
                    .remove(&(vo.clone(), deployment.clone()));
                audit(&vo, &deployment, "failed", &e.to_string());
                Answer::Failed(e.failure())
            }
        }
    }

    /// Checks a stage order against this host's own cluster config before anything is
    /// fetched ([`check::check_order`]), checks and reserves what the VO's deployments
    /// then take on this host against its quota, admits the ticket (once: a replayed
    /// ticket is refused) and grants the stagers of each image its chunks. Returns the
    /// checked workspace, the VO and the images to stage.
    async fn admit_order(
        &self,
        order: &StageOrder,
    ) -> Result<(crate::workspace::WorkspaceSpec, String, Vec<Checked>), ControlError> {
        let now_s = crate::manager::now_ms() / 1000;
        let manifests = {
            let (store, received) = (Arc::clone(&self.store), Arc::clone(&self.received));
            let ids: Vec<ManifestId> =
                order.images.iter().chain(&order.serves).map(|i| i.manifest).collect();
            tokio::task::spawn_blocking(move || {
                let mut found = HashMap::new();
                for id in ids {
                    if let Some(m) = held_manifest(&received, &store, &id)? {
                        found.insert(id, m);
                    }
                }
                Ok::<_, ControlError>(found)
            })
            .await
            .map_err(|e| ControlError::thread("reading manifests", e))??
        };
        let checked = check::check_order(&self.gate.config, order, &manifests, now_s)
            .map_err(ControlError::Refused)?;
        let deployment = checked.spec.name.clone();
        let vo = checked.vo().to_owned();
        let mut images = Vec::new();
        for image in checked.images.into_iter().chain(checked.serves) {
            let peers = OrderPeers::parse(&image.order)?;
            images.push(Checked { image, peers });
        }
        let share = HostShare::of(&checked.spec, &order.share.here_names());
        let key = (vo.clone(), deployment.clone());
        self.reserve(&key, share, &images[..order.images.len()]).await?;
        match self.gate.tickets.admit(&checked.ticket, now_s) {
            Ok(true) => {}
            outcome => {
                self.admitted.lock().expect("admitted lock").remove(&key);
                return Err(match outcome {
                    Err(e) => e.into(),
                    Ok(_) => crate::access::AccessError::Replayed { deployment, vo }.into(),
                });
            }
        }
        let granted: Vec<_> =
            images.iter().map(|c| (&*c.image.manifest, &c.peers.stagers[..])).collect();
        self.gate.grants.allow(&order.stage, &vo, &granted, checked.ticket.expires_s());
        if let Some(cap) = order.cap {
            self.gate.grants.cap(&order.stage, Arc::new(RateLimit::on_link(cap as f64)));
        }
        // The served images are granted, not staged.
        images.truncate(order.images.len());
        Ok((checked.spec, vo, images))
    }

    /// Checks what VO `key.0`'s deployments would take on this host with `share`, the
    /// new deployment `key.1` (whose images are `staged`), against the VO's quota, and
    /// reserves it: the check and the reservation are one step, so two stages of one
    /// VO cannot both pass on the same room. Deployments recorded here and those
    /// admitted but still staging count; a deployment counts once.
    async fn reserve(
        &self,
        key: &(String, String),
        share: HostShare,
        staged: &[Checked],
    ) -> Result<(), ControlError> {
        let quota = self.gate.config.vo(&key.0).map(|v| v.quota).unwrap_or_default();
        if quota.memory_mib.is_none() && quota.cache_bytes.is_none() {
            self.admitted.lock().expect("admitted lock").insert(key.clone(), share);
            return Ok(());
        }
        let vo = key.0.clone();
        let recorded = self
            .read_manager(move |m| m.deployments())
            .await??
            .into_iter()
            .filter(|r| r.vo.as_deref() == Some(vo.as_str()))
            .map(|r| (r.name.clone(), HostShare::of(&r.spec, &r.vms)));
        let new: HashMap<_, _> = staged
            .iter()
            .map(|c| (c.image.manifest.id(), c.image.manifest.chunks().to_vec()))
            .collect();
        let chunks = |id: &ManifestId| match new.get(id) {
            Some(c) => Ok(c.clone()),
            None => Ok(self.store.manifest(id).map(|m| m.chunks().to_vec())?),
        };
        let mut admitted = self.admitted.lock().expect("admitted lock");
        let mut shares: HashMap<String, HostShare> = recorded.collect();
        for ((v, name), s) in admitted.iter() {
            if *v == key.0 {
                shares.insert(name.clone(), s.clone());
            }
        }
        shares.insert(key.1.clone(), share.clone());
        let shares: Vec<HostShare> = shares.into_values().collect();
        check_host(&quota, &key.0, &shares, chunks)?;
        admitted.insert(key.clone(), share);
        Ok(())
    }

    /// Fetches what this host lacks of `order`'s images (`checked`), writing each image
    /// as its chunks come, then stages the deployment's VMs here. A lazy order stages
    /// the VMs first, on lazy disks, and answers then; the fetch goes on, and its end
    /// is the answer to the head's `Request::Settle`.
    async fn stage_spec(
        self: &Arc<Self>,
        spec: crate::workspace::WorkspaceSpec,
        vo: &str,
        order: &StageOrder,
        checked: Vec<Checked>,
        progress: mpsc::Sender<Progress>,
    ) -> Result<StageReport, ControlError> {
        let prepared = self.prepare(vo, &spec.name, checked).await?;
        if order.lazy {
            return self.stage_lazily(spec, vo, order, prepared).await;
        }
        let mut prepared = prepared;
        // The chunks held here go into the images while the rest arrive.
        prepared.start_filling(&self.store);
        let intake = Arc::new(self.intake(order, &prepared, Vec::new()));
        let pulled = self
            .fetch(&order.stage, &prepared.images, &prepared.lacking, intake, None, &progress)
            .await?;
        self.staged(spec, vo, order.share.clone(), prepared, pulled, None, &progress).await
    }

    /// What a stage works out before it fetches: what this host lacks of its images,
    /// and each image started (the chunks held here are written into it by
    /// [`Prepared::start_filling`]).
    async fn prepare(
        &self,
        vo: &str,
        deployment: &str,
        checked: Vec<Checked>,
    ) -> Result<Prepared, ControlError> {
        let mut lacked_bytes = 0;
        let started = Instant::now();

        // What this host lacks: what the store does not hold, and (when a VO keeps its
        // chunks to itself) what it holds only for an image this VO may not see, which
        // crosses the network again like any chunk it lacks.
        let visible = {
            let (store, config, vo) =
                (Arc::clone(&self.store), Arc::clone(&self.gate.config), vo.to_owned());
            tokio::task::spawn_blocking(move || visible_chunks(&store, &config, &vo))
                .await
                .map_err(|e| ControlError::thread("listing visible chunks", e))??
        };
        let ids: Vec<ManifestId> = checked.iter().map(|c| c.image.manifest.id()).collect();
        let held = self.staging.hold(&ids).await;
        let mut images: Vec<Staging> = Vec::new();
        // Held, but only for images this VO may not see: fetched all the same.
        let mut hidden = HashSet::new();
        for Checked { image: check::CheckedImage { manifest, distinct, seal, trace, .. }, peers } in
            checked
        {
            let mut lacked = self.store.missing(&manifest)?.chunks;
            if let Some(visible) = &visible {
                let mut seen: HashSet<ChunkId> = lacked.iter().map(|c| c.id).collect();
                for c in &distinct {
                    if !visible.contains(&c.id) && seen.insert(c.id) {
                        lacked.push(*c);
                        hidden.insert(c.id);
                    }
                }
            }
            images.push(Staging { peers, manifest, distinct, lacked, seal, trace });
        }
        let lacked: Vec<ChunkRef> = {
            let mut seen = HashSet::new();
            images.iter().flat_map(|i| &i.lacked).filter(|c| seen.insert(c.id)).copied().collect()
        };
        lacked_bytes += lacked.iter().map(|c| u64::from(c.len)).sum::<u64>();
        let needed: HashMap<ChunkId, u32> =
            images.iter().flat_map(|i| &i.distinct).map(|c| (c.id, c.len)).collect();
        let needed_bytes: u64 = needed.values().map(|&l| u64::from(l)).sum();
        crate::metrics::cache(
            (
                needed.len().saturating_sub(lacked.len()) as u64,
                needed_bytes.saturating_sub(lacked_bytes),
            ),
            (lacked.len() as u64, lacked_bytes),
        );
        tracing::info!(
            lacked = lacked_bytes,
            chunks = lacked.len(),
            "fetching what this host lacks"
        );

        // Each image is written as its chunks come: those fetched by the intake's
        // writer, those held here by a filler.
        let assemblies = self.assemblies(deployment, &images).await?;
        Ok(Prepared {
            images,
            lacking: Lacking { chunks: lacked, bytes: lacked_bytes },
            hidden,
            assemblies,
            filling: None,
            started,
            _held: held,
        })
    }

    /// The intake of a stage of `order`: the store writer, the images being written,
    /// the relay, the caps, and the stage's lazy disks.
    fn intake(&self, order: &StageOrder, prepared: &Prepared, lazy: Vec<Arc<LazyDisk>>) -> Intake {
        // The deployment's own cap on this host's download, beside the host's.
        let cap = order.cap.map(|c| Arc::new(RateLimit::on_link(c as f64)));
        Intake::assembling(
            Arc::clone(&self.store),
            Some(Arc::clone(&self.relay)),
            prepared.assemblies.clone(),
        )
        .with_download_cap(self.download.clone())
        .with_download_cap(cap)
        .with_meter(self.links.meter.clone())
        .with_hidden(prepared.hidden.clone())
        .with_lazy(lazy)
    }

    /// A lazy stage: records this host's share, stages its VMs on lazy disks (served
    /// before their chunks have arrived) and answers; the fetch goes on in a task of
    /// its own, whose end the head asks for (`Request::Settle`).
    async fn stage_lazily(
        self: &Arc<Self>,
        spec: crate::workspace::WorkspaceSpec,
        vo: &str,
        order: &StageOrder,
        prepared: Prepared,
    ) -> Result<StageReport, ControlError> {
        let demand = Demand::new(
            self.chunks.clone(),
            prepared
                .images
                .iter()
                .map(|i| DemandImage {
                    purpose: Purpose { deployment: order.stage.clone(), manifest: i.manifest.id() },
                    peers: i.peers.demand_order(),
                    planned: i.peers.planned(&i.distinct),
                    chunks: i.distinct.clone(),
                })
                .collect(),
        );
        let kernel = self.read_manager(|m| m.driver().kind() == DriverKind::Xl).await?;
        let stage = Arc::new(LazyStage::new(
            Arc::clone(&self.store),
            prepared.images.iter().map(|i| Arc::clone(&i.manifest)),
            demand.clone(),
            prepared.hidden.clone(),
            kernel,
        ));
        let images = LazyImages(
            order
                .images
                .iter()
                .zip(&prepared.images)
                .map(|(o, i)| (o.image.clone(), i.manifest.id()))
                .collect(),
        );
        let vms = {
            let (spec, share, vo, stage) =
                (spec.clone(), order.share.clone(), vo.to_owned(), Arc::clone(&stage));
            self.with_manager(move |m| -> Result<_, ControlError> {
                m.submit_share_lazily(&spec, share, &vo, &images)?;
                Ok(m.stage_lazily(&spec.name, &images, &*stage)?)
            })
            .await??
        };
        let disks = stage.disks();
        // The disks of images that came without a trace: their first boot's reads are
        // taken when the head settles.
        let first_boots: Vec<Arc<LazyDisk>> = disks
            .iter()
            .filter(|d| {
                prepared
                    .images
                    .iter()
                    .any(|i| i.manifest.id() == d.manifest() && i.trace.is_empty())
            })
            .cloned()
            .collect();
        let intake = Arc::new(self.intake(order, &prepared, disks.clone()));
        demand.open(&intake).await;
        self.relay.lazy_stage(&order.stage, &demand);
        stage.activated().await?;
        self.lazy.keep(&stage);
        let report = StageReport {
            lacked: prepared.lacking.bytes,
            stage_micros: prepared.started.elapsed().as_micros() as u64,
            vms,
            ..StageReport::default()
        };
        tracing::info!(
            disks = disks.len(),
            lacked = report.lacked,
            "staged lazily; fetching the rest"
        );
        let (this, vo, share, stage_name) =
            (Arc::clone(self), vo.to_owned(), order.share.clone(), order.stage.clone());
        let deployment = spec.name.clone();
        let (went, mut heard) = watch::channel(Went::Staged);
        // The head waits no longer than this for its guests, nor the stage for it.
        let at_most = Duration::from_secs(self.gate.config.xen.ready_timeout_s);
        let after_create = self.gate.config.xen.lazy_fetch == LazyFetch::AfterCreate;
        let rest = async move {
            if after_create {
                started(&mut heard, at_most).await;
            }
            // Nobody reads a lazy stage's progress: the head has its answer.
            let (progress, _) = mpsc::channel(1);
            let pulled = this
                .fetch(
                    &stage_name,
                    &prepared.images,
                    &prepared.lacking,
                    intake,
                    Some(&demand),
                    &progress,
                )
                .await?;
            // Writing the images and the copies from the store waits for the boots
            // (decision 87).
            booted(&mut heard, || disks.iter().all(|d| d.seen_up()), at_most).await;
            let report =
                this.staged(spec, &vo, share, prepared, pulled, Some(disks), &progress).await?;
            this.lazy.hand_over_whole().await;
            Ok(report)
        };
        let span = tracing::info_span!("settle", stage = %order.stage);
        let task = tokio::spawn(tracing::Instrument::instrument(rest, span));
        self.settling.insert(&order.stage, &deployment, task, went, first_boots);
        Ok(report)
    }

    /// The end of a stage once every chunk is here: checks the images whole and puts
    /// them in place, records the manifests under their sealed names, then stages the
    /// VMs (or, after a lazy stage, completes their disks and points their configs at
    /// the local copies).
    #[allow(clippy::too_many_arguments)]
    async fn staged(
        &self,
        spec: crate::workspace::WorkspaceSpec,
        vo: &str,
        share: crate::report::ClusterShare,
        prepared: Prepared,
        pulled: (PullReport, u64, u64),
        lazy: Option<Vec<Arc<LazyDisk>>>,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<StageReport, ControlError> {
        let mut prepared = prepared;
        if prepared.filling.is_none() {
            prepared.start_filling(&self.store);
        }
        let Prepared { images, lacking, assemblies, filling, started, _held, .. } = prepared;
        let mut report = StageReport { lacked: lacking.bytes, ..StageReport::default() };
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
        report.relieved = pulled.0.relieved;
        report.fetch_micros = started.elapsed().as_micros() as u64;
        let _ = progress.try_send(Progress::started(Phase::Stage));
        let staging = Instant::now();

        if let Some(filling) = filling {
            filling.await.map_err(|e| ControlError::thread("filling images", e))??;
        }
        let store = Arc::clone(&self.store);
        let disks = lazy.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || -> Result<(), ControlError> {
            for a in &assemblies {
                store.complete(a)?;
            }
            // Every chunk is in the store: each lazy disk's absent slots from it.
            for d in &disks {
                d.complete().map_err(|e| {
                    ControlError::Refused(format!("lazy disk {}: {e}", d.path().display()))
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ControlError::thread("checking images", e))??;
        let (store, received) = (Arc::clone(&self.store), Arc::clone(&self.received));
        let sealed: Vec<(Arc<Manifest>, Seal)> =
            images.into_iter().map(|i| (i.manifest, i.seal)).collect();
        let vo = vo.to_owned();
        let vms = self
            .with_manager(move |m| -> Result<_, ControlError> {
                for (manifest, seal) in &sealed {
                    store.receiving().finish(manifest, None)?;
                    store.put_seal(seal)?;
                }
                // The store has them now.
                received.forget(&sealed.iter().map(|(m, _)| m.id()).collect::<Vec<_>>());
                if lazy.is_some() {
                    m.settle_lazily(&spec.name)?;
                    return Ok(Vec::new());
                }
                m.submit_share(&spec, share, &vo)?;
                Ok(m.run(&spec.name, None, Op::Stage)?)
            })
            .await??;
        report.stage_micros = staging.elapsed().as_micros() as u64;
        crate::metrics::stage_times(
            Duration::from_micros(report.fetch_micros),
            Duration::from_micros(report.stage_micros),
        );
        crate::metrics::STORE_CHANGED.notify_one();
        report.vms = vms;
        tracing::info!(
            received = report.received,
            fetch_ms = report.fetch_micros / 1000,
            stage_ms = report.stage_micros / 1000,
            "staged"
        );
        Ok(report)
    }

    /// Starts writing each image of `images` that deployment `deployment` has not
    /// written here yet ([`Manager::shared_image`]).
    async fn assemblies(
        &self,
        deployment: &str,
        images: &[Staging],
    ) -> Result<Vec<Arc<Assembly>>, ControlError> {
        let ids: Vec<(ManifestId, Arc<Manifest>)> =
            images.iter().map(|i| (i.manifest.id(), Arc::clone(&i.manifest))).collect();
        let deployment = deployment.to_owned();
        let paths = self
            .read_manager(move |m| {
                ids.into_iter()
                    .map(|(id, manifest)| (m.shared_image(&deployment, &id), manifest))
                    .collect::<Vec<_>>()
            })
            .await?;
        tokio::task::spawn_blocking(move || {
            let mut out: Vec<Arc<Assembly>> = Vec::new();
            for (path, manifest) in paths {
                if path.exists() || out.iter().any(|a| a.manifest() == manifest.id()) {
                    continue; // written by an earlier stage of the deployment
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|error| vw_chunkstore::Error::Io {
                        op: "create",
                        path: dir.to_owned(),
                        error,
                    })?;
                }
                out.push(Arc::new(Assembly::create(&manifest, &path)?));
            }
            Ok(out)
        })
        .await
        .map_err(|e| ControlError::thread("starting images", e))?
    }

    /// Runs every planned stream of `images` at once into `intake`, then pulls whatever
    /// is still missing from the fallback peers. Returns what each peer sent, and the
    /// bytes and chunks taken.
    async fn fetch(
        &self,
        stage: &str,
        images: &[Staging],
        lacking: &Lacking,
        intake: Arc<Intake>,
        demand: Option<&Demand>,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(PullReport, u64, u64), ControlError> {
        let Lacking { chunks: lacked, bytes: total } = lacking;
        let total = *total;
        let by_id: HashMap<_, _> = lacked.iter().map(|c| (c.id, *c)).collect();
        let purpose = |m: &Manifest| Purpose { deployment: stage.to_owned(), manifest: m.id() };
        let mut streams = Vec::new();
        for Staging {
            peers: OrderPeers { pulls, fallback, .. }, manifest, distinct, trace, ..
        } in images
        {
            // A boot trace's chunks first, in its order, on every stream: every host
            // asks for them first, so the cascade carries them first.
            let rank: HashMap<ChunkId, usize> =
                trace.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            for (from, pull) in pulls {
                let mut peers = vec![*from];
                peers.extend(fallback.iter().filter(|p| *p != from));
                // Only chunks of this image that this host lacks.
                let mut wanted: Vec<ChunkRef> =
                    pulled(pull, distinct).filter_map(|c| by_id.get(&c.id).copied()).collect();
                if !rank.is_empty() {
                    wanted.sort_by_key(|c| rank.get(&c.id).copied().unwrap_or(usize::MAX));
                }
                streams.push((peers, purpose(manifest), wanted, Floor::planned(pull.rate)));
            }
        }
        if let Some(demand) = demand {
            demand.follow(
                streams.iter().map(|(_, _, wanted, _)| wanted.iter().map(|c| c.id).collect()),
            );
        }
        let mut pulls =
            futures::stream::iter(streams.into_iter().map(|(peers, purpose, wanted, floor)| {
                let mut control = self.chunks.clone();
                let intake = &*intake;
                async move {
                    fetch_from_any(&mut control, &peers, &purpose, &wanted, intake, floor).await
                }
            }))
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
                    Some((r, result)) => {
                        report.merge(r);
                        if let Err(e) = result {
                            failure = Some(e);
                        }
                    }
                },
                _ = tick.tick() => {
                    let _ = progress.try_send(fetched(intake.bytes()));
                }
            }
        }
        drop(pulls);
        // Chunks no planned stream named (or whose streams all failed): from any peer.
        let mut peers: Vec<PeerId> = Vec::new();
        for Staging { peers: order, .. } in images {
            for p in order.fallback.iter().chain(order.pulls.iter().map(|(from, _)| from)) {
                if !peers.contains(p) {
                    peers.push(*p);
                }
            }
        }
        // The final passes decide: what they could not bring is the stage's failure. A
        // pass that brought something is followed by another, and so, twice in a row,
        // is one that brought nothing: a stream that stalled mid-way (its sender drops
        // it when a host too busy to read it sends no credit for a while) or a
        // connection closed under it costs a new one, not the stage, and with it a
        // lazy guest's boot.
        let mut count = PassCount::default();
        let (mut ran, mut pass_failure) = (false, None);
        loop {
            let passes = final_passes(images, &intake)?;
            let left: usize = passes.iter().map(|(_, rest)| rest.len()).sum();
            if left == 0 {
                pass_failure = None;
                break;
            }
            let Some(pause) = count.next(left).filter(|_| !intake.is_broken()) else {
                break;
            };
            tokio::time::sleep(pause).await;
            (ran, pass_failure) = (true, None);
            for (manifest, rest) in passes {
                tracing::info!(
                    chunks = rest.len(),
                    peers = peers.len(),
                    manifest = %manifest.id(),
                    "pulling what the plan did not bring"
                );
                let mut control = self.chunks.clone();
                let purpose = purpose(manifest);
                let (r, result) =
                    fetch_from_any(&mut control, &peers, &purpose, &rest, &intake, Floor::Fixed)
                        .await;
                report.merge(r);
                if let Err(e) = result {
                    pass_failure = Some(e);
                }
            }
        }
        if ran {
            failure = pass_failure;
        }
        let (bytes, chunks) = (intake.bytes(), intake.chunks());
        let _ = progress.try_send(fetched(bytes));
        // No guest read waits on the stage any more: what it lacks is in the store.
        if let Some(demand) = demand {
            demand.close().await;
            report.merge(demand.pulled());
        }
        let intake = Arc::try_unwrap(intake)
            .map_err(|_| ControlError::thread("the stage's intake", "still shared at its end"))?;
        intake.finish().await?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok((report, bytes, chunks)),
        }
    }
}

/// Final pull passes in a row that may bring nothing before the stage fails.
const FINAL_PASSES_IDLE: u32 = 2;

/// Whether a stage's next final pull pass runs ([`HostService::fetch`]).
#[derive(Debug, Default)]
struct PassCount {
    /// Chunks lacked before the last pass.
    left: Option<usize>,
    /// Passes in a row that brought nothing.
    idle: u32,
}

impl PassCount {
    /// With `left` chunks (more than none) lacked: `None` if the passes are over,
    /// else the pause before the next (a second after each pass that brought nothing).
    fn next(&mut self, left: usize) -> Option<Duration> {
        match self.left {
            Some(before) if left >= before => {
                if self.idle == FINAL_PASSES_IDLE {
                    return None;
                }
                self.idle += 1;
            }
            _ => self.idle = 0,
        }
        self.left = Some(left);
        Some(Duration::from_secs(u64::from(self.idle)))
    }
}

/// What the stage still lacks after its planned streams, by image: each chunk once, as
/// part of the first image here that lists it.
fn final_passes<'a>(
    images: &'a [Staging],
    intake: &Intake,
) -> Result<Vec<(&'a Manifest, Vec<ChunkRef>)>, crate::peer::PeerError> {
    let mut asked: HashSet<ChunkId> = HashSet::new();
    let mut passes = Vec::new();
    for Staging { manifest, lacked, .. } in images {
        let mut rest = Vec::new();
        for c in lacked {
            if asked.insert(c.id) && !intake.has(&c.id)? {
                rest.push(*c);
            }
        }
        if !rest.is_empty() {
            passes.push((&**manifest, rest));
        }
    }
    Ok(passes)
}

/// An image this host stages: its peers, checked manifest and seal, the manifest's
/// distinct chunks (what the pulls' ranges number, computed once at the check), and
/// those of them this host lacks.
struct Staging {
    peers: OrderPeers,
    manifest: Arc<Manifest>,
    distinct: Vec<ChunkRef>,
    lacked: Vec<ChunkRef>,
    seal: Seal,
    /// Its boot trace's chunks (checked): every stream asks for them first.
    trace: Vec<ChunkId>,
}

/// What a stage has worked out before it fetches ([`HostService::prepare`]).
struct Prepared {
    images: Vec<Staging>,
    lacking: Lacking,
    /// Chunks held only for an isolated VO's images: fetched all the same.
    hidden: HashSet<ChunkId>,
    assemblies: Vec<Arc<Assembly>>,
    /// Writing the chunks held here into the images, once started.
    filling: Option<tokio::task::JoinHandle<Result<(), vw_chunkstore::Error>>>,
    started: Instant,
    /// The stage's manifests, held against a second stage of them until it ends.
    _held: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl Prepared {
    /// Starts writing the chunks held here into the images (the intake writes those
    /// it fetches). A full stage starts it before it fetches; a lazy one once its
    /// guests have booted ([`booted`]).
    fn start_filling(&mut self, store: &Arc<Store>) {
        let leave: HashSet<ChunkId> = self.lacking.chunks.iter().map(|c| c.id).collect();
        let (store, assemblies) = (Arc::clone(store), self.assemblies.clone());
        self.filling = Some(tokio::task::spawn_blocking(move || {
            assemblies.iter().try_for_each(|a| store.fill(a, &leave).map(drop))
        }));
    }
}

/// What a stage fetches: the distinct chunks this host lacks of its images, and their
/// bytes.
struct Lacking {
    chunks: Vec<ChunkRef>,
    bytes: u64,
}

/// An image of a stage order after its checks.
struct Checked {
    image: check::CheckedImage,
    peers: OrderPeers,
}

/// The peers an image's order names, each parsed once, when the order is admitted.
struct OrderPeers {
    /// Those staging it: the only ones granted its chunks.
    stagers: Vec<PeerId>,
    /// Each planned stream's sender, with the stream.
    pulls: Vec<(PeerId, Pull)>,
    /// Where to pull what the planned streams do not bring, in order.
    fallback: Vec<PeerId>,
}

impl OrderPeers {
    /// Whom a guest's read of a missing chunk is asked of, in order: the planned
    /// senders (they hold or have received most of the image), then the fallback
    /// peers (the source last).
    fn demand_order(&self) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = Vec::new();
        for p in self.pulls.iter().map(|(p, _)| p).chain(&self.fallback) {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        out
    }

    /// Each chunk's planned sender: the stream whose ranges of `distinct` (the image's
    /// distinct chunks, as the plan numbers them) hold it.
    fn planned(&self, distinct: &[ChunkRef]) -> HashMap<ChunkId, PeerId> {
        let mut out = HashMap::new();
        for (from, pull) in &self.pulls {
            for c in pulled(pull, distinct) {
                out.entry(c.id).or_insert(*from);
            }
        }
        out
    }

    /// The peers of `order`; a peer id that does not parse refuses the order.
    fn parse(order: &ImageOrder) -> Result<Self, ControlError> {
        let peer = |s: &str| {
            s.parse::<PeerId>().map_err(|e| {
                ControlError::Refused(format!("image {}: peer id `{s}`: {e}", order.image))
            })
        };
        let peers = |list: &[String]| list.iter().map(|s| peer(s)).collect::<Result<Vec<_>, _>>();
        Ok(OrderPeers {
            stagers: peers(&order.stagers)?,
            pulls: order
                .pulls
                .iter()
                .map(|p| Ok((peer(&p.from)?, p.clone())))
                .collect::<Result<_, ControlError>>()?,
            fallback: peers(&order.fallback)?,
        })
    }
}

/// The chunks planned stream `pull` brings: its ranges of `distinct` (the image's
/// distinct chunks, as the plan numbers them).
fn pulled<'a>(pull: &'a Pull, distinct: &'a [ChunkRef]) -> impl Iterator<Item = &'a ChunkRef> {
    pull.ranges.iter().flat_map(|&(a, b)| distinct.get(a as usize..b as usize).unwrap_or_default())
}

/// Manifest `id` as the head sent it, or as the store records it (`None`: neither).
fn held_manifest(
    received: &Received,
    store: &Store,
    id: &ManifestId,
) -> Result<Option<Arc<Manifest>>, ControlError> {
    if let Some(m) = received.get(id, Instant::now()) {
        return Ok(Some(m));
    }
    match store.manifest(id) {
        Ok(m) => Ok(Some(Arc::new(m))),
        Err(vw_chunkstore::Error::UnknownManifest { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// When some trusted VO is isolated: the chunks this host may count as held for a
/// deployment of `vo`, those listed by a stored image whose seal lets `vo` share it
/// ([`shareable`]). `None` when no VO is isolated: every held chunk counts.
fn visible_chunks(
    store: &Store,
    config: &crate::config::ClusterConfig,
    vo: &str,
) -> Result<Option<HashSet<ChunkId>>, ControlError> {
    if !config.any_isolated() {
        return Ok(None);
    }
    let mut visible = HashSet::new();
    for seal in store.seals()? {
        if shareable(config, &seal, vo) {
            let manifest = store.manifest(&seal.manifest())?;
            visible.extend(manifest.chunks().iter().map(|c| c.id));
        }
    }
    Ok(Some(visible))
}

/// Most control streams one head may have open here at once. A deploy keeps one per
/// request it has in flight (a stage, then lifecycle steps, readiness): a handful.
pub const MAX_CONTROL_STREAMS_PER_PEER: usize = 32;

/// Serves every incoming control stream until `stop` is set.
pub async fn serve(
    incoming: libp2p_stream::IncomingStreams,
    host: Arc<HostService>,
    stop: watch::Receiver<bool>,
) {
    let open = Arc::new(OpenStreams::default());
    crate::peer::accept(incoming, stop, "control", move |peer, stream| {
        let (host, open) = (Arc::clone(&host), Arc::clone(&open));
        async move { serve_one(peer, stream, &host, &open).await }
    })
    .await;
}

/// How many control streams each peer has open here.
#[derive(Debug, Default)]
struct OpenStreams(Mutex<HashMap<PeerId, usize>>);

/// One open stream of a peer, counted until dropped.
struct StreamSlot<'a>(&'a OpenStreams, PeerId);

impl OpenStreams {
    /// A slot for one more stream of `peer`, or `None` if it has its share open.
    fn take(&self, peer: PeerId) -> Option<StreamSlot<'_>> {
        let mut open = self.0.lock().expect("open streams lock");
        let n = open.entry(peer).or_default();
        if *n >= MAX_CONTROL_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(StreamSlot(self, peer))
    }
}

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().expect("open streams lock");
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Serves one control stream from `peer`. Who the peer is is checked before a byte of
/// its request is read: a peer that is not a head is refused at once, whatever it
/// sends, so it cannot make this host hold its frames; and a head may keep at most
/// [`MAX_CONTROL_STREAMS_PER_PEER`] streams open. The request itself is read as its
/// bytes arrive (`wire::read`), up to the message limit.
async fn serve_one(
    peer: PeerId,
    mut stream: Stream,
    host: &Arc<HostService>,
    open: &OpenStreams,
) -> Result<(), String> {
    let refuse = |why: String| Reply::Done(Answer::Failed(Failure::new(FailureKind::Refused, why)));
    if !host.heads.contains(&peer) {
        tracing::warn!(peer = %peer, "refused a control stream: the peer is not a head in this host's config");
        host.gate.audit.record("-", &peer.to_string(), "control", "-", "refused", "not a head");
        let why = format!(
            "peer {peer} may not send control requests to this host (it is not a head in its config)"
        );
        let _ = wire::write(&mut stream, &refuse(why)).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
        return Ok(());
    }
    let Some(_slot) = open.take(peer) else {
        let why = format!(
            "peer {peer} has {MAX_CONTROL_STREAMS_PER_PEER} control streams open here already"
        );
        let _ = wire::write(&mut stream, &refuse(why.clone())).await;
        return Err(why);
    };
    let request = match tokio::time::timeout(QUIET, wire::read::<Request, _>(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            // A head of another release is told which versions both speak.
            let why = match e {
                wire::FrameError::Version { .. } => e.to_string(),
                _ => format!("malformed request: {e}"),
            };
            host.gate.audit.record("-", &peer.to_string(), "control", "-", "refused", &why);
            let _ = wire::write(&mut stream, &refuse(why.clone())).await;
            return Err(why);
        }
        Err(_) => return Err("no request within the timeout".into()),
    };
    let (tx, mut rx) = mpsc::channel(16);
    let from = peer.to_string();
    let work = host.handle(&from, request, tx);
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

    #[tokio::test]
    async fn a_second_stage_of_a_manifest_waits_for_the_first() {
        let locks = ManifestLocks::default();
        let (a, b) = (ManifestId::from_bytes([1; 32]), ManifestId::from_bytes([2; 32]));
        let first = locks.hold(&[b, a]).await;
        let just_a = [a];
        let second = locks.hold(&just_a);
        tokio::pin!(second);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "held by the first stage");
        let other = ManifestId::from_bytes([3; 32]);
        assert_eq!(locks.hold(&[other]).await.len(), 1, "another manifest does not wait");
        drop(first);
        assert_eq!(second.await.len(), 1);
        assert_eq!(locks.locks.lock().expect("lock").len(), 3);
        drop(locks.hold(&[]).await);
        assert!(locks.locks.lock().expect("lock").is_empty(), "unheld locks are forgotten");
    }

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

    /// The final passes go on while they bring something, and through two in a row
    /// that bring nothing (a stream or connection that broke under them); a third
    /// ends them. Each pass that brought nothing waits a second longer first.
    #[test]
    fn final_passes_go_on_while_they_bring_something() {
        let s = Duration::from_secs;
        let mut c = PassCount::default();
        assert_eq!(c.next(100), Some(s(0)), "the first pass at once");
        assert_eq!(c.next(60), Some(s(0)), "it brought 40");
        assert_eq!(c.next(60), Some(s(1)), "nothing: again, after a second");
        assert_eq!(c.next(60), Some(s(2)), "nothing twice: once more");
        assert_eq!(c.next(60), None, "nothing three times: over");
        let mut c = PassCount::default();
        for left in [100, 100, 100, 99, 99, 99, 1] {
            assert!(c.next(left).is_some(), "progress between idle passes resets them");
        }
        assert_eq!(c.next(1), Some(s(1)));
    }
}
