//! `vw-node`: the host peer (`vwd`).
//!
//! What one host does with a virtual cluster:
//! - [`workspace`]: the workspace document (XML) and its validated model;
//! - [`config`]: the cluster configuration (subnet, address pools, bridges, Xen driver);
//! - [`manager`]: the VM lifecycle (stage, load, create, pause, unpause, stop, unstage),
//!   persisted in the store's database and reconciled with the hypervisor on open;
//! - [`integrate`]: fitting images into the cluster (a cloud-init seed volume or edits
//!   to the VM's own ext4 copy);
//! - [`xen`]: the domain config and the drivers (`xl`, and a simulated one).
//!
//! The libp2p peer and the control socket arrive with issue 5. The chunk store is
//! re-exported for the CLI.

pub use vw_chunkstore as chunkstore;
pub use vw_planner as planner;

pub mod access;
pub mod chunks;
pub mod config;
pub mod control;
#[cfg(feature = "host")]
pub mod daemon;
#[cfg(all(test, feature = "host"))]
mod golden;
pub mod hosts;
pub mod integrate;
pub mod lifecycle;
#[cfg(feature = "host")]
pub mod local;
#[cfg(feature = "host")]
pub mod localnet;
pub mod machine;
#[cfg(feature = "host")]
pub mod manager;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
pub mod peer;
#[cfg(feature = "host")]
pub mod plan;
pub mod process;
pub mod report;
#[cfg(feature = "host")]
pub mod service;
#[cfg(feature = "host")]
pub mod storecmd;
pub mod wire;
pub mod workspace;
pub mod xen;
