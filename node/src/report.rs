//! What hosts record and report about deployments and VMs: the model shared by the
//! manager (which persists it), the control protocol (which carries it between hosts)
//! and the CLI (which prints it). Plain data, no store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vw_planner::address::NicAddress;

use crate::config::ClusterConfig;
use crate::lifecycle::{Step, VmState};
use crate::machine::{Counted, Source, XlInfo};
use crate::names::{DeploymentName, HostName, VmName};
use crate::workspace::{VmRole, WorkspaceSpec};
use crate::xen::config::Disk;
use crate::xen::{DomainState, GuestReport};

/// A deployment: one workspace on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The workspace name.
    pub name: String,
    /// The validated document.
    pub spec: WorkspaceSpec,
    /// When it was first submitted.
    pub created_ms: u64,
    /// The VO it was deployed for (none: submitted on this host by its operator).
    pub vo: Option<String>,
    /// Its VMs on this host, head first.
    pub vms: Vec<String>,
    /// For a share of a cluster deployment (the head placed the VMs): the addresses the
    /// head assigned to the VMs here, and the VMs of the virtual cluster on other hosts
    /// (integration needs them: hosts files, batch nodes). `None`: all VMs are here and
    /// this host assigns addresses from its own pools.
    pub share: Option<ClusterShare>,
}

impl DeploymentRecord {
    /// The cores the head pinned VM `vm` to, in xl's `cpus` syntax (`2,3`), if it did.
    pub fn pinned_cores(&self, vm: &str) -> Option<Vec<u32>> {
        self.share.as_ref()?.here.iter().find(|m| m.name == vm)?.cores.clone()
    }
}

/// This host's part of a virtual cluster that spans several hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterShare {
    /// The VMs placed here, with the addresses the head assigned.
    pub here: Vec<Member>,
    /// The other VMs of the virtual cluster.
    pub elsewhere: Vec<Member>,
}

impl ClusterShare {
    /// The Xen domain names of the VMs placed here.
    pub fn here_names(&self) -> Vec<String> {
        self.here.iter().map(|m| m.name.to_string()).collect()
    }
}

/// One VM of a cluster deployment, as the head placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its domain name (`<workspace>-<hostname>`).
    pub name: VmName,
    /// Its addresses.
    pub nics: Vec<NicAddress>,
    /// The physical cores the head pinned it to (a VM whose node asks for `cpus`):
    /// disjoint from every other pinned VM's on the host, whichever VO it belongs to.
    pub cores: Option<Vec<u32>>,
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

/// What this host can give guests, and where each figure came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// Memory for guests in MiB (vw's own running guests' included).
    pub memory_mib: u64,
    /// Physical CPUs.
    pub cpus: u32,
    /// vCPUs it runs per physical CPU (unpinned VMs share cores).
    pub vcpus_per_cpu: u32,
    /// Where `memory_mib` came from.
    pub memory_from: Source,
    /// Where `cpus` came from.
    pub cpus_from: Source,
}

impl HostCapacity {
    /// What this host gives guests: the config's `[host]` figures where set. Else, where
    /// Xen says (`xen`: `xl info`), its free memory plus `running_mib` (what vw's own
    /// domains hold now) less `[host] reserved_mib`, and its CPUs. Else the machine's
    /// memory less the reserve, and its CPUs.
    pub fn measure(
        config: &ClusterConfig,
        xen: Option<XlInfo>,
        running_mib: u64,
        machine: &Counted,
    ) -> Self {
        let reserve = config.host.reserved_mib;
        let (memory_mib, memory_from) = match (config.host.memory_mib, xen, machine.memory_mib) {
            (Some(m), _, _) => (m, Source::Configured),
            (None, Some(x), _) => {
                (x.free_mib.saturating_add(running_mib).saturating_sub(reserve), Source::Xen)
            }
            (None, None, Some(m)) => (m.saturating_sub(reserve), Source::Machine),
            (None, None, None) => (0, Source::Assumed),
        };
        let (cpus, cpus_from) = match (config.host.cpus, xen) {
            (Some(c), _) => (c, Source::Configured),
            (None, Some(x)) => (x.cpus, Source::Xen),
            (None, None) => (machine.cpus, Source::Machine),
        };
        let vcpus_per_cpu = config.host.vcpus_per_cpu;
        HostCapacity { memory_mib, cpus, vcpus_per_cpu, memory_from, cpus_from }
    }
}

/// What one VM on a host takes: memory, vCPUs and the cores it is pinned to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTake {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Physical cores it is pinned to (none: it shares the unpinned ones).
    pub cores: Vec<u32>,
}

/// What the VMs on a host take, and the addresses they hold: what a head plans around.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commitments {
    /// Each VM not unstaged.
    pub vms: Vec<VmTake>,
    /// Every address held here.
    pub addresses: Vec<NicAddress>,
}

