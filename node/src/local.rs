//! The local socket between `vw` and its host's `vwd`: a Unix socket in the data
//! directory (mode 0600), one request per connection, as JSON lines. The daemon
//! answers with any number of [`LocalReply::Event`] lines and one final line.
//!
//! Only a head deploys and acts cluster-wide; a host's `vwd` answers `status` for its
//! own VMs and refuses the rest.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::control::deployment::{DeployEvent, DeployOptions, DeployReport, HostAnswer};
use crate::control::head::Head;
use crate::control::host::HostService;
use crate::control::protocol::HostStatus;
use crate::control::{Answer, Request};
use crate::control::{ControlError, Failure, FailureKind};
use crate::lifecycle::Op;
use crate::report::VmReport;

/// The socket's file name in the data directory.
pub const SOCKET: &str = "vwd.sock";
/// Longest request line (a workspace is at most 1 MiB, escaped as JSON).
pub const MAX_REQUEST: usize = 4 << 20;

/// `vw` → `vwd`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "request")]
pub enum LocalRequest {
    /// Deploy a workspace across the cluster.
    Deploy {
        /// The document.
        workspace: String,
        /// Its file name, for errors.
        source: String,
        /// The deploying VO's signed ticket for the document (encoded).
        ticket: Vec<u8>,
        /// Strategy and policy.
        options: DeployOptions,
    },
    /// What a VO signs a ticket for: this cluster's name and the manifest each image
    /// of a workspace document resolves to here.
    Resolve {
        /// The document.
        workspace: String,
        /// Its file name, for errors.
        source: String,
    },
    /// Load and start a staged deployment on every host, and wait for its guests.
    Create {
        /// The deployment.
        deployment: String,
    },
    /// A lifecycle operation on every VM of a deployment.
    Run {
        /// The deployment.
        deployment: String,
        /// The operation.
        op: Op,
    },
    /// The VMs of a deployment, or of all.
    Status {
        /// The deployment.
        deployment: Option<String>,
    },
    /// A store command on the store this vwd owns (import and export come with the
    /// file, as a descriptor).
    Store {
        /// The command.
        op: crate::storecmd::StoreOp,
    },
}

/// The VMs one host reported, with its driver.
pub type HostVms = HostAnswer<HostStatus>;

