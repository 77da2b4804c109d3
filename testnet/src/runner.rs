//! Runs a scenario: builds the testnet, prepares the images, and for every run, host
//! count and method starts a fresh cluster, deploys through the head's local socket
//! (killing a mid-cascade host if the run says so), times the lifecycle operations,
//! stops the daemons, verifies every surviving host's images byte for byte, and
//! records a row. Then writes the CSVs, plots and summary.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use vw_localnet::cluster_workspace;
use vw_node::chunkstore::{ImageRef, Store};
use vw_node::control::deployment::{
    DeployEvent, DeployOptions, DeployPhase, DeployReport, RecordedTrace, StageCap,
};
use vw_node::control::protocol::Phase;
use vw_node::lifecycle::Op;
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::names::HostName;
use vw_node::planner::{Policy, Reshape, Strategy};
use vw_node::storecmd::StoreOp;

use crate::cluster::{Cluster, ClusterOptions};
use crate::disturb::{predict, Background, LinkSampler, Slowdown};
use crate::images::{self, ImageSet};
use crate::net::{HostNet, Testnet, Topology};
use crate::results::{self, OpRow, RunRow};
use crate::scenario::{Checked, Method, Run, WorkerImage};
use crate::TestnetError;

/// Where things go.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Results: `runs.csv`, `ops.csv`, PNGs, `summary.md`.
    pub out: PathBuf,
    /// Scratch: images, template stores, data directories (removed after each run).
    pub work: PathBuf,
    /// The `vwd` binary.
    pub vwd: PathBuf,
    /// The `vw-testnet` binary (its `pipe` and `send` commands run the baselines).
    pub testnet: PathBuf,
}

/// What a scenario produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// One row per staging run.
    pub runs: Vec<RunRow>,
    /// One row per lifecycle operation timed.
    pub ops: Vec<OpRow>,
    /// Lines for the summary (checks against the targets).
    pub notes: Vec<String>,
}

/// Runs every run of `checked`, writes the results under `options.out`.
pub fn run(checked: &Checked, options: &RunnerOptions) -> Result<Outcome, TestnetError> {
    let s = &checked.scenario;
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|error| TestnetError::Io {
            op: "create",
            path: p.to_owned(),
            error,
        })
    };
    mkdir(&options.out)?;
    mkdir(&options.work)?;
    let testnet = Testnet::build(&Topology {
        hosts: checked.max_hosts(),
        link: checked.link,
        head_link: checked.head_link,
        racks: s.network.racks,
        rack_uplink: checked.rack_uplink,
        ack_priority: s.network.ack_priority,
        background: s.run.iter().any(|r| r.background),
    })?;
    tracing::info!(scenario = %s.name, hosts = testnet.hosts.len(), "testnet up");
    // Reports of an earlier run of this scenario would sit beside this run's: start empty.
    let reports = options.out.join("reports");
    if reports.exists() {
        std::fs::remove_dir_all(&reports).map_err(|error| TestnetError::Io {
            op: "remove",
            path: reports.clone(),
            error,
        })?;
    }
    mkdir(&reports)?;
    let images = ImageSet::prepare(&s.images, &options.work)?;
    let mut outcome = Outcome::default();
    // The second VO's cold runs, and the notes comparing its later runs with them.
    let (mut cold_vo2, mut vo_notes) = (Vec::new(), Vec::new());
    let mut k = 0;
    for (run, methods) in s.run.iter().zip(&checked.methods) {
        for &n in &run.hosts {
            for &method in methods {
                k += 1;
                let dir = options.work.join(format!("run{k}"));
                crate::net::scratch_dir(&dir)?;
                let ctx = RunContext {
                    checked,
                    run,
                    method,
                    hosts: &testnet.hosts[..=n],
                    background: testnet.background.as_ref(),
                    images: &images,
                    dir: &dir,
                    vwd: &options.vwd,
                    testnet: &options.testnet,
                    reports: &reports,
                    keep: &[],
                };
                let (rows, ops) = match method {
                    Method::Vw(strategy) => ctx.execute(strategy)?,
                    Method::TcpChain | Method::TcpStar => {
                        (vec![ctx.baseline(method == Method::TcpChain, &options.testnet)?], vec![])
                    }
                    Method::BitTorrent => (vec![ctx.swarm()?], vec![]),
                };
                for r in &rows {
                    tracing::info!(case = %r.case, method = %r.method, n = r.n, transfer = r.fetch_s, stage = r.seconds, ratio = r.ratio, "run done");
                }
                if let (Some(first), Some(second)) = (rows.first(), rows.last()) {
                    if run.image == WorkerImage::Vo2 && !run.cached && run.kill_at.is_none() {
                        cold_vo2.push(first.clone());
                    }
                    if run.then_vo2 {
                        let cold =
                            cold_vo2.iter().find(|c| c.n == second.n && c.method == second.method);
                        let (unique, what) = if run.isolated.iter().any(|v| v == "vo1") {
                            (images.vo2_distinct, "all of vo2's, as vo1 is isolated")
                        } else {
                            (images.vo2_unique, "vo2's bytes that vo1's worker lacks")
                        };
                        vo_notes.push(results::second_vo(second, unique, what, cold));
                    }
                }
                outcome.runs.extend(rows);
                outcome.ops.extend(ops);
                crate::net::remove_dir(&dir)?;
            }
        }
    }
    // Tears down the namespaces, links and scratch (the template stores too).
    drop(testnet);
    outcome.notes = results::checks(&outcome.runs);
    outcome.notes.extend(vo_notes);
    write(&s.name, &s.description, &outcome, &options.out)?;
    Ok(outcome)
}

