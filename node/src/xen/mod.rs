//! The hand-off to the hypervisor: domain configs ([`config`]) and a [`Driver`] that
//! creates, pauses, resumes and stops domains.
//!
//! Two drivers: [`xl::XlDriver`] runs the real toolstack's `xl` (and checks what it
//! did, because `xl pause` exits 0 even when the pause failed), and
//! [`simulated::SimulatedDriver`] checks the same configs and keeps domain states in a
//! file, for machines without Xen (tests, CI, the demo). The simulated one says so in
//! every report ([`Driver::simulated`]).

pub mod boot;
pub mod config;
pub mod ready;
pub mod simulated;
#[cfg(feature = "host")]
pub mod simulated_boot;
pub mod xl;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::config::DriverKind;
pub use ready::GuestReport;

/// What the hypervisor says about a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    /// Running or blocked (scheduled).
    Running,
    /// Paused.
    Paused,
    /// Shutting down, crashed or dying: on its way out.
    Stopping,
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::Stopping => "stopping",
        })
    }
}

/// How a domain was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopHow {
    /// The guest shut down when asked.
    Shutdown,
    /// It did not within the timeout and was destroyed.
    Destroyed,
    /// There was no domain.
    Absent,
}

/// Hands domains to a hypervisor. Calls block; each is bounded by the driver's
/// timeouts.
pub trait Driver: fmt::Debug + Send + Sync {
    /// `xl`, or `simulated` (which only pretends: no hypervisor).
    fn kind(&self) -> DriverKind;
    /// What the hypervisor says the machine has (`xl info`); `None` without one.
    fn machine(&self) -> Result<Option<crate::machine::XlInfo>, XenError> {
        Ok(None)
    }
    /// Creates the domain from `cfg`, paused.
    fn load(&self, domain: &str, cfg: &Path) -> Result<(), XenError>;
    /// Lets a paused domain run (also how a loaded domain starts).
    fn unpause(&self, domain: &str) -> Result<(), XenError>;
    /// Pauses a running domain, and confirms it is paused.
    fn pause(&self, domain: &str) -> Result<(), XenError>;
    /// Shuts the domain down, destroying it after the shutdown timeout.
    fn stop(&self, domain: &str) -> Result<StopHow, XenError>;
    /// Destroys the domain at once (one that never ran has nothing to shut down).
    fn destroy(&self, domain: &str) -> Result<StopHow, XenError>;
    /// The domain's state; `None` if the hypervisor has no such domain.
    fn status(&self, domain: &str) -> Result<Option<DomainState>, XenError>;
    /// What the guest reported once it was up ([`ready`]); `None` until it has.
    fn guest_report(&self, domain: &str) -> Result<Option<GuestReport>, XenError>;
    /// The last `lines` lines the guest printed on its console, where they are kept.
    fn console_tail(&self, domain: &str, lines: usize) -> Vec<String>;
    /// How often a host asks its running guests whether they are up: a guest's time to
    /// ready is known to within this. Once a second by default (under `xl` each ask runs
    /// two programs per guest).
    fn ready_poll(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
}

/// Why the hypervisor hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// `xl` is not where the config says.
    #[error(
        "cannot run {path}: {error}; install the Xen tools or set [xen] xl in the cluster config"
    )]
    XlMissing {
        /// The configured program.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// `xl` exited non-zero; its stderr is passed on.
    #[error("`{command}` failed ({status}): {stderr}")]
    XlFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `xl` took longer than its timeout and was killed.
    #[error("`{command}` did not finish within {seconds} s and was killed")]
    XlTimeout {
        /// The command line.
        command: String,
        /// The timeout.
        seconds: u64,
    },
    /// The command succeeded but the domain is not in the state it should be in.
    #[error("after `{command}` domain {domain} is {found}, not {expected}; check `xl dmesg` and the guest console")]
    Unconfirmed {
        /// The command line.
        command: String,
        /// The domain.
        domain: String,
        /// What `xl list` says (or `absent`).
        found: String,
        /// What it should be.
        expected: DomainState,
    },
    /// The domain is still there after `xl destroy`.
    #[error(
        "after `{command}` domain {domain} still exists ({found}); check `xl list` and `xl dmesg`"
    )]
    NotGone {
        /// The command line.
        command: String,
        /// The domain.
        domain: String,
        /// What `xl list` says.
        found: DomainState,
    },
    /// The guest wrote a report that cannot be read (it is untrusted input).
    #[error("domain {domain}: {error}")]
    BadReport {
        /// The domain.
        domain: String,
        /// What is wrong with it.
        #[source]
        error: ready::ReportError,
    },
    /// Output of `xl` that vw cannot read.
    #[error("cannot read the output of `{command}`: {output:?}")]
    BadOutput {
        /// The command line.
        command: String,
        /// The output.
        output: String,
    },
    /// A value cannot be written into a domain config.
    #[error("domain {domain}: cannot write `{key}` into the config: {reason}")]
    BadConfigValue {
        /// The domain.
        domain: String,
        /// The config key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A workspace names a kernel or ramdisk this host does not allow.
    #[error("node {node}: {key} `{path}`: {reason}")]
    HostFile {
        /// The node (head or worker template) that names it.
        node: String,
        /// `kernel` or `ramdisk`.
        key: &'static str,
        /// What the workspace says.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// A config was refused (by the simulated driver's check).
    #[error("domain config {path} is invalid: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The simulated hypervisor refused an operation the real one would refuse too.
    #[error("simulated Xen: {0}")]
    Simulated(String),
    /// Reading or writing the simulated hypervisor's state failed.
    #[error("simulated Xen state {path}: {error}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        error: std::io::Error,
    },
}
