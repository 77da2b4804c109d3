//! The head's side of `/vw/control`: one deployment driven across every host.
//!
//! [`Head::deploy`] runs the phases in order: validate the workspace; collect every
//! host's inventory (capacity, caps, what it runs, which chunks it holds); place the
//! VMs and assign their addresses; plan the distribution; stage on every host at once
//! (each pulls what it lacks along the plan, forwarding to its children as chunks
//! arrive); load; create. A host that fails or vanishes loses its VMs; the others
//! finish, and the report says which VMs were lost. The head is a host too: it answers
//! its own requests in process.
//!
//! The deployment is recorded on the head (where each VM went, with its addresses), so
//! `vw status|pause|unpause|stop|unstage DEPLOYMENT` act on every host, and a second
//! `vw deploy` of the same document resumes: same placement, and each host fetches only
//! what it still lacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use vw_chunkstore::{ImageRef, Manifest, ManifestId, Seal, Store};

use super::deployment::{
    DeployEvent, DeployOptions, DeployPhase, DeployReport, HostAnswer, HostOutcome, PhaseTime,
    RecordedTrace,
};
use super::error::{ControlError, Failure};
use super::host::HostService;
use super::orders::{self, Deploying, Orders, Sealed};
use super::protocol::{
    Answer, HostStatus, ImageManifest, InventoryReport, ManifestPiece, Progress, Reply, Request,
    MAX_PIECE, PROTOCOL_NAME,
};
use super::usage::{Usage, VoUsage};
use crate::access::{check_manifest, check_seal, check_ticket, AccessError, Ticket};
use crate::chunks::rate::RateLimit;
use crate::config::Pools;
use crate::integrate::MungeKey;
use crate::lifecycle::Op;
use crate::names::{DeploymentName, HostName, VmName};
use crate::plan::{Planning, Taken, WorkspaceImages};
use crate::report::{ClusterDeployment, PlacedVm, VmReady, VmReport};
use crate::wire;

/// How long the head waits for any word from a host (progress comes every 250 ms
/// while a host fetches, and every 5 s otherwise).
pub const CALL_QUIET: Duration = Duration::from_secs(60);

/// How long the head waits to open a stream to a host.
pub const CONNECT: Duration = Duration::from_secs(10);

/// The control protocol as libp2p names it.
pub fn control_protocol() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL_NAME)
}

/// The head: drives deployments across the cluster's hosts.
pub struct Head {
    me: (HostName, PeerId),
    local: Arc<HostService>,
    peers: Vec<(HostName, PeerId)>,
    control: libp2p_stream::Control,
    store: Arc<Store>,
    pools: Pools,
    /// Held while a deploy is checked against its VO's quota and recorded.
    admission: tokio::sync::Mutex<()>,
    /// The deployments under way, for `vw status`.
    live: super::live::Live,
    /// The stages under way, which later deployments plan around and attach to.
    flowing: super::flowing::Flowing,
    /// What per-deployment secrets (a Slurm cluster's MUNGE key) are derived from; made
    /// from this host's identity key, so they outlive a restart without being stored.
    secret: [u8; 32],
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head").field("me", &self.me).field("peers", &self.peers).finish()
    }
}

/// How long the head waits for a host to end a stage's grants (a host that does not
/// answer keeps them until the ticket expires).
const STAGE_OVER_WAIT: Duration = Duration::from_secs(5);

/// `Ok(x)` if the answer is the expected kind, else the reason.
macro_rules! expect_answer {
    ($host:expr, $answer:expr, $kind:path) => {
        match $answer {
            Ok($kind(x)) => Ok(x),
            Ok(other) => Err(ControlError::Unreachable {
                host: $host.clone(),
                reason: format!("it broke the protocol: it answered {other:?}"),
            }),
            Err(e) => Err(e),
        }
    };
}

impl Head {
    /// A head named `me.0` with peer id `me.1`, serving itself through `local` and
    /// the other hosts (the peers in `local`'s book) through `control`; per-deployment
    /// secrets come from `secret`.
    pub fn new(
        me: (HostName, PeerId),
        local: Arc<HostService>,
        control: libp2p_stream::Control,
        pools: Pools,
        secret: [u8; 32],
    ) -> Self {
        let store = local.store();
        let peers =
            local.book().peers().iter().map(|p| (HostName::from(p.name.as_str()), p.id)).collect();
        Head {
            me,
            local,
            peers,
            control,
            store,
            pools,
            admission: tokio::sync::Mutex::new(()),
            live: Default::default(),
            flowing: Default::default(),
            secret,
        }
    }

    /// The deployments under way.
    pub fn live(&self) -> &super::live::Live {
        &self.live
    }

    /// The host service this head serves itself with (its store, its gate).
    pub(crate) fn host(&self) -> Arc<HostService> {
        Arc::clone(&self.local)
    }

    /// Every host: this one first. Connects to the others first (a host that
    /// restarted is not redialled by itself).
    async fn hosts(&self) -> Vec<(HostName, PeerId)> {
        let ids: Vec<PeerId> = self.peers.iter().map(|(_, id)| *id).collect();
        for (peer, why) in self.local.book().reach(&ids).await {
            tracing::warn!(%peer, reason = %why, "cannot reach a host");
        }
        std::iter::once(self.me.clone()).chain(self.peers.iter().cloned()).collect()
    }

