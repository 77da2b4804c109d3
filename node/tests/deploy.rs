//! `vw deploy` end to end on loopback: a cluster of vwds in this process, the head
//! driving them over `/vw/control`, chunks moving over `/vw/chunks`, `vw`'s side
//! through the head's local socket, each deployment on behalf of a VO (`demo`, whose
//! base OS is public and worker private, or `vo2`).

use std::path::Path;

use vw_localnet::{cluster_workspace, DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::access::{Ticket, TicketTerms};
use vw_node::chunkstore::{ImageRef, Store, Visibility};
use vw_node::config::DriverKind;
use vw_node::control::deployment::{DeployEvent, DeployOptions, DeployPhase, DeployReport};
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::manager::VmState;
use vw_node::names::HostName;
use vw_node::planner::{Policy, Strategy};

/// Imports the demo images into the head's store (before its vwd opens it), sealed:
/// `demo`'s base public, its worker private, `vo2`'s worker private.
fn import(head: &Path, images: &DemoImages, vos: &LocalVos) {
    let store = Store::open(head).expect("head store");
    for (path, name, visibility) in [
        (&images.base, "demo/base:1", Visibility::Public),
        (&images.worker, "demo/worker:1", Visibility::Private),
        (&images.other, "vo2/worker:1", Visibility::Private),
    ] {
        vos.import(&store, path, name, visibility).expect("import");
    }
}

async fn deploy(
    net: &LocalNet,
    vos: &LocalVos,
    vo: &str,
    text: String,
    strategy: Strategy,
) -> (DeployReport, Vec<DeployEvent>) {
    let ticket = vos.ticket(vo, &text).expect("ticket");
    let request = LocalRequest::Deploy {
        workspace: text,
        source: "test.xml".into(),
        ticket,
        options: DeployOptions::new(strategy, Policy::Spread),
    };
    deployed(net, request).await
}

/// Sends `request` (a deploy, or a create) to the head and returns its report and
/// events; every host's driver must be the simulated one, by name.
async fn deployed(net: &LocalNet, request: LocalRequest) -> (DeployReport, Vec<DeployEvent>) {
    let socket = net.head_socket();
    tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        match local::call(&socket, &request, |e| events.push(e.clone())).expect("socket") {
            LocalReply::Deployed { report } => {
                // Every host says which driver ran its VMs: here, by name, simulated.
                for h in &report.hosts {
                    assert_eq!(h.driver, Some(DriverKind::Simulated), "{}", h.host);
                }
                (*report, events)
            }
            other => panic!("deploy failed: {other:?}"),
        }
    })
    .await
    .expect("task")
}

/// A loopback cluster of `hosts` under `dir` trusting `vos` (name, isolated, extra
/// `[[vo]]` lines such as a quota), with demo images of `size_mib` MiB imported on the
/// head (its vwds not started yet).
fn cluster_with(
    dir: &Path,
    hosts: usize,
    size_mib: u64,
    vos: &[(&str, bool, &str)],
) -> (LocalNet, DemoImages, LocalVos) {
    let vos = LocalVos::create(&dir.join("cluster.toml"), vos).expect("VOs");
    let options =
        LocalNetOptions { cluster_config: Some(vos.cluster_config.clone()), ..Default::default() };
    let net = LocalNet::create(dir, hosts, &options).expect("net");
    let images = DemoImages::write(dir, size_mib).expect("images");
    import(&net.data_dirs[0], &images, &vos);
    (net, images, vos)
}

/// A loopback cluster trusting `demo` and `vo2`, neither isolated.
fn cluster(dir: &Path, hosts: usize, size_mib: u64) -> (LocalNet, DemoImages, LocalVos) {
    cluster_with(dir, hosts, size_mib, &[("demo", false, ""), ("vo2", false, "")])
}

/// The distinct bytes a store holding the images `held` lacks of `image` (scratch
/// stores under `dir`).
fn lacks(dir: &Path, held: &[&Path], image: &Path) -> u64 {
    let source = Store::open(&dir.join("source")).expect("store");
    let id = source.import(image, None, &()).expect("import").manifest;
    let holder = Store::open(&dir.join("holder")).expect("store");
    for h in held {
        holder.import(h, None, &()).expect("import");
    }
    holder.missing(&source.manifest(&id).expect("manifest")).expect("missing").bytes
}