/// Writes the CSVs, the plots and the summary.
pub fn write(
    name: &str,
    description: &str,
    outcome: &Outcome,
    out: &Path,
) -> Result<(), TestnetError> {
    results::write_csv(&out.join("runs.csv"), &outcome.runs)?;
    if !outcome.ops.is_empty() {
        results::write_csv(&out.join("ops.csv"), &outcome.ops)?;
        crate::plot::operations(
            &outcome.ops,
            &format!("{name}: operations (simulated Xen)"),
            &out.join("ops.png"),
        )?;
    }
    if !outcome.runs.is_empty() {
        let guests = outcome.runs.iter().any(RunRow::lazy);
        crate::plot::staging_vs_n(
            &outcome.runs,
            &format!(
                "{name}: staging time{}",
                if guests { " (guests: simulated Xen)" } else { "" }
            ),
            &out.join("staging.png"),
        )?;
    }
    let title =
        if description.is_empty() { name.to_owned() } else { format!("{name}: {description}") };
    crate::write_file(
        &out.join("summary.md"),
        results::summary(&title, &outcome.runs, &outcome.ops, &outcome.notes).as_bytes(),
    )
}

/// One deployment's inputs.
pub(crate) struct RunContext<'a> {
    pub(crate) checked: &'a Checked,
    pub(crate) run: &'a Run,
    pub(crate) method: Method,
    pub(crate) hosts: &'a [HostNet],
    /// Where background flows come from, if the testnet has it.
    pub(crate) background: Option<&'a HostNet>,
    pub(crate) images: &'a ImageSet,
    pub(crate) dir: &'a Path,
    vwd: &'a Path,
    /// This harness's binary (scrapes metrics inside a host's namespace).
    pub(crate) testnet: &'a Path,
    /// Where each deploy's full report goes (JSON).
    pub(crate) reports: &'a Path,
    /// Boot traces the head keeps before it deploys (a lazy run's traced pass).
    keep: &'a [RecordedTrace],
}

