//! Faults during a deployment, with hosts as `vwd` child processes on loopback (rate
//! capped, so a stage lasts long enough to be interrupted): a host killed in the middle
//! of the chain, one that stalls there, and a `vwd` restarted mid-stage.

use std::path::Path;

use vw_localnet::{cluster_workspace, ChildVwd, DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::chunkstore::{Store, Visibility};
use vw_node::control::deployment::{DeployEvent, DeployOptions, DeployReport};
use vw_node::control::FailureKind;
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::names::{HostName, VmName};
use vw_node::planner::{Policy, Strategy};

/// A 4-host net capped at `cap`, the images imported on the head, hosts 1.. started as
/// child processes. Returns the net, the worker image's distinct bytes, the children.
fn cluster(dir: &Path, cap: &str) -> (LocalNet, u64, Vec<ChildVwd>) {
    let vos = LocalVos::create(&dir.join("cluster.toml"), &[("demo", false, "")]).expect("VO");
    let options = LocalNetOptions {
        cap: Some(cap.into()),
        cluster_config: Some(vos.cluster_config.clone()),
        ..Default::default()
    };
    let net = LocalNet::create(dir, 4, &options).expect("net");
    let images = DemoImages::write(dir, 64).expect("images");
    let worker_bytes = {
        let store = Store::open(&net.data_dirs[0]).expect("head store");
        for (path, name) in [(&images.base, "demo/base:1"), (&images.worker, "demo/worker:1")] {
            vos.import(&store, path, name, Visibility::Private).expect("import");
        }
        let workspace = cluster_workspace("grid", "demo/base:1", "demo/worker:1", 3);
        // A ticket deploys once: one per deploy the tests make.
        for n in 1..=2 {
            let ticket = vos.ticket("demo", &workspace).expect("ticket");
            std::fs::write(dir.join(format!("ticket-{n}")), ticket).expect("ticket");
        }
        let probe = Store::open(&dir.join("probe")).expect("probe");
        let r = probe.import(&images.worker, None, &()).expect("import");
        r.counts.new_bytes
    };
    let children = (1..4).map(|i| spawn(&net, i, dir)).collect();
    (net, worker_bytes, children)
}

fn spawn(net: &LocalNet, i: usize, dir: &Path) -> ChildVwd {
    let log = dir.join(format!("{}.log", net.names[i]));
    net.spawn(i, Path::new(env!("CARGO_BIN_EXE_vwd")), &log).expect("vwd child")
}

/// Deploys through the head's socket with the VO's `n`th ticket (signed when the
/// cluster was made), calling `on_event` for each event.
fn deploy(net: &LocalNet, n: usize, mut on_event: impl FnMut(&DeployEvent)) -> DeployReport {
    let workspace = cluster_workspace("grid", "demo/base:1", "demo/worker:1", 3);
    let ticket = std::fs::read(net.data_dirs[0].join(format!("../ticket-{n}"))).expect("ticket");
    let request = LocalRequest::Deploy {
        workspace,
        source: "faults.xml".into(),
        ticket,
        options: DeployOptions::new(Strategy::Chain, Policy::Spread),
    };
    match local::call(&net.head_socket(), &request, &mut on_event).expect("socket") {
        LocalReply::Deployed { report } => *report,
        other => panic!("deploy failed: {other:?}"),
    }
}

/// Deploys with the VO's first ticket and, once a host that relays (not the head, not
/// the chain's tail) has received 2 MiB, calls `hit` with its index, once. Returns the
/// report and that host.
fn deploy_hitting_a_relay(net: &LocalNet, mut hit: impl FnMut(usize)) -> (DeployReport, HostName) {
    let mut victim: Option<HostName> = None;
    let mut done = false;
    let report = deploy(net, 1, |e| match e {
        DeployEvent::Planned { edges, .. } => {
            victim = edges.iter().map(|(from, _)| from).find(|f| *f != "head").cloned();
        }
        DeployEvent::Progress { host, progress }
            if Some(host) == victim.as_ref() && progress.bytes > 2 << 20 && !done =>
        {
            hit(net.names.iter().position(|n| host == n).expect("host"));
            done = true;
        }
        _ => {}
    });
    assert!(done, "the relay was hit mid-stage: {report:#?}");
    (report, victim.expect("a relaying host"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_mid_chain_loses_its_vms_and_its_children_re_attach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, _, children) = cluster(dir.path(), "80Mbit");
    let head = net.start_one(0).await.expect("head");

    let net2 = net.clone();
    let (report, victim) = tokio::task::spawn_blocking(move || {
        deploy_hitting_a_relay(&net2, |i| children[i - 1].signal("KILL").expect("kill"))
    })
    .await
    .expect("task");

    let lost_vms: Vec<VmName> =
        report.placement.iter().filter(|p| p.host == victim).map(|p| p.vm.clone()).collect();
    assert_eq!(report.lost, lost_vms, "{report:#?}");
    // The report says the victim went away, not that it refused or ran out of disk.
    let killed = report.hosts.iter().find(|h| h.host == victim).expect("the victim's outcome");
    let failure = killed.error.as_ref().expect("the victim failed");
    assert_eq!(failure.kind, FailureKind::Unreachable, "{failure:?}");
    let victim_id =
        net.ids[net.names.iter().position(|n| *n == victim).expect("victim")].to_string();
    let mut re_attached = false;
    for h in report.hosts.iter().filter(|h| h.host != victim) {
        let s = h.stage.as_ref().unwrap_or_else(|| panic!("{} staged: {h:?}", h.host));
        assert!(h.error.is_none(), "{h:?}");
        assert_eq!(s.received, s.lacked, "{}: every chunk it lacked, once", h.host);
        re_attached |= s.dropped.iter().any(|(p, _)| *p == victim_id);
    }
    assert!(
        re_attached,
        "a child of the victim dropped it and finished from another holder: {report:#?}"
    );
    assert_eq!(report.vms.len(), 4 - lost_vms.len(), "the others run");
    head.shutdown().await;
}

/// A relay that stops sending mid-stage (its `vwd` frozen with SIGSTOP for 15 s: every
/// connection stays open, nothing moves) is dropped by its child for falling below the
/// rate the plan expects of it, well before the 30 s that give a silent peer up, and the
/// child finishes from another holder. Thawed, the relay finishes too: nobody is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_stalls_mid_chain_is_dropped_by_the_plans_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, _, children) = cluster(dir.path(), "80Mbit");
    let head = net.start_one(0).await.expect("head");

    let net2 = net.clone();
    let (report, victim) = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            deploy_hitting_a_relay(&net2, |i| {
                let child = &children[i - 1];
                child.signal("STOP").expect("stop");
                scope.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(15));
                    child.signal("CONT").expect("cont");
                });
            })
        })
    })
    .await
    .expect("task");

    assert!(report.lost.is_empty(), "the frozen host came back and finished: {report:#?}");
    let victim_id =
        net.ids[net.names.iter().position(|n| *n == victim).expect("victim")].to_string();
    let mut dropped = Vec::new();
    for h in &report.hosts {
        let s = h.stage.as_ref().unwrap_or_else(|| panic!("{} staged: {h:?}", h.host));
        assert!(h.error.is_none(), "{h:?}");
        assert_eq!(s.received, s.lacked, "{}: every chunk it lacked, once", h.host);
        dropped.extend(s.dropped.iter().filter(|(p, _)| *p == victim_id).map(|(_, why)| why));
    }
    assert!(
        dropped.iter().any(|why| why.contains("too slow") && why.contains("planned")),
        "a child of the frozen relay dropped it below the plan's floor: {report:#?}"
    );
    assert_eq!(report.vms.len(), 4, "every VM runs");
    head.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vwd_restarted_mid_stage_resumes_without_fetching_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, worker_bytes, children) = cluster(dir.path(), "80Mbit");
    let head = net.start_one(0).await.expect("head");

    // Stop one worker's vwd (SIGTERM: it shuts down cleanly) when it has a third.
    let net2 = net.clone();
    let (first, victim, seen, children) = tokio::task::spawn_blocking(move || {
        let mut victim: Option<(HostName, u64)> = None;
        let report = deploy(&net2, 1, |e| {
            if let DeployEvent::Progress { host, progress } = e {
                if host != "head" && victim.is_none() && progress.bytes > worker_bytes / 3 {
                    let i = net2.names.iter().position(|n| host == n).expect("host");
                    children[i - 1].signal("TERM").expect("term");
                    victim = Some((host.clone(), progress.bytes));
                }
            }
        });
        let (victim, seen) = victim.expect("a worker was stopped mid-stage");
        (report, victim, seen, children)
    })
    .await
    .expect("task");
    assert!(first
        .lost
        .iter()
        .all(|vm| first.placement.iter().any(|p| p.vm == *vm && p.host == victim)));
    assert!(!first.lost.is_empty(), "{first:#?}");

    // Restart it and deploy the same document again (with a new ticket: the first was
    // used): it resumes.
    let i = net.names.iter().position(|n| *n == victim).expect("victim");
    let mut children = children;
    children[i - 1] = spawn(&net, i, dir.path());
    let net2 = net.clone();
    let second = tokio::task::spawn_blocking(move || deploy(&net2, 2, |_| {})).await.expect("task");
    assert!(second.resumed && second.lost.is_empty(), "{second:#?}");
    let s = second
        .hosts
        .iter()
        .find(|h| h.host == victim)
        .and_then(|h| h.stage.clone())
        .expect("the restarted host staged");
    assert_eq!(s.received, s.lacked);
    assert!(
        s.lacked + seen <= worker_bytes,
        "it fetched again none of the {seen} bytes it had reported: lacked {} of {worker_bytes}",
        s.lacked
    );
    for h in second.hosts.iter().filter(|h| h.host != victim) {
        assert_eq!(h.stage.as_ref().map(|s| s.received), Some(0), "{h:?} had everything");
    }
    head.shutdown().await;
}