/// The plan's (sender, receiver) edges, from a deploy's events.
fn planned_edges(events: &[DeployEvent]) -> Vec<(HostName, HostName)> {
    events
        .iter()
        .find_map(|e| match e {
            DeployEvent::Planned { edges, .. } => Some(edges.clone()),
            _ => None,
        })
        .expect("a plan")
}

/// The hosts that run the workers of a deployment.
fn worker_hosts(report: &DeployReport) -> Vec<String> {
    let workers = report.placement.iter().filter(|p| p.vm.as_str().contains("worker"));
    workers.map(|p| p.host.to_string()).collect()
}

/// Whether every host that runs a VM of `image` holds it byte for byte.
fn holds_exactly(net: &LocalNet, hosts: &[String], image: &str, original: &Path) {
    let want = std::fs::read(original).expect("original");
    for h in hosts {
        let i = net.names.iter().position(|n| n == h).expect("host");
        let store = Store::open(&net.data_dirs[i]).expect("store");
        let id = store.resolve(&ImageRef::Name(image.parse().expect("name"))).expect("resolved");
        let out = net.data_dirs[i].join("check.img");
        let _ = std::fs::remove_file(&out);
        store.export(&id, &out, false, &()).expect("export");
        assert!(std::fs::read(&out).expect("read") == want, "{image} on {h} is byte-exact");
        std::fs::remove_file(&out).expect("remove");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_deploys_end_to_end_and_a_second_vo_moves_only_new_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 5, 32);

    let vwds = net.start().await.expect("start");
    let (report, events) = deploy(
        &net,
        &vos,
        "demo",
        cluster_workspace("grid", "demo/base:1", "demo/worker:1", 4),
        Strategy::Chain,
    )
    .await;
    assert!(report.lost.is_empty(), "{report:#?}");
    assert_eq!(report.vms.len(), 5);
    assert!(report.vms.iter().all(|v| v.state == VmState::Running), "{:?}", report.vms);
    assert!(events.iter().any(|e| matches!(e, DeployEvent::Progress { .. })), "progress streamed");
    let phases: Vec<String> = report.phases.iter().map(|p| p.phase.to_string()).collect();
    assert_eq!(
        phases,
        ["validate", "inventory", "place", "addresses", "plan", "stage", "load", "create", "ready"]
    );
    // Simulated guests are ready at once, and say they are simulated.
    assert_eq!(report.ready.len(), 5, "{:?}", report.ready);
    assert!(report.ready.iter().all(|r| r.ok() && r.report.as_ref().is_some_and(|g| g.simulated)));
    // Every host received exactly what it lacked.
    for h in &report.hosts {
        let s = h.stage.as_ref().expect("staged");
        assert_eq!(s.received, s.lacked, "{}: {s:?}", h.host);
    }
    let workers = worker_hosts(&report);
    assert_eq!(workers.len(), 4, "spread: one worker per host");

    // A second VO's cluster shares the base: only its own chunks move.
    let (second, _) = deploy(
        &net,
        &vos,
        "vo2",
        cluster_workspace("vo2", "demo/base:1", "vo2/worker:1", 4),
        Strategy::Chain,
    )
    .await;
    assert!(second.lost.is_empty(), "{second:#?}");
    // What a host that holds the first VO's worker lacks of the second VO's.
    let new_bytes = lacks(&dir.path().join("probe"), &[&images.worker], &images.other);
    assert!(
        new_bytes > 0 && new_bytes < lacks(&dir.path().join("cold"), &[], &images.other),
        "the second VO adds some chunks"
    );
    let mut received = 0;
    for h in &second.hosts {
        let s = h.stage.as_ref().expect("staged");
        assert_eq!(s.received, s.lacked, "{}: {s:?}", h.host);
        assert!(
            s.lacked <= new_bytes,
            "{}: lacked {} but the second VO adds {new_bytes}",
            h.host,
            s.lacked
        );
        received += s.received;
    }
    assert!(received > 0, "the new chunks moved");

    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &worker_hosts(&report), "demo/worker:1", &images.worker);
    holds_exactly(&net, &worker_hosts(&second), "vo2/worker:1", &images.other);
}

