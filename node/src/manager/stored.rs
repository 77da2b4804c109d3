//! The manager's records as stored: their own types, apart from the types the manager
//! works with (`report.rs`), which the control protocol and the CLI also carry, with
//! explicit conversions both ways. A stored record is a version byte, then JSON
//! (docs/decisions.md 71): a field added later with a default reads records written
//! before it, and one a later release no longer knows is ignored; a change that is not
//! additive bumps the version, and the reader keeps reading the old one.
//!
//! Versions: deployments 4, VMs 2, addresses 2, clusters 3. The versions before them
//! (deployments 3, VMs 1, addresses 1, clusters 2) were postcard of the domain types;
//! they are read as such, and [`super::records::migrate`] rewrites them once, when the
//! manager opens the store. The workspace inside a deployment is stored as the JSON of
//! its validated model (`WorkspaceSpec`), whose form the golden file pins.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vw_planner::address::{Mac, Network, NicAddress};

use crate::lifecycle::{Step, VmState};
use crate::report::{
    AddressOwner, ClusterDeployment, ClusterShare, DeploymentRecord, Member, PlacedVm, StagePhases,
    StagedFiles, Timing, VmRecord,
};
use crate::workspace::{Access, VmRole, WorkspaceSpec};
use crate::xen::config::Disk;

/// A deployment on this host (family `deployments`, version 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Deployment {
    name: String,
    spec: WorkspaceSpec,
    created_ms: u64,
    #[serde(default)]
    vo: Option<String>,
    vms: Vec<String>,
    #[serde(default)]
    share: Option<Share>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Share {
    here: Vec<Placed>,
    elsewhere: Vec<Placed>,
}

