//! The physical cluster as the planner sees it: hosts with capacity, link rates, rack
//! and liveness.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// A host's position in [`Cluster::hosts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostIx(pub u32);

impl HostIx {
    /// As an index.
    pub fn ix(self) -> usize {
        self.0 as usize
    }
}

/// One physical host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Its name (unique).
    pub name: String,
    /// Memory for guests, MiB.
    pub memory_mib: u64,
    /// vCPUs it will run in all (unpinned VMs share cores).
    pub vcpus: u32,
    /// Physical cores (pinned VMs get them exclusively).
    pub cpus: u32,
    /// Uplink rate, bytes per second.
    pub up: f64,
    /// Downlink rate, bytes per second.
    pub down: f64,
    /// Rack or switch, for rack-aware orderings.
    pub rack: Option<String>,
    /// Whether it is up; dead hosts get no VMs and send nothing.
    pub alive: bool,
}

/// The hosts, checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    hosts: Vec<Host>,
}

impl Cluster {
    /// Checks names are unique and rates and capacities are positive.
    pub fn new(hosts: Vec<Host>) -> Result<Self, PlanError> {
        if hosts.is_empty() {
            return Err(PlanError::NoHosts);
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &hosts {
            if !names.insert(h.name.as_str()) {
                return Err(PlanError::DuplicateHost { name: h.name.clone() });
            }
            for (what, v) in [("uplink", h.up), ("downlink", h.down)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(PlanError::ZeroBandwidth { host: h.name.clone(), link: what });
                }
            }
            // A dead host gives nothing and is given nothing; a live one must have room.
            if h.alive && (h.memory_mib == 0 || h.vcpus == 0 || h.cpus == 0) {
                return Err(PlanError::ZeroCapacity { host: h.name.clone() });
            }
        }
        Ok(Cluster { hosts })
    }

    /// Every host, in input order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// One host.
    pub fn host(&self, h: HostIx) -> &Host {
        &self.hosts[h.ix()]
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Never true (checked on construction); for clippy.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host index by name.
    pub fn find(&self, name: &str) -> Option<HostIx> {
        self.hosts.iter().position(|h| h.name == name).map(|i| HostIx(i as u32))
    }

    /// Every host index.
    pub fn ixs(&self) -> impl Iterator<Item = HostIx> + '_ {
        (0..self.hosts.len() as u32).map(HostIx)
    }
}

impl fmt::Display for HostIx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which chunks of which image each host holds: `held[host][image]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    held: Vec<Vec<crate::Ranges>>,
}

impl Inventory {
    /// Nothing held anywhere.
    pub fn empty(hosts: usize, images: usize) -> Self {
        Inventory { held: vec![vec![crate::Ranges::empty(); images]; hosts] }
    }

    /// Records that `host` holds `ranges` of `image` (added to what it held).
    pub fn add(&mut self, host: HostIx, image: usize, ranges: &crate::Ranges) {
        let cell = &mut self.held[host.ix()][image];
        *cell = cell.union(ranges);
    }

    /// What `host` holds of `image`.
    pub fn held(&self, host: HostIx, image: usize) -> &crate::Ranges {
        &self.held[host.ix()][image]
    }
}
