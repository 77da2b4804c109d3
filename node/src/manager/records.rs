//! What the manager persists, in column families of the store's database:
//!
//! | family | key | value |
//! |---|---|---|
//! | `deployments` | deployment name | [`DeploymentRecord`]: the validated workspace |
//! | `vms` | VM (domain) name | [`VmRecord`]: state, addresses, staged files, timings |
//! | `addresses` | `ip/10.77.1.10`, `mac/00:16:3e:…` | [`AddressOwner`] |
//!
//! Each value carries a version byte; every transition is one synced batch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vw_chunkstore::{RecordBatch, Records};
use vw_planner::address::NicAddress;

use super::lifecycle::{Step, VmState};
use super::ManagerError;
use crate::workspace::{VmRole, WorkspaceSpec};
use crate::xen::config::Disk;

pub(crate) const DEPLOYMENTS: &str = "deployments";
pub(crate) const VMS: &str = "vms";
pub(crate) const ADDRESSES: &str = "addresses";
/// The families the manager opens the store with.
pub const FAMILIES: [&str; 3] = [DEPLOYMENTS, VMS, ADDRESSES];

const DEPLOYMENT_V: u8 = 1;
const VM_V: u8 = 1;
const ADDRESS_V: u8 = 1;

/// A deployment: one workspace on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The workspace name.
    pub name: String,
    /// The validated document.
    pub spec: WorkspaceSpec,
    /// When it was first submitted.
    pub created_ms: u64,
    /// Its VMs, head first.
    pub vms: Vec<String>,
}

/// One VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The Xen domain name.
    pub name: String,
    /// Its deployment.
    pub deployment: String,
    /// Guest hostname.
    pub hostname: String,
    /// Head or which worker.
    pub role: VmRole,
    /// Where it is.
    pub state: VmState,
    /// Its NICs' addresses (empty once unstaged).
    pub nics: Vec<NicAddress>,
    /// Its files, once staged.
    pub staged: Option<StagedFiles>,
    /// Every step taken, with its duration.
    pub timings: Vec<Timing>,
    /// What reconciliation or a failure last noted.
    pub note: Option<String>,
}

/// The files a staged VM uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFiles {
    /// The domain config.
    pub config: PathBuf,
    /// Its disks, as in the config.
    pub disks: Vec<Disk>,
    /// Where the stage step's time went.
    pub phases: StagePhases,
}

/// The parts of a stage step: durations in microseconds, and how each partition was
/// placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePhases {
    /// Partitions rebuilt from the store for this VM.
    pub rebuilt: u32,
    /// Partitions cloned from a rebuilt copy (another VM still needed it).
    pub cloned: u32,
    /// Partitions that took a rebuilt copy by rename (its last use).
    pub taken: u32,
    /// Rebuilding partitions from the store (zero when the deployment's copy exists).
    pub rebuild: u64,
    /// Cloning them for this VM (zero when it took the last use of the copy).
    pub clone: u64,
    /// Making the swap partition.
    pub swap: u64,
    /// The seed volume or the in-image edits.
    pub integrate: u64,
    /// Writing the domain config.
    pub config: u64,
}

/// One step's duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// The step.
    pub step: Step,
    /// How long it took, in microseconds.
    pub micros: u64,
    /// When it finished, milliseconds since the epoch.
    pub at_ms: u64,
}

/// Who holds an address or MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressOwner {
    /// The deployment.
    pub deployment: String,
    /// The VM.
    pub vm: String,
}

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

    pub fn write(&self, batch: RecordBatch) -> Result<(), ManagerError> {
        Ok(self.records.write(batch)?)
    }
}

pub(crate) fn put_deployment(batch: &mut RecordBatch, d: &DeploymentRecord) {
    batch.put(DEPLOYMENTS, &d.name, DEPLOYMENT_V, d);
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
