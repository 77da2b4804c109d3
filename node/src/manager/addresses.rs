//! The manager's address bookkeeping: giving VMs their addresses and MACs from the
//! cluster's pools (or the head's, for a share), giving them back, and previewing what
//! a workspace would get.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use vw_chunkstore::RecordBatch;
use vw_planner::address::{self, AddressError, Mac, NicAddress, VmNics};

use super::records::{self, DeploymentRecord, VmRecord};
use super::{node_of, Manager, ManagerError};
use crate::config::Pools;
use crate::workspace::WorkspaceSpec;

impl Manager {
    /// Gives every VM of `records` without addresses its addresses and MACs, and adds
    /// the allocations to `batch`. All or nothing.
    pub(super) fn assign_addresses(
        &self,
        deployment: &DeploymentRecord,
        records: &mut [VmRecord],
        batch: &mut RecordBatch,
    ) -> Result<(), ManagerError> {
        let held = self.db().addresses()?;
        if let Some(share) = &deployment.share {
            // The head assigned them, cluster-wide; this host checks none is in use here.
            for r in records.iter_mut().filter(|r| r.nics.is_empty()) {
                let m = share.here.iter().find(|m| m.name == r.name).ok_or_else(|| {
                    ManagerError::UnknownVm {
                        deployment: deployment.name.clone(),
                        vm: r.name.clone(),
                    }
                })?;
                for nic in &m.nics {
                    for key in [format!("ip/{}", nic.ip), format!("mac/{}", nic.mac)] {
                        if let Some((_, owner)) = held.iter().find(|(k, _)| *k == key) {
                            return Err(ManagerError::AddressInUse {
                                vm: r.name.clone(),
                                address: key,
                                owner: format!("{} of deployment {}", owner.vm, owner.deployment),
                            });
                        }
                    }
                }
                r.nics = m.nics.clone();
                records::hold_addresses(batch, r);
                records::put_vm(batch, r);
            }
            return Ok(());
        }
        let mut taken_ips = BTreeSet::new();
        let mut taken_macs = BTreeSet::new();
        for (key, _) in held {
            if let Some(ip) = key.strip_prefix("ip/").and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                taken_ips.insert(ip);
            } else if let Some(mac) = key.strip_prefix("mac/").and_then(|s| s.parse::<Mac>().ok()) {
                taken_macs.insert(mac);
            }
        }
        let needy: Vec<usize> =
            (0..records.len()).filter(|&i| records[i].nics.is_empty()).collect();
        let requests: Vec<VmNics> = needy
            .iter()
            .map(|&i| {
                let node = node_of(&deployment.spec, records[i].role);
                VmNics {
                    key: format!("{}/{}", deployment.name, records[i].name),
                    nics: node.nics.iter().map(|n| n.network).collect(),
                }
            })
            .collect();
        let plan = address::assign(
            &requests,
            &self.pools.private,
            &self.pools.public,
            &taken_ips,
            &taken_macs,
        )
        .map_err(|error| ManagerError::Addresses { deployment: deployment.name.clone(), error })?;
        for (&i, nics) in needy.iter().zip(plan) {
            records[i].nics = nics;
            records::hold_addresses(batch, &records[i]);
            records::put_vm(batch, &records[i]);
        }
        Ok(())
    }

    /// Gives addresses back to VMs that were unstaged and are staged again.
    pub(super) fn readdress(&self, dep: &DeploymentRecord) -> Result<(), ManagerError> {
        let db = self.db();
        let mut records = db.vms_of(dep)?;
        if records.iter().all(|r| !r.nics.is_empty()) {
            return Ok(());
        }
        let mut batch = RecordBatch::default();
        self.assign_addresses(dep, &mut records, &mut batch)?;
        db.write(batch)
    }
}

/// The addresses a workspace would get, without recording anything (`vw workspace
/// show`, `vw plan`), avoiding `taken` (addresses and MACs of workspaces planned
/// before it).
pub fn preview_addresses(
    spec: &WorkspaceSpec,
    pools: &Pools,
    taken: &[NicAddress],
) -> Result<Vec<Vec<NicAddress>>, AddressError> {
    let requests: Vec<VmNics> = spec
        .vms()
        .iter()
        .map(|vm| VmNics {
            key: format!("{}/{}", spec.name, spec.vm_name(vm)),
            nics: vm.node.nics.iter().map(|n| n.network).collect(),
        })
        .collect();
    let ips = taken.iter().map(|n| n.ip).collect();
    let macs = taken.iter().map(|n| n.mac).collect();
    address::assign(&requests, &pools.private, &pools.public, &ips, &macs)
}
