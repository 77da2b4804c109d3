//! What each VO's deployments take of the cluster, from the head's records: guest
//! memory, the hosts they run on, and per host the bytes of distinct chunks their
//! images take in its cache. The head checks a new deployment against the VO's quota
//! with it, and `vw status` prints it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use vw_chunkstore::ChunkId;

use crate::access::AccessError;
use crate::config::Quota;
use crate::names::HostName;
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
    pub hosts: BTreeSet<HostName>,
    /// Per host: bytes of distinct chunks of its images there.
    pub cache_bytes: BTreeMap<HostName, u64>,
    /// Per host: the cores its pinned VMs hold.
    pub cores: BTreeMap<HostName, Vec<u32>>,
    /// Its quota, from the cluster config.
    pub quota: Quota,
}

/// Per host, the distinct chunks (and their sizes) a VO's images take there.
type HostChunks = HashMap<HostName, HashMap<ChunkId, u32>>;

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

/// What one deployment of a VO takes on one host: the guest memory of its VMs there,
/// and the manifests they stage there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostShare {
    /// Guest memory of its VMs here, MiB.
    pub memory_mib: u64,
    /// The manifests its VMs here stage (partitions bound by id, decision 60).
    pub manifests: BTreeSet<vw_chunkstore::ManifestId>,
}

impl HostShare {
    /// The share of `spec` whose VMs `here` (Xen domain names) run on this host; `spec`
    /// as a host records it, every partition of those VMs bound to a manifest id.
    pub fn of(spec: &WorkspaceSpec, here: &[String]) -> HostShare {
        let mut share = HostShare::default();
        for vm in spec.vms().iter().filter(|vm| here.contains(&spec.vm_name(vm))) {
            share.memory_mib = share.memory_mib.saturating_add(vm.node.memory_mib);
            for p in &vm.node.partitions {
                if let vw_chunkstore::ImageRef::Id(id) = &p.image {
                    share.manifests.insert(*id);
                }
            }
        }
        share
    }
}

/// Checks what VO `vo`'s deployments would take on this host, `shares` (those it runs
/// here and the new one), against the part of `quota` one host can see: guest memory
/// (a host's part of the cluster-wide quota cannot exceed it) and the bytes of distinct
/// chunks its images take in this cache. `chunks` gives a manifest's chunks.
pub fn check_host(
    quota: &Quota,
    vo: &str,
    shares: &[HostShare],
    chunks: impl Fn(
        &vw_chunkstore::ManifestId,
    ) -> Result<Vec<vw_chunkstore::ChunkRef>, super::ControlError>,
) -> Result<(), super::ControlError> {
    let over = |what, detail| AccessError::Quota { vo: vo.to_owned(), what, detail };
    let memory = shares.iter().fold(0u64, |sum, s| sum.saturating_add(s.memory_mib));
    if let Some(max) = quota.memory_mib.filter(|&m| memory > m) {
        return Err(super::ControlError::Access(over(
            "memory_mib",
            format!("its VMs on this host alone would take {memory} MiB of guest memory, the quota is {max} MiB"),
        )));
    }
    if let Some(max) = quota.cache_bytes {
        let manifests: BTreeSet<_> = shares.iter().flat_map(|s| &s.manifests).collect();
        let mut sizes: HashMap<ChunkId, u32> = HashMap::new();
        for id in manifests {
            sizes.extend(chunks(id)?.into_iter().filter(|c| !c.is_zero()).map(|c| (c.id, c.len)));
        }
        let bytes: u64 = sizes.values().map(|&l| u64::from(l)).sum();
        if bytes > max {
            return Err(super::ControlError::Access(over(
                "cache_bytes",
                format!("its images would take {bytes} bytes of this host's cache, the quota is {max} bytes"),
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_chunkstore::{ChunkRef, ManifestId};

    fn share(memory_mib: u64, manifests: &[u8]) -> HostShare {
        HostShare {
            memory_mib,
            manifests: manifests.iter().map(|&m| ManifestId::from_bytes([m; 32])).collect(),
        }
    }

    /// Manifest m lists chunks m and m+1 of 100 bytes each, and a zero chunk.
    fn chunks(id: &ManifestId) -> Result<Vec<ChunkRef>, crate::control::ControlError> {
        let m = id.as_bytes()[0];
        let c = |b: u8| ChunkRef { id: ChunkId::from_bytes([b; 32]), len: 100 };
        Ok(vec![c(m), c(m + 1), ChunkRef { id: ChunkId::ZERO, len: 4096 }])
    }

    #[test]
    fn a_host_checks_the_memory_and_cache_it_sees() {
        let quota = Quota { memory_mib: Some(512), hosts: None, cache_bytes: Some(300) };
        check_host(&quota, "v", &[share(256, &[1]), share(256, &[2])], chunks).expect("fits");
        let err = check_host(&quota, "v", &[share(256, &[1]), share(257, &[1])], chunks)
            .expect_err("memory")
            .to_string();
        assert!(err.contains("this host alone would take 513 MiB"), "{err}");
        // Chunks 1, 2, 3 and 4: shared chunks count once, zero chunks never.
        let err = check_host(&quota, "v", &[share(1, &[1]), share(1, &[3])], chunks)
            .expect_err("cache")
            .to_string();
        assert!(err.contains("would take 400 bytes of this host's cache"), "{err}");
    }
}
