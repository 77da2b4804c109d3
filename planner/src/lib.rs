//! `vw-planner`: the pure decisions of a deployment.
//!
//! This crate will own, with no I/O, no async and no clock (callers pass `now`):
//! VM placement on physical hosts (memory, vCPUs, CPU pinning, preferring hosts that
//! already hold most of an image's chunks), private and public address assignment,
//! distribution plans (star, chain, k-ary tree, striped trees) over the hosts that lack
//! chunks, and a flow-level simulator that predicts a plan's time on a topology.
//! It is filled by issue 4; nothing here yet.
