//! `vwd` as a process: it never simulates Xen unless told to, makes its key once,
//! refuses chunks to a listed peer that stages nothing through it (knowing the ids is
//! not enough) and control requests from peers that are not heads, audits both, and
//! exits cleanly on SIGTERM.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use libp2p::{identity, Multiaddr};
use vw_node::access::audit::Audit;
use vw_node::chunks::{fetch, Purpose};
use vw_node::chunkstore::{testdata::noise, Store};
use vw_node::control::head::control_protocol;
use vw_node::control::protocol::Reply;
use vw_node::control::{Answer, FailureKind, Request};
use vw_node::peer::{Peer, PeerConfig};
use vw_node::wire;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vwd_refuses_chunks_outside_a_deployment_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let img = dir.path().join("x.img");
    std::fs::write(&img, noise(2 << 20, 8)).expect("write");
    let manifest = {
        let store = Store::open(&data).expect("store");
        let r = store.import(&img, None, &()).expect("import");
        store.manifest(&r.manifest).expect("manifest")
    };
    let me = identity::Keypair::generate_ed25519();
    let peer_id = me.public().to_peer_id();
    let config = dir.path().join("vwd.toml");
    let write_config = |cluster: &str| {
        let text = format!(
            "role = \"host\"\ndata_dir = \"{}\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n{cluster}\n[[peer]]\nname = \"test\"\nid = \"{}\"\naddr = \"/ip4/127.0.0.1/tcp/1\"\n",
            data.display(),
            me.public().to_peer_id()
        );
        std::fs::write(&config, text).expect("config");
    };
    let vwd = env!("CARGO_BIN_EXE_vwd");

    // No cluster config, so no driver named: on a host that is not a Xen dom0, vwd
    // refuses to start rather than pretend (before, it ran the simulated driver and
    // reported VMs that did not exist).
    write_config("");
    let dom0 = std::fs::read_to_string(vw_node::config::XEN_CAPABILITIES)
        .is_ok_and(|c| c.contains("control_d"));
    if !dom0 {
        // `--check-config` says so first, and writes nothing.
        let out = Command::new(vwd).arg("--check-config").arg(&config).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("sets no [xen] driver"), "{err}");
        assert!(!data.join("node.key").exists(), "a check writes nothing");
        let out = Command::new(vwd).arg("--config").arg(&config).output().expect("run vwd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "vwd started without a driver: {err}");
        assert!(err.contains("cluster config (embedded) sets no [xen] driver"), "{err}");
        assert!(err.contains("driver = \"simulated\""), "{err}");
    }
    let cluster = dir.path().join("cluster.toml");
    let text =
        vw_localnet::with_placeholder_kernels(vw_node::config::ClusterConfig::EMBEDDED, dir.path())
            .expect("cluster config");
    std::fs::write(&cluster, text).expect("cluster config");
    write_config(&format!("cluster_config = \"{}\"\n", cluster.display()));
    let out = Command::new(vwd).arg("--check-config").arg(&config).output().expect("run");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Xen driver simulated: simulated, no guest will run"), "{said}");
    assert!(said.contains("identity ") && said.ends_with(": ok\n"), "{said}");

    let id =
        Command::new(vwd).arg("--config").arg(&config).arg("--print-id").output().expect("run vwd");
    assert!(id.status.success(), "{}", String::from_utf8_lossy(&id.stderr));
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let again =
        Command::new(vwd).arg("--config").arg(&config).arg("--print-id").output().expect("run vwd");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id, "the key is kept");

    let mut child = Command::new(vwd)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vwd");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr: Multiaddr = line
        .trim()
        .strip_prefix("listening ")
        .expect("an address line")
        .parse()
        .expect("multiaddr");
    assert!(line.contains(&id), "{line}");

    let mine = Arc::new(Store::open(&dir.path().join("mine")).expect("store"));
    let peer = Peer::start(
        PeerConfig {
            listen: vec![],
            keypair: me,
            allowed: vec![id.parse().expect("peer id")],
            mdns: false,
            known: vec![],
        },
        vec![],
    )
    .await
    .expect("peer");
    peer.dial(addr).await.expect("dial vwd");
    let missing = mine.missing(&manifest).expect("missing");
    let purpose = Purpose { deployment: "d".into(), manifest: manifest.id() };
    let err = fetch(
        &mut peer.control(),
        id.parse().expect("peer id"),
        &purpose,
        &missing.chunks,
        mine.clone(),
    )
    .await
    .expect_err("no deployment grants these chunks")
    .to_string();
    assert!(err.contains("refused: stage d is not being staged"), "{err}");

    // A listed peer that is not a head may fetch chunks but not control the host.
    let mut control = peer.control();
    let mut stream = control
        .open_stream(id.parse().expect("peer id"), control_protocol())
        .await
        .expect("control stream");
    wire::write(&mut stream, &Request::Status { deployment: None }).await.expect("send");
    match wire::read::<Reply, _>(&mut stream).await.expect("reply") {
        Some(Reply::Done(Answer::Failed(f))) => {
            assert_eq!(f.kind, FailureKind::Refused, "{f:?}");
            assert!(f.message.contains("not a head"), "{f:?}")
        }
        other => panic!("a non-head's control request must be refused, got {other:?}"),
    }
    peer.shutdown().await;

    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "vwd exits cleanly on SIGTERM: {status}");

    // The refusal is in the audit log, with the peer that asked.
    let entries = Audit::read(&data).expect("audit log");
    let me = peer_id.to_string();
    assert!(
        entries.iter().any(|e| e.op == "chunks" && e.outcome == "refused" && e.peer == me),
        "{entries:?}"
    );
}
