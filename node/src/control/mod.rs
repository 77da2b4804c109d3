//! `/vw/control`: how the head drives the hosts of a deployment.
//!
//! The head opens one stream per request to each host, all hosts at once. A host
//! answers only the peers its config marks as heads; anyone else is refused, and the
//! refusal logged. Requests: a manifest piece (each manifest the head will name, sent
//! once), inventory (capacity, and which chunks of the deployment's images the host
//! holds), stage (its share of the virtual cluster, the manifests by id, and the
//! planned streams to pull the chunks it lacks), a lifecycle operation, status.
//! Progress (phase, bytes) streams back while a stage runs.
//!
//! The wire format is in [`protocol`]; serving requests on a host in `host`, keeping
//! the manifests it was sent in `manifests`, checking a stage order in [`check`];
//! driving a deployment from the head in `head`, which reads as a straight line around
//! one pure step, `orders` (the view of the cluster from [`view`] in, every host's
//! order out); a deployment's phases, events and report in `deployment`; why a
//! request failed, and of what kind, in `error`.

pub mod cap;
pub mod check;
#[cfg(feature = "host")]
pub mod deployment;
#[cfg(feature = "host")]
pub mod error;
#[cfg(feature = "host")]
pub mod flowing;
#[cfg(feature = "host")]
pub mod head;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
mod lazy;
#[cfg(feature = "host")]
pub mod live;
#[cfg(feature = "host")]
pub mod manifests;
#[cfg(feature = "host")]
pub mod orders;
pub mod protocol;
#[cfg(feature = "host")]
pub mod serial;
#[cfg(feature = "host")]
pub mod usage;
pub mod view;

#[cfg(feature = "host")]
pub use error::ControlError;
pub use protocol::{Answer, Failure, FailureKind, Request, PROTOCOL_NAME};
