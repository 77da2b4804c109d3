//! What each VO's deployments take of the cluster, from the head's records: guest
//! memory, the hosts they run on, and per host the bytes of distinct chunks their
//! images take in its cache. The head checks a new deployment against the VO's quota
//! with it, and `vw status` prints it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use vw_chunkstore::ChunkId;

use crate::access::AccessError;
use crate::config::Quota;
use crate::plan::WorkspaceImages;
use crate::report::PlacedVm;
use crate::workspace::WorkspaceSpec;

/// One VO's share of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoUsage {
    /// The VO.
    pub vo: String,
    /// Its deployments.
    pub deployments: Vec<String>,
    /// Its VMs.
    pub vms: usize,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Hosts running its VMs.
    pub hosts: BTreeSet<String>,
    /// Per host: bytes of distinct chunks of its images there.
    pub cache_bytes: BTreeMap<String, u64>,
    /// Per host: the cores its pinned VMs hold.
    pub cores: BTreeMap<String, Vec<u32>>,
    /// Its quota, from the cluster config.
    pub quota: Quota,
}

/// Per host, the distinct chunks (and their sizes) a VO's images take there.
type HostChunks = HashMap<String, HashMap<ChunkId, u32>>;

/// Adds up deployments as they are recorded, per VO.
#[derive(Debug, Default)]
pub struct Usage {
    by_vo: BTreeMap<String, (VoUsage, HostChunks)>,
}

impl Usage {
    /// Counts one deployment of `vo`: `spec` placed as `placement`, its images `wi`.
    pub fn add(
        &mut self,
        vo: &str,
        spec: &WorkspaceSpec,
        wi: &WorkspaceImages,
        placement: &[PlacedVm],
    ) {
        let (u, chunks) = self.by_vo.entry(vo.to_owned()).or_default();
        u.vo = vo.to_owned();
        u.deployments.push(spec.name.clone());
        let sizes: Vec<HashMap<ChunkId, u32>> = wi
            .chunks
            .iter()
            .zip(&wi.images)
            .map(|(ids, image)| ids.iter().copied().zip(image.sizes().iter().copied()).collect())
            .collect();
        for d in wi.demands(spec) {
            let Some(p) = placement.iter().find(|p| p.vm == d.name) else { continue };
            u.vms += 1;
            u.memory_mib += d.memory_mib;
            u.vcpus += d.vcpus;
            u.hosts.insert(p.host.clone());
            if let Some(cores) = &p.cores {
                u.cores.entry(p.host.clone()).or_default().extend(cores);
            }
            let held = chunks.entry(p.host.clone()).or_default();
            for &i in &d.images {
                held.extend(sizes[i].iter().map(|(k, v)| (*k, *v)));
            }
        }
    }

    /// Each VO's usage, with its quota from `config`.
    pub fn finish(self, config: &crate::config::ClusterConfig) -> Vec<VoUsage> {
        self.by_vo
            .into_values()
            .map(|(mut u, chunks)| {
                for (host, held) in chunks {
                    u.cache_bytes.insert(host, held.values().map(|&l| u64::from(l)).sum());
                }
                u.quota = config.vo(&u.vo).map(|v| v.quota).unwrap_or_default();
                u
            })
            .collect()
    }
}

impl VoUsage {
    /// Whether this usage is within `quota`; the error names the quota and the figures.
    pub fn check(&self, quota: &Quota) -> Result<(), AccessError> {
        let over = |what, detail| Err(AccessError::Quota { vo: self.vo.clone(), what, detail });
        if let Some(max) = quota.memory_mib.filter(|&m| self.memory_mib > m) {
            return over(
                "memory_mib",
                format!(
                    "its deployments would take {} MiB of guest memory, the quota is {max} MiB",
                    self.memory_mib
                ),
            );
        }
        if let Some(max) = quota.hosts.filter(|&h| self.hosts.len() > h as usize) {
            return over(
                "hosts",
                format!(
                    "its deployments would run on {} hosts, the quota is {max}",
                    self.hosts.len()
                ),
            );
        }
        if let Some(max) = quota.cache_bytes {
            if let Some((host, bytes)) = self.cache_bytes.iter().find(|(_, &b)| b > max) {
                return over(
                    "cache_bytes",
                    format!("its images would take {bytes} bytes of host {host}'s cache, the quota is {max} bytes"),
                );
            }
        }
        Ok(())
    }
}
