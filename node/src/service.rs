//! `vwd` as a running service: the manager over the store, the libp2p peer serving
//! `/vw/chunks` (through a relay, so chunks are forwarded as they arrive) and
//! `/vw/control`, the head (on a head) and the local socket for `vw`.
//!
//! [`Vwd::shutdown`] stops in two steps: signal every task, then wait for each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use libp2p::{identity, Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::audit::Audit;
use crate::access::replay::Seen;
use crate::access::Gate;
use crate::chunks::rate::{RateLimit, UploadMeter};
use crate::chunks::{self, Relay, Sending};
use crate::config::ClusterConfig;
use crate::control::head::{control_protocol, Head};
use crate::control::host::{self, HostLinks, HostService};
use crate::daemon::{Daemon, Role};
use crate::local;
use crate::manager::Manager;
use crate::peer::{Peer, PeerBook, PeerConfig};

/// A running `vwd`.
pub struct Vwd {
    peer: Peer,
    name: String,
    socket: std::path::PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Vwd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vwd").field("name", &self.name).field("peer", &self.peer).finish()
    }
}

/// The cluster config `daemon` names, or the embedded one.
fn cluster_config(daemon: &Daemon) -> Result<ClusterConfig, crate::config::ConfigError> {
    match &daemon.config.cluster_config {
        Some(path) => ClusterConfig::load(path),
        None => Ok(ClusterConfig::embedded()),
    }
}

/// What `vwd --check-config` checks without starting anything or writing a file: the
/// vwd config (already parsed into `daemon`), its cluster config, the driver this host
/// would run, the socket's group, the identity key if it exists, and the link. Returns
/// a line per finding; the first problem is the error.
pub fn check_config(daemon: &Daemon) -> anyhow::Result<Vec<String>> {
    let cluster = cluster_config(daemon)?;
    let driver = cluster.driver()?;
    let group = daemon.socket_group()?;
    let key = daemon.key_path();
    let identity = if key.exists() {
        let id = crate::daemon::load_or_create_key(&key)?.public().to_peer_id();
        daemon.check_own_id(&id)?;
        format!("identity {} (peer {id})", key.display())
    } else {
        format!("identity {}: made on first start", key.display())
    };
    let link = daemon.link();
    Ok(vec![
        format!(
            "{:?} {} ({}), {} peers",
            daemon.config.role,
            daemon.name,
            daemon.source,
            daemon.peers.len()
        ),
        format!("cluster {} ({}), {} VOs", cluster.cluster.name, cluster.source, cluster.vo.len()),
        format!(
            "Xen driver {driver}{}",
            if driver.simulated() { ": simulated, no guest will run" } else { "" }
        ),
        match group {
            Some(gid) => {
                format!("socket {} (mode 0660, group id {gid})", daemon.socket_path().display())
            }
            None => format!("socket {} (mode 0600, root only)", daemon.socket_path().display()),
        },
        identity,
        format!("link {:.0} Mbit/s ({})", link.bytes_per_s * 8.0 / 1e6, link.source),
    ])
}

