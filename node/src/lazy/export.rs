//! A lazy disk exported on a Unix socket with the NBD handshake: what the simulated
//! driver's guest reads its disk through, and what QEMU or `nbd-client` can attach
//! (`nbd+unix:///EXPORT?socket=PATH`). The socket is made in the VM's own directory,
//! mode 0600: only root reaches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use super::disk::LazyDisk;
use super::{nbd, LazyError};

/// Connections served at once: a guest needs one.
pub const MAX_CONNECTIONS: usize = 4;

/// A running export; dropping it stops serving and removes the socket.
#[derive(Debug)]
pub struct SocketExport {
    path: PathBuf,
    name: String,
    task: tokio::task::JoinHandle<()>,
}

impl SocketExport {
    /// Serves `disk` as export `name` on a new socket at `path`. Must be called inside a
    /// tokio runtime.
    pub fn start(disk: Arc<LazyDisk>, name: &str, path: &Path) -> Result<Self, LazyError> {
        let io = |op, error| LazyError::Io { op, path: path.to_owned(), error };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", e)),
        }
        let listener = {
            let std = std::os::unix::net::UnixListener::bind(path).map_err(|e| io("bind", e))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("chmod", e))?;
            std.set_nonblocking(true).map_err(|e| io("listen", e))?;
            UnixListener::from_std(std).map_err(|e| io("listen", e))?
        };
        let export = name.to_owned();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let span = tracing::info_span!("export", export = %name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Dropped with this task: its connections end with the export.
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    while conns.try_join_next().is_some() {}
                    let Ok((mut conn, _)) = listener.accept().await else { continue };
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tracing::warn!("too many connections to a lazy disk; one refused");
                        continue;
                    };
                    let (disk, export) = (Arc::clone(&disk), export.clone());
                    conns.spawn(async move {
                        let _slot = slot;
                        let served = match nbd::handshake(&mut conn, &export, disk.size()).await {
                            Ok(true) => nbd::serve(&mut conn, &*disk).await,
                            Ok(false) => Ok(nbd::Served::default()),
                            Err(e) => Err(e),
                        };
                        match served {
                            Ok(s) => tracing::debug!(
                                reads = s.reads,
                                writes = s.writes,
                                "an NBD client left"
                            ),
                            Err(e) => tracing::warn!(error = %e, "an NBD connection ended"),
                        }
                    });
                }
            },
            span,
        ));
        Ok(SocketExport { path: path.to_owned(), name: name.to_owned(), task })
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

use super::nbd::BlockDevice as _;

impl Drop for SocketExport {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
