//! `vw-node`: the host peer (`vwd`).
//!
//! This crate will own the workspace model and its XML, the host manager (the VM lifecycle
//! state machine and its persistence), the Xen driver (`xl` and a simulated driver),
//! image integration into the virtual cluster, the libp2p peer (`/vw/chunks/1`,
//! `/vw/control/1`) and the local control socket. Issues 3 and 5 fill it.
//! It re-exports the chunk store the CLI drives today.

pub use vw_chunkstore as chunkstore;
