//! `vw-planner`: the pure decisions of a deployment.
//!
//! No I/O, no async and no clock: inputs in, plain serialisable data out, the same
//! output for the same input.
//! - [`address`]: private and public addresses and deterministic Xen MACs;
//! - [`placement`]: which host runs each VM (memory, vCPUs, pinned cores; spread or
//!   pack; cache affinity), each decision with a reason;
//! - [`distribution`]: which host sends which chunk ranges to which (star, chain,
//!   k-ary tree, striped, automatic), cache-aware and rack-aware;
//! - [`simulate`]: a flow-level prediction of a plan on the cluster's links.
//!
//! Images are lists of chunk sizes and holdings are [`Ranges`] of chunk indices
//! ([`chunks`]); the caller maps chunk ids to indices, so this crate depends on no
//! other vw crate.

pub mod address;
pub mod chunks;
pub mod distribution;
mod error;
pub mod host;
pub mod placement;
pub mod simulate;
pub mod testdata;

pub use chunks::{Image, Ranges};
pub use distribution::{plan, DistributionPlan, Need, Strategy, Stream};
pub use error::PlanError;
pub use host::{Cluster, Host, HostIx, Inventory};
pub use placement::{place, Committed, Placed, Policy, VmDemand};
pub use simulate::{simulate, simulate_reshaped, Reshape, Simulation};

/// Bytes in binary units, one decimal (`445.6 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
