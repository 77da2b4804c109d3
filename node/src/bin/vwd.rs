//! `vwd --config FILE`: the per-host peer.
//!
//! It opens the store, joins the cluster as a libp2p peer (only the peers its config
//! lists may connect), serves `/vw/chunks` and `/vw/control` (from heads only),
//! and listens for `vw` on `<data_dir>/vwd.sock`; a head also drives deployments. On
//! SIGINT or SIGTERM it shuts down in two steps (signal every task, wait for each).
//! `vwd --config FILE --print-id` prints the peer id (making the key on first use);
//! `vwd --check-config FILE` checks the config and everything it names, and exits.

use anyhow::Context as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use vw_node::daemon::{load_or_create_key, Daemon};
use vw_node::service::Vwd;

fn usage() -> ExitCode {
    eprintln!("usage: vwd --config FILE [--print-id] | vwd --check-config FILE");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut config, mut print_id, mut check) = (None, false, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config = it.next().map(PathBuf::from),
            "--print-id" => print_id = true,
            "--check-config" => check = it.next().map(PathBuf::from),
            _ => return usage(),
        }
    }
    if let Some(path) = check {
        return match Daemon::load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|d| vw_node::service::check_config(&d))
        {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vwd: {}: {e:#}", path.display());
                ExitCode::FAILURE
            }
        };
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a script may signal vwd as soon as it has read the addresses.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let vwd = Vwd::start(&daemon, key).await?;
        // One line per address, then the socket, on stdout: scripts and tests read them.
        // A reader that has gone away must not stop the daemon, so write errors are ignored.
        let addresses = vwd.addresses().await?;
        let mut out = std::io::stdout().lock();
        for addr in addresses {
            let _ = writeln!(out, "listening {addr}");
        }
        let _ = writeln!(out, "socket {}", vwd.socket().display());
        if let Some(addr) = daemon.config.metrics {
            let _ = writeln!(out, "metrics http://{addr}/metrics");
        }
        let _ = out.flush();
        drop(out);
        // Under systemd (`Type=notify`), `systemctl start` returns now: the socket
        // answers and the peer listens, so `vw` run next goes through this vwd (before,
        // it could find the store locked and no socket yet). Elsewhere, nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "could not tell systemd that vwd is ready");
        }
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        vwd.shutdown().await;
        anyhow::Ok(())
    })
}