impl RunContext<'_> {
    /// How this pass stages: `full`, `lazy`, or `lazy-traced`.
    fn staging(&self) -> &'static str {
        match (self.run.lazy, self.keep.is_empty()) {
            (false, _) => "full",
            (true, true) => "lazy",
            (true, false) => "lazy-traced",
        }
    }

    /// The run, on a cluster of its own; a traced lazy run twice: the first boot (its
    /// trace recorded), then on a fresh cluster whose head keeps that trace.
    fn execute(&self, strategy: Strategy) -> Result<(Vec<RunRow>, Vec<OpRow>), TestnetError> {
        if !self.run.traced {
            return self.execute_once(strategy).map(|pass| (pass.rows, pass.ops));
        }
        let first_dir = self.dir.join("first");
        crate::net::scratch_dir(&first_dir)?;
        let first = RunContext { dir: &first_dir, ..*self };
        let Pass { mut rows, mut ops, traces } = first.execute_once(strategy)?;
        if traces.is_empty() {
            return Err(TestnetError::Run(format!(
                "{}: the first lazy boot recorded no trace",
                self.run.case
            )));
        }
        let traced_dir = self.dir.join("traced");
        crate::net::scratch_dir(&traced_dir)?;
        let traced = RunContext { dir: &traced_dir, keep: &traces, ..*self };
        let more = traced.execute_once(strategy)?;
        rows.extend(more.rows);
        ops.extend(more.ops);
        Ok((rows, ops))
    }

    /// One cluster's deployments, with the boot traces its first deploy recorded.
    fn execute_once(&self, strategy: Strategy) -> Result<Pass, TestnetError> {
        let n = self.hosts.len() - 1;
        let staging = self.staging();
        let _span =
            tracing::info_span!("run", case = %self.run.case, method = %self.method, n, staging)
                .entered();
        let cluster_config = if self.run.isolated.is_empty() {
            self.images.vos.cluster_config.clone()
        } else {
            let path = self.dir.join("cluster.toml");
            self.images.vos.write_config(&path, &self.run.isolated)?;
            path
        };
        let mut cluster = Cluster::start(&ClusterOptions {
            hosts: self.hosts,
            dir: self.dir,
            images: self.images,
            cluster_config: &cluster_config,
            cached: self.run.cached,
            compress: self
                .run
                .compress
                .clone()
                .or_else(|| self.checked.scenario.vwd.compress.clone()),
            mdns: self.checked.scenario.network.mdns,
            vwd: self.vwd,
        })?;
        let result = self.deployments(&mut cluster, strategy);
        // Each live host's metrics after the run's deployments, then its vwd log, kept
        // beside the reports.
        let logs =
            self.reports.join(format!("{}-{}-n{n}-{staging}-logs", self.run.case, self.method));
        std::fs::create_dir_all(&logs).map_err(|error| TestnetError::Io {
            op: "create",
            path: logs.clone(),
            error,
        })?;
        let scraped = self.scrape_all(&cluster, &logs);
        let stopped = cluster.stop();
        for (name, data) in cluster.net.names.iter().zip(&cluster.net.data_dirs) {
            let (from, to) = (data.join("vwd.log"), logs.join(format!("{name}.log")));
            std::fs::copy(&from, &to).map_err(|error| TestnetError::Io {
                op: "copy",
                path: from.clone(),
                error,
            })?;
        }
        let Deployed { mut rows, ops, held, traces } = result?;
        stopped?;
        scraped?;
        // Every host that finished holds its images byte for byte.
        for (row, expected) in rows.iter_mut().zip(held) {
            row.verified = verify(&cluster, &expected, self.images)?;
        }
        Ok(Pass { rows, ops, traces })
    }

    /// Scrapes every live host's metrics endpoint into `dir/NAME.prom`.
    fn scrape_all(&self, cluster: &Cluster, dir: &Path) -> Result<(), TestnetError> {
        for (i, name) in cluster.net.names.iter().enumerate() {
            if !cluster.alive(i) {
                continue;
            }
            let text = cluster.scrape(i, self.testnet)?;
            let path = dir.join(format!("{name}.prom"));
            std::fs::write(&path, text).map_err(|error| TestnetError::Io {
                op: "write",
                path,
                error,
            })?;
        }
        Ok(())
    }

    /// The deployments of this run, with what each host should then hold.
    fn deployments(
        &self,
        cluster: &mut Cluster,
        strategy: Strategy,
    ) -> Result<Deployed, TestnetError> {
        let mut rows = Vec::new();
        let mut held = Vec::new();
        let mut ops = Vec::new();
        self.keep_traces(cluster)?;
        let image = self.run.image;
        let case = match self.staging() {
            "lazy-traced" => format!("{}-traced", self.run.case),
            _ => self.run.case.clone(),
        };
        let (report, row) = self.deploy(cluster, strategy, "grid", image, &case, true)?;
        held.push(holders(&report, image));
        let traces = report.traces.clone();
        rows.push(row);
        if self.run.ops {
            ops.extend(self.operations(cluster, &report)?);
        }
        if self.run.then_vo2 {
            let (report, row) = self.deploy(
                cluster,
                strategy,
                "vo2",
                WorkerImage::Vo2,
                &format!("{case}+vo2"),
                false,
            )?;
            held.push(holders(&report, WorkerImage::Vo2));
            rows.push(row);
        }
        Ok(Deployed { rows, ops, held, traces })
    }

    /// Has the head keep this pass's boot traces, each signed by its image's VO, as
    /// `vw deploy --vo` does after a first lazy boot.
    fn keep_traces(&self, cluster: &Cluster) -> Result<(), TestnetError> {
        for t in self.keep {
            let vo = t.image.split('/').next().unwrap_or_default();
            let key = self.images.vos.key(vo);
            let trace = vw_node::chunkstore::BootTrace::sign(key, t.manifest, t.chunks.clone())
                .map_err(|e| TestnetError::Run(format!("signing {}'s trace: {e}", t.image)))?;
            let request = LocalRequest::Store { op: StoreOp::KeepTrace { trace: trace.encode() } };
            match local::call(&cluster.socket(), &request, |_| {}) {
                Ok(LocalReply::Stored { .. }) => {}
                Ok(other) => {
                    return Err(TestnetError::Run(format!(
                        "keeping {}'s trace: the head answered {other:?}",
                        t.image
                    )))
                }
                Err(e) => {
                    return Err(TestnetError::Run(format!("keeping {}'s trace: {e}", t.image)))
                }
            }
        }
        Ok(())
    }

    /// Deploys a cluster of `n` workers (and a head node, all from `image`); with
    /// `disturb`, does to a mid-cascade host what the run says (kills it, slows its link,
    /// or runs a flow through it), with the run's cap, and samples every link meanwhile.
    fn deploy(
        &self,
        cluster: &mut Cluster,
        strategy: Strategy,
        name: &str,
        image: WorkerImage,
        case: &str,
        disturb: bool,
    ) -> Result<(DeployReport, RunRow), TestnetError> {
        let n = self.hosts.len() - 1;
        let worker = self.images.worker(image);
        let workspace = cluster_workspace(name, worker.name, worker.name, n);
        let socket = cluster.socket();
        // Deployed by the VO that owns the worker image.
        let vo = worker.name.split('/').next().unwrap_or_default();
        let ticket = self.images.vos.ticket(vo, &workspace)?;
        let mut options = DeployOptions::new(strategy, Policy::Spread);
        options.cap = self.cap()?;
        options.lazy = self.run.lazy;
        let request =
            LocalRequest::Deploy { workspace, source: format!("{name}.xml"), ticket, options };
        let (events_tx, events) = mpsc::sync_channel::<DeployEvent>(1024);
        let cpu0 = cluster.cpu_seconds();
        let t0 = Instant::now();
        let sampler = LinkSampler::start(self.hosts, cluster.net.names.clone(), t0);
        let call = std::thread::spawn(move || {
            local::call(&socket, &request, |e| {
                let _ = events_tx.send(e.clone());
            })
        });
        let mut victim: Option<Victim> = None;
        let (mut planned_s, mut plan_edges) = (0.0, Vec::new());
        let (mut background, mut slowdown) = (None, None);
        let mut timeline = String::from("seconds,host,phase,bytes,total\n");
        for event in events.iter() {
            if let DeployEvent::Progress { host, progress } = &event {
                timeline.push_str(&format!(
                    "{:.3},{host},{:?},{},{}\n",
                    t0.elapsed().as_secs_f64(),
                    progress.phase,
                    progress.bytes,
                    progress.total
                ));
            }
            match &event {
                DeployEvent::Planned { edges, .. } => {
                    planned_s = t0.elapsed().as_secs_f64();
                    plan_edges = edges.clone();
                    if disturb && self.run.disturbs() {
                        victim = mid_cascade(edges).and_then(|(host, position)| {
                            let index = cluster.index(host.as_str())?;
                            Some(Victim { index, host, position: Some(position) })
                        });
                        tracing::info!(?victim, "chosen to be disturbed");
                    }
                    if let (Some(v), true, Some(from)) =
                        (&victim, self.run.background, self.background)
                    {
                        background =
                            Some(Background::start(self.testnet, from, &self.hosts[v.index])?);
                        tracing::info!(host = %v.host, "background flow started");
                    }
                }
                DeployEvent::Progress { host, progress } => {
                    let Some(v) = victim.as_ref().filter(|v| v.host == *host) else { continue };
                    let share = |at: f64| {
                        progress.phase == Phase::Fetch
                            && progress.total > 0
                            && progress.bytes > 0
                            && progress.bytes as f64 >= at * progress.total as f64
                    };
                    if let Some(at) = self.run.kill_at {
                        if share(at) && cluster.alive(v.index) {
                            tracing::info!(host = %v.host, bytes = progress.bytes, "killing");
                            cluster.kill(v.index)?;
                        }
                    }
                    if let Some(slow) = self.run.slow {
                        if slowdown.is_none() && share(slow.at) {
                            tracing::info!(host = %v.host, bytes = progress.bytes, "slowing its link");
                            let at = t0.elapsed().as_secs_f64();
                            let h = &self.hosts[v.index];
                            slowdown = Some(Slowdown::start(h, slow.share, slow.seconds, at)?);
                        }
                    }
                }
                _ => {}
            }
        }
        let reply = call
            .join()
            .map_err(|_| TestnetError::Run("the deploy thread panicked".into()))?
            .map_err(|e| TestnetError::Run(format!("deploy {name}: {e}")));
        let wall = t0.elapsed().as_secs_f64();
        drop(background);
        let slowed_at = slowdown.as_ref().map(|s| s.started_s);
        if let Some(s) = slowdown {
            s.finish()?;
        }
        let samples = sampler.finish()?;
        let reply = reply?;
        let cpu_s = cluster.cpu_seconds() - cpu0;
        let report = match reply {
            LocalReply::Deployed { report } => *report,
            LocalReply::Failed { error } => {
                return Err(TestnetError::Run(format!("deploy {name}: {error}")))
            }
            other => return Err(TestnetError::Run(format!("deploy {name}: unexpected {other:?}"))),
        };
        if self.run.kill_at.is_none() && !report.lost.is_empty() {
            let why: Vec<String> = report
                .hosts
                .iter()
                .filter_map(|h| Some(format!("{}: {}", h.host, h.error.as_ref()?)))
                .collect();
            return Err(TestnetError::Run(format!(
                "deploy {name} lost {} with no fault injected: {}",
                report.lost.join(", "),
                why.join("; ")
            )));
        }
        if disturb && self.run.disturbs() && victim.is_none() {
            return Err(TestnetError::Run(format!(
                "deploy {name}: no mid-cascade host to disturb"
            )));
        }
        if disturb
            && self.run.kill_at.is_some()
            && victim.as_ref().is_none_or(|v| cluster.alive(v.index))
        {
            return Err(TestnetError::Run(format!(
                "deploy {name}: no mid-cascade host was killed (victim {victim:?})"
            )));
        }
        if disturb && self.run.slow.is_some() && slowed_at.is_none() {
            return Err(TestnetError::Run(format!(
                "deploy {name}: the victim's link was never slowed (victim {victim:?})"
            )));
        }
        let mut row = self.row(cluster, &report, case, worker.len, wall, cpu_s);
        row.predicted_s = report.predicted_s;
        if let Some(cap) = options.cap {
            // From the plan to the last host's last chunk: the stage's transfer.
            let peaks = samples.peaks(2.0, planned_s, planned_s + row.fetch_s);
            row.cap_peak = self
                .hosts
                .iter()
                .zip(&peaks)
                .map(|(h, peak)| peak / cap.on(h.rate))
                .fold(0.0, f64::max);
        }
        self.disturbed(&mut row, &stage_times(&report), victim.as_ref())?;
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| TestnetError::Output(format!("deploy report: {e}")))?;
        let file = format!(
            "{}-{case}-{}-n{n}-{}",
            self.checked.scenario.name,
            self.method,
            self.staging()
        );
        crate::write_file(&self.reports.join(format!("{file}.json")), &json)?;
        crate::write_file(&self.reports.join(format!("{file}-progress.csv")), timeline.as_bytes())?;
        crate::write_file(
            &self.reports.join(format!("{file}-links.csv")),
            samples.csv().as_bytes(),
        )?;
        if let Some(v) = &victim {
            let title = format!(
                "{} {case}, {} N={n}: {} (slowed at {}) and the hosts below it",
                self.checked.scenario.name,
                self.method,
                v.host,
                slowed_at.map_or("-".to_owned(), |t| format!("{t:.1} s")),
            );
            let below = below(&plan_edges, &v.host);
            let png = self.reports.join(format!("{file}-links.png"));
            crate::plot::links(&samples, &v.host, &below, &title, &png)?;
        }
        Ok((report, row))
    }

    /// Fills in the per-host times of a run and what it did to its victim: the median
    /// host, the others, the victim's own-link limit and, for a host at a known depth of
    /// vw's cascade, the simulator's prediction of the same case. `times`: each
    /// receiving host that lacked bytes, its transfer seconds and the bytes it lacked.
    pub(crate) fn disturbed(
        &self,
        row: &mut RunRow,
        times: &[(String, f64, u64)],
        victim: Option<&Victim>,
    ) -> Result<(), TestnetError> {
        let mut sorted: Vec<f64> = times.iter().map(|t| t.1).collect();
        sorted.sort_by(f64::total_cmp);
        row.median_s = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let Some(v) = victim else { return Ok(()) };
        row.disturbed = v.host.to_string();
        row.others_s =
            times.iter().filter(|t| t.0 != v.host.as_str()).map(|t| t.1).fold(0.0, f64::max);
        let Some(&(_, took, lacked)) = times.iter().find(|t| t.0 == v.host.as_str()) else {
            return Ok(()); // killed: no stage report
        };
        row.disturbed_s = took;
        let rate = self.hosts[v.index].rate;
        let (bytes, n) = (lacked as f64, self.hosts.len() - 1);
        // The disturbance as the simulator models it: (uplink share, downlink share,
        // from what share of its bytes, for how long).
        let shape = match (self.run.slow, self.run.background) {
            (Some(slow), _) => Some((slow.share, slow.share, slow.at, slow.seconds)),
            // One TCP flow beside vw's stream into the host: half its downlink.
            (None, true) => Some((1.0, 0.5, 0.0, f64::INFINITY)),
            _ => None,
        };
        row.disturbed_limit_s = match (self.run.slow, self.run.background) {
            (Some(slow), _) => {
                let before = slow.at * bytes / rate;
                let rest = (1.0 - slow.at) * bytes;
                let slowed = slow.share * rate * slow.seconds;
                if rest <= slowed {
                    before + rest / (slow.share * rate)
                } else {
                    before + slow.seconds + (rest - slowed) / rate
                }
            }
            (None, true) => bytes / (rate / 2.0),
            _ => bytes / rate,
        };
        if let (Some((up, down, from, seconds)), Some(position)) = (shape, v.position) {
            let lens = self.chunk_lens()?;
            let (_, shaped) =
                predict(n, self.checked.link, self.checked.head_link, &lens, position, |host| {
                    Reshape { host, up, down, from, seconds }
                })?;
            row.predicted_s = shaped.iter().copied().fold(0.0, f64::max);
            row.predicted_disturbed_s = shaped.get(position).copied().unwrap_or(0.0);
            row.predicted_others_s = shaped
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != position)
                .map(|(_, t)| *t)
                .fold(0.0, f64::max);
        }
        Ok(())
    }

    /// The worker image's distinct non-zero chunk lengths, from the head's store.
    fn chunk_lens(&self) -> Result<Vec<u32>, TestnetError> {
        let worker = self.images.worker(self.run.image);
        let fail = |e: vw_node::chunkstore::Error| TestnetError::Run(format!("head store: {e}"));
        let store = Store::open(&self.images.head_store).map_err(fail)?;
        let name = worker
            .name
            .parse()
            .map_err(|e| TestnetError::Run(format!("image name {}: {e}", worker.name)))?;
        let id = store.resolve(&ImageRef::Name(name)).map_err(fail)?;
        let manifest = store.manifest(&id).map_err(fail)?;
        Ok(manifest.distinct().iter().map(|c| c.len).collect())
    }

    /// The run's cap, parsed (checked with the scenario).
    fn cap(&self) -> Result<Option<StageCap>, TestnetError> {
        self.run
            .cap
            .as_deref()
            .map(|c| c.parse::<StageCap>().map_err(|e| TestnetError::Run(format!("cap: {e}"))))
            .transpose()
    }

    fn row(
        &self,
        cluster: &Cluster,
        report: &DeployReport,
        case: &str,
        image_len: u64,
        wall: f64,
        cpu_s: f64,
    ) -> RunRow {
        let head_rate = self.hosts[0].rate;
        let rate_of = |host: &str| cluster.index(host).map_or(head_rate, |i| self.hosts[i].rate);
        let stages: Vec<(&str, &vw_node::control::protocol::StageReport)> = report
            .hosts
            .iter()
            .filter_map(|h| Some((h.host.as_str(), h.stage.as_ref()?)))
            .collect();
        let lacked: u64 = stages.iter().map(|(_, s)| s.lacked).sum();
        let sent: u64 = stages.iter().map(|(_, s)| s.wire).sum();
        let limit = stages
            .iter()
            .map(|(h, s)| s.lacked as f64 / rate_of(h).min(head_rate))
            .fold(0.0, f64::max);
        let fetch_s = stages.iter().map(|(_, s)| s.fetch_micros as f64 / 1e6).fold(0.0, f64::max);
        let seconds = report
            .phases
            .iter()
            .find(|p| p.phase == DeployPhase::Stage)
            .map_or(0.0, |p| p.micros as f64 / 1e6);
        // Every guest's lazy disks together.
        let lazy = report
            .ready
            .iter()
            .filter_map(|r| r.lazy)
            .fold(vw_node::report::LazyCounts::default(), |a, l| a + l);
        let (fetch_wait, held_wait) = lazy.mean_waits_ms();
        RunRow {
            scenario: self.checked.scenario.name.clone(),
            case: case.to_owned(),
            method: self.method.to_string(),
            n: self.hosts.len() - 1,
            bytes_lacked: lacked,
            bytes_sent: sent,
            seconds,
            fetch_s,
            limit_s: limit,
            ratio: if limit > 0.0 { fetch_s / limit } else { 0.0 },
            raw_limit_s: image_len as f64 / self.checked.link.min(head_rate),
            cpu_s,
            cpu_share: results::cpu_share(cpu_s, wall),
            verified: 0,
            staging: self.staging().to_owned(),
            ready_s: report
                .phases
                .iter()
                .filter(|p| p.phase != DeployPhase::Settle)
                .map(|p| p.micros as f64 / 1e6)
                .sum(),
            boot_read_share: report
                .ready
                .iter()
                .filter_map(|r| r.lazy)
                .map(|l| l.read as f64 / image_len as f64)
                .fold(0.0, f64::max),
            boot_fetched: lazy.fetched,
            fetch_wait_ms: fetch_wait.unwrap_or(0.0),
            held_wait_ms: held_wait.unwrap_or(0.0),
            ..RunRow::default()
        }
    }

    /// The deploy's own phases, then pause, unpause, stop and unstage across the
    /// cluster, each timed from here.
    fn operations(
        &self,
        cluster: &Cluster,
        report: &DeployReport,
    ) -> Result<Vec<OpRow>, TestnetError> {
        let n = self.hosts.len() - 1;
        let row = |op: &str, seconds: f64| OpRow {
            scenario: self.checked.scenario.name.clone(),
            n,
            op: op.to_owned(),
            seconds,
        };
        let mut rows: Vec<OpRow> = report
            .phases
            .iter()
            .filter(|p| {
                matches!(p.phase, DeployPhase::Stage | DeployPhase::Load | DeployPhase::Create)
            })
            .map(|p| row(&p.phase.to_string(), p.micros as f64 / 1e6))
            .collect();
        for op in [Op::Pause, Op::Unpause, Op::Stop, Op::Unstage] {
            let t = Instant::now();
            let request = LocalRequest::Run { deployment: report.deployment.to_string(), op };
            match local::call(&cluster.socket(), &request, |_| {})
                .map_err(|e| TestnetError::Run(format!("{op}: {e}")))?
            {
                LocalReply::Ran { hosts } => {
                    if let Some(h) = hosts.iter().find(|h| h.result.is_err()) {
                        return Err(TestnetError::Run(format!(
                            "{op} on {}: {:?}",
                            h.host, h.result
                        )));
                    }
                }
                other => return Err(TestnetError::Run(format!("{op}: {other:?}"))),
            }
            rows.push(row(&op.to_string(), t.elapsed().as_secs_f64()));
        }
        Ok(rows)
    }
}

