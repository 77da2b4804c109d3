//! Workspace documents and the local lifecycle of one host: `vw workspace validate|show`
//! and `vw stage|load|create|pause|unpause|stop|unstage|status`. The cluster-wide
//! versions arrive with the peer (issue 5); these drive this host's manager directly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use vw_node::config::ClusterConfig;
use vw_node::control::protocol::VmSeen;
use vw_node::manager::{self, Manager, Op, VmReport};
use vw_node::workspace::{self, Boot, WorkspaceSpec};

use crate::output::{bytes, Out, VmOut};

/// The cluster configuration: the file given, or the embedded default.
pub fn cluster_config(path: Option<&Path>) -> anyhow::Result<ClusterConfig> {
    Ok(match path {
        Some(p) => ClusterConfig::load(p)?,
        None => ClusterConfig::embedded(),
    })
}

/// Opens the manager, printing any reconciliation it did and what driver it uses.
pub fn open(store: &Path, config: ClusterConfig, out: &Out) -> anyhow::Result<Manager> {
    let (m, reconciled) = Manager::open(store, config)?;
    for r in &reconciled {
        out.note(&format!("reconciled {}: {} → {} ({})", r.vm, r.was, r.now, r.reason));
    }
    Ok(m)
}

fn driver_note(m: &Manager) -> String {
    if m.driver().kind().simulated() {
        "Xen driver: simulated (no hypervisor here: configs are checked and domain states tracked, no guest runs)".to_owned()
    } else {
        format!("Xen driver: {}", m.driver().kind().name())
    }
}