/// The paper's operations apart: a cluster staged now (on every host, the whole plan)
/// and created later by name, with the same reports.
/// Two image names with the same contents are one manifest: a cluster whose head and
/// workers use the two names stages on every host. Before, the head granted the
/// manifest to the second name's stagers only, and the host staging the first was
/// refused its chunks and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_names_of_one_image_stage_on_every_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 4, 16);
    {
        let store = Store::open(&net.data_dirs[0]).expect("head store");
        vos.import(&store, &images.worker, "demo/twin:1", Visibility::Private).expect("import");
    }
    let vwds = net.start().await.expect("start");
    // A first cluster takes the head host, so the second's head node (the first name)
    // goes to a host that must fetch it.
    let first = cluster_workspace("first", "demo/base:1", "demo/base:1", 1);
    deploy(&net, &vos, "demo", first, Strategy::Chain).await;
    let text = cluster_workspace("twin", "demo/twin:1", "demo/worker:1", 2);
    let (report, _) = deploy(&net, &vos, "demo", text, Strategy::Chain).await;
    let head = report.placement.iter().find(|p| p.vm == "twin-head").expect("placed");
    assert_ne!(head.host, "head", "the first name is staged by a host that fetches it");
    assert!(report.lost.is_empty(), "{report:#?}");
    assert_eq!(report.ready.iter().filter(|r| r.ok()).count(), 3, "{:?}", report.ready);
    for v in vwds {
        v.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_staged_now_is_created_later_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, _images, vos) = cluster(dir.path(), 3, 16);
    let vwds = net.start().await.expect("start");
    let text = cluster_workspace("pre", "demo/base:1", "demo/worker:1", 2);
    let mut options = DeployOptions::new(Strategy::Chain, Policy::Spread);
    options.stage_only = true;
    let ticket = vos.ticket("demo", &text).expect("ticket");
    let request =
        LocalRequest::Deploy { workspace: text, source: "pre.xml".into(), ticket, options };
    let (staged, _) = deployed(&net, request).await;
    let phases: Vec<DeployPhase> = staged.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases.last(), Some(&DeployPhase::Stage), "{phases:?}");
    assert!(staged.ready.is_empty() && staged.lost.is_empty(), "{staged:#?}");
    assert_eq!(staged.vms.len(), 3);
    assert!(staged.vms.iter().all(|v| v.state == VmState::Staged), "{:?}", staged.vms);
    for h in &staged.hosts {
        let s = h.stage.as_ref().expect("every host staged");
        assert!(h.host == "head" || s.received > 0, "{}: {s:?}", h.host);
    }

    let (created, _) = deployed(&net, LocalRequest::Create { deployment: "pre".into() }).await;
    let phases: Vec<DeployPhase> = created.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [DeployPhase::Load, DeployPhase::Create, DeployPhase::Ready]);
    assert_eq!(created.strategy, None, "nothing was staged");
    assert!(created.lost.is_empty(), "{created:#?}");
    assert_eq!(created.vms.len(), 3);
    assert!(created.vms.iter().all(|v| v.state == VmState::Running), "{:?}", created.vms);
    assert_eq!(created.ready.iter().filter(|r| r.ok()).count(), 3, "{:?}", created.ready);
    assert_eq!(created.placement, staged.placement);
    // A deployment the head does not know is refused by name.
    let unknown = deploy_error_of(&net, LocalRequest::Create { deployment: "nope".into() }).await;
    assert!(unknown.contains("nope"), "{unknown}");
    for v in vwds {
        v.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_striped_plan_deploys_with_every_host_both_sender_and_receiver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 6, 32);
    let vwds = net.start().await.expect("start");
    let strategy = Strategy::Striped { stripes: 4, k: 2 };
    let (report, events) = deploy(
        &net,
        &vos,
        "demo",
        cluster_workspace("striped", "demo/base:1", "demo/worker:1", 5),
        strategy,
    )
    .await;
    assert!(report.lost.is_empty(), "{report:#?}");
    let relays = planned_edges(&events).iter().filter(|(from, _)| from != "head").count();
    assert!(relays > 0, "hosts forward to each other");
    for h in &report.hosts {
        let s = h.stage.as_ref().expect("staged");
        assert_eq!(s.received, s.lacked, "{}: {s:?}", h.host);
        assert!(s.dropped.is_empty(), "{}: no sender failed: {:?}", h.host, s.dropped);
    }
    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &worker_hosts(&report), "demo/worker:1", &images.worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_host_is_the_tail_of_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 4, 16);
    // node1 has the slowest link: told by its caps, which it reports in its inventory.
    let slow = &net.configs[1];
    let config = std::fs::read_to_string(slow).expect("config");
    std::fs::write(slow, format!("upload_cap = \"400Mbit\"\ndownload_cap = \"400Mbit\"\n{config}"))
        .expect("config");
    let vwds = net.start().await.expect("start");
    let (report, events) = deploy(
        &net,
        &vos,
        "demo",
        cluster_workspace("slow", "demo/base:1", "demo/worker:1", 3),
        Strategy::Chain,
    )
    .await;
    assert!(report.lost.is_empty(), "{report:#?}");
    let edges = planned_edges(&events);
    assert!(edges.iter().any(|(_, to)| to == "node1"), "node1 receives: {edges:?}");
    assert!(
        edges.iter().all(|(from, _)| from != "node1"),
        "the slow host feeds no one, so it holds back only itself: {edges:?}"
    );
    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &worker_hosts(&report), "demo/worker:1", &images.worker);
}

