//! `vw-testnet`: real multi-host experiments on one machine.
//!
//! This crate will own network namespaces joined by a bridge with `tc`-shaped links,
//! N `vwd` processes, the scenarios that reproduce the paper's staging figures, CSV
//! output, PNG plots and baselines. Issue 6 fills it; nothing here yet.