/// A VM of a cluster, as a host's share lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Placed {
    name: String,
    nics: Vec<Nic>,
    #[serde(default)]
    cores: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Nic {
    network: NetworkName,
    ip: Ipv4Addr,
    /// `00:16:3e:…`.
    mac: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NetworkName {
    Private,
    Public,
}

/// A VM (family `vms`, version 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Vm {
    name: String,
    deployment: String,
    hostname: String,
    /// 0: the head; n: worker n.
    worker: u32,
    state: State,
    nics: Vec<Nic>,
    #[serde(default)]
    staged: Option<Staged>,
    #[serde(default)]
    timings: Vec<Timed>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Described,
    Staged,
    Loaded,
    Running,
    Paused,
    Stopped,
    Unstaged,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Staged {
    config: PathBuf,
    disks: Vec<StagedDisk>,
    #[serde(default)]
    phases: Phases,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StagedDisk {
    vdev: String,
    writable: bool,
    target: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Phases {
    rebuilt: u32,
    cloned: u32,
    taken: u32,
    rebuild_us: u64,
    clone_us: u64,
    swap_us: u64,
    integrate_us: u64,
    config_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Timed {
    step: StepName,
    micros: u64,
    at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StepName {
    Stage,
    Load,
    Start,
    Pause,
    Unpause,
    Stop,
    Unstage,
}

/// Who holds an address (family `addresses`, version 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Owner {
    deployment: String,
    vm: String,
}

/// A deployment this head drives (family `clusters`, version 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cluster {
    name: String,
    workspace: String,
    vo: String,
    placement: Vec<Placement>,
    created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Placement {
    vm: String,
    host: String,
    #[serde(default)]
    cores: Option<Vec<u32>>,
    #[serde(default)]
    reason: String,
    nics: Vec<Nic>,
}

impl From<&NicAddress> for Nic {
    fn from(n: &NicAddress) -> Self {
        let network = match n.network {
            Network::Private => NetworkName::Private,
            Network::Public => NetworkName::Public,
        };
        Nic { network, ip: n.ip, mac: n.mac.to_string() }
    }
}

impl TryFrom<Nic> for NicAddress {
    type Error = String;
    fn try_from(n: Nic) -> Result<Self, String> {
        let network = match n.network {
            NetworkName::Private => Network::Private,
            NetworkName::Public => Network::Public,
        };
        let mac: Mac = n.mac.parse().map_err(|e| format!("MAC {}: {e}", n.mac))?;
        Ok(NicAddress { network, ip: n.ip, mac })
    }
}

fn nics_of(nics: &[NicAddress]) -> Vec<Nic> {
    nics.iter().map(Nic::from).collect()
}

fn nic_addresses(nics: Vec<Nic>) -> Result<Vec<NicAddress>, String> {
    nics.into_iter().map(NicAddress::try_from).collect()
}

impl From<&Member> for Placed {
    fn from(m: &Member) -> Self {
        Placed { name: m.name.to_string(), nics: nics_of(&m.nics), cores: m.cores.clone() }
    }
}

impl TryFrom<Placed> for Member {
    type Error = String;
    fn try_from(p: Placed) -> Result<Self, String> {
        Ok(Member { name: p.name.into(), nics: nic_addresses(p.nics)?, cores: p.cores })
    }
}

fn members(placed: Vec<Placed>) -> Result<Vec<Member>, String> {
    placed.into_iter().map(Member::try_from).collect()
}

impl From<&DeploymentRecord> for Deployment {
    fn from(d: &DeploymentRecord) -> Self {
        Deployment {
            name: d.name.clone(),
            spec: d.spec.clone(),
            created_ms: d.created_ms,
            vo: d.vo.clone(),
            vms: d.vms.clone(),
            share: d.share.as_ref().map(|s| Share {
                here: s.here.iter().map(Placed::from).collect(),
                elsewhere: s.elsewhere.iter().map(Placed::from).collect(),
            }),
        }
    }
}

impl TryFrom<Deployment> for DeploymentRecord {
    type Error = String;
    fn try_from(d: Deployment) -> Result<Self, String> {
        let share = match d.share {
            Some(s) => {
                Some(ClusterShare { here: members(s.here)?, elsewhere: members(s.elsewhere)? })
            }
            None => None,
        };
        Ok(DeploymentRecord {
            name: d.name,
            spec: d.spec,
            created_ms: d.created_ms,
            vo: d.vo,
            vms: d.vms,
            share,
        })
    }
}

impl From<VmState> for State {
    fn from(s: VmState) -> Self {
        match s {
            VmState::Described => State::Described,
            VmState::Staged => State::Staged,
            VmState::Loaded => State::Loaded,
            VmState::Running => State::Running,
            VmState::Paused => State::Paused,
            VmState::Stopped => State::Stopped,
            VmState::Unstaged => State::Unstaged,
        }
    }
}

impl From<State> for VmState {
    fn from(s: State) -> Self {
        match s {
            State::Described => VmState::Described,
            State::Staged => VmState::Staged,
            State::Loaded => VmState::Loaded,
            State::Running => VmState::Running,
            State::Paused => VmState::Paused,
            State::Stopped => VmState::Stopped,
            State::Unstaged => VmState::Unstaged,
        }
    }
}

impl From<Step> for StepName {
    fn from(s: Step) -> Self {
        match s {
            Step::Stage => StepName::Stage,
            Step::Load => StepName::Load,
            Step::Start => StepName::Start,
            Step::Pause => StepName::Pause,
            Step::Unpause => StepName::Unpause,
            Step::Stop => StepName::Stop,
            Step::Unstage => StepName::Unstage,
        }
    }
}

impl From<StepName> for Step {
    fn from(s: StepName) -> Self {
        match s {
            StepName::Stage => Step::Stage,
            StepName::Load => Step::Load,
            StepName::Start => Step::Start,
            StepName::Pause => Step::Pause,
            StepName::Unpause => Step::Unpause,
            StepName::Stop => Step::Stop,
            StepName::Unstage => Step::Unstage,
        }
    }
}

impl From<&VmRecord> for Vm {
    fn from(v: &VmRecord) -> Self {
        Vm {
            name: v.name.clone(),
            deployment: v.deployment.clone(),
            hostname: v.hostname.clone(),
            worker: match v.role {
                VmRole::Head => 0,
                VmRole::Worker(n) => n,
            },
            state: v.state.into(),
            nics: nics_of(&v.nics),
            staged: v.staged.as_ref().map(|s| Staged {
                config: s.config.clone(),
                disks: s
                    .disks
                    .iter()
                    .map(|d| StagedDisk {
                        vdev: d.vdev.clone(),
                        writable: d.access == Access::Rw,
                        target: d.target.clone(),
                    })
                    .collect(),
                phases: Phases {
                    rebuilt: s.phases.rebuilt,
                    cloned: s.phases.cloned,
                    taken: s.phases.taken,
                    rebuild_us: s.phases.rebuild,
                    clone_us: s.phases.clone,
                    swap_us: s.phases.swap,
                    integrate_us: s.phases.integrate,
                    config_us: s.phases.config,
                },
            }),
            timings: v
                .timings
                .iter()
                .map(|t| Timed { step: t.step.into(), micros: t.micros, at_ms: t.at_ms })
                .collect(),
            note: v.note.clone(),
        }
    }
}

impl TryFrom<Vm> for VmRecord {
    type Error = String;
    fn try_from(v: Vm) -> Result<Self, String> {
        Ok(VmRecord {
            name: v.name,
            deployment: v.deployment,
            hostname: v.hostname,
            role: if v.worker == 0 { VmRole::Head } else { VmRole::Worker(v.worker) },
            state: v.state.into(),
            nics: nic_addresses(v.nics)?,
            staged: v.staged.map(|s| StagedFiles {
                config: s.config,
                disks: s
                    .disks
                    .into_iter()
                    .map(|d| {
                        Disk::new(
                            d.vdev,
                            if d.writable { Access::Rw } else { Access::Ro },
                            d.target,
                        )
                    })
                    .collect(),
                phases: StagePhases {
                    rebuilt: s.phases.rebuilt,
                    cloned: s.phases.cloned,
                    taken: s.phases.taken,
                    rebuild: s.phases.rebuild_us,
                    clone: s.phases.clone_us,
                    swap: s.phases.swap_us,
                    integrate: s.phases.integrate_us,
                    config: s.phases.config_us,
                },
            }),
            timings: v
                .timings
                .into_iter()
                .map(|t| Timing { step: t.step.into(), micros: t.micros, at_ms: t.at_ms })
                .collect(),
            note: v.note,
        })
    }
}

impl From<&AddressOwner> for Owner {
    fn from(o: &AddressOwner) -> Self {
        Owner { deployment: o.deployment.clone(), vm: o.vm.clone() }
    }
}

impl TryFrom<Owner> for AddressOwner {
    type Error = String;
    fn try_from(o: Owner) -> Result<Self, String> {
        Ok(AddressOwner { deployment: o.deployment, vm: o.vm })
    }
}

impl From<&ClusterDeployment> for Cluster {
    fn from(c: &ClusterDeployment) -> Self {
        Cluster {
            name: c.name.to_string(),
            workspace: c.workspace.clone(),
            vo: c.vo.clone(),
            placement: c
                .placement
                .iter()
                .map(|p| Placement {
                    vm: p.vm.to_string(),
                    host: p.host.to_string(),
                    cores: p.cores.clone(),
                    reason: p.reason.clone(),
                    nics: nics_of(&p.nics),
                })
                .collect(),
            created_ms: c.created_ms,
        }
    }
}

impl TryFrom<Cluster> for ClusterDeployment {
    type Error = String;
    fn try_from(c: Cluster) -> Result<Self, String> {
        let placement = c
            .placement
            .into_iter()
            .map(|p| {
                Ok(PlacedVm {
                    vm: p.vm.into(),
                    host: p.host.into(),
                    cores: p.cores,
                    reason: p.reason,
                    nics: nic_addresses(p.nics)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ClusterDeployment {
            name: c.name.into(),
            workspace: c.workspace,
            vo: c.vo,
            placement,
            created_ms: c.created_ms,
        })
    }
}
