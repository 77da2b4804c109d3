//! The libp2p peer: TCP + Noise + Yamux, identify, an allow list of cluster peers, and
//! `/vw/chunks` on raw streams.
//!
//! [`Peer::start`] builds the swarm and runs it in a task that owns it (an actor: the
//! [`Peer`] handle sends it bounded commands with one-shot replies), and a task per
//! [`Server`] it is given, each accepting the streams of one protocol (the chunk
//! server, `crate::chunks::server`, is one: this module knows nothing of chunks).
//! Only peers on the allow list get a connection at all; a refused one is logged.
//! With mDNS on, the peer also learns listed peers' addresses from the local network
//! (and ignores, with a debug line, peers that are not listed).
//! [`Peer::shutdown`] signals every task, then waits for each.

pub mod addresses;

use futures::future::BoxFuture;
use futures::StreamExt as _;
use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, identity, mdns, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Why the peer could not do something.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The swarm could not be built or could not listen.
    #[error("peer transport: {0}")]
    Transport(String),
    /// Dialing failed (unreachable, refused, not on the allow list).
    #[error("cannot reach {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A chunk stream failed.
    #[error("chunks from {peer}: {reason}")]
    Stream {
        /// The remote peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// A peer sent a chunk whose bytes do not match its id: it is dropped.
    #[error("peer {peer} sent chunk {chunk} with bytes that do not match its id; dropping it")]
    BadChunk {
        /// The peer.
        peer: PeerId,
        /// The chunk.
        chunk: String,
    },
    /// Chunks no peer tried could deliver.
    #[error("{missing} chunks (first {first}) are still missing after trying {tried} peers")]
    Unfetched {
        /// How many.
        missing: usize,
        /// The first of them.
        first: String,
        /// Peers tried.
        tried: usize,
    },
    /// The store refused a received chunk.
    #[error("storing received chunks: {0}")]
    Store(#[from] vw_chunkstore::Error),
    /// The peer task is gone.
    #[error("the peer has shut down")]
    Gone,
}

/// How a peer starts.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a port).
    pub listen: Vec<Multiaddr>,
    /// The peer's identity.
    pub keypair: identity::Keypair,
    /// The only peers it talks to.
    pub allowed: Vec<PeerId>,
    /// Whether it also finds the allowed peers' addresses by mDNS.
    pub mdns: bool,
    /// Configured addresses of allowed peers: any dial by id finds them.
    pub known: Vec<(PeerId, Multiaddr)>,
}

/// What serves one protocol's incoming streams: called once with them and the peer's
/// stop signal, it runs until the signal is set.
pub struct Server {
    /// The protocol.
    pub protocol: StreamProtocol,
    /// The serving task.
    pub run: Box<
        dyn FnOnce(libp2p_stream::IncomingStreams, watch::Receiver<bool>) -> BoxFuture<'static, ()>
            + Send,
    >,
}

/// A cluster peer as configured: its name, its id, and where to reach it (none if
/// mDNS is to find it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPeer {
    /// A name for plans, logs and output.
    pub name: String,
    /// Its peer id.
    pub id: PeerId,
    /// Its address, if configured.
    pub addr: Option<Multiaddr>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allow: allow_block_list::Behaviour<AllowedPeers>,
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    addresses: addresses::Addresses,
}

enum Command {
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<(), PeerError>> },
    Addresses { reply: oneshot::Sender<Vec<Multiaddr>> },
}

/// A running peer (see the module docs).
pub struct Peer {
    id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Dial { addr, .. } => write!(f, "Dial({addr})"),
            Command::Addresses { .. } => f.write_str("Addresses"),
        }
    }
}

/// Dials through a running peer: how the head and hosts (re)connect to the cluster's
/// peers before they open streams, since a peer that restarted is not redialled by
/// itself.
#[derive(Clone, Debug)]
pub struct Dialer {
    commands: mpsc::Sender<Command>,
}