    /// Sends `request` to `host` and waits for the answer, passing progress to
    /// `events`.
    async fn call(
        &self,
        host: &(HostName, PeerId),
        request: Request,
        events: Option<&mpsc::Sender<DeployEvent>>,
    ) -> Result<Answer, ControlError> {
        let forward = |progress: Progress| {
            if let Some(tx) = events {
                let _ = tx.try_send(DeployEvent::Progress { host: host.0.clone(), progress });
            }
        };
        let answer = if host.1 == self.me.1 {
            let (tx, mut rx) = mpsc::channel(16);
            let me = self.me.1.to_string();
            let work = self.local.handle(&me, request, tx);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    answer = &mut work => break answer,
                    Some(p) = rx.recv() => forward(p),
                }
            }
        } else {
            // A busy host can drop a stream it has not accepted yet: a call that fails
            // before any reply is made again (twice at most; every request is
            // idempotent).
            let mut attempt = 0;
            loop {
                match self.call_once(host, &request, &forward).await {
                    Err((e, false)) if attempt < 2 => {
                        attempt += 1;
                        tracing::debug!(host = %host.0, error = %e, attempt, "calling again");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    result => {
                        break result.map_err(|(reason, _)| ControlError::Unreachable {
                            host: host.0.clone(),
                            reason,
                        })?
                    }
                }
            }
        };
        // A host's answer that it failed is an error, its kind kept.
        match answer {
            Answer::Failed(failure) => Err(ControlError::Remote { host: host.0.clone(), failure }),
            other => Ok(other),
        }
    }

    /// One call over one stream; on failure, whether any reply had arrived.
    async fn call_once(
        &self,
        host: &(HostName, PeerId),
        request: &Request,
        forward: &impl Fn(Progress),
    ) -> Result<Answer, (String, bool)> {
        let mut control = self.control.clone();
        let mut stream =
            tokio::time::timeout(CONNECT, control.open_stream(host.1, control_protocol()))
                .await
                .map_err(|_| (format!("cannot reach it within {} s", CONNECT.as_secs()), false))?
                .map_err(|e| (format!("cannot reach it ({e})"), false))?;
        wire::write(&mut stream, request).await.map_err(|e| (format!("sending: {e}"), false))?;
        let mut replied = false;
        loop {
            match tokio::time::timeout(CALL_QUIET, wire::read::<Reply, _>(&mut stream)).await {
                Err(_) => return Err((format!("no word for {} s", CALL_QUIET.as_secs()), true)),
                Ok(Ok(Some(Reply::Progress(p)))) => {
                    replied = true;
                    forward(p);
                }
                Ok(Ok(Some(Reply::Done(answer)))) => return Ok(answer),
                Ok(Ok(None)) => {
                    return Err(("it closed the stream without answering".into(), replied))
                }
                Ok(Err(e @ wire::FrameError::Version { .. })) => {
                    return Err((format!("it runs another release: {e}"), true))
                }
                Ok(Err(e)) => {
                    return Err((format!("it broke the protocol or went away: {e}"), replied))
                }
            }
        }
    }

    /// What a VO's ticket for the workspace document `workspace` (named `source` in
    /// errors) must name: this cluster's name, and the manifest each of its images
    /// resolves to in this head's store.
    pub async fn resolve(
        &self,
        workspace: &str,
        source: &str,
    ) -> Result<(String, Vec<(String, ManifestId)>), ControlError> {
        let spec = crate::workspace::parse(workspace, source)?;
        let store = Arc::clone(&self.store);
        let images = tokio::task::spawn_blocking(move || {
            spec.image_refs()
                .into_iter()
                .map(|r| Ok((r.to_string(), store.resolve(r)?)))
                .collect::<Result<Vec<_>, ControlError>>()
        })
        .await
        .map_err(|e| ControlError::thread("resolving images", e))??;
        Ok((self.local.gate().config.cluster.name.clone(), images))
    }

    /// Deploys the workspace document `workspace` (named `source` in errors) on behalf
    /// of the VO whose signed `ticket` (encoded) comes with it. Audited.
    pub async fn deploy(
        &self,
        workspace: &str,
        source: &str,
        ticket: &[u8],
        options: DeployOptions,
        events: &mpsc::Sender<DeployEvent>,
    ) -> Result<DeployReport, ControlError> {
        let mut clock = Clock::new(events);
        clock.start(DeployPhase::Validate).await;
        let spec = crate::workspace::parse(workspace, source)?;
        let gate = self.local.gate();
        let audit = |vo: &str, outcome: &str, detail: &str| {
            gate.audit.record(vo, "local", "deploy", &spec.name, outcome, detail);
        };
        let now_s = crate::manager::now_ms() / 1000;
        let checked =
            check_ticket(&gate.config, ticket, &spec.name, workspace, now_s).and_then(|t| {
                // The hosts refuse a replay too; the head says so before it plans.
                if gate.tickets.was_admitted(&t, now_s) {
                    let (deployment, vo) = (spec.name.clone(), t.vo().to_owned());
                    return Err(AccessError::Replayed { deployment, vo });
                }
                Ok(t)
            });
        let signed = match checked {
            Ok(t) => t,
            Err(e) => {
                audit("-", "refused", &e.to_string());
                return Err(e.into());
            }
        };
        let vo = signed.vo().to_owned();
        let span = tracing::info_span!("deployment", name = %spec.name, vo = %vo);
        let result = tracing::Instrument::instrument(
            self.deploy_spec(
                Submitted { spec: spec.clone(), workspace, signed: &signed, ticket },
                options,
                events,
                clock,
            ),
            span,
        )
        .await;
        match &result {
            Ok(r) => audit(&vo, "ok", &format!("{} VMs, {} lost", r.placement.len(), r.lost.len())),
            Err(e) => audit(&vo, "failed", &e.to_string()),
        }
        result
    }

    async fn deploy_spec(
        &self,
        submitted: Submitted<'_>,
        options: DeployOptions,
        events: &mpsc::Sender<DeployEvent>,
        mut clock: Clock<'_>,
    ) -> Result<DeployReport, ControlError> {
        let Submitted { spec, workspace, signed, ticket } = submitted;
        let options = lazy_options(&spec, options)?;
        let name = DeploymentName::from(spec.name.as_str());
        let vo = signed.vo();
        let existing = self.existing(name.as_str(), workspace, vo).await?;

        clock.start(DeployPhase::Inventory).await;
        let (wi, seals, traces) = self.images(&spec, signed).await?;
        let hosts = self.hosts().await;
        let view = self.inventory(&hosts, name.as_str(), vo, &wi, &options, events).await?;

        clock.start(DeployPhase::Place).await;
        let fixed = existing.as_ref().map(|e| e.placement.clone());
        let resumed = fixed.is_some();
        let created_ms = existing.as_ref().map_or_else(crate::manager::now_ms, |e| e.created_ms);
        // This deploy attempt: the grants here and on every host are keyed by it, and
        // end with it.
        let stage = crate::access::new_stage(name.as_str());
        // Every VM of a Slurm cluster shares one MUNGE key, the same at every stage of it.
        let munge_key =
            spec.runs_slurm().then(|| MungeKey::derive(&self.secret, name.as_str(), created_ms));
        let deploying = Deploying {
            on: Planning {
                cluster: &view.cluster,
                images: &wi,
                inventory: &view.inventory,
                spec: &spec,
                pools: &self.pools,
            },
            hosts: &hosts,
            links_known: &view.links_known,
            caps: &view.caps,
            head: hosts.iter().position(|h| h.1 == self.me.1),
            sealed: Sealed {
                stage: &stage,
                workspace,
                ticket,
                seals: &seals,
                munge_key: munge_key.as_ref(),
                lazy: options.lazy,
                traces: &traces,
            },
        };
        let mut taken = Taken { vms: view.committed.clone(), nics: view.nics.clone() };
        let Orders { planned, stagers, edges, orders } =
            orders::prepare(&deploying, (options.policy, options.strategy), &mut taken, fixed)
                .map_err(|error| ControlError::Planning { workspace: name.to_string(), error })?;
        let flow = super::flowing::flow_of(
            name.as_str(),
            &hosts,
            &wi.ids(),
            &stagers,
            &planned.plan,
            &taken.vms[view.committed.len()..],
            &taken.nics[view.nics.len()..],
        );
        let record = existing.is_none().then(|| ClusterDeployment {
            name: name.clone(),
            workspace: workspace.to_owned(),
            vo: vo.to_owned(),
            placement: planned.placement.clone(),
            created_ms,
        });
        self.admit(vo, &spec, &wi, &planned.placement, record).await?;
        clock.parts(&[
            (DeployPhase::Place, planned.micros.place),
            (DeployPhase::Addresses, planned.micros.addresses),
            (DeployPhase::Plan, planned.micros.plan),
        ]);
        let _ = events.send(DeployEvent::Planned { strategy: planned.strategy, edges }).await;

        clock.start(DeployPhase::Stage).await;
        // This host serves every image as a source or relay: the stagers of each may
        // fetch its chunks for this deployment, until the stage phase ends.
        let granted: Vec<_> =
            wi.manifests.iter().zip(&stagers).map(|(m, p)| (&**m, &p[..])).collect();
        let gate = self.local.gate();
        gate.grants.allow(&stage, vo, &granted, signed.expires_s());
        // The head sends as a source, within the deployment's cap on its own link.
        let mine = hosts.iter().position(|h| h.1 == self.me.1);
        if let Some(cap) = mine.and_then(|h| view.caps[h]) {
            gate.grants.cap(&stage, Arc::new(RateLimit::on_link(cap as f64)));
        }
        // Deployments planned from now until the stage ends attach to it.
        let mut flowing = Some(self.flowing.begin(&stage, flow));
        let ordered: Vec<usize> = orders.iter().map(|(h, _)| *h).collect();
        let (mut outcomes, alive) = self.stage(&hosts, &view, &planned, orders, events).await;
        if !options.lazy {
            self.stage_over(&hosts, &ordered, &stage).await;
            drop(flowing.take());
        }
        let (vms, ready) = if options.stage_only {
            let staged =
                outcomes.iter().filter_map(|o| o.stage.as_ref()).flat_map(|r| r.vms.clone());
            (staged.collect(), Vec::new())
        } else {
            self.start_and_wait(
                &hosts,
                alive.clone(),
                name.as_str(),
                &mut outcomes,
                &mut clock,
                events,
            )
            .await
        };
        if options.lazy {
            // The guests are up (or not); the rest of the stage goes on under them.
            clock.start(DeployPhase::Settle).await;
            self.settle(&hosts, &alive, &stage, &mut outcomes, events).await;
            self.stage_over(&hosts, &ordered, &stage).await;
            drop(flowing);
        }
        let phases = clock.finish();
        let lost: Vec<VmName> = outcomes
            .iter()
            .filter(|o| o.error.is_some())
            .flat_map(|o| o.vms.iter().cloned())
            .collect();
        tracing::info!(lost = lost.len(), "deployed");
        // What the first lazy boot of each image without a trace read: for its VO.
        let mut recorded: Vec<RecordedTrace> = Vec::new();
        for (i, m) in wi.manifests.iter().enumerate() {
            let first = outcomes
                .iter()
                .filter_map(|o| o.stage.as_ref())
                .flat_map(|r| &r.traces)
                .find(|(id, chunks)| *id == m.id() && !chunks.is_empty());
            if let (None, Some((_, chunks))) = (&traces[i], first) {
                let image = wi.refs[i].to_string();
                recorded.push(RecordedTrace { image, manifest: m.id(), chunks: chunks.clone() });
            }
        }
        Ok(DeployReport {
            deployment: name,
            resumed,
            strategy: Some(planned.strategy),
            phases,
            placement: planned.placement.clone(),
            hosts: outcomes,
            lost,
            predicted_s: planned.simulation.finish,
            limit_s: planned.simulation.limit,
            vms,
            ready,
            traces: recorded,
        })
    }

    /// The recorded deployment `name`, if a deploy of it was made before: it must be of
    /// the same document `workspace` and by the same `vo` (a second deploy resumes it).
    async fn existing(
        &self,
        name: &str,
        workspace: &str,
        vo: &str,
    ) -> Result<Option<ClusterDeployment>, ControlError> {
        let n = name.to_owned();
        let existing = self.local.read_manager(move |m| m.cluster(&n)).await??;
        if let Some(e) = &existing {
            if e.workspace != workspace {
                return Err(ControlError::Conflict(format!(
                    "deployment {name} exists with a different workspace document; `vw unstage {name}` first, or rename the workspace"
                )));
            }
            if e.vo != vo {
                return Err(ControlError::Conflict(format!(
                    "deployment {name} belongs to VO {}, not {vo}",
                    e.vo
                )));
            }
        }
        Ok(existing)
    }

    /// The workspace's images from this head's store, each checked against the VO's
    /// ticket, with the seal (encoded) that lets the VO deploy it.
    async fn images(
        &self,
        spec: &crate::workspace::WorkspaceSpec,
        signed: &Ticket,
    ) -> Result<(WorkspaceImages, Vec<Vec<u8>>, Vec<Option<Vec<u8>>>), ControlError> {
        let (store, spec, config, signed) = (
            Arc::clone(&self.store),
            spec.clone(),
            Arc::clone(&self.local.gate().config),
            signed.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<_, ControlError> {
            let vo = signed.vo();
            let wi = WorkspaceImages::load(&store, &spec)
                .map_err(|error| ControlError::Planning { workspace: spec.name.clone(), error })?;
            for (r, m) in wi.refs.iter().zip(&wi.manifests) {
                check_manifest(&signed, &spec.name, r, m.id())?;
            }
            let seals = wi
                .refs
                .iter()
                .zip(&wi.manifests)
                .map(|(r, m)| sealed(&store, &config, vo, r, m.id()))
                .collect::<Result<Vec<_>, _>>()?;
            let traces = wi
                .refs
                .iter()
                .zip(&wi.manifests)
                .zip(&seals)
                .map(|((r, m), seal)| kept_trace(&store, &config, vo, r, m, seal))
                .collect();
            Ok((wi, seals, traces))
        })
        .await
        .map_err(|e| ControlError::thread("reading the images", e))?
    }

    /// Every host's inventory of the images `wi` for `vo` (each manifest sent first to
    /// the hosts that lack it), made into the planner's view of the cluster.
    async fn inventory(
        &self,
        hosts: &[(HostName, PeerId)],
        deployment: &str,
        vo: &str,
        wi: &WorkspaceImages,
        options: &DeployOptions,
        events: &mpsc::Sender<DeployEvent>,
    ) -> Result<super::view::ClusterView, ControlError> {
        let request = Request::Inventory {
            vo: vo.to_owned(),
            images: wi
                .images
                .iter()
                .zip(&wi.manifests)
                .map(|(i, m)| ImageManifest { image: i.name.clone(), manifest: m.id() })
                .collect(),
        };
        // Each manifest, encoded once for every host that lacks it.
        let encoded: Vec<(ManifestId, Vec<u8>)> =
            wi.manifests.iter().map(|m| (m.id(), m.encode())).collect();
        let answers = join_all(hosts.iter().map(|h| {
            let (request, encoded) = (request.clone(), &encoded);
            async move {
                self.send_manifests(h, encoded).await?;
                expect_answer!(h.0, self.call(h, request, None).await, Answer::Inventory)
            }
        }))
        .await;
        self.cluster(hosts, deployment, answers, wi, options, events)
    }

    /// Sends every host its order of attempt `stage` at once and collects what each
    /// staged (the caller ends the stage's grants). Returns each ordered host's outcome
    /// (a host that failed is lost, and says why) and the hosts that staged.
    async fn stage(
        &self,
        hosts: &[(HostName, PeerId)],
        view: &super::view::ClusterView,
        planned: &crate::plan::PlanReport,
        orders: Vec<(usize, super::protocol::StageOrder)>,
        events: &mpsc::Sender<DeployEvent>,
    ) -> (Vec<HostOutcome>, Vec<usize>) {
        let staged = join_all(orders.into_iter().map(|(h, order)| {
            let host = &hosts[h];
            async move {
                let answer = self.call(host, Request::Stage(Box::new(order)), Some(events)).await;
                (h, expect_answer!(host.0, answer, Answer::Staged))
            }
        }))
        .await;
        let driver_of =
            |host: &HostName| view.drivers.iter().find(|(h, _)| host == h).map(|(_, d)| *d);
        let mut outcomes: Vec<HostOutcome> = Vec::new();
        let mut alive: Vec<usize> = Vec::new();
        for (h, result) in staged {
            let host = &hosts[h].0;
            let vms = planned.vms_on(host.as_str());
            let (stage, error) = match result {
                // A host with no VM here only served: nothing to load or lose.
                Ok(report) => {
                    if !vms.is_empty() {
                        alive.push(h);
                    }
                    (Some(report), None)
                }
                Err(e) if vms.is_empty() => {
                    tracing::warn!(host = %host, error = %e, "a host that only served failed its order");
                    (None, Some(e.failure()))
                }
                Err(e) => {
                    lost(events, host, &e).await;
                    (None, Some(e.failure()))
                }
            };
            let driver = driver_of(host);
            outcomes.push(HostOutcome { host: host.clone(), driver, vms, stage, error });
        }
        (outcomes, alive)
    }

    /// The end of a lazy stage on each host of `alive` (`Request::Settle`): its final
    /// report replaces the early one in `outcomes` (keeping the VMs it staged); a host
    /// whose stage failed is lost, its guests left reading what they have.
    async fn settle(
        &self,
        hosts: &[(HostName, PeerId)],
        alive: &[usize],
        stage: &str,
        outcomes: &mut [HostOutcome],
        events: &mpsc::Sender<DeployEvent>,
    ) {
        let settled = join_all(alive.iter().map(|&h| {
            let host = &hosts[h];
            async move {
                let answer = self
                    .call(host, Request::Settle { stage: stage.to_owned() }, Some(events))
                    .await;
                (h, expect_answer!(host.0, answer, Answer::Staged))
            }
        }))
        .await;
        for (h, result) in settled {
            let Some(o) = outcomes.iter_mut().find(|o| o.host == hosts[h].0) else { continue };
            match result {
                Ok(mut report) => {
                    if let Some(early) = &o.stage {
                        report.vms = early.vms.clone();
                        report.stage_micros += early.stage_micros;
                    }
                    o.stage = Some(report);
                }
                Err(e) => {
                    lost(events, &hosts[h].0, &e).await;
                    let Failure { kind, message } = e.failure();
                    o.error =
                        Some(Failure::new(kind, format!("finishing its lazy stage: {message}")));
                }
            }
        }
    }

    /// Loads and starts the VMs of deployment `name` on the hosts `alive`, then waits
    /// until their guests say they are up: a deploy's last three phases, and all of
    /// `vw create` of a staged cluster. A host that fails is lost for the rest, its
    /// outcome in `outcomes` saying why. Returns the VMs started and their readiness.
    async fn start_and_wait(
        &self,
        hosts: &[(HostName, PeerId)],
        mut alive: Vec<usize>,
        name: &str,
        outcomes: &mut [HostOutcome],
        clock: &mut Clock<'_>,
        events: &mpsc::Sender<DeployEvent>,
    ) -> (Vec<VmReport>, Vec<VmReady>) {
        let mut vms = Vec::new();
        for (phase, op) in [(DeployPhase::Load, Op::Load), (DeployPhase::Create, Op::Create)] {
            clock.start(phase).await;
            let ran = self.run_on(hosts, &alive, name, op).await;
            let mut still = Vec::new();
            for (h, result) in alive.iter().zip(ran) {
                match result {
                    Ok(reports) => {
                        still.push(*h);
                        if op == Op::Create {
                            vms.extend(reports);
                        }
                    }
                    Err(e) => {
                        lost(events, &hosts[*h].0, &e).await;
                        if let Some(o) = outcomes.iter_mut().find(|o| o.host == hosts[*h].0) {
                            let Failure { kind, message } = e.failure();
                            o.error = Some(Failure::new(kind, format!("{op}: {message}")));
                        }
                    }
                }
            }
            alive = still;
        }
        clock.start(DeployPhase::Ready).await;
        let timeout_s = self.local.gate().config.xen.ready_timeout_s;
        let mut ready = Vec::new();
        for (h, result) in alive.iter().zip(self.await_ready(hosts, &alive, name, timeout_s).await)
        {
            match result {
                Ok(v) => ready.extend(v),
                Err(e) => {
                    if let Some(o) = outcomes.iter_mut().find(|o| o.host == hosts[*h].0) {
                        let Failure { kind, message } = e.failure();
                        o.error =
                            Some(Failure::new(kind, format!("waiting for its guests: {message}")));
                    }
                }
            }
        }
        (vms, ready)
    }

    /// Loads and starts a cluster staged earlier (`vw deploy --stage-only`) on every
    /// host it was placed on, and waits for its guests: `vw create NAME` through the
    /// head, with a deploy's report (its phases from load on).
    pub async fn create(
        &self,
        name: &str,
        events: &mpsc::Sender<DeployEvent>,
    ) -> Result<DeployReport, ControlError> {
        let hosts = self.hosts().await;
        let (record, on) = self.hosts_of(&hosts, name).await?;
        let span = tracing::info_span!("deployment", name = %name, vo = %record.vo);
        tracing::Instrument::instrument(
            async move {
                let mut clock = Clock::new(events);
                let mut outcomes: Vec<HostOutcome> = on
                    .iter()
                    .map(|&h| HostOutcome {
                        host: hosts[h].0.clone(),
                        driver: None,
                        vms: record
                            .placement
                            .iter()
                            .filter(|p| p.host == hosts[h].0)
                            .map(|p| p.vm.clone())
                            .collect(),
                        stage: None,
                        error: None,
                    })
                    .collect();
                // Each host's driver, as `status` gives it (a host that does not answer
                // is lost here, before anything starts).
                let mut alive = Vec::new();
                let status = self.status_on(&hosts, &on, Some(name)).await;
                for ((&h, answer), outcome) in on.iter().zip(status).zip(outcomes.iter_mut()) {
                    match answer.result {
                        Ok(s) => {
                            outcome.driver = Some(s.driver);
                            alive.push(h);
                        }
                        Err(e) => {
                            lost(events, &outcome.host, &e).await;
                            outcome.error = Some(e);
                        }
                    }
                }
                let (vms, ready) = self
                    .start_and_wait(&hosts, alive, name, &mut outcomes, &mut clock, events)
                    .await;
                let lost =
                    outcomes.iter().filter(|o| o.error.is_some()).flat_map(|o| o.vms.clone());
                let report = DeployReport {
                    deployment: name.into(),
                    resumed: true,
                    strategy: None,
                    phases: clock.finish(),
                    placement: record.placement.clone(),
                    lost: lost.collect(),
                    hosts: outcomes,
                    predicted_s: 0.0,
                    limit_s: 0.0,
                    vms,
                    ready,
                    traces: Vec::new(),
                };
                tracing::info!(lost = report.lost.len(), "created");
                Ok(report)
            },
            span,
        )
        .await
    }

    /// Sends `host` each of `manifests` (id, encoding) that it does not hold, in pieces
    /// of at most [`MAX_PIECE`] bytes, before an inventory or a stage order names them by
    /// id. This head's own host reads them from the store.
    async fn send_manifests(
        &self,
        host: &(HostName, PeerId),
        manifests: &[(ManifestId, Vec<u8>)],
    ) -> Result<(), ControlError> {
        if host.1 == self.me.1 {
            return Ok(());
        }
        for (id, bytes) in manifests {
            let (id, len) = (*id, bytes.len() as u64);
            // The first, empty, piece asks how much the host holds.
            let (mut at, mut piece) = (0, Vec::new());
            loop {
                let sent = !piece.is_empty();
                let request =
                    Request::Manifest(ManifestPiece { id, len, offset: at, bytes: piece });
                let have =
                    expect_answer!(host.0, self.call(host, request, None).await, Answer::Manifest)?;
                if have >= len {
                    break;
                }
                if sent && have <= at {
                    return Err(ControlError::Unreachable {
                        host: host.0.clone(),
                        reason: format!(
                            "it broke the protocol: sent manifest {id}, it holds {have} of its \
                             {len} bytes after the piece at {at}"
                        ),
                    });
                }
                at = have;
                let end = usize::try_from(at).map_or(bytes.len(), |a| a.saturating_add(MAX_PIECE));
                piece = bytes[at as usize..end.min(bytes.len())].to_vec();
            }
        }
        Ok(())
    }

    /// The planner's view of the cluster from the inventories (`view::cluster_view`,
    /// what the `inventory` fuzz target drives): hosts that did not answer are dead, and
    /// lost; live hosts whose drivers differ are refused unless the options allow it;
    /// every link is planned within the deployment's cap; the stages under way of
    /// other deployments are planned around and attached to (`flowing::attach`).
    fn cluster(
        &self,
        hosts: &[(HostName, PeerId)],
        deployment: &str,
        answers: Vec<Result<InventoryReport, ControlError>>,
        wi: &WorkspaceImages,
        options: &DeployOptions,
        events: &mpsc::Sender<DeployEvent>,
    ) -> Result<super::view::ClusterView, ControlError> {
        let names: Vec<String> = hosts.iter().map(|(n, _)| n.to_string()).collect();
        let images: Vec<(ImageRef, usize)> =
            wi.refs.iter().cloned().zip(wi.chunks.iter().map(Vec::len)).collect();
        let answers: Vec<Result<InventoryReport, String>> =
            answers.into_iter().map(|a| a.map_err(|e| e.to_string())).collect();
        let mut view = super::view::cluster_view(&names, &answers, &images, options.cap)?;
        let flows = self.flowing.now(deployment);
        super::flowing::attach(&mut view, &names, &wi.images, &wi.ids(), &flows)
            .map_err(super::view::ViewError::from)?;
        for (host, e) in &view.dead {
            let reason = format!("inventory: {e}");
            let _ = events.try_send(DeployEvent::Lost { host: host.as_str().into(), reason });
            tracing::warn!(host = %host, error = %e, "no inventory; planning without it");
        }
        view.check_drivers(options.mixed_drivers)?;
        Ok(view)
    }

    /// Ends `stage` here and on hosts `on` (indices into `hosts`, those sent an order):
    /// every host has answered, so no chunk of it is fetched any more, and its grants
    /// are withdrawn, whether it staged or failed. A host that does not answer keeps
    /// them until the VO's ticket expires.
    async fn stage_over(&self, hosts: &[(HostName, PeerId)], on: &[usize], stage: &str) {
        self.local.gate().grants.revoke_stage(stage);
        let results = join_all(on.iter().map(|&h| {
            let request = Request::StageOver { stage: stage.to_owned() };
            async move {
                let answer =
                    tokio::time::timeout(STAGE_OVER_WAIT, self.call(&hosts[h], request, None))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ControlError::Unreachable {
                                host: hosts[h].0.clone(),
                                reason: format!("no answer within {STAGE_OVER_WAIT:?}"),
                            })
                        });
                (h, expect_answer!(hosts[h].0, answer, Answer::Revoked))
            }
        }))
        .await;
        for (h, result) in results {
            if let Err(e) = result {
                tracing::warn!(host = %hosts[h].0, error = %e, "could not end the stage's grants there");
            }
        }
    }

    /// `op` on the VMs of `deployment` on hosts `on` (indices into `hosts`), all at once.
    async fn run_on(
        &self,
        hosts: &[(HostName, PeerId)],
        on: &[usize],
        deployment: &str,
        op: Op,
    ) -> Vec<Result<Vec<VmReport>, ControlError>> {
        join_all(on.iter().map(|&h| {
            let request = Request::Run { deployment: deployment.to_owned(), op };
            async move {
                expect_answer!(hosts[h].0, self.call(&hosts[h], request, None).await, Answer::Ran)
            }
        }))
        .await
    }

    /// Asks each host of `on` to wait up to `timeout_s` for its guests of `deployment`.
    async fn await_ready(
        &self,
        hosts: &[(HostName, PeerId)],
        on: &[usize],
        deployment: &str,
        timeout_s: u64,
    ) -> Vec<Result<Vec<VmReady>, ControlError>> {
        join_all(on.iter().map(|&h| {
            let request = Request::AwaitReady { deployment: deployment.to_owned(), timeout_s };
            async move {
                expect_answer!(hosts[h].0, self.call(&hosts[h], request, None).await, Answer::Ready)
            }
        }))
        .await
    }

    /// A recorded deployment, and the indices in `hosts` of the hosts it was placed on.
    async fn hosts_of(
        &self,
        hosts: &[(HostName, PeerId)],
        deployment: &str,
    ) -> Result<(ClusterDeployment, Vec<usize>), ControlError> {
        let d = deployment.to_owned();
        let record = self
            .local
            .read_manager(move |m| m.cluster(&d))
            .await??
            .ok_or_else(|| ControlError::NoDeployment { name: deployment.to_owned() })?;
        let mut on = Vec::new();
        for (h, (name, _)) in hosts.iter().enumerate() {
            if record.placement.iter().any(|p| p.host == *name) {
                on.push(h);
            }
        }
        Ok((record, on))
    }

    /// Checks that `vo`'s deployments with this one (`spec` placed as `placement`) stay
    /// within its quota and, for a new deployment, records it (`record`), in one step:
    /// deploys are admitted one at a time, each against the deployments recorded when
    /// it is admitted, so two deploys of one VO cannot both pass on the same room, and
    /// two of one name cannot both be recorded.
    async fn admit(
        &self,
        vo: &str,
        spec: &crate::workspace::WorkspaceSpec,
        wi: &WorkspaceImages,
        placement: &[PlacedVm],
        record: Option<ClusterDeployment>,
    ) -> Result<(), ControlError> {
        let _one_at_a_time = self.admission.lock().await;
        let all = self.local.read_manager(|m| m.clusters()).await??;
        if record.is_some() && all.iter().any(|c| c.name == spec.name) {
            return Err(ControlError::Conflict(format!(
                "deployment {} was recorded by another deploy meanwhile; `vw status` shows it",
                spec.name
            )));
        }
        let config = Arc::clone(&self.local.gate().config);
        let quota = config.vo(vo).map(|v| v.quota).unwrap_or_default();
        if quota != crate::config::Quota::default() {
            let mine: Vec<ClusterDeployment> =
                all.into_iter().filter(|c| c.vo == vo && c.name != spec.name).collect();
            let store = Arc::clone(&self.store);
            let mut usage = tokio::task::spawn_blocking(move || usage_of(&store, &mine))
                .await
                .map_err(|e| ControlError::thread("adding up the VO's usage", e))??;
            usage.add(vo, spec, wi, placement);
            if let Some(u) = usage.finish(&config).iter().find(|u| u.vo == vo) {
                u.check(&quota)?;
            }
        }
        if let Some(record) = record {
            self.local.with_manager(move |m| m.record_cluster(&record)).await??;
        }
        Ok(())
    }

    /// What each VO's recorded deployments take, with its quota.
    pub async fn usage(&self) -> Result<Vec<VoUsage>, ControlError> {
        let config = Arc::clone(&self.local.gate().config);
        let all = self.local.read_manager(|m| m.clusters()).await??;
        let store = Arc::clone(&self.store);
        let usage = tokio::task::spawn_blocking(move || usage_of(&store, &all))
            .await
            .map_err(|e| ControlError::thread("adding up each VO's usage", e))??;
        Ok(usage.finish(&config))
    }

    /// `op` on every VM of `deployment`, on every host at once. Unstaging everywhere
    /// forgets the deployment.
    pub async fn run(
        &self,
        deployment: &str,
        op: Op,
    ) -> Result<Vec<HostAnswer<Vec<VmReport>>>, ControlError> {
        if op == Op::Stage {
            return Err(ControlError::Conflict("stage comes with a plan: use `vw deploy`".into()));
        }
        let hosts = self.hosts().await;
        let (_, on) = self.hosts_of(&hosts, deployment).await?;
        let results = self.run_on(&hosts, &on, deployment, op).await;
        if op == Op::Unstage && results.iter().all(|r| r.is_ok()) {
            let d = deployment.to_owned();
            self.local.with_manager(move |m| m.forget_cluster(&d)).await??;
        }
        Ok(on
            .iter()
            .zip(results)
            .map(|(&h, result)| HostAnswer {
                host: hosts[h].0.clone(),
                result: result.map_err(|e| e.failure()),
            })
            .collect())
    }

    /// The VMs of `deployment` (or of every deployment) on every host concerned, with
    /// each host's driver.
    pub async fn status(
        &self,
        deployment: Option<&str>,
    ) -> Result<Vec<HostAnswer<HostStatus>>, ControlError> {
        let hosts = self.hosts().await;
        let on: Vec<usize> = match deployment {
            Some(d) => self.hosts_of(&hosts, d).await?.1,
            None => (0..hosts.len()).collect(),
        };
        Ok(self.status_on(&hosts, &on, deployment).await)
    }

    /// `Status` of `deployment` (or of every one) from hosts `on` (indices into
    /// `hosts`), all at once.
    async fn status_on(
        &self,
        hosts: &[(HostName, PeerId)],
        on: &[usize],
        deployment: Option<&str>,
    ) -> Vec<HostAnswer<HostStatus>> {
        let results =
            join_all(on.iter().map(|&h| {
                let request = Request::Status { deployment: deployment.map(str::to_owned) };
                let host = &hosts[h];
                async move {
                    expect_answer!(host.0, self.call(host, request, None).await, Answer::Status)
                }
            }))
            .await;
        on.iter()
            .zip(results)
            .map(|(&h, result)| HostAnswer {
                host: hosts[h].0.clone(),
                result: result.map_err(|e| e.failure()),
            })
            .collect()
    }
}