/// Sends a deploy that must fail; returns the head's error.
async fn deploy_error(net: &LocalNet, ticket: Vec<u8>, workspace: String) -> String {
    let request = LocalRequest::Deploy {
        workspace,
        source: "bad.xml".into(),
        ticket,
        options: DeployOptions::new(Strategy::Chain, Policy::Spread),
    };
    deploy_error_of(net, request).await
}

/// Sends a request that must fail; returns the head's error.
async fn deploy_error_of(net: &LocalNet, request: LocalRequest) -> String {
    let socket = net.head_socket();
    tokio::task::spawn_blocking(move || match local::call(&socket, &request, |_| {}) {
        Ok(LocalReply::Failed { error }) => error,
        other => panic!("the request must fail: {other:?}"),
    })
    .await
    .expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_are_refused_with_what_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    // vo2 may take 200 MiB of guest memory in all.
    let (net, _images, vos) = cluster_with(
        dir.path(),
        2,
        16,
        &[("demo", false, ""), ("vo2", false, "[vo.quota]\nmemory_mib = 200\n")],
    );
    let vwds = net.start().await.expect("start");

    // VO vo2 may not deploy demo's private worker; demo's public base it may.
    let theirs = cluster_workspace("theirs", "demo/base:1", "demo/worker:1", 1);
    let err = deploy_error(&net, vos.ticket("vo2", &theirs).expect("ticket"), theirs).await;
    assert!(err.contains("image demo/worker:1 is private to VO demo; VO vo2 may not"), "{err}");
    // A VO the cluster does not trust, even under a trusted VO's name.
    let intruder = LocalVos::create(&dir.path().join("other.toml"), &[("demo", false, "")])
        .expect("another demo key");
    let mine = cluster_workspace("mine", "demo/base:1", "demo/worker:1", 1);
    let err =
        deploy_error(&net, intruder.ticket("demo", &mine).expect("ticket"), mine.clone()).await;
    assert!(err.contains("does not verify with VO demo's key"), "{err}");
    let err = deploy_error(&net, vec![], mine).await;
    assert!(err.contains("carries no VO ticket") && err.contains("--vo NAME"), "{err}");
    // Over the quota: a head node and a worker.
    let big = cluster_workspace("big", "demo/base:1", "vo2/worker:1", 1);
    let err = deploy_error(&net, vos.ticket("vo2", &big).expect("ticket"), big).await;
    assert!(
        err.contains("VO vo2 is over its memory_mib quota: its deployments would take 384 MiB")
            && err.contains("the quota is 200 MiB"),
        "{err}"
    );

    let broken =
        cluster_workspace("bad", "demo/base:1", "demo/worker:1", 1).replace("</memory>", "");
    let err = deploy_error(&net, vec![], broken).await;
    assert!(
        err.starts_with("bad.xml:7:3: malformed XML"),
        "names the file, line and column: {err}"
    );

    let ghost = cluster_workspace("ghost", "demo/base:1", "vo9/ghost:1", 1);
    let err = deploy_error(&net, vos.ticket("demo", &ghost).expect("ticket"), ghost).await;
    assert!(err.contains("vo9/ghost:1") && err.contains("import it there"), "{err}");

    let huge = cluster_workspace("huge", "demo/base:1", "demo/worker:1", 1)
        .replace("<memory>128</memory>", "<memory>1048576</memory>");
    let err = deploy_error(&net, vos.ticket("demo", &huge).expect("ticket"), huge).await;
    assert!(err.contains("huge"), "names the workspace that does not fit: {err}");

    // The same name with another document is refused until it is unstaged.
    deploy(
        &net,
        &vos,
        "demo",
        cluster_workspace("twice", "demo/base:1", "demo/worker:1", 1),
        Strategy::Chain,
    )
    .await;
    let twice = cluster_workspace("twice", "demo/base:1", "demo/worker:1", 2);
    let err = deploy_error(&net, vos.ticket("demo", &twice).expect("ticket"), twice).await;
    assert!(err.contains("exists with a different workspace document"), "{err}");
    for v in vwds {
        v.shutdown().await;
    }
}

