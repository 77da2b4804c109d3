//! Cluster-wide commands through the head's `vwd` (its local socket): `vw deploy`, and
//! `vw status|pause|unpause|stop|unstage DEPLOYMENT` when a `vwd` runs on the store.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use vw_node::access::{Ticket, TicketTerms};
use vw_node::chunkstore::VoKey;
use vw_node::control::deployment::{
    DeployEvent, DeployOptions, DeployPhase, DeployReport, HostAnswer,
};
use vw_node::control::protocol::Phase;
use vw_node::control::usage::VoUsage;
use vw_node::control::FailureKind;
use vw_node::local::{self, HostVms, LocalReply, LocalRequest};
use vw_node::manager::{Op, VmReport};
use vw_node::report::VmReady;
use vw_node::storecmd::StoreOp;

use crate::output::{bytes, HostOut, Out};

/// The socket of the `vwd` that owns `store`: `None` when there is none (no socket, or
/// a stale one nobody listens on), so the caller opens the store itself; an error
/// naming the socket and why when one is there but this user cannot use it.
pub fn socket(store: &Path) -> anyhow::Result<Option<PathBuf>> {
    let path = store.join(local::SOCKET);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!(
            "cannot look for vwd's socket {}: {e}{}",
            path.display(),
            permission_hint(&e)
        ),
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => Ok(Some(path)),
        // A socket left by a vwd that is gone: nobody owns the store.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(None),
        Err(e) => anyhow::bail!(
            "cannot connect to vwd's socket {}: {e}{}",
            path.display(),
            permission_hint(&e)
        ),
    }
}

/// What to do about a permission error on vwd's socket.
fn permission_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "; the socket belongs to root and the `vw` group (docs/operations.md): add yourself \
         to it (`sudo usermod -aG vw $USER`, then log in again) or run as root"
    } else {
        ""
    }
}

pub fn need_socket(store: &Path) -> anyhow::Result<PathBuf> {
    socket(store)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no vwd is listening at {}; start the head's vwd (`vwd --config FILE`, docs/operations.md) with this data directory, or pass --store",
            store.join(local::SOCKET).display()
        )
    })
}

/// Per-host progress bars on a terminal; phase lines otherwise (text mode).
struct Progress<'a> {
    out: &'a Out,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
}

impl<'a> Progress<'a> {
    fn new(out: &'a Out) -> Self {
        let bars = (!out.is_json() && std::io::stderr().is_terminal())
            .then(|| (MultiProgress::new(), HashMap::new()));
        Progress { out, bars }
    }