/// A workspace submitted for deployment, its ticket checked: the validated document,
/// its text, and the VO's ticket (checked, and as encoded, for the hosts to check).
/// The boot trace this head keeps for image `reference` (`manifest`, sealed by `seal`,
/// encoded), if it has one that a deployment of `vo` may use (`check_trace`); one
/// that fails the check is left out, with a warning: a deploy never fails for want of
/// a trace.
fn kept_trace(
    store: &Store,
    config: &crate::config::ClusterConfig,
    vo: &str,
    reference: &ImageRef,
    manifest: &Manifest,
    seal: &[u8],
) -> Option<Vec<u8>> {
    let kept = match store.trace(&manifest.id()) {
        Ok(t) => t?,
        Err(e) => {
            tracing::warn!(image = %reference, error = %e, "the kept boot trace is unreadable; deploying without it");
            return None;
        }
    };
    let bytes = kept.encode();
    let checked = Seal::decode(seal).map_err(|e| e.to_string()).and_then(|seal| {
        crate::access::check_trace(config, vo, reference, &seal, manifest, &bytes)
            .map_err(|e| e.to_string())
    });
    match checked {
        Ok(_) => Some(bytes),
        Err(why) => {
            tracing::warn!(image = %reference, %why, "the kept boot trace is not for this deployment; deploying without it");
            None
        }
    }
}

