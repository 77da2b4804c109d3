//! `vw demo`: the main job on a local cluster, in a scratch directory, torn down after.
//!
//! It starts N `vwd` peers (default 8) on loopback, each with its own store and the
//! simulated Xen driver (which says so); generates a base OS image, a head and a worker
//! image built on it, and a second VO's worker; imports them on the head (the base as
//! the second VO's head image, pinned); deploys
//! `examples/grid3-cluster.xml` through the head's local socket, exactly as `vw deploy`
//! does; then deploys `examples/vo2-cluster.xml`, a second VO's cluster that shares the
//! base OS, to show that only new chunks move; prints the phase timings and the bytes
//! each host lacked and received; stops and unstages both cluster-wide.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use vw_localnet::{DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::chunkstore::{ImageRef, ImportReport, PinReason, Store, Visibility};
use vw_node::control::deployment::{DeployOptions, DeployReport};
use vw_node::local::{LocalReply, LocalRequest};
use vw_node::manager::Op;
use vw_node::planner::{Policy, Strategy};

use crate::cluster::{self, deploy_text};
use crate::output::{bytes, Out};
use vw_node::storecmd::import_text;

const GRID3: &str = include_str!("../../examples/grid3-cluster.xml");
const VO2: &str = include_str!("../../examples/vo2-cluster.xml");

#[derive(Serialize)]
struct DemoReport {
    scratch: String,
    hosts: Vec<String>,
    imports: Vec<ImportReport>,
    deployments: Vec<DeployReport>,
    /// The second deployment's bytes sent over the bytes its hosts lacked.
    second_sent_over_lacked: f64,
}

fn sent_and_lacked(r: &DeployReport) -> (u64, u64) {
    r.hosts
        .iter()
        .filter_map(|h| h.stage.as_ref())
        .fold((0, 0), |(s, l), st| (s + st.received, l + st.lacked))
}

pub fn run(out: &Out, keep: bool, size_mib: u64, hosts: usize) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(size_mib >= 16, "--size-mib must be at least 16");
    anyhow::ensure!((1..=64).contains(&hosts), "--hosts must be 1 to 64");
    let scratch = tempfile::Builder::new().prefix("vw-demo-").tempdir()?;
    let dir = scratch.path();
    let say = |s: &str| out.note(s);

    let images = DemoImages::write(dir, size_mib)?;
    say(&format!("generated four {size_mib} MiB images (a base OS; a head, a worker and a second VO's worker on it) in {}", dir.display()));
    // Two VOs, each with its own key; every host's cluster config trusts both.
    let vos =
        LocalVos::create(&dir.join("cluster.toml"), &[("grid3", false, ""), ("vo2", false, "")])?;
    say("made ed25519 keys for VOs grid3 and vo2; every host's cluster config trusts them");
    let options =
        LocalNetOptions { cluster_config: Some(vos.cluster_config.clone()), ..Default::default() };
    let net = LocalNet::create(&dir.join("cluster"), hosts, &options)?;

    // The images live on the head, imported and sealed by their VOs before its vwd
    // opens the store.
    let mut imports = Vec::new();
    {
        let store = Store::open(&net.data_dirs[0])?;
        for (path, name) in [
            (&images.head, "grid3/head:1.0"),
            (&images.worker, "grid3/worker:1.0"),
            (&images.base, "vo2/head:1.0"),
            (&images.other, "vo2/worker:1.0"),
        ] {
            let r = vos.import(&store, path, name, Visibility::Private)?;
            say(&format!(
                "[head] {} (sealed by {})",
                import_text(&r),
                name.split('/').next().unwrap_or("?")
            ));
            imports.push(r);
        }
        store.pin(&ImageRef::Name("vo2/head:1.0".parse()?), &PinReason::Base)?;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let vwds = runtime.block_on(net.start())?;
    say(&format!(
        "\nstarted {hosts} vwd peers on loopback ({}), the head first; Xen driver: simulated (configs are checked and domain states tracked, no guest runs)",
        net.names.join(", ")
    ));
    let result = deploy_both(&net, &vos, out);
    runtime.block_on(async {
        for v in vwds {
            v.shutdown().await;
        }
    });
    let deployments = result?;

    let (sent, lacked) = sent_and_lacked(&deployments[1]);
    let ratio = if lacked == 0 { 1.0 } else { sent as f64 / lacked as f64 };
    let report = DemoReport {
        scratch: dir.display().to_string(),
        hosts: net.names.clone(),
        imports,
        second_sent_over_lacked: ratio,
        deployments,
    };
    if keep {
        let kept = scratch.keep();
        say(&format!("\nkept {}", kept.display()));
    }
    let lost: usize = report.deployments.iter().map(|d| d.lost.len()).sum();
    out.emit(&report, || {
        let (first_sent, _) = sent_and_lacked(&report.deployments[0]);
        format!(
            "\ndemo ok: grid3 ({} VMs) moved {} to {} hosts; vo2, sharing the base OS, moved {} for {} its hosts lacked ({ratio:.3}×); both stopped and unstaged (simulated Xen driver: no guest ran)",
            report.deployments[0].vms.len(),
            bytes(first_sent),
            hosts,
            bytes(sent),
            bytes(lacked)
        )
    });
    anyhow::ensure!(lost == 0, "{lost} VMs were lost");
    anyhow::ensure!(ratio <= 1.05, "the second VO sent {ratio:.3}× what its hosts lacked");
    Ok(ExitCode::SUCCESS)
}

/// Deploys both workspaces through the head's socket, then stops and unstages them.
fn deploy_both(net: &LocalNet, vos: &LocalVos, out: &Out) -> anyhow::Result<Vec<DeployReport>> {
    let socket = net.head_socket();
    let mut reports = Vec::new();
    for (text, source, vo) in
        [(GRID3, "examples/grid3-cluster.xml", "grid3"), (VO2, "examples/vo2-cluster.xml", "vo2")]
    {
        out.note(&format!("\nvw deploy --vo {vo} {source}"));
        let request = LocalRequest::Deploy {
            workspace: text.to_owned(),
            source: source.to_owned(),
            ticket: vos.ticket(vo, text)?,
            options: DeployOptions::new(Strategy::Auto, Policy::Spread),
        };
        let LocalReply::Deployed { report } = cluster::call(&socket, &request, out)? else {
            anyhow::bail!("the head answered a deploy with something else");
        };
        out.note(&deploy_text(&report));
        reports.push(*report);
    }
    for report in &reports {
        for op in [Op::Stop, Op::Unstage] {
            let request = LocalRequest::Run { deployment: report.deployment.to_string(), op };
            let LocalReply::Ran { hosts } = cluster::call(&socket, &request, out)? else {
                anyhow::bail!("the head answered {op} with something else");
            };
            if let Some(failed) = hosts.iter().find(|h| h.result.is_err()) {
                anyhow::bail!("{op} {} on {}: {:?}", report.deployment, failed.host, failed.result);
            }
        }
        out.note(&format!("\nvw stop {0}; vw unstage {0}: done on every host", report.deployment));
    }
    Ok(reports)
}