/// `vw workspace validate FILE`.
pub fn validate(file: &Path, out: &Out) -> anyhow::Result<ExitCode> {
    let spec = workspace::load(file)?;
    let summary = serde_json::json!({
        "file": file,
        "valid": true,
        "name": spec.name,
        "kind": spec.kind,
        "vms": spec.vms().len(),
    });
    out.emit(&summary, || {
        let workers = spec.workers.as_ref().map_or(0, |w| w.count);
        format!(
            "{}: valid {} workspace {} ({} VM{}: head{})",
            file.display(),
            if spec.workers.is_some() { "cluster" } else { "atomicvm" },
            spec.name,
            spec.vms().len(),
            if spec.vms().len() == 1 { "" } else { "s" },
            if workers > 0 { format!(" + {workers} workers") } else { String::new() }
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// One VM as `workspace show` prints it.
#[derive(Serialize)]
struct ShownVm<'a> {
    name: String,
    hostname: String,
    /// What it is made of (its template).
    node: &'a workspace::NodeSpec,
    nics: Vec<vw_node::planner::address::NicAddress>,
}

/// `vw workspace show FILE`: every VM with its partitions, addresses, MACs and
/// integration strategy. Addresses are the ones recorded if the deployment is staged
/// here, otherwise a preview of what the cluster config's pools would give.
pub fn show(
    file: &Path,
    store: &Path,
    config: ClusterConfig,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let spec = workspace::load(file)?;
    let recorded = recorded_nics(store, &spec, &config)?;
    let preview = recorded.is_none();
    let nics = match recorded {
        Some(n) => n,
        None => manager::preview_addresses(&spec, &config.pools(), &[])
            .map_err(|e| anyhow::anyhow!("deployment {}: {e}", spec.name))?,
    };
    let vms: Vec<ShownVm<'_>> = spec
        .vms()
        .iter()
        .zip(nics)
        .map(|(vm, nics)| ShownVm {
            name: spec.vm_name(vm),
            hostname: vm.hostname(),
            node: vm.node,
            nics,
        })
        .collect();
    let doc = serde_json::json!({ "workspace": spec.name, "kind": spec.kind, "addresses": if preview { "preview" } else { "recorded" }, "vms": vms });
    out.emit(&doc, || show_text(&spec, &vms, preview));
    Ok(ExitCode::SUCCESS)
}

/// The recorded addresses of `spec`'s deployment, if this host's store has it.
fn recorded_nics(
    store: &Path,
    spec: &WorkspaceSpec,
    config: &ClusterConfig,
) -> anyhow::Result<Option<Vec<Vec<vw_node::planner::address::NicAddress>>>> {
    if !store.join("db").exists() {
        return Ok(None);
    }
    let (m, _) = Manager::open(store, config.clone())?;
    let Ok(status) = m.status(Some(&spec.name)) else { return Ok(None) };
    let recorded: Vec<_> = status.into_iter().map(|s| s.record.nics).collect();
    Ok((recorded.len() == spec.vms().len() && recorded.iter().all(|n| !n.is_empty()))
        .then_some(recorded))
}

fn show_text(spec: &WorkspaceSpec, vms: &[ShownVm<'_>], preview: bool) -> String {
    let mut s = format!("workspace {} ({} VMs)", spec.name, vms.len());
    if preview {
        s.push_str("; addresses are a preview, assigned for good when staged");
    }
    for vm in vms {
        s.push_str(&format!(
            "\n\n{} (hostname {}): {} MiB, {} vCPU{}{}, integration {}",
            vm.name,
            vm.hostname,
            vm.node.memory_mib,
            vm.node.vcpus,
            if vm.node.vcpus == 1 { "" } else { "s" },
            vm.node.cpus.as_ref().map(|c| format!(" on CPUs {c}")).unwrap_or_default(),
            vm.node.integration.as_str()
        ));
        match &vm.node.boot {
            Boot::Kernel { kernel, .. } => s.push_str(&format!("\n  boot     kernel {kernel}")),
            Boot::Bootloader { path, .. } => s.push_str(&format!("\n  boot     bootloader {path}")),
        }
        for p in &vm.node.partitions {
            s.push_str(&format!(
                "\n  {:<8} {} ({:?}, {})",
                p.device,
                p.image,
                p.role,
                p.access.as_str()
            ));
        }
        if let Some(sw) = &vm.node.swap {
            s.push_str(&format!("\n  {:<8} swap, {} made on the fly", sw.device, bytes(sw.size)));
        }
        for (i, n) in vm.nics.iter().enumerate() {
            s.push_str(&format!("\n  eth{i}     {} {} mac {}", n.network, n.ip, n.mac));
        }
        let r = &vm.node.roles;
        let mut roles = Vec::new();
        roles.extend(r.nfs_exports.iter().map(|e| format!("NFS export {e}")));
        roles.extend(r.nfs_mounts.iter().map(|m| format!("NFS mount {} at {}", m.export, m.mount)));
        if let Some(b) = r.batch {
            roles.push(format!("batch {b:?}").to_lowercase());
        }
        if !roles.is_empty() {
            s.push_str(&format!("\n  roles    {}", roles.join(", ")));
        }
    }
    s
}

/// What a lifecycle command names: a workspace file (submitted first) or a deployment.
pub fn deployment_of(m: &Manager, target: &str) -> anyhow::Result<String> {
    let path = PathBuf::from(target);
    if path.is_file() {
        let spec = workspace::load(&path)?;
        m.submit(&spec).with_context(|| format!("deployment {}", spec.name))?;
        Ok(spec.name)
    } else if target.ends_with(".xml") {
        anyhow::bail!("workspace file {target} does not exist")
    } else {
        Ok(target.to_owned())
    }
}

/// `vw stage|load|create|pause|unpause|stop|unstage TARGET [--vm VM]`.
pub fn lifecycle(
    store: &Path,
    config: ClusterConfig,
    target: &str,
    vm: Option<&str>,
    op: Op,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let m = open(store, config, out)?;
    out.note(&driver_note(&m));
    let dep = deployment_of(&m, target)?;
    let reports = m.run(&dep, vm, op)?;
    // A VM is ready when its guest says so; `create` waits for that.
    let ready = if op == Op::Create {
        let timeout = Duration::from_secs(m.config().xen.ready_timeout_s);
        let mut ready = m.await_ready(&dep, timeout, Duration::from_secs(1))?;
        ready.retain(|r| vm.is_none_or(|v| v == r.vm));
        ready
    } else {
        Vec::new()
    };
    let doc = serde_json::json!({
        "deployment": dep,
        "op": op,
        "driver": m.driver().kind().name(),
        "simulated": m.driver().kind().simulated(),
        "vms": reports,
        "ready": ready,
    });
    out.emit(&doc, || reports_text(&dep, op, &reports) + &crate::cluster::ready_text(&ready));
    let all_ready = ready.iter().all(vw_node::report::VmReady::ok);
    Ok(if all_ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn secs(micros: u64) -> String {
    format!("{:.3} s", micros as f64 / 1e6)
}

fn reports_text(dep: &str, op: Op, reports: &[VmReport]) -> String {
    let mut s = format!("{op} {dep}:");
    for r in reports {
        if r.steps.is_empty() {
            s.push_str(&format!("\n  {:<20} {} (nothing to do)", r.vm, r.state));
        } else {
            let steps: Vec<String> =
                r.steps.iter().map(|t| format!("{} {}", t.step, secs(t.micros))).collect();
            s.push_str(&format!(
                "\n  {:<20} {:<9} {}",
                r.vm,
                r.state.to_string(),
                steps.join(", ")
            ));
        }
    }
    s
}

/// `vw status [DEPLOYMENT]`.
pub fn status(
    store: &Path,
    config: ClusterConfig,
    deployment: Option<&str>,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let m = open(store, config, out)?;
    let vms: Vec<VmSeen> =
        m.status(deployment)?.iter().map(|v| VmSeen::of(&v.record, v.domain)).collect();
    let host = m.host()?;
    let doc = serde_json::json!({
        "driver": m.driver().kind().name(),
        "simulated": m.driver().kind().simulated(),
        "host": host,
        "vms": vms.iter().map(VmOut::from).collect::<Vec<_>>(),
    });
    out.emit(&doc, || status_text(&m, &host, &vms));
    Ok(ExitCode::SUCCESS)
}

fn status_text(m: &Manager, host: &manager::HostCapacity, vms: &[VmSeen]) -> String {
    let mut s = driver_note(m);
    s.push_str(&format!(
        "\ncapacity: {} MiB ({}), {} CPUs ({}), {} vCPUs per CPU",
        host.memory_mib, host.memory_from, host.cpus, host.cpus_from, host.vcpus_per_cpu
    ));
    if vms.is_empty() {
        s.push_str("\nno deployments on this host");
        return s;
    }
    s.push_str(&format!(
        "\n{:<20} {:<12} {:<9} {:<9} {:<16} last steps",
        "VM", "deployment", "state", "domain", "private address"
    ));
    for r in vms {
        let ip = r.nics.first().map(|n| n.ip.to_string()).unwrap_or_else(|| "-".into());
        let domain = r.domain.map_or("-".to_owned(), |d| d.to_string());
        let last: Vec<String> =
            r.last_steps.iter().map(|t| format!("{} {}", t.step, secs(t.micros))).collect();
        s.push_str(&format!(
            "\n{:<20} {:<12} {:<9} {:<9} {:<16} {}",
            r.name,
            r.deployment,
            r.state.to_string(),
            domain,
            ip,
            last.join(", ")
        ));
        if let Some(note) = &r.note {
            s.push_str(&format!("\n  note: {note}"));
        }
    }
    s
}