/// The cores each VM of `host` is pinned to, from the domain configs its vwd wrote.
fn pinned_in_configs(data_dir: &Path) -> Vec<(String, Vec<u32>)> {
    let mut vms = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("xen")).expect("xen configs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "cfg") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("config");
        let cpus = text
            .lines()
            .find_map(|l| l.strip_prefix("cpus = \""))
            .unwrap_or_else(|| panic!("{}: no cpus line in\n{text}", path.display()));
        let cores = cpus.trim_end_matches('"').split(',').map(|c| c.parse().expect("core"));
        let vm = path.file_stem().expect("stem").to_string_lossy().into_owned();
        vms.push((vm, cores.collect()));
    }
    vms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_co_located_clusters_never_share_a_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, _images, vos) = cluster(dir.path(), 3, 16);
    // Four cores per host: room for two VMs of two pinned vCPUs each; vCPUs
    // overcommitted 4:1, so that cores, not vCPUs, run out.
    let text = std::fs::read_to_string(&vos.cluster_config).expect("cluster config");
    let text = text.replacen("\n[host]\n", "\n[host]\ncpus = 4\n", 1).replacen(
        "\nvcpus_per_cpu = 1 ",
        "\nvcpus_per_cpu = 4 ",
        1,
    );
    assert!(text.contains("cpus = 4\n") && text.contains("vcpus_per_cpu = 4"), "{text}");
    std::fs::write(&vos.cluster_config, text).expect("cluster config");
    let vwds = net.start().await.expect("start");
    let pinned = |name: &str, worker: &str| {
        cluster_workspace(name, "demo/base:1", worker, 2)
            .replace("<vcpus>1</vcpus>", "<vcpus>2</vcpus><cpus>0-3</cpus>")
    };
    // Two VOs' clusters, one VM of each on every host.
    let (first, _) =
        deploy(&net, &vos, "demo", pinned("one", "demo/worker:1"), Strategy::Chain).await;
    let (second, _) =
        deploy(&net, &vos, "vo2", pinned("two", "vo2/worker:1"), Strategy::Chain).await;
    for report in [&first, &second] {
        assert!(report.lost.is_empty(), "{report:#?}");
        let hosts: std::collections::BTreeSet<&str> =
            report.placement.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(hosts.len(), 3, "spread over every host: {:?}", report.placement);
    }

    // What each host's vwd wrote for xl: every VM on two cores of its own.
    for (name, data) in net.names.iter().zip(&net.data_dirs) {
        let vms = pinned_in_configs(data);
        assert_eq!(vms.len(), 2, "{name}: one VM of each VO: {vms:?}");
        let mut seen = std::collections::BTreeSet::new();
        for (vm, cores) in &vms {
            assert_eq!(cores.len(), 2, "{name}: {vm} has its two vCPUs' cores: {vms:?}");
            assert!(cores.iter().all(|c| *c < 4 && seen.insert(*c)), "{name}: shared: {vms:?}");
        }
        // The head's records agree with what the host wrote.
        for report in [&first, &second] {
            for p in report.placement.iter().filter(|p| &p.host == name) {
                let (_, written) = vms.iter().find(|(vm, _)| *vm == p.vm).expect("written");
                assert_eq!(p.cores.as_ref(), Some(written), "{name}: {}", p.vm);
            }
        }
    }

    // `vw status` shows each VO holding two cores of every host, none of them shared.
    let socket = net.head_socket();
    let usage = tokio::task::spawn_blocking(move || {
        match local::call(&socket, &LocalRequest::Status { deployment: None }, |_| {}) {
            Ok(LocalReply::Status { vos, .. }) => vos,
            other => panic!("status: {other:?}"),
        }
    })
    .await
    .expect("task");
    let cores = |vo: &str| &usage.iter().find(|u| u.vo == vo).expect("VO in status").cores;
    for name in &net.names {
        let (a, b) = (&cores("demo")[name.as_str()], &cores("vo2")[name.as_str()]);
        assert!(a.len() == 2 && b.len() == 2 && a.iter().all(|c| !b.contains(c)), "{usage:?}");
    }

    // No core is left: a third pinned cluster is refused, naming why.
    let third = pinned("three", "demo/worker:1");
    let err = deploy_error(&net, vos.ticket("demo", &third).expect("ticket"), third).await;
    assert!(err.contains("0 unpinned cores"), "{err}");
    for v in vwds {
        v.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_vos_chunks_are_not_counted_for_another_vo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) =
        cluster_with(dir.path(), 3, 32, &[("demo", true, ""), ("vo2", false, "")]);
    // What a host lacks of vo2's worker when empty, and when it holds demo's worker.
    let cold = lacks(&dir.path().join("cold"), &[], &images.other);
    let after_demo = lacks(&dir.path().join("probe"), &[&images.worker], &images.other);
    assert!(after_demo < cold, "demo's worker shares chunks with vo2's: {after_demo} of {cold}");

    let vwds = net.start().await.expect("start");
    // Only demo's private worker lands on the hosts: no public image to share from.
    let workspace = |name: &str, image: &str| cluster_workspace(name, image, image, 2);
    let (first, _) =
        deploy(&net, &vos, "demo", workspace("grid", "demo/worker:1"), Strategy::Chain).await;
    let (second, _) =
        deploy(&net, &vos, "vo2", workspace("vo2", "vo2/worker:1"), Strategy::Chain).await;
    assert!(first.lost.is_empty() && second.lost.is_empty(), "{first:#?} {second:#?}");
    let mut hosts = 0;
    for h in second.hosts.iter().filter(|h| h.host != "head") {
        // The host holds demo's worker, yet lacks and receives all of vo2's as if cold.
        let s = h.stage.as_ref().expect("staged");
        assert_eq!((s.lacked, s.received), (cold, cold), "{}: {s:?}", h.host);
        hosts += 1;
    }
    assert_eq!(hosts, 2, "both hosts staged vo2's worker after demo's");
    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &worker_hosts(&second), "vo2/worker:1", &images.other);
}

