//! The audit log: one JSON line per operation a host carries out or refuses, with the
//! VO it was on behalf of, the peer that asked, and the time.
//!
//! `<data_dir>/audit.log`, opened for appending; each line goes out in one `write`, so
//! lines from concurrent streams never interleave. Lines are not synced one by one (a
//! power cut may lose the last few); the operations themselves are.
//!
//! ```json
//! {"time_ms":1764000000000,"vo":"grid3","peer":"12D3KooW…","op":"stage","deployment":"grid3","outcome":"ok","detail":"2 images"}
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file name under the data directory.
pub const FILE: &str = "audit.log";

/// One line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// The VO the operation was for (`-` when not known: a refused request that named
    /// no deployment this host knows).
    pub vo: String,
    /// The peer that asked (`local` for the control socket).
    pub peer: String,
    /// What: `deploy`, `stage`, `load`, …, `chunks`.
    pub op: String,
    /// The deployment.
    pub deployment: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Details: what was refused and why, what was served.
    pub detail: String,
}

/// A host's audit log.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl Audit {
    /// Opens (or creates) the log under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(FILE);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Audit { path, file: Mutex::new(file) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry; a failed write is logged, never fatal to the operation.
    pub fn record(
        &self,
        vo: &str,
        peer: &str,
        op: &str,
        deployment: &str,
        outcome: &str,
        detail: &str,
    ) {
        let entry = Entry {
            time_ms: crate::manager::now_ms(),
            vo: vo.to_owned(),
            peer: peer.to_owned(),
            op: op.to_owned(),
            deployment: deployment.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        let mut line = serde_json::to_vec(&entry).expect("an entry serialises");
        line.push(b'\n');
        let written = self.file.lock().expect("audit lock").write_all(&line);
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    /// Every entry, oldest first (for `vw` and the tests).
    pub fn read(data_dir: &Path) -> std::io::Result<Vec<Entry>> {
        let text = match std::fs::read_to_string(data_dir.join(FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        text.lines().map(|l| serde_json::from_str(l).map_err(std::io::Error::other)).collect()
    }
}