impl Dialer {
    /// Connects to `addr` (which should end in `/p2p/<peer id>`); at once if connected
    /// already. Cancel-safe.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), PeerError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Dial { addr, reply }).await.map_err(|_| PeerError::Gone)?;
        rx.await.map_err(|_| PeerError::Gone)?
    }

    /// Dials each of `peers` (id, and address if known; otherwise whatever mDNS found)
    /// at once, giving each `within`; returns those that could not be reached, with why.
    pub async fn reach(
        &self,
        peers: &[(PeerId, Option<Multiaddr>)],
        within: std::time::Duration,
    ) -> Vec<(PeerId, String)> {
        let dials = peers.iter().map(|(id, addr)| async move {
            let p2p = libp2p::multiaddr::Protocol::P2p(*id);
            let full = addr.clone().unwrap_or_else(Multiaddr::empty).with(p2p);
            match tokio::time::timeout(within, self.dial(full)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((*id, e.to_string())),
                Err(_) => Some((*id, format!("no connection within {} s", within.as_secs()))),
            }
        });
        futures::future::join_all(dials).await.into_iter().flatten().collect()
    }
}

/// The cluster's peers, with a dialer to reach them.
#[derive(Clone, Debug)]
pub struct PeerBook {
    dialer: Dialer,
    peers: Vec<ClusterPeer>,
}

impl PeerBook {
    /// A book of `peers`, dialled through `dialer`.
    pub fn new(dialer: Dialer, peers: Vec<ClusterPeer>) -> Self {
        PeerBook { dialer, peers }
    }

    /// The peers.
    pub fn peers(&self) -> &[ClusterPeer] {
        &self.peers
    }

    /// A peer's name (its short id if it is not in the book).
    pub fn name(&self, id: &PeerId) -> String {
        self.peers.iter().find(|p| p.id == *id).map_or_else(|| short(id), |p| p.name.clone())
    }

    /// Connects to each of `ids` that is in the book and not connected (5 s each, all
    /// at once); returns those it cannot reach, by name, with why.
    pub async fn reach(&self, ids: &[PeerId]) -> Vec<(String, String)> {
        let wanted: Vec<(PeerId, Option<Multiaddr>)> = self
            .peers
            .iter()
            .filter(|p| ids.contains(&p.id))
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        let failed = self.dialer.reach(&wanted, std::time::Duration::from_secs(5)).await;
        failed.into_iter().map(|(id, why)| (self.name(&id), why)).collect()
    }
}

impl Peer {
    /// Builds the swarm, starts `servers` (each accepts its protocol's streams from
    /// then on), and listens.
    pub async fn start(config: PeerConfig, servers: Vec<Server>) -> Result<Peer, PeerError> {
        let transport = |e: &dyn std::fmt::Display| PeerError::Transport(e.to_string());
        let id = config.keypair.public().to_peer_id();
        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), id)
                    .map_err(|e| transport(&e))?,
            )
        } else {
            None
        };
        let mut swarm: Swarm<Behaviour> =
            libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| transport(&e))?
                .with_behaviour(|key| Behaviour {
                    allow: allow_block_list::Behaviour::default(),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/vw/id/1".into(),
                        key.public(),
                    )),
                    stream: libp2p_stream::Behaviour::new(),
                    mdns: mdns.into(),
                    addresses: addresses::Addresses::new(config.known.iter().cloned()),
                })
                .map_err(|e| transport(&e))?
                .with_swarm_config(|c| {
                    c.with_idle_connection_timeout(std::time::Duration::from_secs(60))
                })
                .build();
        for p in &config.allowed {
            swarm.behaviour_mut().allow.allow_peer(*p);
        }
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| transport(&e))?;
        }
        let mut control = swarm.behaviour().stream.new_control();
        let (commands, rx) = mpsc::channel(16);
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("peer", id = %short(&id));
        let mut tasks = Vec::new();
        for server in servers {
            let incoming = control.accept(server.protocol).map_err(|e| transport(&e))?;
            let run = (server.run)(incoming, stopped.clone());
            tasks.push(tokio::spawn(tracing::Instrument::instrument(run, span.clone())));
        }
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            run_swarm(swarm, rx, config.allowed.clone(), stopped),
            span,
        )));
        let peer = Peer { id, commands, control, stop, tasks };
        // Wait until it listens, so callers can hand out its addresses.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !config.listen.is_empty() && peer.addresses().await?.is_empty() {
            if tokio::time::Instant::now() > deadline {
                let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
                peer.shutdown().await;
                return Err(PeerError::Transport(format!(
                    "not listening on {} after 10 s (address in use?)",
                    listen.join(", ")
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(peer)
    }

    /// Its peer id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The addresses it listens on.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, PeerError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Addresses { reply }).await.map_err(|_| PeerError::Gone)?;
        rx.await.map_err(|_| PeerError::Gone)
    }

    /// Connects to `addr` (which should end in `/p2p/<peer id>`). Cancel-safe.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), PeerError> {
        self.dialer().dial(addr).await
    }

    /// A handle that dials through this peer (cheap to clone).
    pub fn dialer(&self) -> Dialer {
        Dialer { commands: self.commands.clone() }
    }

    /// A control for opening chunk streams (cheap to clone; one stream at a time each).
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Signals every task to stop, then waits for each.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Accepts streams of one protocol until `stop` is set, each handled on its own task;
/// a stream that fails is logged as a failed `what` stream.
pub(crate) async fn accept<F, Fut, E>(
    mut incoming: libp2p_stream::IncomingStreams,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    handle: F,
) where
    F: Fn(PeerId, libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                let work = handle(peer, stream);
                // A span per incoming stream: which peer, which protocol.
                let span = tracing::info_span!("stream", what, peer = %short(&peer));
                tokio::spawn(tracing::Instrument::instrument(async move {
                    if let Err(e) = work.await {
                        tracing::warn!(error = %e, "{what} stream failed");
                    }
                }, span));
            }
        }
    }
}

