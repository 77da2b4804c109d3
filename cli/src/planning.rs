//! `vw plan`: placement, addresses, the distribution plan and its predicted time.

use std::path::Path;
use std::process::ExitCode;

use vw_node::chunkstore::Store;
use vw_node::config::ClusterConfig;
use vw_node::hosts::HostsFile;
use vw_node::plan::{plan_workspace, PlanReport, Taken};
use vw_node::planner::{Policy, Strategy};
use vw_node::workspace;

use crate::output::{bytes, Out};

/// `vw plan`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Workspace documents, planned in order: each after what the earlier ones take
    /// (two VOs' clusters sharing hosts).
    #[arg(required = true)]
    pub workspaces: Vec<std::path::PathBuf>,
    /// The hosts file (TOML; docs/operations.md).
    #[arg(long)]
    pub hosts: std::path::PathBuf,
    /// star, chain, treeK, stripedSxK or auto.
    #[arg(long, default_value = "auto")]
    pub strategy: Strategy,
    /// spread or pack.
    #[arg(long, default_value = "spread")]
    pub policy: String,
    /// Also print each host's predicted finish.
    #[arg(long)]
    pub simulate: bool,
}

/// Plans `args`'s workspaces, in order, on its hosts file, with `policy` (parsed from
/// `args.policy`) and the images in `store`.
pub fn run(
    store: &Path,
    config: ClusterConfig,
    policy: Policy,
    args: &PlanArgs,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let PlanArgs { workspaces: workspace_files, hosts: hosts_file, strategy, simulate, .. } = args;
    let (strategy, per_host) = (*strategy, *simulate);
    let hosts = HostsFile::load(hosts_file)?;
    let store = Store::open(store)?;
    let mut taken = Taken::default();
    let mut reports = Vec::new();
    for file in workspace_files {
        let spec = workspace::load(file)?;
        let report = plan_workspace(&store, &spec, &hosts, &config, policy, strategy, &mut taken)
            .map_err(|e| anyhow::anyhow!("workspace {}: {e}", spec.name))?;
        reports.push(report);
    }
    /// One document for every workspace (serialised directly: a plan for 10,000 hosts
    /// is megabytes, too big to build as a `serde_json::Value` first).
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        workspaces: &'a [PlanReport],
    }
    out.emit(&Doc { workspaces: &reports }, || {
        reports
            .iter()
            .map(|r| {
                let body = text(r, &hosts, policy, per_host);
                if reports.len() > 1 {
                    format!("== {} ==\n{body}", r.workspace)
                } else {
                    body
                }
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    Ok(ExitCode::SUCCESS)
}

fn text(r: &PlanReport, hosts: &HostsFile, policy: Policy, per_host: bool) -> String {
    let width = r.placement.iter().map(|p| p.vm.as_str().len()).max().unwrap_or(0);
    let mut s = String::from("hosts:");
    let name_width = hosts.cluster.hosts().iter().map(|h| h.name.len()).max().unwrap_or(0);
    for h in hosts.cluster.hosts() {
        s.push_str(&format!(
            "\n  {:<name_width$}  {} MiB, {} CPUs, {} vCPUs ({:.1} per CPU){}",
            h.name,
            h.memory_mib,
            h.cpus,
            h.vcpus,
            f64::from(h.vcpus) / f64::from(h.cpus.max(1)),
            if h.alive { "" } else { ", dead" }
        ));
    }
    s.push_str(&format!(
        "\nplacement ({}):",
        if policy == Policy::Spread { "spread" } else { "pack" }
    ));
    for p in &r.placement {
        let cores = p.cores.as_ref().map(|c| format!(" cores {c:?}")).unwrap_or_default();
        s.push_str(&format!("\n  {:<width$} → {}{cores}   {}", p.vm, p.host, p.reason));
    }
    s.push_str("\naddresses:");
    for p in &r.placement {
        let nics: Vec<String> = p
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| format!("eth{i} {} {} ({})", n.ip, n.mac, n.network))
            .collect();
        s.push_str(&format!("\n  {:<width$}   {}", p.vm, nics.join(", ")));
    }
    s.push_str(&format!("\nplan: {}, {} streams", r.strategy, r.streams));
    for i in &r.images {
        s.push_str(&format!(
            "\n  {} ({} distinct) from {}: {} host{} lack {}",
            i.image,
            bytes(i.bytes),
            i.source.as_deref().unwrap_or("-"),
            i.receivers,
            if i.receivers == 1 { "" } else { "s" },
            bytes(i.lacking)
        ));
    }
    if let Some((h, b)) = &r.busiest_sender {
        s.push_str(&format!("\n  busiest sender: {h}, {}", bytes(*b)));
    }
    let sim = &r.simulation;
    s.push_str(&format!(
        "\npredicted staging: {:.1} s; physical limit {:.1} s (the most a host lacks over its downlink); ratio {:.2}",
        sim.finish,
        sim.limit,
        sim.ratio()
    ));
    if per_host {
        for (h, t) in hosts.cluster.hosts().iter().zip(&sim.host_finish) {
            s.push_str(&format!("\n  {:<12} {:.1} s", h.name, t));
        }
    }
    s
}