    fn event(&mut self, e: &DeployEvent) {
        match e {
            DeployEvent::Phase { phase } => match &self.bars {
                Some((multi, _)) => {
                    let _ = multi.println(format!("phase {phase}"));
                }
                None => self.out.note(&format!("phase {phase}")),
            },
            DeployEvent::Planned { strategy, edges } => {
                let e: Vec<String> = edges.iter().map(|(a, b)| format!("{a}→{b}")).collect();
                self.out.note(&format!("plan {strategy}: {}", e.join(" ")));
            }
            DeployEvent::Lost { host, reason } => {
                self.out.note(&format!("host {host} lost: {reason}"));
            }
            DeployEvent::Progress { host, progress } => {
                let Some((multi, bars)) = &mut self.bars else { return };
                let bar = bars.entry(host.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(progress.total));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} {msg:16} {bar:30} {bytes}/{total_bytes} eta {eta}",
                        )
                        .expect("valid template"),
                    );
                    bar.set_prefix(host.to_string());
                    bar
                });
                bar.set_length(progress.total);
                bar.set_position(progress.bytes);
                bar.set_message(match progress.phase {
                    // The host's own rate over its last progress interval.
                    Phase::Fetch => format!("fetch {}/s", HumanBytes(progress.rate)),
                    Phase::Stage => "stage".to_owned(),
                });
            }
        }
    }

    fn finish(self) {
        if let Some((multi, bars)) = self.bars {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}

/// Sends `request` to the vwd at `socket`, showing progress.
pub fn call(socket: &Path, request: &LocalRequest, out: &Out) -> anyhow::Result<LocalReply> {
    let mut progress = Progress::new(out);
    let reply = local::call(socket, request, |e| progress.event(e));
    progress.finish();
    match reply? {
        LocalReply::Failed { error } => anyhow::bail!("{error}"),
        other => Ok(other),
    }
}

/// Who signs a deployment.
#[derive(Debug)]
pub enum Signer {
    /// The VO's key, here: a ticket is signed for this deploy.
    Key(Box<VoKey>),
    /// A ticket file the VO signed elsewhere.
    Ticket(PathBuf),
}

/// How long a ticket signed for one `vw deploy` stays valid.
const DEPLOY_TICKET_S: u64 = 15 * 60;

/// `vw deploy WORKSPACE.xml`.
pub fn deploy(
    socket: &Path,
    file: &Path,
    signer: Signer,
    options: DeployOptions,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let workspace = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let source = file.display().to_string();
    let ticket = match &signer {
        Signer::Ticket(path) => std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the ticket {}: {e}", path.display()))?,
        Signer::Key(key) => {
            // The ticket names the deployment as the document does, and the manifests
            // its images are on this cluster (the head says which); a document that
            // does not parse is refused with its line and column.
            let name = vw_node::workspace::parse(&workspace, &source)
                .map(|s| s.name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let request =
                LocalRequest::Resolve { workspace: workspace.clone(), source: source.clone() };
            let LocalReply::Resolved { cluster, images } = call(socket, &request, out)? else {
                anyhow::bail!("the vwd answered a resolve with something else");
            };
            let terms = TicketTerms {
                cluster,
                deployment: name,
                workspace: blake3::hash(workspace.as_bytes()),
                manifests: images.into_iter().map(|(_, id)| id).collect(),
                expires_s: crate::vo::now_s() + DEPLOY_TICKET_S,
            };
            Ticket::sign(key, &terms).map_err(anyhow::Error::msg)?.encode()
        }
    };
    let request = LocalRequest::Deploy { workspace, source, ticket, options };
    let LocalReply::Deployed { report } = call(socket, &request, out)? else {
        anyhow::bail!("the vwd answered a deploy with something other than its report");
    };
    out.emit(&report, || deploy_text(&report));
    if let Signer::Key(key) = &signer {
        keep_traces(socket, key, &report.traces, out)?;
    } else if !report.traces.is_empty() {
        out.note("boot traces were recorded but not kept: only `vw deploy --vo` (with the VO's key) signs them");
    }
    Ok(exit_of(&report))
}

/// Signs with `key` each boot trace a first lazy deploy recorded and has the head keep
/// it: later lazy deploys of those images fetch its chunks first.
fn keep_traces(
    socket: &Path,
    key: &VoKey,
    traces: &[vw_node::control::deployment::RecordedTrace],
    out: &Out,
) -> anyhow::Result<()> {
    for t in traces {
        let trace = vw_node::chunkstore::BootTrace::sign(key, t.manifest, t.chunks.clone())?;
        let request = LocalRequest::Store { op: StoreOp::KeepTrace { trace: trace.encode() } };
        match call(socket, &request, out)? {
            LocalReply::Stored { outcome } => out.note(&format!("{}: {}", t.image, outcome.text)),
            LocalReply::Failed { error } => {
                out.note(&format!("{}: the boot trace was not kept: {error}", t.image))
            }
            other => anyhow::bail!("the vwd answered keeping a trace with {other:?}"),
        }
    }
    Ok(())
}

/// A deploy's exit status: 1 if a VM was lost or a guest is not ready.
fn exit_of(report: &DeployReport) -> ExitCode {
    let all_ready = report.ready.iter().all(VmReady::ok);
    if report.lost.is_empty() && all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `vw create NAME` of a cluster staged with `vw stage FILE` (`vw deploy --stage-only`): load and start
/// it on every host, and wait for its guests, with a deploy's report.
pub fn create(socket: &Path, deployment: &str, out: &Out) -> anyhow::Result<ExitCode> {
    report(socket, &LocalRequest::Create { deployment: deployment.to_owned() }, out)
}

/// Sends a request answered by a deployment's report, and prints it; fails if a VM
/// was lost or a guest is not ready.
fn report(socket: &Path, request: &LocalRequest, out: &Out) -> anyhow::Result<ExitCode> {
    let LocalReply::Deployed { report } = call(socket, request, out)? else {
        anyhow::bail!("the vwd answered with something other than a deployment's report");
    };
    out.emit(&report, || deploy_text(&report));
    Ok(exit_of(&report))
}

fn secs(micros: u64) -> String {
    format!("{:.3} s", micros as f64 / 1e6)
}

/// The phase table (the paper's Fig. 2(b)) and the bytes each host lacked and got.
pub fn deploy_text(r: &DeployReport) -> String {
    let total: u64 = r.phases.iter().map(|p| p.micros).sum();
    let ready = r.ready.iter().filter(|v| v.ok()).count();
    let started = r.phases.iter().any(|p| p.phase == DeployPhase::Create);
    let how = r
        .strategy
        .map(|s| format!(" ({s}{})", if r.resumed { ", resumed" } else { "" }))
        .unwrap_or_default();
    let (verb, state) = match (started, r.strategy) {
        (false, _) => (
            "staged",
            format!("{} VMs staged; `vw create {}` starts them", r.vms.len(), r.deployment),
        ),
        (true, None) => ("created", format!("{} VMs running, {ready} ready", r.vms.len())),
        (true, Some(_)) => ("deployed", format!("{} VMs running, {ready} ready", r.vms.len())),
    };
    let lost =
        if r.lost.is_empty() { String::new() } else { format!(", lost {}", r.lost.join(", ")) };
    let mut s = format!("{verb} {}{how} in {}: {state}{lost}", r.deployment, secs(total));
    s.push_str("\n\nphase       time");
    for p in &r.phases {
        s.push_str(&format!("\n{:<11} {}", p.phase.to_string(), secs(p.micros)));
    }
    let width = r.hosts.iter().map(|h| h.host.as_str().len()).max().unwrap_or(4).max(4);
    s.push_str(&format!(
        "\n\n{:<width$}  {:<9}  {:>10}  {:>10}  {:>10}  {:>9}  {:>9}  VMs",
        "host", "driver", "lacked", "received", "on wire", "fetch", "stage"
    ));
    let driver = |h: &vw_node::control::deployment::HostOutcome| h.driver.map_or("?", |d| d.name());
    let (mut lacked, mut received, mut wire) = (0, 0, 0);
    for h in &r.hosts {
        match &h.stage {
            Some(st) => {
                lacked += st.lacked;
                received += st.received;
                wire += st.wire;
                s.push_str(&format!(
                    "\n{:<width$}  {:<9}  {:>10}  {:>10}  {:>10}  {:>9}  {:>9}  {}",
                    h.host,
                    driver(h),
                    bytes(st.lacked),
                    bytes(st.received),
                    bytes(st.wire),
                    secs(st.fetch_micros),
                    secs(st.stage_micros),
                    h.vms.join(", ")
                ));
                for (peer, why) in &st.dropped {
                    s.push_str(&format!("\n{:<width$}  dropped {peer}: {why}", ""));
                }
            }
            None => match &h.error {
                Some(e) => {
                    s.push_str(&format!("\n{:<width$}  {:<9}  failed: {e}", h.host, driver(h)))
                }
                None => s.push_str(&format!(
                    "\n{:<width$}  {:<9}  {:>10}  staged before  {}",
                    h.host,
                    driver(h),
                    "-",
                    h.vms.join(", ")
                )),
            },
        }
        if let (Some(_), Some(e)) = (&h.stage, &h.error) {
            s.push_str(&format!("\n{:<width$}  failed later: {e}", ""));
        }
    }
    s.push_str(&ready_text(&r.ready));
    s.push_str(&simulated_note(
        r.hosts
            .iter()
            .filter_map(|h| h.driver.is_some_and(|d| d.simulated()).then_some(h.host.as_str())),
    ));
    if r.strategy.is_none() {
        return s;
    }
    s.push_str(&format!(
        "\n\nsent {} ({} on the wire) for {} lacked ({:.3}×); predicted {:.2} s, limit {:.2} s",
        bytes(received),
        bytes(wire),
        bytes(lacked),
        if lacked == 0 { 1.0 } else { received as f64 / lacked as f64 },
        r.predicted_s,
        r.limit_s
    ));
    s
}

/// Per VM: the time from its start to its guest's report, and the report; for a VM
/// that is not ready, why and the end of its console.
pub(crate) fn ready_text(ready: &[VmReady]) -> String {
    if ready.is_empty() {
        return String::new();
    }
    let width = ready.iter().map(|v| v.vm.len()).max().unwrap_or(2).max(2);
    let mut s = format!("\n\n{:<width$}  {:>9}  guest report", "VM", "ready");
    for v in ready {
        match (&v.report, v.ready_ms) {
            (Some(report), Some(ms)) => {
                s.push_str(&format!(
                    "\n{:<width$}  {:>9}  {}",
                    v.vm,
                    format!("{:.1} s", ms as f64 / 1e3),
                    report.line()
                ));
                for d in &v.disagreements {
                    s.push_str(&format!("\n{:<width$}  {:>9}  DISAGREES: {d}", "", ""));
                }
                if let Some(l) = &v.lazy {
                    let wait = |ms: Option<f64>| {
                        ms.map_or(String::new(), |ms| format!(", {ms:.1} ms each"))
                    };
                    let (fetch, local) = l.mean_waits_ms();
                    s.push_str(&format!(
                        "\n{:<width$}  {:>9}  lazy disks before ready: read {}, {} missing when read ({} chunks{}), {} held here{}",
                        "",
                        "",
                        bytes(l.read),
                        bytes(l.fetched),
                        l.fetched_chunks,
                        wait(fetch),
                        bytes(l.local),
                        wait(local),
                    ));
                }
            }
            _ => {
                s.push_str(&format!(
                    "\n{:<width$}  {:>9}  {}",
                    v.vm,
                    "NOT READY",
                    v.problem.as_deref().unwrap_or("?")
                ));
                for line in &v.console {
                    s.push_str(&format!("\n{:<width$}  {:>9}  | {line}", "", ""));
                }
            }
        }
    }
    s
}

/// `vw pause|unpause|stop|unstage DEPLOYMENT` on every host.
pub fn run(socket: &Path, deployment: &str, op: Op, out: &Out) -> anyhow::Result<ExitCode> {
    let request = LocalRequest::Run { deployment: deployment.to_owned(), op };
    let LocalReply::Ran { hosts } = call(socket, &request, out)? else {
        anyhow::bail!("the vwd answered {op} with something else");
    };
    out.emit(&serde_json::json!({ "deployment": deployment, "op": op, "hosts": hosts }), || {
        ran_text(deployment, op, &hosts)
    });
    Ok(if hosts.iter().all(|h| h.result.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn ran_text(deployment: &str, op: Op, hosts: &[HostAnswer<Vec<VmReport>>]) -> String {
    let mut s = format!("{op} {deployment}:");
    for h in hosts {
        match &h.result {
            Ok(vms) => {
                for v in vms {
                    let took: u64 = v.steps.iter().map(|t| t.micros).sum();
                    s.push_str(&format!(
                        "\n  {:<8} {:<20} {:<9} {}",
                        h.host,
                        v.vm,
                        v.state.to_string(),
                        secs(took)
                    ));
                }
            }
            Err(e) => s.push_str(&format!("\n  {:<8} failed: {e}", h.host)),
        }
    }
    s
}

/// `vw status [DEPLOYMENT]` across the cluster.
/// `vw status [DEPLOYMENT]` through the head, once, or every `watch` until
/// interrupted (a live view: the screen redrawn on a terminal, a JSON document per
/// look with `--json`; a failed look is shown and the watch goes on).
pub fn status(
    socket: &Path,
    deployment: Option<&str>,
    watch: Option<std::time::Duration>,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let request = LocalRequest::Status { deployment: deployment.map(str::to_owned) };
    let redraw = watch.is_some() && !out.is_json() && std::io::stdout().is_terminal();
    loop {
        let looked = match call(socket, &request, out) {
            Ok(LocalReply::Status { hosts, vos, mut live }) => {
                live.retain(|d| deployment.is_none_or(|n| n == d.deployment));
                Ok((hosts, vos, live))
            }
            Ok(_) => Err(anyhow::anyhow!("the vwd answered status with something else")),
            Err(e) => Err(e),
        };
        let Some(every) = watch else {
            let (hosts, vos, live) = looked?;
            out.emit(&status_json(&hosts, &vos, &live), || status_doc(&hosts, &vos, &live));
            return Ok(ExitCode::SUCCESS);
        };
        if redraw {
            print!("\x1b[2J\x1b[H");
        }
        match looked {
            Ok((hosts, vos, live)) => {
                let json = status_json(&hosts, &vos, &live);
                if out.is_json() {
                    println!("{json}");
                } else {
                    println!("{}", status_doc(&hosts, &vos, &live));
                }
            }
            Err(e) => out.error(&e),
        }
        std::thread::sleep(every);
    }
}

/// `vw status --json` through the head: each host's VMs in the CLI's form, the
/// deployments under way, each VO's use.
fn status_json(
    hosts: &[HostVms],
    vos: &[VoUsage],
    live: &[vw_node::control::live::LiveDeployment],
) -> serde_json::Value {
    let hosts: Vec<HostOut> = hosts.iter().map(HostOut::from).collect();
    serde_json::json!({ "hosts": hosts, "vos": vos, "live": live })
}

/// The status of the hosts, the deployments under way, and each VO's use.
fn status_doc(
    hosts: &[HostVms],
    vos: &[VoUsage],
    live: &[vw_node::control::live::LiveDeployment],
) -> String {
    let mut s = live_text(live);
    s.push_str(&status_text(hosts));
    if !vos.is_empty() {
        s.push_str("\n\n");
        s.push_str(&vos_text(vos));
    }
    s
}

/// Each deployment under way: its phase, and per host what it has fetched or staged,
/// of how much, at what rate.
fn live_text(live: &[vw_node::control::live::LiveDeployment]) -> String {
    let mut s = String::new();
    for d in live {
        let phase = d.phase.map_or("starting".to_owned(), |p| p.to_string());
        s.push_str(&format!(
            "{} under way: {phase}, {:.1} s\n",
            d.deployment,
            d.elapsed_ms as f64 / 1e3
        ));
        for (host, p) in &d.hosts {
            let of = if p.total > 0 { format!(" of {}", bytes(p.total)) } else { String::new() };
            s.push_str(&format!(
                "  {host:<8} {:<5} {:>10}{of}  {}/s\n",
                format!("{:?}", p.phase).to_lowercase(),
                bytes(p.bytes),
                bytes(p.rate)
            ));
        }
        for (host, why) in &d.lost {
            s.push_str(&format!("  {host:<8} lost: {why}\n"));
        }
        s.push('\n');
    }
    s
}

/// Each VO's deployments and what they take, against its quota.
fn vos_text(vos: &[VoUsage]) -> String {
    let limit = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or("no limit".into(), f);
    let mut s = format!(
        "{:<10} {:>4} {:>11} {:>6} {:>6} {:>12}  deployments",
        "VO", "VMs", "memory", "vCPUs", "hosts", "cache/host"
    );
    for u in vos {
        let cache = u.cache_bytes.values().max().copied().unwrap_or(0);
        s.push_str(&format!(
            "\n{:<10} {:>4} {:>7} MiB {:>6} {:>6} {:>12}  {}",
            u.vo,
            u.vms,
            u.memory_mib,
            u.vcpus,
            u.hosts.len(),
            bytes(cache),
            u.deployments.join(", ")
        ));
        s.push_str(&format!(
            "\n{:<10} quota: memory {}, hosts {}, cache {}",
            "",
            limit(u.quota.memory_mib, &|m| format!("{m} MiB")),
            limit(u.quota.hosts.map(u64::from), &|h| h.to_string()),
            limit(u.quota.cache_bytes, &|b| bytes(b)),
        ));
        for (host, cores) in &u.cores {
            s.push_str(&format!("\n{:<10} pinned on {host}: cores {cores:?}", ""));
        }
    }
    s
}

/// A line naming the hosts whose driver is simulated, if any: their VMs do not exist.
fn simulated_note<'a>(hosts: impl Iterator<Item = &'a str>) -> String {
    let hosts: Vec<&str> = hosts.collect();
    if hosts.is_empty() {
        return String::new();
    }
    format!(
        "\n\nSIMULATED Xen driver on {}: no hypervisor there, no guest runs; states are tracked in a file",
        hosts.join(", ")
    )
}

fn status_text(hosts: &[HostVms]) -> String {
    let mut s = format!(
        "{:<8} {:<9} {:<20} {:<12} {:<9} {:<9} private address",
        "host", "driver", "VM", "deployment", "state", "domain"
    );
    for h in hosts {
        match &h.result {
            Ok(st) if st.vms.is_empty() => {}
            Ok(st) => {
                for r in &st.vms {
                    let ip = r.nics.first().map_or("-".to_owned(), |n| n.ip.to_string());
                    let domain = r.domain.map_or("-".to_owned(), |d| d.to_string());
                    s.push_str(&format!(
                        "\n{:<8} {:<9} {:<20} {:<12} {:<9} {:<9} {ip}",
                        h.host,
                        st.driver.name(),
                        r.name,
                        r.deployment,
                        r.state.to_string(),
                        domain
                    ));
                }
            }
            Err(e) if e.kind == FailureKind::Unreachable => {
                s.push_str(&format!("\n{:<8} unreachable: {}", h.host, e.message))
            }
            Err(e) => s.push_str(&format!("\n{:<8} failed: {e}", h.host)),
        }
    }
    s.push_str(&simulated_note(hosts.iter().filter_map(|h| {
        h.result.as_ref().ok().filter(|st| st.driver.simulated()).map(|_| h.host.as_str())
    })));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_node::config::{DriverKind, Quota};
    use vw_node::control::deployment::HostAnswer;
    use vw_node::control::protocol::HostStatus;
    use vw_node::control::{Failure, FailureKind};

    #[test]
    fn a_deployment_under_way_shows_its_phase_and_each_host() {
        use vw_node::control::live::LiveDeployment;
        use vw_node::control::protocol::{Phase, Progress};
        let live = LiveDeployment {
            deployment: "grid3".into(),
            phase: Some(DeployPhase::Stage),
            elapsed_ms: 12_345,
            hosts: [(
                "node1".into(),
                Progress { phase: Phase::Fetch, bytes: 3 << 20, total: 8 << 20, rate: 1 << 20 },
            )]
            .into(),
            lost: vec![("node2".into(), "cannot reach it".into())],
        };
        let text = live_text(&[live]);
        assert!(text.starts_with("grid3 under way: stage, 12.3 s\n"), "{text}");
        assert!(text.contains("node1    fetch    3.0 MiB of 8.0 MiB  1.0 MiB/s"), "{text}");
        assert!(text.contains("node2    lost: cannot reach it"), "{text}");
        assert_eq!(live_text(&[]), "");
    }

    #[test]
    fn staged_and_created_clusters_say_so() {
        use vw_node::control::deployment::{HostOutcome, PhaseTime};
        let phase = |phase| PhaseTime { phase, micros: 1_000 };
        let mut r = DeployReport {
            deployment: "pre".into(),
            resumed: true,
            strategy: None,
            phases: [DeployPhase::Load, DeployPhase::Create, DeployPhase::Ready]
                .map(phase)
                .to_vec(),
            placement: vec![],
            hosts: vec![HostOutcome {
                host: "node1".into(),
                driver: Some(DriverKind::Xl),
                vms: vec!["pre-worker1".into()],
                stage: None,
                error: None,
            }],
            lost: vec![],
            predicted_s: 0.0,
            limit_s: 0.0,
            vms: vec![],
            ready: vec![],
            traces: vec![],
        };
        let text = deploy_text(&r);
        assert!(text.starts_with("created pre in 0.003 s: 0 VMs running"), "{text}");
        assert!(text.contains("staged before  pre-worker1") && !text.contains("sent "), "{text}");
        r.strategy = Some(vw_node::planner::Strategy::Chain);
        r.resumed = false;
        r.phases = [DeployPhase::Validate, DeployPhase::Stage].map(phase).to_vec();
        let text = deploy_text(&r);
        assert!(
            text.starts_with("staged pre (chain) in 0.002 s: 0 VMs staged; `vw create pre`"),
            "{text}"
        );
    }

    #[test]
    fn status_names_each_host_s_driver_and_says_which_simulate() {
        let host = |host: &str, driver| HostAnswer {
            host: host.into(),
            result: Ok(HostStatus { driver, vms: vec![] }),
        };
        let text = status_text(&[
            host("node1", DriverKind::Xl),
            host("node2", DriverKind::Simulated),
            HostAnswer {
                host: "node3".into(),
                result: Err(Failure::new(FailureKind::Unreachable, "gone")),
            },
        ]);
        assert!(text.contains("SIMULATED Xen driver on node2: no hypervisor"), "{text}");
        assert!(!text.contains("on node1"), "{text}");
        let real = status_text(&[host("node1", DriverKind::Xl)]);
        assert!(!real.contains("SIMULATED"), "{real}");
    }

    #[test]
    fn status_shows_each_vo_s_deployments_use_and_quota() {
        let grid3 = VoUsage {
            vo: "grid3".into(),
            deployments: vec!["grid".into(), "night".into()],
            vms: 3,
            memory_mib: 384,
            vcpus: 4,
            hosts: ["node1".into(), "node2".into()].into(),
            cache_bytes: [("node1".into(), 3 << 20), ("node2".into(), 5 << 20)].into(),
            cores: [("node1".into(), vec![0, 1])].into(),
            quota: Quota { memory_mib: Some(1024), hosts: None, cache_bytes: Some(1 << 30) },
        };
        let vo2 =
            VoUsage { vo: "vo2".into(), deployments: vec!["vo2".into()], ..Default::default() };
        let text = vos_text(&[grid3, vo2]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        // The largest cache on any one host, and every deployment.
        assert_eq!(row, ["grid3", "3", "384", "MiB", "4", "2", "5.0", "MiB", "grid,", "night"]);
        assert!(
            lines[2].contains("quota: memory 1024 MiB, hosts no limit, cache 1.0 GiB"),
            "{text}"
        );
        assert!(lines[3].contains("pinned on node1: cores [0, 1]"), "{text}");
        assert!(lines[4].starts_with("vo2") && lines[4].ends_with("vo2"), "{text}");
    }
}