impl Vwd {
    /// Opens the store, starts the peer, serves control requests and the local socket,
    /// and dials the configured peers.
    pub async fn start(daemon: &Daemon, key: identity::Keypair) -> anyhow::Result<Vwd> {
        let name = daemon.name.clone();
        daemon.check_own_id(&key.public().to_peer_id())?;
        let cluster = cluster_config(daemon)?;
        let data_dir = daemon.config.data_dir.clone();
        let config = cluster.clone();
        let (manager, reconciled) =
            tokio::task::spawn_blocking(move || Manager::open(&data_dir, config))
                .await?
                .with_context(|| format!("opening {}", daemon.config.data_dir.display()))?;
        for r in &reconciled {
            tracing::warn!(vm = %r.vm, was = %r.was, now = %r.now, reason = %r.reason, "reconciled on start");
        }
        let driver = manager.driver().kind();
        if driver.simulated() {
            tracing::warn!(%driver, config = %cluster.source, "Xen driver: simulated, chosen by the cluster config: no guest runs on this host, and every report says so");
        } else {
            tracing::info!(%driver, config = %cluster.source, "Xen driver");
        }
        let link = daemon.link();
        tracing::info!(
            mbit_s = link.bytes_per_s * 8.0 / 1e6,
            source = %link.source,
            "link",
        );
        if let Some(addr) = daemon.config.metrics {
            crate::metrics::serve(addr).map_err(anyhow::Error::msg)?;
            tracing::info!(%addr, "metrics endpoint (Prometheus)");
        }
        let gate = Gate {
            config: Arc::new(cluster.clone()),
            grants: Arc::default(),
            audit: Arc::new(Audit::open(&daemon.config.data_dir).context("opening the audit log")?),
            tickets: Arc::new(Seen::open(
                &daemon.config.data_dir,
                crate::manager::now_ms() / 1000,
            )?),
        };
        // Per-deployment secrets on the head come from this host's identity.
        let head_secret = blake3::derive_key(
            "vw 2026-12-05 head secret for per-deployment keys",
            &key.to_protobuf_encoding().context("encoding the identity key")?,
        );
        let relay = Relay::new(manager.shared_store());
        let store = manager.shared_store();
        // What this host's upload carries: relief is served only with room to spare.
        let meter = Arc::new(UploadMeter::new(
            daemon.caps.0.map_or(link.bytes_per_s, |cap| cap.min(link.bytes_per_s)),
        ));
        let peer = Peer::start(
            PeerConfig {
                listen: daemon.listen.clone(),
                keypair: key,
                allowed: daemon.peers.iter().map(|p| p.id).collect(),
                mdns: daemon.config.mdns,
                known: daemon.peers.iter().filter_map(|p| Some((p.id, p.addr.clone()?))).collect(),
            },
            vec![chunks::server(
                relay.clone(),
                Sending {
                    upload: daemon.caps.0.map(|r| Arc::new(RateLimit::on_link(r))),
                    compress: daemon.compress(&link),
                    grants: Arc::clone(&gate.grants),
                    audit: Some(Arc::clone(&gate.audit)),
                    limits: Default::default(),
                    spare: Some(Arc::clone(&meter)),
                    urgency: Arc::default(),
                    sent_urgently: Arc::default(),
                },
            )],
        )
        .await?;
        let book = PeerBook::new(peer.dialer(), daemon.peers.clone());
        let service = Arc::new(HostService::new(
            manager,
            relay,
            peer.control(),
            book.clone(),
            HostLinks {
                caps: daemon.caps,
                link,
                rack: daemon.config.rack.clone(),
                meter: Some(meter),
            },
            daemon.heads.clone(),
            gate,
        ));
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("vwd", host = %name);
        let mut tasks = Vec::new();
        let incoming = peer.control().accept(control_protocol())?;
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            host::serve(incoming, Arc::clone(&service), stopped.clone()),
            span.clone(),
        )));
        let role = match daemon.config.role {
            Role::Head => local::Role::Head(Arc::new(Head::new(
                (name.as_str().into(), peer.id()),
                Arc::clone(&service),
                peer.control(),
                cluster.pools(),
                head_secret,
            ))),
            Role::Host => local::Role::Host(service),
        };
        let socket = daemon.socket_path();
        let group = daemon.socket_group()?;
        let listener = local::bind(&socket, group)?;
        tracing::info!(socket = %socket.display(), ?group, "local socket (mode 0660 for the group, else 0600)");
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            local::serve(listener, role, stopped),
            span,
        )));
        if daemon.config.metrics.is_some() {
            tasks.push(tokio::spawn(store_gauges(store, stop.subscribe())));
        }
        let ids: Vec<PeerId> = daemon.peers.iter().map(|p| p.id).collect();
        for (peer, why) in book.reach(&ids).await {
            tracing::info!(%peer, reason = %why, "peer not reachable yet (it dials in when it starts)");
        }
        Ok(Vwd { peer, name, socket, stop, tasks })
    }

    /// Its peer id.
    pub fn id(&self) -> PeerId {
        self.peer.id()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The addresses it listens on, each with `/p2p/<id>`.
    pub async fn addresses(&self) -> anyhow::Result<Vec<Multiaddr>> {
        Ok(self
            .peer
            .addresses()
            .await?
            .into_iter()
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(self.peer.id())))
            .collect())
    }

    /// Signals every task to stop, then waits for each (the peer last).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.peer.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// How often the store's gauges are refreshed for the metrics endpoint when nothing
/// says it changed (each refresh reads every manifest's record, off the runtime).
const STORE_GAUGES_EVERY: Duration = Duration::from_secs(60);

/// Refreshes the store's gauges, at start, after each stage and every
/// [`STORE_GAUGES_EVERY`] (imports, removals, gc), until `stop`.
async fn store_gauges(store: Arc<vw_chunkstore::Store>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(STORE_GAUGES_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = crate::metrics::STORE_CHANGED.notified() => {}
            _ = stop.changed() => break,
        }
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.stats()).await {
            Ok(Ok(stats)) => crate::metrics::store(&stats),
            Ok(Err(e)) => tracing::warn!(error = %e, "store stats for the metrics"),
            Err(e) => tracing::warn!(error = %e, "store stats for the metrics"),
        }
    }
}
