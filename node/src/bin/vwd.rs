//! `vwd --config FILE`: the per-host peer.
//!
//! Today it opens the store, joins the cluster as a libp2p peer (only the peers its
//! config lists may connect) and serves `/vw/chunks/1` from the store until SIGINT or
//! SIGTERM, then shuts down in two steps (signal every task, wait for each). The
//! control protocol, the local socket and `vw deploy` arrive with the rest of issue 5.
//! `vwd --config FILE --print-id` prints the peer id (making the key on first use).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use vw_node::chunkstore::Store;
use vw_node::daemon::{load_or_create_key, Daemon};
use vw_node::peer::{Peer, PeerConfig};

fn usage() -> ExitCode {
    eprintln!("usage: vwd --config FILE [--print-id]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut config, mut print_id) = (None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().map(PathBuf::from),
            "--print-id" => print_id = true,
            _ => return usage(),
        }
    }
    let Some(config) = config else { return usage() };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&config, print_id) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vwd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &std::path::Path, print_id: bool) -> anyhow::Result<()> {
    let daemon = Daemon::load(config)?;
    let key = load_or_create_key(&daemon.key_path())?;
    if print_id {
        println!("{}", key.public().to_peer_id());
        return Ok(());
    }
    let store = Arc::new(Store::open(&daemon.config.data_dir).context("opening the store")?);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let peer_config = PeerConfig {
            listen: daemon.listen.clone(),
            keypair: key,
            allowed: daemon.peers.iter().map(|(_, id, _)| *id).collect(),
        };
        let peer = Peer::start(peer_config, store).await?;
        for addr in peer.addresses().await? {
            // One line per address on stdout: scripts and tests read it.
            println!("listening {addr}/p2p/{}", peer.id());
        }
        for (name, id, addr) in &daemon.peers {
            let full = addr.clone().with(libp2p::multiaddr::Protocol::P2p(*id));
            if let Err(e) = peer.dial(full).await {
                tracing::warn!(peer = %name, error = %e, "not reachable yet");
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        peer.shutdown().await;
        anyhow::Ok(())
    })
}
