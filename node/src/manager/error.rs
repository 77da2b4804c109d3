//! [`ManagerError`]: why a manager operation failed.

use std::path::PathBuf;

use vw_chunkstore::ImageRef;
use vw_planner::address::AddressError;

use crate::integrate::IntegrationError;
use crate::lifecycle::{Refusal, Step};
use crate::xen::XenError;

/// Why a manager operation failed. Each names the deployment or VM concerned.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vw_chunkstore::Error),
    /// A record of the manager's is unreadable (written by another release, or damaged).
    #[error("stored {family} record {key} is unreadable: {reason}")]
    Record {
        /// The family.
        family: &'static str,
        /// The record's key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The system gave no randomness.
    #[error("no randomness from the system: {0}")]
    Random(String),
    /// The cluster config does not say which Xen driver to run here.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A partition names an image the store does not have.
    #[error("VM {vm}: image {image} is not in the store ({error}); import it with `vw image import` first")]
    MissingImage {
        /// The VM.
        vm: String,
        /// The image reference.
        image: Box<ImageRef>,
        /// The store's answer.
        error: Box<vw_chunkstore::Error>,
    },
    /// A staging step failed on the store side (export, clone: disk full, I/O).
    #[error("VM {vm}: staging failed: {error}")]
    Stage {
        /// The VM.
        vm: String,
        /// What failed.
        #[source]
        error: Box<vw_chunkstore::Error>,
    },
    /// A lazy disk could not be made.
    #[error("VM {vm}: lazy disk: {why}")]
    Lazy {
        /// The VM.
        vm: String,
        /// Why.
        why: String,
    },
    /// A node boots from a host file this host does not allow.
    #[error("deployment {deployment}: {error}")]
    Boot {
        /// The deployment.
        deployment: String,
        /// Which file, and why.
        #[source]
        error: XenError,
    },
    /// The hypervisor hand-off failed.
    #[error("VM {vm}: {step}: {error}")]
    Xen {
        /// The VM.
        vm: String,
        /// The step.
        step: Step,
        /// What failed.
        #[source]
        error: XenError,
    },
    /// The hypervisor could not say what the machine has.
    #[error(
        "cannot measure this host's capacity (set [host] memory_mib and cpus to skip it): {0}"
    )]
    XenMachine(#[source] XenError),
    /// The hypervisor could not say what state a domain is in.
    #[error("VM {vm}: cannot read its domain's state: {error}")]
    XenStatus {
        /// The VM.
        vm: String,
        /// What failed.
        #[source]
        error: XenError,
    },
    /// Integration failed.
    #[error("VM {vm}: integration: {error}")]
    Integration {
        /// The VM.
        vm: String,
        /// What failed.
        #[source]
        error: IntegrationError,
    },
    /// The operation is impossible from the VM's state.
    #[error("cannot {} VM {vm}: it is {}; {}", refusal.op, refusal.state, refusal.hint)]
    Refused {
        /// The VM.
        vm: String,
        /// Why.
        refusal: Refusal,
    },
    /// No such deployment.
    #[error(
        "no deployment {name} on this host; `vw status` lists them, `vw stage FILE` makes one"
    )]
    UnknownDeployment {
        /// The name asked for.
        name: String,
    },
    /// An address the head assigned is held by another VM on this host.
    #[error("VM {vm}: {address} is already in use here by {owner}")]
    AddressInUse {
        /// The VM.
        vm: String,
        /// `ip/…` or `mac/…`.
        address: String,
        /// Who holds it.
        owner: String,
    },
    /// No such VM in the deployment.
    #[error("deployment {deployment} has no VM {vm}")]
    UnknownVm {
        /// The deployment.
        deployment: String,
        /// The VM asked for.
        vm: String,
    },
    /// A deployment of that name exists with a different document.
    #[error("deployment {name} already exists with a different workspace document; unstage it first or rename the workspace")]
    DeploymentExists {
        /// The name.
        name: String,
    },
    /// A VM name is taken by another deployment.
    #[error("duplicate VM name {vm}: deployment {other} already has it; rename the workspace or its nodes")]
    DuplicateVm {
        /// The VM name.
        vm: String,
        /// The deployment that has it.
        other: String,
    },
    /// The host cannot hold the VMs.
    #[error("VM {vm}: {reason}")]
    Capacity {
        /// The VM.
        vm: String,
        /// What does not fit.
        reason: String,
    },
    /// An address pool ran out.
    #[error("deployment {deployment}: {error}")]
    Addresses {
        /// The deployment.
        deployment: String,
        /// The planner's answer.
        error: AddressError,
    },
    /// Local file I/O failed.
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
}

impl ManagerError {
    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ManagerError::Io { op, path: path.into(), error }
    }
}