/// The detached path: the head says what a ticket must name (`vw vo sign-ticket` gets
/// it from the operator, `vw deploy --vo` from the head), the VO signs elsewhere, the
/// head deploys with no VO key. The ticket deploys once: a replay is refused by the
/// head before it plans, and would be by every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_signed_elsewhere_deploys_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, _images, vos) = cluster(dir.path(), 2, 16);
    let vwds = net.start().await.expect("start");
    let text = cluster_workspace("once", "demo/base:1", "demo/worker:1", 1);
    let socket = net.head_socket();
    let request = LocalRequest::Resolve { workspace: text.clone(), source: "once.xml".into() };
    let (cluster, images) = tokio::task::spawn_blocking(move || {
        match local::call(&socket, &request, |_| {}).expect("socket") {
            LocalReply::Resolved { cluster, images } => (cluster, images),
            other => panic!("resolve failed: {other:?}"),
        }
    })
    .await
    .expect("task");
    assert_eq!(cluster, "demo");
    let names: Vec<&str> = images.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["demo/base:1", "demo/worker:1"]);
    // Signed by the VO from what the head said, as `vw vo sign-ticket` does.
    let terms = TicketTerms {
        cluster,
        deployment: "once".into(),
        workspace: blake3::hash(text.as_bytes()),
        manifests: images.iter().map(|(_, id)| *id).collect(),
        expires_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600,
    };
    let ticket = Ticket::sign(vos.key("demo"), &terms).expect("sign").encode();
    let socket = net.head_socket();
    let (t, w) = (ticket.clone(), text.clone());
    let report = tokio::task::spawn_blocking(move || {
        let request = LocalRequest::Deploy {
            workspace: w,
            source: "once.xml".into(),
            ticket: t,
            options: DeployOptions::new(Strategy::Chain, Policy::Spread),
        };
        match local::call(&socket, &request, |_| {}).expect("socket") {
            LocalReply::Deployed { report } => report,
            other => panic!("deploy failed: {other:?}"),
        }
    })
    .await
    .expect("task");
    assert!(report.lost.is_empty(), "{report:#?}");
    let err = deploy_error(&net, ticket, text).await;
    assert!(err.contains("was used already"), "{err}");
    for v in vwds {
        v.shutdown().await;
    }
}

