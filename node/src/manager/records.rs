//! What the manager persists, in column families of the store's database:
//!
//! | family | key | value |
//! |---|---|---|
//! | `deployments` | deployment name | [`DeploymentRecord`]: the validated workspace |
//! | `vms` | VM (domain) name | [`VmRecord`]: state, addresses, staged files, timings |
//! | `addresses` | `ip/10.77.1.10`, `mac/00:16:3e:…` | [`AddressOwner`] |
//! | `clusters` | deployment name | [`ClusterDeployment`]: on a head, where each VM went |
//!
//! Each value is a version byte, then its stored type ([`super::stored`]) as JSON; every
//! transition is one synced batch. The version before each (postcard of the domain
//! type) is still read, and [`migrate`] rewrites such records once.

use serde::de::DeserializeOwned;
use serde::Serialize;
use vw_chunkstore::{RecordBatch, Records};

use super::stored;
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

/// One family's record: its domain type, its stored type and their versions.
pub(crate) trait Family: Sized + DeserializeOwned {
    /// The column family.
    const NAME: &'static str;
    /// The version written now (JSON of [`Self::Stored`]).
    const VERSION: u8;
    /// The version before it: postcard of the domain type, read and migrated.
    const POSTCARD: u8;
    /// The stored type, made from the domain value and read back into one.
    type Stored: Serialize
        + DeserializeOwned
        + for<'a> From<&'a Self>
        + TryInto<Self, Error = String>;
}

impl Family for DeploymentRecord {
    const NAME: &'static str = DEPLOYMENTS;
    const VERSION: u8 = 4;
    const POSTCARD: u8 = 3;
    type Stored = stored::Deployment;
}

impl Family for VmRecord {
    const NAME: &'static str = VMS;
    const VERSION: u8 = 2;
    const POSTCARD: u8 = 1;
    type Stored = stored::Vm;
}

impl Family for AddressOwner {
    const NAME: &'static str = ADDRESSES;
    const VERSION: u8 = 2;
    const POSTCARD: u8 = 1;
    type Stored = stored::Owner;
}

impl Family for ClusterDeployment {
    const NAME: &'static str = CLUSTERS;
    const VERSION: u8 = 3;
    const POSTCARD: u8 = 2;
    type Stored = stored::Cluster;
}

/// `value` as its family stores it now.
pub(crate) fn encode<F: Family>(value: &F) -> Vec<u8> {
    let mut out = vec![F::VERSION];
    serde_json::to_writer(&mut out, &F::Stored::from(value)).expect("stored types encode");
    out
}

/// A record of family `F` under `key`, of the current version or the one before.
pub(crate) fn decode<F: Family>(key: &str, bytes: &[u8]) -> Result<F, ManagerError> {
    let bad =
        |reason: String| ManagerError::Record { family: F::NAME, key: key.to_owned(), reason };
    match bytes.split_first() {
        Some((&v, body)) if v == F::VERSION => {
            let stored = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
            F::Stored::try_into(stored).map_err(bad)
        }
        Some((&v, body)) if v == F::POSTCARD => match postcard::take_from_bytes(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(bad(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(bad(e.to_string())),
        },
        Some((&v, _)) => Err(bad(format!(
            "record version {v}, which this release does not read (it reads {} and {}): \
             written by {} release",
            F::POSTCARD,
            F::VERSION,
            if v > F::VERSION { "a newer" } else { "an older" }
        ))),
        None => Err(bad("an empty value".into())),
    }
}

/// Typed access to the manager's families.
pub(crate) struct Db<'s> {
    pub records: Records<'s>,
}

impl Db<'_> {
    fn get<F: Family>(&self, key: &str) -> Result<Option<F>, ManagerError> {
        self.records.get(F::NAME, key)?.map(|b| decode(key, &b)).transpose()
    }

    fn scan<F: Family>(&self) -> Result<Vec<(String, F)>, ManagerError> {
        self.records
            .scan(F::NAME)?
            .into_iter()
            .map(|(k, b)| Ok((k.clone(), decode(&k, &b)?)))
            .collect()
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, ManagerError> {
        self.get(name)
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, ManagerError> {
        Ok(self.scan()?.into_iter().map(|(_, d)| d).collect())
    }

    pub fn vm(&self, name: &str) -> Result<Option<VmRecord>, ManagerError> {
        self.get(name)
    }

    pub fn vms(&self) -> Result<Vec<VmRecord>, ManagerError> {
        Ok(self.scan()?.into_iter().map(|(_, v)| v).collect())
    }

    /// The VMs of `dep`, in its order (head first).
    pub fn vms_of(&self, dep: &DeploymentRecord) -> Result<Vec<VmRecord>, ManagerError> {
        dep.vms.iter().filter_map(|n| self.vm(n).transpose()).collect()
    }

    pub fn addresses(&self) -> Result<Vec<(String, AddressOwner)>, ManagerError> {
        self.scan()
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterDeployment>, ManagerError> {
        self.get(name)
    }

    pub fn clusters(&self) -> Result<Vec<ClusterDeployment>, ManagerError> {
        Ok(self.scan()?.into_iter().map(|(_, d)| d).collect())
    }

    pub fn write(&self, batch: RecordBatch) -> Result<(), ManagerError> {
        Ok(self.records.write(batch)?)
    }
}

fn put<F: Family>(batch: &mut RecordBatch, key: &str, value: &F) {
    batch.put(F::NAME, key, encode(value));
}

pub(crate) fn put_deployment(batch: &mut RecordBatch, d: &DeploymentRecord) {
    put(batch, &d.name, d);
}

pub(crate) fn put_cluster(batch: &mut RecordBatch, d: &ClusterDeployment) {
    put(batch, d.name.as_str(), d);
}

pub(crate) fn put_vm(batch: &mut RecordBatch, vm: &VmRecord) {
    put(batch, &vm.name, vm);
}

/// Records `vm`'s NICs as taken.
pub(crate) fn hold_addresses(batch: &mut RecordBatch, vm: &VmRecord) {
    let owner = AddressOwner { deployment: vm.deployment.clone(), vm: vm.name.clone() };
    for nic in &vm.nics {
        put(batch, &format!("ip/{}", nic.ip), &owner);
        put(batch, &format!("mac/{}", nic.mac), &owner);
    }
}

/// Releases `vm`'s NICs.
pub(crate) fn release_addresses(batch: &mut RecordBatch, vm: &VmRecord) {
    for nic in &vm.nics {
        batch.delete(ADDRESSES, &format!("ip/{}", nic.ip));
        batch.delete(ADDRESSES, &format!("mac/{}", nic.mac));
    }
}

/// Rewrites every record an earlier release wrote (each family's postcard version) in
/// the current version, in one synced batch; returns how many. A record neither
/// version reads stops it, naming the record, before anything is written.
pub(crate) fn migrate(db: &Db<'_>) -> Result<usize, ManagerError> {
    fn family<F: Family>(db: &Db<'_>, batch: &mut RecordBatch) -> Result<usize, ManagerError> {
        let mut n = 0;
        for (key, bytes) in db.records.scan(F::NAME)? {
            if bytes.first() == Some(&F::POSTCARD) {
                put(batch, &key, &decode::<F>(&key, &bytes)?);
                n += 1;
            }
        }
        Ok(n)
    }
    let mut batch = RecordBatch::default();
    let n = family::<DeploymentRecord>(db, &mut batch)?
        + family::<VmRecord>(db, &mut batch)?
        + family::<AddressOwner>(db, &mut batch)?
        + family::<ClusterDeployment>(db, &mut batch)?;
    if n > 0 {
        db.write(batch)?;
    }
    Ok(n)
}
