//! Why a control request, or a deployment the head drives, failed.
//!
//! In a process, a [`ControlError`] keeps its cause typed (the store's, the manager's,
//! an access refusal, a host that went away), so a caller can tell a refused ticket
//! from a dead peer from a full disk ([`ControlError::kind`]). Across the network, and
//! to the CLI, it travels as a [`Failure`] (in `protocol`): its kind and its message,
//! which is what a host answers the head and what the head reports per host.

use vw_chunkstore::ManifestId;

pub use super::protocol::{Failure, FailureKind};

use crate::access::AccessError;
use crate::manager::ManagerError;
use crate::peer::PeerError;
use crate::plan::PlanningError;

/// Why a control request failed on this host, or a deployment on the head.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The VO may not do this (ticket, seal, quota, replay).
    #[error("refused: {0}")]
    Access(#[from] AccessError),
    /// The request fails this host's checks (a stage order, a manifest's bytes, the
    /// peer it came from), as the message says.
    #[error("refused: {0}")]
    Refused(String),
    /// The chunk store failed.
    #[error(transparent)]
    Store(#[from] vw_chunkstore::Error),
    /// The manager failed (records, staging, the hypervisor).
    #[error(transparent)]
    Manager(Box<ManagerError>),
    /// The workspace document is invalid.
    #[error(transparent)]
    Workspace(#[from] crate::workspace::Error),
    /// The workspace cannot be planned on the cluster.
    #[error("workspace {workspace}: {error}")]
    Planning {
        /// The workspace.
        workspace: String,
        /// Why.
        #[source]
        error: PlanningError,
    },
    /// The hosts' inventories cannot be planned with.
    #[error(transparent)]
    View(#[from] super::view::ViewError),
    /// The record of admitted tickets failed.
    #[error(transparent)]
    Tickets(#[from] crate::access::replay::SeenError),
    /// Chunks could not be fetched.
    #[error(transparent)]
    Fetch(#[from] PeerError),
    /// A host could not be reached, went quiet, or broke the protocol.
    #[error("{reason}")]
    Unreachable {
        /// The host.
        host: crate::names::HostName,
        /// What happened.
        reason: String,
    },
    /// A host answered that it failed.
    #[error("{failure}")]
    Remote {
        /// The host.
        host: crate::names::HostName,
        /// Its answer.
        failure: Failure,
    },
    /// A manifest the request names is not here.
    #[error("image {image}: manifest {manifest} was never sent to this host")]
    ManifestNotSent {
        /// The image.
        image: String,
        /// Its manifest.
        manifest: ManifestId,
    },
    /// No cluster deployment of that name is recorded on this head.
    #[error("no cluster deployment {name} on this head; `vw status` lists them")]
    NoDeployment {
        /// The name asked for.
        name: String,
    },
    /// The request conflicts with what is recorded (another document or VO under the
    /// name, a deployment recorded meanwhile), or cannot be served as asked.
    #[error("{0}")]
    Conflict(String),
    /// No lazy stage of that name runs on this host (it never did, or its end was
    /// asked for already).
    #[error("no lazy stage {stage} runs on this host")]
    NoStage {
        /// The stage asked for.
        stage: String,
    },
    /// A worker thread (the manager's, a blocking task) failed.
    #[error("{what}: its thread failed: {reason}")]
    Thread {
        /// What it was doing.
        what: &'static str,
        /// How it failed.
        reason: String,
    },
}

impl ControlError {
    /// What kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        use vw_chunkstore::Error as S;
        let store = |e: &S| match e {
            S::NoSpace { .. } => FailureKind::DiskFull,
            S::UnknownName { .. } | S::UnknownManifest { .. } | S::MissingChunk { .. } => {
                FailureKind::NotFound
            }
            _ => FailureKind::Failed,
        };
        match self {
            ControlError::Access(_) | ControlError::Refused(_) => FailureKind::Refused,
            ControlError::Store(e) => store(e),
            ControlError::Manager(e) => match &**e {
                ManagerError::Store(e) => store(e),
                ManagerError::Stage { error, .. } => store(error),
                ManagerError::UnknownDeployment { .. }
                | ManagerError::UnknownVm { .. }
                | ManagerError::MissingImage { .. } => FailureKind::NotFound,
                _ => FailureKind::Failed,
            },
            ControlError::Fetch(PeerError::Store(e)) => store(e),
            ControlError::Unreachable { .. } => FailureKind::Unreachable,
            ControlError::Remote { failure, .. } => failure.kind,
            ControlError::ManifestNotSent { .. }
            | ControlError::NoDeployment { .. }
            | ControlError::NoStage { .. } => FailureKind::NotFound,
            _ => FailureKind::Failed,
        }
    }

    /// As it travels: its kind and message (a refusal's without its "refused: ", which
    /// the kind says).
    pub fn failure(&self) -> Failure {
        match self {
            ControlError::Remote { failure, .. } => failure.clone(),
            ControlError::Access(e) => Failure::new(FailureKind::Refused, e.to_string()),
            ControlError::Refused(why) => Failure::new(FailureKind::Refused, why.clone()),
            other => Failure::new(other.kind(), other.to_string()),
        }
    }

    /// A blocking task or the manager's thread that did not come back.
    pub(crate) fn thread(what: &'static str, e: impl std::fmt::Display) -> Self {
        ControlError::Thread { what, reason: e.to_string() }
    }
}

impl From<ManagerError> for ControlError {
    fn from(e: ManagerError) -> Self {
        ControlError::Manager(Box::new(e))
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        e.failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller tells a refused ticket from a dead peer from a full disk by kind, and
    /// the kind crosses the network with the message.
    #[test]
    fn kinds_tell_refusals_dead_peers_and_full_disks_apart() {
        let refused =
            ControlError::Access(AccessError::Replayed { deployment: "c".into(), vo: "v".into() });
        let dead =
            ControlError::Unreachable { host: "h2".into(), reason: "no word for 60 s".into() };
        let full = ControlError::from(ManagerError::Stage {
            vm: "c-head".into(),
            error: Box::new(vw_chunkstore::Error::NoSpace { path: "/var/lib/vw/x".into() }),
        });
        let kinds: Vec<FailureKind> = [&refused, &dead, &full].iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, [FailureKind::Refused, FailureKind::Unreachable, FailureKind::DiskFull]);
        let f = refused.failure();
        assert_eq!(f.to_string(), refused.to_string(), "a refusal reads the same either side");
        let remote = ControlError::Remote { host: "h1".into(), failure: full.failure() };
        assert_eq!(remote.kind(), FailureKind::DiskFull);
        assert_eq!(remote.to_string(), full.to_string());
    }
}