/// Two deploys of one VO at once, each within its memory quota alone but not together:
/// the head checks and records each in one step, so exactly one is admitted. (Before,
/// both read the recorded deployments before planning and both passed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deploys_cannot_both_take_the_last_of_a_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Each cluster takes 256 + 128 MiB; vo2 may take 500.
    let (net, _images, vos) = cluster_with(
        dir.path(),
        2,
        16,
        &[("demo", false, ""), ("vo2", false, "[vo.quota]\nmemory_mib = 500\n")],
    );
    let vwds = net.start().await.expect("start");
    let attempt = |name: &str| {
        let text = cluster_workspace(name, "demo/base:1", "vo2/worker:1", 1);
        let ticket = vos.ticket("vo2", &text).expect("ticket");
        let socket = net.head_socket();
        tokio::task::spawn_blocking(move || {
            let request = LocalRequest::Deploy {
                workspace: text,
                source: "race.xml".into(),
                ticket,
                options: DeployOptions::new(Strategy::Chain, Policy::Spread),
            };
            local::call(&socket, &request, |_| {}).expect("socket")
        })
    };
    let (a, b) = tokio::join!(attempt("race-a"), attempt("race-b"));
    let outcomes = [a.expect("task"), b.expect("task")];
    let deployed = outcomes.iter().filter(|o| matches!(o, LocalReply::Deployed { .. })).count();
    let refused: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            LocalReply::Failed { error } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(deployed, 1, "exactly one is admitted: {outcomes:#?}");
    assert!(refused[0].contains("over its memory_mib quota"), "{refused:?}");
    for v in vwds {
        v.shutdown().await;
    }
}

/// A second deployment of the same image, started while the first stages it (capped,
/// so it lasts), attaches where the chunks already flow: its workers pull the worker
/// image from the first deployment's hosts, none from the head, and its VMs go to
/// hosts the first one left free. Both end byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_started_during_anothers_stage_attaches_to_its_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 7, 8);
    let vwds = net.start().await.expect("start");
    let request = |name: &str, cap: Option<&str>| {
        let workspace = cluster_workspace(name, "demo/base:1", "demo/worker:1", 2);
        let ticket = vos.ticket("demo", &workspace).expect("ticket");
        let mut options = DeployOptions::new(Strategy::Chain, Policy::Spread);
        options.cap = cap.map(|c| c.parse().expect("cap"));
        LocalRequest::Deploy { workspace, source: format!("{name}.xml"), ticket, options }
    };
    let (planned_tx, planned_rx) = std::sync::mpsc::channel();
    let first = {
        let (socket, request) = (net.head_socket(), request("first", Some("8Mbit")));
        tokio::task::spawn_blocking(move || {
            local::call(&socket, &request, |e| {
                if matches!(e, DeployEvent::Planned { .. }) {
                    let _ = planned_tx.send(());
                }
            })
            .expect("socket")
        })
    };
    tokio::task::spawn_blocking(move || planned_rx.recv().expect("the first is planned"))
        .await
        .expect("task");
    let (second, events) = deployed(&net, request("second", None)).await;
    let first = match first.await.expect("task") {
        LocalReply::Deployed { report } => *report,
        other => panic!("the first deploy failed: {other:?}"),
    };
    assert!(first.lost.is_empty() && second.lost.is_empty(), "{first:#?} {second:#?}");
    let (a, b) = (worker_hosts(&first), worker_hosts(&second));
    assert!(b.iter().all(|h| !a.contains(h)), "second's workers on free hosts: {a:?} {b:?}");
    let edges = planned_edges(&events);
    let into_workers: Vec<_> = edges.iter().filter(|(_, to)| b.contains(&to.to_string())).collect();
    assert!(
        into_workers.iter().all(|(from, _)| from != "head"),
        "the worker image comes from the first's flow, not the head: {edges:?}"
    );
    assert!(
        into_workers.iter().any(|(from, _)| a.contains(&from.to_string())),
        "one of the first's workers feeds the second: {edges:?}"
    );
    // The host the second pulls from without a VM of its own only served.
    let served: Vec<_> = second.hosts.iter().filter(|h| h.vms.is_empty()).collect();
    assert!(!served.is_empty() && served.iter().all(|h| h.error.is_none()), "{second:#?}");
    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &a, "demo/worker:1", &images.worker);
    holds_exactly(&net, &b, "demo/worker:1", &images.worker);
}