/// `options` with the workspace's own staging (`staging="lazy"`), checked: a lazy
/// deploy boots its VMs, so it cannot stop after the stage, and nothing can be
/// written into an image that has not arrived (the `edit` integration).
fn lazy_options(
    spec: &crate::workspace::WorkspaceSpec,
    options: DeployOptions,
) -> Result<DeployOptions, ControlError> {
    let lazy = options.lazy || spec.staging == crate::workspace::Staging::Lazy;
    if !lazy {
        return Ok(options);
    }
    if options.stage_only {
        return Err(ControlError::Conflict(
            "a lazy deploy boots its VMs while they stage; --stage-only does not boot them: choose one"
                .into(),
        ));
    }
    if let Some(vm) =
        spec.vms().iter().find(|v| v.node.integration == crate::workspace::Integration::Edit)
    {
        return Err(ControlError::Conflict(format!(
            "a lazy deploy boots VM {} before its image has arrived, but its `edit` integration writes into the image first: use `seed`",
            spec.vm_name(vm)
        )));
    }
    Ok(DeployOptions { lazy, ..options })
}

struct Submitted<'a> {
    spec: crate::workspace::WorkspaceSpec,
    workspace: &'a str,
    signed: &'a Ticket,
    ticket: &'a [u8],
}

/// The seal that lets `vo` deploy image `reference` (manifest `id`), encoded: the
/// seal of its name, or for a manifest id, a seal on it by `vo` or a public one. The
/// head checks it as every host will.
fn sealed(
    store: &Store,
    config: &crate::config::ClusterConfig,
    vo: &str,
    reference: &ImageRef,
    id: ManifestId,
) -> Result<Vec<u8>, ControlError> {
    let candidates: Vec<Seal> = match reference {
        ImageRef::Name(name) => store.seal(name)?.into_iter().collect(),
        ImageRef::Id(_) => {
            let mut all: Vec<_> =
                store.seals()?.into_iter().filter(|s| s.manifest() == id).collect();
            // The VO's own seal first, then public ones.
            all.sort_by_key(|s| s.vo() != vo);
            all
        }
    };
    let mut refusal = AccessError::Unsealed { image: reference.to_string() };
    for seal in candidates {
        let bytes = seal.encode();
        match check_seal(config, vo, reference, id, &bytes) {
            Ok(_) => return Ok(bytes),
            Err(e) => refusal = e,
        }
    }
    Err(refusal.into())
}