/// The hosts that ran a VM of a deployment and finished, with the image they hold.
/// What a run's deployments did: a row per deployment, the lifecycle operations timed,
/// and per deployment the hosts that should hold its image.
/// One cluster's rows and operations, and the boot traces its first deploy recorded.
struct Pass {
    rows: Vec<RunRow>,
    ops: Vec<OpRow>,
    traces: Vec<RecordedTrace>,
}

struct Deployed {
    rows: Vec<RunRow>,
    ops: Vec<OpRow>,
    held: Vec<Vec<(String, WorkerImage)>>,
    /// The boot traces the first deploy recorded.
    traces: Vec<RecordedTrace>,
}

fn holders(report: &DeployReport, image: WorkerImage) -> Vec<(String, WorkerImage)> {
    report
        .hosts
        .iter()
        .filter(|h| h.error.is_none() && !h.vms.is_empty())
        .map(|h| (h.host.to_string(), image))
        .collect()
}

/// The deepest path of the cascade from the head: each host's first child in turn.
fn cascade_path(edges: &[(HostName, HostName)]) -> Vec<HostName> {
    let children = |h: &HostName| -> Vec<HostName> {
        edges.iter().filter(|(s, _)| s == h).map(|(_, r)| r.clone()).collect()
    };
    let mut path = vec![HostName::from("head")];
    while let Some(next) =
        path.last().and_then(|last| children(last).into_iter().find(|c| !path.contains(c)))
    {
        path.push(next);
    }
    path
}

