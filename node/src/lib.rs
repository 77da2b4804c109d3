//! `vw-node`: the host peer (`vwd`) and everything a host does with a virtual cluster
//! (docs/ARCHITECTURE.md has the map).
//!
//! - The documents: [`workspace`] (the workspace XML and its validated model),
//!   [`config`] (the cluster configuration), [`hosts`] (the planner's hosts file).
//! - One host's VMs: [`manager`] (the lifecycle, persisted in the store's database and
//!   reconciled with the hypervisor), [`lifecycle`] (states and steps), [`integrate`]
//!   (fitting images into the cluster), [`xen`] (domain configs, the `xl` and simulated
//!   drivers), [`machine`] (what the host has), [`report`] (what hosts record and
//!   report), [`names`] (host, VM and deployment names as their own types).
//! - Between hosts: [`peer`] (libp2p: transport, allow list, streams), [`wire`] (the
//!   framing both protocols share), [`chunks`] (`/vw/chunks`: serving, fetching,
//!   relaying), [`control`] (`/vw/control`: the head's deployments and a host's
//!   answers), [`access`] (VO tickets, seals, grants, the audit log), [`plan`] (the
//!   head's planning from inventories).
//! - The daemon: [`service`] (one `vwd`), [`daemon`] (its config and key), [`local`]
//!   (the socket `vw` talks to), [`storecmd`] (store commands either way), [`metrics`].
//!
//! The chunk store and the planner are re-exported for the CLI.

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
#[cfg(feature = "host")]
pub mod lazy;
pub mod lifecycle;
#[cfg(feature = "host")]
pub mod local;
pub mod machine;
#[cfg(feature = "host")]
pub mod manager;
#[cfg(feature = "host")]
pub mod metrics;
pub mod names;
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
