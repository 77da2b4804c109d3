//! `vw-testnet`: real multi-host experiments on one machine.
//!
//! A scenario file ([`scenario`]) describes a topology and runs. The harness builds the
//! topology out of network namespaces, one Linux bridge per switch and veth links shaped
//! with `tc` in both directions ([`net`]), starts one `vwd` per host namespace
//! ([`cluster`]), imports the images on the head, runs each deployment through the
//! head's local socket, verifies every host's images byte for byte, and writes CSV rows,
//! PNG plots and a markdown summary ([`results`], [`plot`]). A run may kill, slow or
//! load one host's link while it stages, or cap the deployment, and the harness watches
//! every link's counters meanwhile ([`disturb`]). The same links carry the baselines:
//! plain TCP copies ([`baseline`]) and a BitTorrent swarm ([`swarm`]). Everything it made is torn down when
//! it ends, fails, panics or is interrupted.

pub mod baseline;
pub mod cluster;
pub mod disturb;
pub mod images;
pub mod metrics;
pub mod net;
pub mod plot;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod swarm;

use std::path::{Path, PathBuf};

/// Why a testnet run failed.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// Not root: namespaces, bridges and `tc` need it.
    #[error("vw-testnet needs root (network namespaces, bridges and tc); run it with sudo")]
    NotRoot,
    /// A scenario file is wrong (the message has the line and column).
    #[error("scenario {path}: {message}")]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong, where.
        message: String,
    },
    /// A system command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or why it could not run.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// A host or the deployment failed.
    #[error("{0}")]
    Run(String),
    /// A host's copy of an image differs from the original.
    #[error("{host}: image {image} differs from {original} at byte {offset}")]
    Mismatch {
        /// The host.
        host: String,
        /// The image name.
        image: String,
        /// The original file.
        original: PathBuf,
        /// The first differing byte (or the shorter length).
        offset: u64,
    },
    /// Results could not be written or plotted.
    #[error("results: {0}")]
    Output(String),
    /// Interrupted (Ctrl-C or SIGTERM); everything was torn down.
    #[error("interrupted; the testnet was torn down")]
    Interrupted,
}

impl From<anyhow::Error> for TestnetError {
    fn from(e: anyhow::Error) -> Self {
        TestnetError::Run(format!("{e:#}"))
    }
}

/// Writes `bytes` to `path` through a temporary name.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TestnetError> {
    let tmp = path.with_extension("tmp");
    let io = |op, error| TestnetError::Io { op, path: path.to_owned(), error };
    std::fs::write(&tmp, bytes).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