/// A host in the middle of the cascade: the receiver at half the depth of the
/// deepest path from the head that still has children of its own, with its depth.
fn mid_cascade(edges: &[(HostName, HostName)]) -> Option<(HostName, usize)> {
    let path = cascade_path(edges);
    let mid = (path.len() / 2).max(1);
    let has_children = |h: &HostName| edges.iter().any(|(s, _)| s == h);
    path.get(mid).filter(|h| has_children(h)).map(|h| (h.clone(), mid))
}

/// The host a run disturbs: its name, index in the cluster, and depth in vw's cascade
/// (none for a swarm).
#[derive(Clone, Debug)]
pub(crate) struct Victim {
    pub(crate) host: HostName,
    pub(crate) index: usize,
    pub(crate) position: Option<usize>,
}

/// Each receiving host that lacked bytes: its transfer seconds and the bytes it lacked.
fn stage_times(report: &DeployReport) -> Vec<(String, f64, u64)> {
    report
        .hosts
        .iter()
        .filter_map(|h| {
            let s = h.stage.as_ref().filter(|s| s.lacked > 0)?;
            Some((h.host.to_string(), s.fetch_micros as f64 / 1e6, s.lacked))
        })
        .collect()
}

/// Up to three hosts below `victim` along the cascade's deepest path.
fn below(edges: &[(HostName, HostName)], victim: &HostName) -> Vec<HostName> {
    let path = cascade_path(edges);
    path.iter().skip_while(|h| *h != victim).skip(1).take(3).cloned().collect()
}