/// `vw deploy --lazy`: every VM is staged on lazy disks and booted before its image has
/// arrived (the simulated guest reads a sixteenth of its disk through the disk's NBD
/// export, as a booting guest's block front end would), while the cascade goes on. The
/// deploy ends with every image whole and verified in every store, each VM's copy the
/// image but for what its guest wrote, and its config naming that copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_deploy_boots_before_the_images_arrive_and_ends_with_them_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (net, images, vos) = cluster(dir.path(), 3, 32);
    let vwds = net.start().await.expect("start");
    let text = cluster_workspace("lazy", "demo/base:1", "demo/worker:1", 2);
    let ticket = vos.ticket("demo", &text).expect("ticket");
    let mut options = DeployOptions::new(Strategy::Chain, Policy::Spread);
    options.lazy = true;
    let request =
        LocalRequest::Deploy { workspace: text, source: "lazy.xml".into(), ticket, options };
    let (report, _) = deployed(&net, request).await;
    assert!(report.lost.is_empty(), "{report:#?}");
    let phases: Vec<String> = report.phases.iter().map(|p| p.phase.to_string()).collect();
    assert_eq!(
        phases,
        [
            "validate",
            "inventory",
            "place",
            "addresses",
            "plan",
            "stage",
            "load",
            "create",
            "ready",
            "settle"
        ]
    );
    assert_eq!(report.ready.len(), 3, "{:?}", report.ready);
    let boot_read = 32 << 20 >> 4; // a sixteenth of each 32 MiB disk
    for r in &report.ready {
        assert!(r.ok(), "{r:?}");
        let lazy = r.lazy.unwrap_or_else(|| panic!("{}: no lazy disk counts", r.vm));
        assert_eq!(lazy.failed, 0, "{r:?}");
        // The head's host held its image: its VM read only what the host held (or, if
        // the stage settled before it loaded, nothing: it booted from its whole copy).
        if r.vm.contains("worker") {
            assert!(lazy.read >= boot_read, "{}: read {} before ready", r.vm, lazy.read);
        } else {
            assert_eq!(lazy.fetched, 0, "{r:?}");
        }
    }
    // The workers' hosts lacked their images: what their guests read first was fetched
    // at once.
    let workers = worker_hosts(&report);
    let fetched: u64 = report
        .ready
        .iter()
        .filter(|r| r.vm.contains("worker"))
        .map(|r| r.lazy.expect("lazy").fetched)
        .sum();
    assert!(fetched > 0, "{:?}", report.ready);
    // Every host received what it lacked, once, whatever its guests read first.
    for h in &report.hosts {
        let s = h.stage.as_ref().expect("staged");
        assert_eq!(s.received, s.lacked, "{}: {s:?}", h.host);
        assert!(!s.vms.is_empty() || h.vms.is_empty(), "{}: the early report's VMs", h.host);
    }
    for v in vwds {
        v.shutdown().await;
    }
    holds_exactly(&net, &workers, "demo/worker:1", &images.worker);
    // The worker image's first boot is traced: the chunks its guest read before it was
    // up, in the order first read, each once (taken when the deploy settled).
    let trace = report.traces.iter().find(|t| t.image == "demo/worker:1").expect("a trace");
    let at = net.names.iter().position(|n| *n == workers[0]).expect("host");
    let store = Store::open(&net.data_dirs[at]).expect("store");
    let manifest = store.manifest(&trace.manifest).expect("the traced manifest");
    let layout = manifest.layout();
    let mut boot = Vec::new();
    for (offset, len) in vw_node::xen::simulated_boot::reads(manifest.len()) {
        for c in &layout.chunks()[layout.covering(offset, len.into())] {
            if !c.id.is_zero() && !boot.contains(&c.id) {
                boot.push(c.id);
            }
        }
    }
    assert_eq!(trace.chunks, boot);
    drop(store);
    // Each worker's copy is the image, but for the 4 KiB its guest wrote at 64 KiB; its
    // config names the copy, not the device that served it while it arrived.
    let mut want = std::fs::read(&images.worker).expect("image");
    want[64 << 10..68 << 10].fill(0x5a);
    for (i, name) in net.names.iter().enumerate() {
        for vm in
            report.placement.iter().filter(|p| p.host == *name && p.vm.as_str().contains("worker"))
        {
            let root = net.data_dirs[i].join("images/lazy").join(vm.vm.as_str());
            let copy = root.join("xvda1.img");
            assert!(std::fs::read(&copy).expect("copy") == want, "{}: its copy", vm.vm);
            let cfg = std::fs::read_to_string(
                net.data_dirs[i].join("xen").join(format!("{}.cfg", vm.vm)),
            )
            .expect("config");
            assert!(cfg.contains(&format!("target={}", copy.display())), "{cfg}");
        }
    }
}