/// The first 8 characters after the common `12D3KooW` prefix.
pub(crate) fn short(id: &PeerId) -> String {
    let s = id.to_string();
    s.get(8..16).unwrap_or(&s).to_owned()
}

/// A dial waiting for its connection: the peer, who to tell, the address.
type PendingDial = (PeerId, oneshot::Sender<Result<(), PeerError>>, Multiaddr);

/// The swarm's own task: commands in, events out (logged).
async fn run_swarm(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    allowed: Vec<PeerId>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending_dials: Vec<PendingDial> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Addresses { reply }) => {
                    let _ = reply.send(swarm.listeners().cloned().collect());
                }
                Some(Command::Dial { addr, reply }) => {
                    let peer = addr.iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                        _ => None,
                    });
                    if peer.is_some_and(|p| swarm.is_connected(&p)) {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    // A bare `/p2p/<id>` dials the addresses mDNS found for it.
                    let opts = match peer {
                        Some(p) if addr.iter().count() == 1 => DialOpts::peer_id(p).build(),
                        _ => DialOpts::from(addr.clone()),
                    };
                    match (peer, swarm.dial(opts)) {
                        // Already being dialled (mDNS found it): wait for that dial.
                        (Some(p), Err(DialError::DialPeerConditionFalse(_))) => {
                            pending_dials.push((p, reply, addr));
                        }
                        (_, Err(e)) => {
                            let _ = reply.send(Err(PeerError::Dial { addr, reason: e.to_string() }));
                        }
                        (Some(p), Ok(())) if swarm.is_connected(&p) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Some(p), Ok(())) => pending_dials.push((p, reply, addr)),
                        (None, Ok(())) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                    tracing::debug!(peer = %short(&peer_id), ?connection_id, dialer = endpoint.is_dialer(), "connected");
                    for (_, reply, _) in extract(&mut pending_dials, |p| *p == peer_id) {
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(peer = ?peer_id.map(|p| short(&p)), %error, "connection failed");
                    if let Some(p) = peer_id {
                        for (_, reply, addr) in extract(&mut pending_dials, |q| *q == p) {
                            let _ = reply.send(Err(PeerError::Dial { addr, reason: error.to_string() }));
                        }
                    }
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    tracing::warn!(from = %send_back_addr, %error, "refused an incoming connection");
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, num_established, .. } => {
                    tracing::debug!(peer = %short(&peer_id), ?connection_id, ?cause, num_established, "connection closed");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                    for (peer, addr) in found {
                        if allowed.contains(&peer) {
                            tracing::debug!(peer = %short(&peer), %addr, "found by mDNS");
                            let opts = DialOpts::peer_id(peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .addresses(vec![addr])
                                .build();
                            if let Err(e) = swarm.dial(opts) {
                                tracing::debug!(peer = %short(&peer), error = %e, "not dialled");
                            }
                        } else {
                            tracing::debug!(peer = %short(&peer), %addr, "found by mDNS, not listed: ignored");
                        }
                    }
                }
                _ => {}
            },
        }
    }
}

/// Removes and returns the entries whose peer matches.
fn extract<T>(
    v: &mut Vec<(PeerId, T, Multiaddr)>,
    mut f: impl FnMut(&PeerId) -> bool,
) -> Vec<(PeerId, T, Multiaddr)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if f(&v[i].0) {
            out.push(v.swap_remove(i));
        } else {
            i += 1;
        }
    }
    out
}