/// Exports each image each host should hold and compares it with the original file;
/// returns how many hosts hold everything exactly.
fn verify(
    cluster: &Cluster,
    expected: &[(String, WorkerImage)],
    images: &ImageSet,
) -> Result<usize, TestnetError> {
    let mut ok = 0;
    for (host, image) in expected {
        let i = cluster.index(host).ok_or_else(|| TestnetError::Run(format!("no host {host}")))?;
        let data = &cluster.net.data_dirs[i];
        let images::WorkerFile { path: original, name, .. } = images.worker(*image);
        let store = Store::open(data).map_err(|e| TestnetError::Run(format!("{host}: {e}")))?;
        let name_ref = ImageRef::Name(
            name.parse().map_err(|e| TestnetError::Run(format!("image name {name}: {e}")))?,
        );
        let id = store.resolve(&name_ref).map_err(|e| TestnetError::Run(format!("{host}: {e}")))?;
        let out = data.join("verify.img");
        store
            .export(&id, &out, false, &())
            .map_err(|e| TestnetError::Run(format!("{host}: exporting {name}: {e}")))?;
        if let Some(offset) = images::first_difference(original, &out)? {
            return Err(TestnetError::Mismatch {
                host: host.clone(),
                image: name.to_owned(),
                original: original.to_owned(),
                offset,
            });
        }
        std::fs::remove_file(&out).map_err(|error| TestnetError::Io {
            op: "remove",
            path: out.clone(),
            error,
        })?;
        ok += 1;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(pairs: &[(&str, &str)]) -> Vec<(HostName, HostName)> {
        pairs.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn the_victim_is_mid_chain_and_has_children() {
        let chain =
            edges(&[("head", "node1"), ("node1", "node2"), ("node2", "node3"), ("node3", "node4")]);
        assert_eq!(mid_cascade(&chain), Some(("node2".into(), 2)));
        let star = edges(&[("head", "node1"), ("head", "node2"), ("head", "node3")]);
        assert_eq!(mid_cascade(&star), None, "a star has no mid-cascade host");
    }
}