/// Adds up recorded deployments (their documents and images read again).
fn usage_of(store: &Store, deployments: &[ClusterDeployment]) -> Result<Usage, ControlError> {
    let mut usage = Usage::default();
    for d in deployments {
        let spec = crate::workspace::parse(&d.workspace, &format!("(deployment {})", d.name))?;
        let wi = WorkspaceImages::load(store, &spec)
            .map_err(|error| ControlError::Planning { workspace: d.name.to_string(), error })?;
        usage.add(&d.vo, &spec, &wi, &d.placement);
    }
    Ok(usage)
}

async fn lost(
    events: &mpsc::Sender<DeployEvent>,
    host: &HostName,
    reason: &(dyn std::fmt::Display + Sync),
) {
    let reason = reason.to_string();
    tracing::warn!(%host, reason, "host lost for this deployment");
    let _ = events.send(DeployEvent::Lost { host: host.clone(), reason }).await;
}

/// Phase timings, announced as each phase starts.
struct Clock<'a> {
    events: &'a mpsc::Sender<DeployEvent>,
    current: Option<(DeployPhase, Instant)>,
    done: Vec<PhaseTime>,
}

impl<'a> Clock<'a> {
    fn new(events: &'a mpsc::Sender<DeployEvent>) -> Self {
        Clock { events, current: None, done: Vec::new() }
    }

    fn close(&mut self) {
        if let Some((phase, at)) = self.current.take() {
            self.done.push(PhaseTime { phase, micros: at.elapsed().as_micros() as u64 });
        }
    }

    async fn start(&mut self, phase: DeployPhase) {
        self.close();
        let _ = self.events.send(DeployEvent::Phase { phase }).await;
        self.current = Some((phase, Instant::now()));
    }

    /// Ends the current phase as several, timed by the caller (planning places,
    /// assigns addresses and plans in one call that times each part).
    fn parts(&mut self, parts: &[(DeployPhase, u64)]) {
        self.current = None;
        self.done.extend(parts.iter().map(|&(phase, micros)| PhaseTime { phase, micros }));
    }

    fn finish(mut self) -> Vec<PhaseTime> {
        self.close();
        for p in &self.done {
            crate::metrics::phase(&p.phase.to_string(), p.micros as f64 / 1e6);
        }
        self.done
    }
}