/// `vwd` → `vw`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "reply")]
pub enum LocalReply {
    /// Progress of a deployment.
    Event {
        /// What happened.
        event: DeployEvent,
    },
    /// The deployment's report.
    Deployed {
        /// It.
        report: Box<DeployReport>,
    },
    /// What a ticket for the document must name.
    Resolved {
        /// The cluster's name.
        cluster: String,
        /// Each image as the document names it, with its manifest id here.
        images: Vec<(String, vw_chunkstore::ManifestId)>,
    },
    /// Each host's answer to a lifecycle operation.
    Ran {
        /// Per host.
        hosts: Vec<HostAnswer<Vec<VmReport>>>,
    },
    /// Each host's VMs.
    Status {
        /// Per host.
        hosts: Vec<HostVms>,
        /// On a head: what each VO's deployments take, against its quota.
        #[serde(default)]
        vos: Vec<crate::control::usage::VoUsage>,
        /// On a head: the deployments under way, with each host's progress.
        #[serde(default)]
        live: Vec<crate::control::live::LiveDeployment>,
    },
    /// How far a store command has got.
    Progress {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// What a store command did.
    Stored {
        /// It, in both forms.
        outcome: crate::storecmd::Outcome,
    },
    /// The request failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// Why the local socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Connecting, reading or writing failed.
    #[error("vwd socket {path}: {error}")]
    Io {
        /// The socket.
        path: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The daemon sent something that is not a reply.
    #[error("vwd socket {path}: bad reply: {reason}")]
    Protocol {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Sends `request` to the `vwd` listening at `path`, passing events to `on_event`;
/// returns the final reply.
pub fn call(
    path: &Path,
    request: &LocalRequest,
    mut on_event: impl FnMut(&DeployEvent),
) -> Result<LocalReply, LocalError> {
    call_with(path, request, None, |reply| {
        if let LocalReply::Event { event } = reply {
            on_event(event);
        }
    })
}

/// Sends `request` with `file` (its descriptor, SCM_RIGHTS, with the request's first
/// bytes) to the `vwd` listening at `path`, passing each reply before the last to
/// `on_reply` (events, progress); returns the last.
pub fn call_with(
    path: &Path,
    request: &LocalRequest,
    file: Option<&std::fs::File>,
    mut on_reply: impl FnMut(&LocalReply),
) -> Result<LocalReply, LocalError> {
    let io = |error| LocalError::Io { path: path.display().to_string(), error };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    let sent = match file {
        None => 0,
        Some(file) => {
            use std::os::fd::AsFd as _;
            let fds = [file.as_fd()];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
            cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
            let bytes = [std::io::IoSlice::new(&line)];
            rustix::net::sendmsg(&stream, &bytes, &mut cmsg, rustix::net::SendFlags::empty())
                .map_err(|e| io(e.into()))?
        }
    };
    stream.write_all(&line[sent..]).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        if reader.read_line(&mut buf).map_err(io)? == 0 {
            return Err(LocalError::Protocol {
                path: path.display().to_string(),
                reason: "the daemon closed the socket without answering (see its log)".into(),
            });
        }
        let reply: LocalReply = serde_json::from_str(&buf).map_err(|e| LocalError::Protocol {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        match reply {
            LocalReply::Event { .. } | LocalReply::Progress { .. } => on_reply(&reply),
            other => return Ok(other),
        }
    }
}

/// A store command's progress, sent to the client at most every 100 ms (dropped when
/// the client reads slower).
struct SocketProgress {
    tx: mpsc::Sender<(u64, u64)>,
    counts: std::sync::Mutex<(u64, u64, std::time::Instant)>,
}

impl SocketProgress {
    fn new(tx: mpsc::Sender<(u64, u64)>) -> Self {
        SocketProgress { tx, counts: std::sync::Mutex::new((0, 0, std::time::Instant::now())) }
    }
}

impl vw_chunkstore::Progress for SocketProgress {
    fn start(&self, total: u64) {
        let mut c = self.counts.lock().expect("progress lock");
        *c = (0, total, std::time::Instant::now());
        let _ = self.tx.try_send((0, total));
    }

    fn advance(&self, bytes: u64) {
        let mut c = self.counts.lock().expect("progress lock");
        c.0 = c.0.saturating_add(bytes);
        if c.2.elapsed() >= std::time::Duration::from_millis(100) || c.0 >= c.1 {
            c.2 = std::time::Instant::now();
            let _ = self.tx.try_send((c.0, c.1));
        }
    }
}

/// What answers the socket: the head (which also serves itself as a host), or a host.
#[derive(Clone, Debug)]
pub enum Role {
    /// A head.
    Head(Arc<Head>),
    /// A host.
    Host(Arc<HostService>),
}

/// The id of group `name` in `/etc/group` text (`name:x:gid:members` lines).
pub fn group_id(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Binds the socket at `path` (replacing a stale one): mode 0600, or 0660 owned by
/// group `group`. The socket is made in a fresh directory only its owner can enter,
/// given its mode and group there, then renamed into place: it never sits at `path`
/// with the mode the umask gave it.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, LocalError> {
    let io = |error| LocalError::Io { path: path.display().to_string(), error };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another vwd is listening on it",
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(".vw-socket.{}", std::process::id()));
    // A leftover of an earlier run of this pid is removed, never entered.
    let _ = std::fs::remove_dir_all(&private);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&private)
        .map_err(io)?;
    let made = private.join("socket");
    let bound = UnixListener::bind(&made)
        .and_then(|l| {
            let mode = match group {
                Some(gid) => {
                    std::os::unix::fs::chown(&made, None, Some(gid))?;
                    0o660
                }
                None => 0o600,
            };
            std::fs::set_permissions(&made, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            std::fs::rename(&made, path)?;
            Ok(l)
        })
        .map_err(io);
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Serves the socket until `stop` is set.
pub async fn serve(listener: UnixListener, role: Role, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let role = role.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(stream, role).await {
                            tracing::warn!(error = %e, "local request failed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting on the local socket"),
            },
        }
    }
}

/// Runs `work`, writing each event it sends on `rx` to the client as it comes (a
/// client that went away does not stop the work), then any left; and, with `live`,
/// noting each under the deployment's name for `vw status` until the work ends.
async fn with_events<T>(
    work: impl std::future::Future<Output = T>,
    rx: &mut mpsc::Receiver<DeployEvent>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    live: Option<(&crate::control::live::Live, &str)>,
) -> T {
    if let Some((live, name)) = live {
        live.begin(name);
    }
    let note = |event: &DeployEvent| {
        if let Some((live, name)) = live {
            live.note(name, event);
        }
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(event) = rx.recv() => {
                note(&event);
                let _ = write.write_all(&reply_line(&LocalReply::Event { event })).await;
            }
        }
    };
    while let Ok(event) = rx.try_recv() {
        let _ = write.write_all(&reply_line(&LocalReply::Event { event })).await;
    }
    if let Some((live, name)) = live {
        live.end(name);
    }
    result
}

/// A deployment's report, or why there is none.
fn deployed(result: Result<DeployReport, ControlError>) -> LocalReply {
    match result {
        Ok(report) => LocalReply::Deployed { report: Box::new(report) },
        Err(e) => LocalReply::Failed { error: e.to_string() },
    }
}

/// A reply as one line of JSON.
fn reply_line(reply: &LocalReply) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(reply).expect("replies serialise");
    bytes.push(b'\n');
    bytes
}

/// Reads the first bytes of a request into `buf`, with the file descriptor sent with
/// them, if any (SCM_RIGHTS; any more than one are closed).
async fn recv_first(
    stream: &UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    loop {
        stream.readable().await?;
        let received = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
            let mut bytes = [std::io::IoSliceMut::new(buf)];
            let got = rustix::net::recvmsg(
                stream,
                &mut bytes,
                &mut cmsg,
                rustix::net::RecvFlags::CMSG_CLOEXEC,
            )?;
            let fd = cmsg.drain().find_map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            });
            Ok((got.bytes, fd))
        });
        match received {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn serve_one(stream: UnixStream, role: Role) -> std::io::Result<()> {
    let mut first = vec![0u8; 64 << 10];
    let (n, fd) = recv_first(&stream, &mut first).await?;
    if n == 0 {
        // Closed without a word: `vw` looking whether a vwd listens here.
        return Ok(());
    }
    first.truncate(n);
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    if let Some(end) = first.iter().position(|&b| b == b'\n') {
        line.extend_from_slice(&first[..=end]);
    } else {
        line = first;
        if !line.is_empty() {
            tokio::io::BufReader::new(read)
                .take((MAX_REQUEST + 1).saturating_sub(line.len()) as u64)
                .read_until(b'\n', &mut line)
                .await?;
        }
    }
    let n = line.len();
    let request: Result<LocalRequest, String> = if n > MAX_REQUEST {
        Err(format!("request longer than {MAX_REQUEST} bytes"))
    } else {
        serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
    };
    let reply = match (request, role) {
        (Err(error), _) => LocalReply::Failed { error },
        (Ok(LocalRequest::Deploy { workspace, source, ticket, options }), Role::Head(head)) => {
            // Seen by `vw status` under its name while it runs (a document that does not
            // parse fails at once, unseen).
            let name = crate::workspace::parse(&workspace, &source).map(|s| s.name).ok();
            let (tx, mut rx) = mpsc::channel(64);
            let work = head.deploy(&workspace, &source, &ticket, options, &tx);
            let live = name.as_deref().map(|n| (head.live(), n));
            deployed(with_events(work, &mut rx, &mut write, live).await)
        }
        (Ok(LocalRequest::Create { deployment }), Role::Head(head)) => {
            let (tx, mut rx) = mpsc::channel(64);
            let live = Some((head.live(), deployment.as_str()));
            deployed(with_events(head.create(&deployment, &tx), &mut rx, &mut write, live).await)
        }
        (Ok(LocalRequest::Resolve { workspace, source }), Role::Head(head)) => {
            match head.resolve(&workspace, &source).await {
                Ok((cluster, images)) => LocalReply::Resolved { cluster, images },
                Err(e) => LocalReply::Failed { error: e.to_string() },
            }
        }
        (Ok(LocalRequest::Run { deployment, op }), Role::Head(head)) => {
            match head.run(&deployment, op).await {
                Ok(hosts) => LocalReply::Ran { hosts },
                Err(e) => LocalReply::Failed { error: e.to_string() },
            }
        }
        (Ok(LocalRequest::Store { op }), role) => {
            let service = match &role {
                Role::Head(head) => head.host(),
                Role::Host(host) => Arc::clone(host),
            };
            let file = fd.map(std::fs::File::from);
            let (tx, mut rx) = mpsc::channel(8);
            let work = tokio::task::spawn_blocking(move || {
                let progress = SocketProgress::new(tx);
                let config = Arc::clone(&service.gate().config);
                crate::storecmd::run(&service.store(), &config, op, file, &progress)
            });
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    Some((done, total)) = rx.recv() => {
                        let _ = write.write_all(&reply_line(&LocalReply::Progress { done, total })).await;
                    }
                }
            };
            crate::metrics::STORE_CHANGED.notify_one();
            match result {
                Ok(Ok(outcome)) => LocalReply::Stored { outcome },
                Ok(Err(e)) => LocalReply::Failed { error: e.to_string() },
                Err(e) => LocalReply::Failed { error: format!("the store command stopped: {e}") },
            }
        }
        (Ok(LocalRequest::Status { deployment }), Role::Head(head)) => {
            let usage = head.usage().await;
            match (head.status(deployment.as_deref()).await, usage) {
                (Ok(hosts), Ok(vos)) => LocalReply::Status { hosts, vos, live: head.live().now() },
                (Err(e), _) | (_, Err(e)) => LocalReply::Failed { error: e.to_string() },
            }
        }
        (Ok(LocalRequest::Status { deployment }), Role::Host(host)) => {
            let (tx, _rx) = mpsc::channel(1);
            let request = Request::Status { deployment: deployment.clone() };
            let result = match host.handle("local", request, tx).await {
                Answer::Status(s) if s.vms.is_empty() && deployment.is_some() => {
                    Err(Failure::new(
                        FailureKind::NotFound,
                        format!(
                            "no deployment {} on this host; `vw status` lists them",
                            deployment.as_deref().unwrap_or_default()
                        ),
                    ))
                }
                Answer::Status(s) => Ok(s),
                Answer::Failed(f) => Err(f),
                other => {
                    Err(Failure::new(FailureKind::Failed, format!("unexpected answer {other:?}")))
                }
            };
            LocalReply::Status {
                hosts: vec![HostAnswer { host: "this host".into(), result }],
                vos: Vec::new(),
                live: Vec::new(),
            }
        }
        (Ok(_), Role::Host(_)) => LocalReply::Failed {
            error: "this vwd is a host, not a head: deploy and cluster-wide operations go to the head's vwd".into(),
        },
    };
    write.write_all(&reply_line(&reply)).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// The socket appears at its path already 0600 (it is made in a private directory
    /// and renamed), nothing else is left beside it, and a second vwd is refused.
    #[tokio::test]
    async fn the_socket_is_private_from_the_moment_it_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vwd.sock");
        let _listener = bind(&path, None).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let err = bind(&path, None).expect_err("in use").to_string();
        assert!(err.contains("another vwd is listening"), "{err}");
    }

    /// With a group, the socket is 0660 and the group's (this process's own group
    /// here: a test makes no system group).
    #[tokio::test]
    async fn a_socket_group_may_use_the_socket() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vwd.sock");
        let gid = std::fs::metadata(dir.path()).expect("stat").gid();
        let _listener = bind(&path, Some(gid)).expect("bind");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, gid));
    }

    #[test]
    fn groups_are_found_by_name() {
        let etc = "root:x:0:\nvwx:x:998:\nvw:x:997:alice,bob\n";
        assert_eq!(group_id(etc, "vw"), Some(997));
        assert_eq!(group_id(etc, "root"), Some(0));
        assert_eq!(group_id(etc, "v"), None);
        assert_eq!(group_id("vw:x:notanumber:\n", "vw"), None);
    }
}
