//! What the manager persists, in column families of the store's database:
//!
//! | family | key | value |
//! |---|---|---|
//! | `deployments` | deployment name | [`DeploymentRecord`]: the validated workspace |
//! | `vms` | VM (domain) name | [`VmRecord`]: state, addresses, staged files, timings |
//! | `addresses` | `ip/10.77.1.10`, `mac/00:16:3e:…` | [`AddressOwner`] |
//! | `clusters` | deployment name | [`ClusterDeployment`]: on a head, where each VM went |
//!
//! Each value carries a version byte; every transition is one synced batch.

use vw_chunkstore::{RecordBatch, Records};

use super::ManagerError;
pub use crate::report::{
    AddressOwner, ClusterDeployment, ClusterShare, DeploymentRecord, Member, StagePhases,
    StagedFiles, Timing, VmRecord,
};

pub(crate) const DEPLOYMENTS: &str = "deployments";
pub(crate) const VMS: &str = "vms";
pub(crate) const ADDRESSES: &str = "addresses";
pub(crate) const CLUSTERS: &str = "clusters";
/// The families the manager opens the store with.
pub const FAMILIES: [&str; 4] = [DEPLOYMENTS, VMS, ADDRESSES, CLUSTERS];

pub(crate) const DEPLOYMENT_V: u8 = 3;
pub(crate) const VM_V: u8 = 1;
pub(crate) const ADDRESS_V: u8 = 1;
pub(crate) const CLUSTER_V: u8 = 2;

/// Typed access to the manager's families.
pub(crate) struct Db<'s> {
    pub records: Records<'s>,
}

impl Db<'_> {
    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, ManagerError> {
        Ok(self.records.get(DEPLOYMENTS, name, DEPLOYMENT_V)?)
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, ManagerError> {
        Ok(self.records.scan(DEPLOYMENTS, DEPLOYMENT_V)?.into_iter().map(|(_, d)| d).collect())
    }

    pub fn vm(&self, name: &str) -> Result<Option<VmRecord>, ManagerError> {
        Ok(self.records.get(VMS, name, VM_V)?)
    }

    pub fn vms(&self) -> Result<Vec<VmRecord>, ManagerError> {
        Ok(self.records.scan(VMS, VM_V)?.into_iter().map(|(_, v)| v).collect())
    }

    /// The VMs of `dep`, in its order (head first).
    pub fn vms_of(&self, dep: &DeploymentRecord) -> Result<Vec<VmRecord>, ManagerError> {
        dep.vms.iter().filter_map(|n| self.vm(n).transpose()).collect()
    }

    pub fn addresses(&self) -> Result<Vec<(String, AddressOwner)>, ManagerError> {
        Ok(self.records.scan(ADDRESSES, ADDRESS_V)?)
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterDeployment>, ManagerError> {
        Ok(self.records.get(CLUSTERS, name, CLUSTER_V)?)
    }

    pub fn clusters(&self) -> Result<Vec<ClusterDeployment>, ManagerError> {
        Ok(self.records.scan(CLUSTERS, CLUSTER_V)?.into_iter().map(|(_, d)| d).collect())
    }

    pub fn write(&self, batch: RecordBatch) -> Result<(), ManagerError> {
        Ok(self.records.write(batch)?)
    }
}

pub(crate) fn put_deployment(batch: &mut RecordBatch, d: &DeploymentRecord) {
    batch.put(DEPLOYMENTS, &d.name, DEPLOYMENT_V, d);
}

pub(crate) fn put_cluster(batch: &mut RecordBatch, d: &ClusterDeployment) {
    batch.put(CLUSTERS, &d.name, CLUSTER_V, d);
}

pub(crate) fn put_vm(batch: &mut RecordBatch, vm: &VmRecord) {
    batch.put(VMS, &vm.name, VM_V, vm);
}

/// Records `vm`'s NICs as taken.
pub(crate) fn hold_addresses(batch: &mut RecordBatch, vm: &VmRecord) {
    let owner = AddressOwner { deployment: vm.deployment.clone(), vm: vm.name.clone() };
    for nic in &vm.nics {
        batch.put(ADDRESSES, &format!("ip/{}", nic.ip), ADDRESS_V, &owner);
        batch.put(ADDRESSES, &format!("mac/{}", nic.mac), ADDRESS_V, &owner);
    }
}

/// Releases `vm`'s NICs.
pub(crate) fn release_addresses(batch: &mut RecordBatch, vm: &VmRecord) {
    for nic in &vm.nics {
        batch.delete(ADDRESSES, &format!("ip/{}", nic.ip));
        batch.delete(ADDRESSES, &format!("mac/{}", nic.mac));
    }
}