/// What happened to one VM during an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    /// The VM.
    pub vm: String,
    /// Its state afterwards.
    pub state: VmState,
    /// The steps taken and their durations (none if it was already there).
    pub steps: Vec<Timing>,
}

/// What a VM's lazy disks did (issue 19): the guest's reads and writes, and the
/// chunks it read before the stage brought them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyCounts {
    /// Bytes the guest read.
    pub read: u64,
    /// Bytes the guest wrote.
    pub written: u64,
    /// Chunks the guest read before the stage had brought them: fetched at once from
    /// other hosts, or waited for when the cascade was about to bring them.
    pub fetched_chunks: u64,
    /// Their bytes.
    pub fetched: u64,
    /// Bytes of chunks the guest read that the host held already.
    pub local: u64,
    /// Reads that failed (the guest got an I/O error).
    pub failed: u64,
    /// Held chunks read from the store (verified) into the copy on a guest's read.
    pub local_chunks: u64,
    /// Microseconds guest reads waited for those.
    pub local_micros: u64,
    /// Microseconds guest reads waited for those (`fetched_chunks`).
    pub fetch_micros: u64,
}

impl LazyCounts {
    /// The mean wait of a guest's read for a chunk missing when read, and for a held one
    /// read from the store, in milliseconds (`None` if there were none).
    pub fn mean_waits_ms(&self) -> (Option<f64>, Option<f64>) {
        let mean = |micros: u64, n: u64| (n > 0).then(|| micros as f64 / n as f64 / 1e3);
        (mean(self.fetch_micros, self.fetched_chunks), mean(self.local_micros, self.local_chunks))
    }
}

impl std::ops::Add for LazyCounts {
    type Output = LazyCounts;

    /// Both counts together (a VM's disks).
    fn add(self, o: LazyCounts) -> LazyCounts {
        LazyCounts {
            read: self.read + o.read,
            written: self.written + o.written,
            fetched_chunks: self.fetched_chunks + o.fetched_chunks,
            fetched: self.fetched + o.fetched,
            local: self.local + o.local,
            failed: self.failed + o.failed,
            local_chunks: self.local_chunks + o.local_chunks,
            local_micros: self.local_micros + o.local_micros,
            fetch_micros: self.fetch_micros + o.fetch_micros,
        }
    }
}

/// Whether one VM's guest said it is up, and how long that took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReady {
    /// The VM.
    pub vm: String,
    /// Milliseconds from the start of its `start` step to its guest's report; `None`:
    /// it never reported within the timeout.
    pub ready_ms: Option<u64>,
    /// What the guest reported (the simulated driver's report says it is simulated).
    pub report: Option<GuestReport>,
    /// Why it is not ready (its domain is gone, its report is unreadable), if known.
    pub problem: Option<String>,
    /// Where its guest's report disagrees with what vw gave it (addresses, MACs, swap,
    /// NFS mounts); a VM with any is reported, and the deploy fails.
    pub disagreements: Vec<String>,
    /// The end of its console, when it is not ready.
    pub console: Vec<String>,
    /// A lazily staged VM's disks when its guest was first seen up (or at the timeout).
    pub lazy: Option<LazyCounts>,
}

impl VmReady {
    /// Its guest reported, and agrees with what vw gave it.
    pub fn ok(&self) -> bool {
        self.report.is_some() && self.disagreements.is_empty()
    }
}

/// A VM as the records and the hypervisor see it.
/// (Flattened in JSON, so not postcard: the control protocol carries the two parts.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmStatus {
    /// The record.
    #[serde(flatten)]
    pub record: VmRecord,
    /// What the hypervisor says now (`None`: no domain).
    pub domain: Option<DomainState>,
}

/// One correction made when the records disagreed with the hypervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    /// The VM.
    pub vm: String,
    /// What the record said.
    pub was: VmState,
    /// What it says now.
    pub now: VmState,
    /// Why.
    pub reason: String,
}

/// A deployment the head drives across hosts: what `vw status|pause|… DEPLOYMENT` acts
/// on, and what a second `vw deploy` of the same document resumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterDeployment {
    /// The workspace name.
    pub name: DeploymentName,
    /// The workspace document as deployed.
    pub workspace: String,
    /// The VO it was deployed for.
    pub vo: String,
    /// Each VM's host and addresses.
    pub placement: Vec<PlacedVm>,
    /// When it was first deployed.
    pub created_ms: u64,
}

/// A VM's host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacedVm {
    /// The VM.
    pub vm: VmName,
    /// Its host.
    pub host: HostName,
    /// Cores it is pinned to.
    pub cores: Option<Vec<u32>>,
    /// Why.
    pub reason: String,
    /// Its addresses.
    pub nics: Vec<NicAddress>,
}
