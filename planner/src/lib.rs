//! `vw-planner`: the pure decisions of a deployment.
//!
//! No I/O, no async and no clock (callers pass `now`). Today: [`address`], private and
//! public address assignment and deterministic Xen MACs. Issue 4 adds VM placement on
//! physical hosts (memory, vCPUs, CPU pinning, preferring hosts that already hold most
//! of an image's chunks), distribution plans (star, chain, k-ary tree, striped trees)
//! over the hosts that lack chunks, and a flow-level simulator of a plan on a topology.

pub mod address;
