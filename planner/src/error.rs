//! Why the planner could not plan.

/// A planning error: each names what is wrong and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The cluster has no hosts.
    #[error("the cluster has no hosts")]
    NoHosts,
    /// Two hosts share a name.
    #[error("duplicate host name {name}")]
    DuplicateHost {
        /// The name.
        name: String,
    },
    /// A host has a zero (or not finite) link rate.
    #[error("host {host} has a zero {link} rate; give it a positive rate in the hosts file")]
    ZeroBandwidth {
        /// The host.
        host: String,
        /// `uplink` or `downlink`.
        link: &'static str,
    },
    /// A host has no memory, vCPUs or cores.
    #[error("host {host} has no memory, vCPUs or cores to give")]
    ZeroCapacity {
        /// The host.
        host: String,
    },
    /// A host named as a source holds nothing of any image.
    #[error("source {host} holds nothing of the images to stage; give it the images or name another source")]
    EmptySource {
        /// The host.
        host: String,
    },
    /// No live host holds all of an image.
    #[error("no live host holds all of image {image}; import it on a host that is up")]
    NoSource {
        /// The image.
        image: String,
    },
    /// The workspace needs more than the cluster has.
    #[error("the workspace does not fit: {0}")]
    DoesNotFit(String),
    /// A strategy parameter is out of range.
    #[error("strategy {0}")]
    BadStrategy(String),
    /// The simulation did not finish.
    #[error("the simulation did not finish within {steps} steps ({reason})")]
    Stuck {
        /// Steps taken.
        steps: u64,
        /// Why.
        reason: String,
    },
}
