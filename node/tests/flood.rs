//! A peer that may connect but is not a head floods a host's control protocol: many
//! streams at once, each announcing a full-size frame and pushing its body. The host
//! refuses each stream before reading a byte of it, so its memory stays flat, and a
//! deploy through the real head still succeeds. The host runs as a `vwd` child process
//! so that its memory is its own to measure.

use std::path::Path;

use futures::AsyncWriteExt as _;
use vw_localnet::{cluster_workspace, DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::chunkstore::{Store, Visibility};
use vw_node::control::deployment::DeployOptions;
use vw_node::control::head::control_protocol;
use vw_node::control::protocol::MAX_MESSAGE;
use vw_node::daemon::load_or_create_key;
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::peer::{Peer, PeerConfig};
use vw_node::planner::{Policy, Strategy};

/// Streams the flood opens, and body bytes each pushes.
const STREAMS: usize = 100;
const PUSH: usize = 1 << 20;

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_flood_from_a_non_head_peer_holds_no_memory_and_deploys_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let vos = LocalVos::create(&dir.join("cluster.toml"), &[("demo", false, "")]).expect("VO");
    let options =
        LocalNetOptions { cluster_config: Some(vos.cluster_config.clone()), ..Default::default() };
    // Head, the target (a child process), and the attacker's identity (host 2, a peer
    // the target lets connect, but not a head).
    let net = LocalNet::create(dir, 3, &options).expect("net");
    let images = DemoImages::write(dir, 16).expect("images");
    {
        let store = Store::open(&net.data_dirs[0]).expect("head store");
        for (path, name) in [(&images.base, "demo/base:1"), (&images.worker, "demo/worker:1")] {
            vos.import(&store, path, name, Visibility::Private).expect("import");
        }
    }
    let mut pid = 0;
    let vwd = Path::new(env!("CARGO_BIN_EXE_vwd"));
    let _target =
        net.spawn_in(1, None, vwd, &dir.join("target.log"), |p| pid = p).expect("target vwd");
    let head = net.start_one(0).await.expect("head");

    // The attacker knows the target's address, so that a connection the target closed
    // (idle between refused streams) is dialled again rather than waited for.
    let target = vw_node::daemon::Daemon::load(&net.configs[1]).expect("target config");
    let attacker = Peer::start(
        PeerConfig {
            listen: vec![],
            keypair: load_or_create_key(&net.data_dirs[2].join("node.key")).expect("key"),
            allowed: vec![net.ids[1]],
            mdns: false,
            known: vec![(net.ids[1], target.listen[0].clone())],
        },
        vec![],
    )
    .await
    .expect("attacker");
    attacker.dial(target.listen[0].clone()).await.expect("dial the target");

    let before = rss(pid);
    let header = u32::try_from(MAX_MESSAGE).expect("fits").to_be_bytes();
    let junk = vec![0x5au8; PUSH];
    let mut held = Vec::new();
    let mut refused_at_once = 0;
    for _ in 0..STREAMS {
        // A stream the target never takes is as good as refused: the flood goes on.
        let mut control = attacker.control();
        let opening = control.open_stream(net.ids[1], control_protocol());
        let Ok(Ok(mut s)) = tokio::time::timeout(std::time::Duration::from_secs(5), opening).await
        else {
            continue;
        };
        // The body goes out as far as the stream takes it; a refused stream ends early.
        let pushed = async {
            s.write_all(&header).await?;
            s.write_all(&junk).await
        };
        let wait = std::time::Duration::from_millis(300);
        if let Ok(Err(_)) = tokio::time::timeout(wait, pushed).await {
            refused_at_once += 1;
        }
        held.push(s);
    }
    let after = rss(pid);
    eprintln!(
        "target RSS {} MiB before, {} MiB after {STREAMS} streams of {} KiB each ({refused_at_once} ended by the host while being written)",
        before >> 20,
        after >> 20,
        PUSH >> 10
    );
    assert!(
        after < before + (48 << 20),
        "the flood grew the host by {} MiB",
        (after.saturating_sub(before)) >> 20
    );
    // The flood happened: most streams were opened and pushed at the target.
    assert!(held.len() >= STREAMS / 2, "only {} of {STREAMS} streams opened", held.len());
    drop(held);

    // The head still deploys, with the target staging its VMs.
    let text = cluster_workspace("after", "demo/base:1", "demo/worker:1", 1);
    let ticket = vos.ticket("demo", &text).expect("ticket");
    let socket = net.head_socket();
    let reply = tokio::task::spawn_blocking(move || {
        let request = LocalRequest::Deploy {
            workspace: text,
            source: "after.xml".into(),
            ticket,
            options: DeployOptions::new(Strategy::Chain, Policy::Spread),
        };
        local::call(&socket, &request, |_| {}).expect("socket")
    })
    .await
    .expect("task");
    match reply {
        LocalReply::Deployed { report } => {
            let target = &net.names[1];
            let staged = report.hosts.iter().find(|h| &h.host == target).expect("target");
            assert!(staged.stage.is_some() && staged.error.is_none(), "{report:#?}");
        }
        other => panic!("deploy failed after the flood: {other:?}"),
    }
    attacker.shutdown().await;
    head.shutdown().await;
}
