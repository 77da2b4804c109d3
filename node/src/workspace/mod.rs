//! Workspace documents: the virtual cluster (or single VM) an operator asks for.
//!
//! A document is XML (`docs/workspace.md` is the schema). [`parse`] reads it in two
//! steps: `xml.rs` maps the text onto serde structs and remembers where every element
//! starts, then `validate.rs` checks the meaning (node count, references, sizes, names)
//! and builds a [`WorkspaceSpec`]. Every error carries the file, line and column.
//!
//! The spec is plain data: the manager persists it with a deployment, `vw workspace
//! show --json` prints it, and [`WorkspaceSpec::vms`] expands the templates into the
//! VMs to run.

mod error;
mod size;
mod validate;
mod xml;

use std::path::Path;

use serde::{Deserialize, Serialize};
use vw_chunkstore::ImageRef;

pub use error::{Error, Position};
pub use size::parse_size;
pub use validate::PYGRUB;
pub use vw_planner::address::Network;

/// Largest workspace document read, in bytes.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Default size of a swap partition made on the fly (the paper's 200 MB).
pub const DEFAULT_SWAP: u64 = 200 << 20;

/// Reads and validates a workspace document from a file.
pub fn load(path: &Path) -> Result<WorkspaceSpec, Error> {
    let text = read_document(path)?;
    parse(&text, &path.display().to_string())
}

/// Reads a document, refusing anything larger than [`MAX_DOCUMENT`] or not UTF-8.
fn read_document(path: &Path) -> Result<String, Error> {
    use std::io::Read;
    let source = path.display().to_string();
    let file = std::fs::File::open(path)
        .map_err(|error| Error::Io { source_name: source.clone(), error })?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::Io { source_name: source.clone(), error })?;
    if bytes.len() > MAX_DOCUMENT {
        return Err(Error::TooLarge { source_name: source, limit: MAX_DOCUMENT });
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = Position::of_offset(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        );
        Error::at(&source, at, "the document is not UTF-8".to_owned())
    })
}

/// Parses and validates a document held in memory; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<WorkspaceSpec, Error> {
    if text.len() > MAX_DOCUMENT {
        return Err(Error::TooLarge { source_name: source.to_owned(), limit: MAX_DOCUMENT });
    }
    // A byte-order mark is allowed and ignored; positions count from after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = xml::Document::parse(text, source)?;
    validate::spec(&doc)
}

/// A validated workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    /// A cluster (head node and workers) or one atomic VM.
    pub kind: WorkspaceKind,
    /// The workspace name: a DNS label, the prefix of every VM name.
    pub name: String,
    /// Number of nodes, head included.
    pub node_number: u32,
    /// When the document says it was created (free text, kept for the operator).
    pub creation_time: Option<String>,
    /// The head node (for an atomic VM, the only node).
    pub head: NodeSpec,
    /// The worker template and how many workers it makes (clusters only).
    pub workers: Option<Workers>,
    /// How its images are staged (`staging="lazy"`: its VMs boot while their chunks
    /// arrive): what the head deploys it with. Not recorded (a host's records keep
    /// what it runs, and their older versions have no such field).
    #[serde(skip)]
    pub staging: Staging,
}

/// How a workspace's images reach its hosts before its VMs boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// Every image whole and verified on its host, then boot (the default).
    #[default]
    Full,
    /// Boot on lazy disks while the chunks arrive; a guest's read of a chunk not here
    /// yet fetches it at once (issue 19).
    Lazy,
}

impl Staging {
    /// Whether this is full staging.
    pub fn is_full(&self) -> bool {
        *self == Staging::Full
    }
}

/// Cluster or single VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    /// A head node and `nodeNumber - 1` workers.
    Cluster,
    /// One VM.
    AtomicVm,
}

/// The worker template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers {
    /// How many workers.
    pub count: u32,
    /// What each worker is; its `name` is the hostname prefix (`worker` → `worker1`…).
    pub template: NodeSpec,
}

/// One atomic workspace: what a VM is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Hostname (head, atomic VM) or hostname prefix (worker template).
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Physical CPUs the vCPUs may run on, in xl's `cpus` syntax (`0-3,6`); none: any.
    pub cpus: Option<String>,
    /// How the guest boots.
    pub boot: Boot,
    /// Image partitions, in device order.
    pub partitions: Vec<Partition>,
    /// A swap partition made on the fly.
    pub swap: Option<Swap>,
    /// Network interfaces, in order (`eth0`, `eth1`).
    pub nics: Vec<Nic>,
    /// How the image is fitted into the virtual cluster.
    pub integration: Integration,
    /// Software roles the integration configures.
    pub roles: Roles,
}

/// How a guest boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    /// A kernel from the host's file system.
    Kernel {
        /// `pv` or `pvh`.
        mode: GuestType,
        /// Kernel image path on the host.
        kernel: String,
        /// Initial ramdisk path on the host.
        ramdisk: Option<String>,
        /// Root device and options for the kernel command line (`/dev/xvda1 ro`).
        root: String,
        /// Extra kernel command line.
        extra: Option<String>,
    },
    /// A bootloader (`pygrub`) that finds the kernel inside the root partition.
    Bootloader {
        /// The bootloader program.
        path: String,
        /// Its arguments.
        args: Option<String>,
    },
}

/// Xen guest type for kernel boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    /// Paravirtualised.
    Pv,
    /// PVH.
    Pvh,
}

/// An image partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The image in the store, by name or manifest id.
    pub image: ImageRef,
    /// The Xen virtual device (`xvda1`).
    pub device: String,
    /// Root file system or data.
    pub role: PartitionRole,
    /// Whether the guest may write it.
    pub access: Access,
}

/// What a partition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionRole {
    /// The root file system (in-image edits go here).
    Root,
    /// Data.
    Data,
}

/// Guest access to a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only.
    Ro,
}

impl Access {
    /// The xl disk-spec spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Rw => "rw",
            Access::Ro => "ro",
        }
    }
}

/// A swap partition made on the fly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    /// The Xen virtual device.
    pub device: String,
    /// Size in bytes.
    pub size: u64,
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Which network it joins.
    pub network: Network,
}

/// How an image is fitted into the virtual cluster. The shared base is never modified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Integration {
    /// A cloud-init NoCloud seed volume attached read-only (the default).
    Seed,
    /// Edits made to the VM's own copy of an ext4 root partition.
    Edit,
}

impl Integration {
    /// The document spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Integration::Seed => "seed",
            Integration::Edit => "edit",
        }
    }
}

/// Software roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Directories this node exports over NFS to the private network.
    pub nfs_exports: Vec<String>,
    /// NFS mounts from the head node.
    pub nfs_mounts: Vec<NfsMount>,
    /// The node's part in the batch system.
    pub batch: Option<BatchRole>,
}

/// An NFS mount of a head-node export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsMount {
    /// The exported directory on the head node.
    pub export: String,
    /// Where it is mounted here.
    pub mount: String,
}

/// A node's part in the batch system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchRole {
    /// Runs Torque's server (`pbs_server`); knows every worker.
    Server,
    /// Runs jobs (Torque's `pbs_mom`, Slurm's `slurmd`); knows the server.
    Worker,
    /// Runs Slurm's controller (`slurmctld`); knows every worker. (A variant of its own,
    /// after the others, so that recorded deployments still read.)
    SlurmServer,
}

/// The batch system a cluster runs: its head's server says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchSystem {
    /// Torque (PBS), as in the paper.
    Torque,
    /// Slurm.
    Slurm,
}

impl BatchRole {
    /// The system a server role runs; `None` for a worker.
    pub fn server_of(self) -> Option<BatchSystem> {
        match self {
            BatchRole::Server => Some(BatchSystem::Torque),
            BatchRole::SlurmServer => Some(BatchSystem::Slurm),
            BatchRole::Worker => None,
        }
    }

    /// Whether this node runs the server.
    pub fn is_server(self) -> bool {
        self.server_of().is_some()
    }
}

/// The CPU ranges of xl's `cpus` syntax (`0-3,6`; `all` is no ranges), each checked.
pub fn cpu_ranges(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let t = text.trim();
    if t == "all" {
        return Ok(Vec::new());
    }
    t.split(',')
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) else {
                return Err(format!("cpus `{text}` is not a list like `0-3,6`"));
            };
            if a > b || b >= 4096 {
                return Err(format!("cpus `{text}`: range {part} is empty or beyond CPU 4095"));
            }
            Ok((a, b))
        })
        .collect()
}

impl NodeSpec {
    /// The highest physical CPU its pinning names, if it pins.
    pub fn highest_cpu(&self) -> Option<u32> {
        let ranges = cpu_ranges(self.cpus.as_deref()?).ok()?;
        ranges.iter().map(|&(_, b)| b).max()
    }
}

/// One VM of a workspace, with its template.
#[derive(Clone, Copy, Debug)]
pub struct VmSlot<'a> {
    /// Which VM of the workspace.
    pub role: VmRole,
    /// The node description it is made from.
    pub node: &'a NodeSpec,
}

/// Which VM of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmRole {
    /// The head node (or the atomic VM).
    Head,
    /// Worker `n`, from 1.
    Worker(u32),
}

impl VmSlot<'_> {
    /// The guest hostname: the head's name, or the worker prefix and number.
    pub fn hostname(&self) -> String {
        match self.role {
            VmRole::Head => self.node.name.clone(),
            VmRole::Worker(n) => format!("{}{n}", self.node.name),
        }
    }
}

impl WorkspaceSpec {
    /// Every VM: the head first, then the workers in order.
    pub fn vms(&self) -> Vec<VmSlot<'_>> {
        let mut vms = vec![VmSlot { role: VmRole::Head, node: &self.head }];
        if let Some(w) = &self.workers {
            vms.extend(
                (1..=w.count).map(|n| VmSlot { role: VmRole::Worker(n), node: &w.template }),
            );
        }
        vms
    }

    /// The images its partitions name, each once, the head's first.
    pub fn image_refs(&self) -> Vec<&ImageRef> {
        let mut refs: Vec<&ImageRef> = Vec::new();
        let nodes = std::iter::once(&self.head).chain(self.workers.as_ref().map(|w| &w.template));
        for p in nodes.flat_map(|n| &n.partitions) {
            if !refs.contains(&&p.image) {
                refs.push(&p.image);
            }
        }
        refs
    }

    /// The Xen domain name of a VM: `<workspace>-<hostname>`.
    pub fn vm_name(&self, slot: &VmSlot<'_>) -> String {
        format!("{}-{}", self.name, slot.hostname())
    }

    /// The nodes (the head, the worker template) that some VM `here` names (by its Xen
    /// domain name) is made from, to change in place: what one host checks and binds
    /// of a cluster it runs part of.
    pub fn nodes_of_mut(&mut self, here: &[String]) -> Vec<&mut NodeSpec> {
        let roles: Vec<VmRole> = self
            .vms()
            .iter()
            .filter(|vm| here.contains(&self.vm_name(vm)))
            .map(|vm| vm.role)
            .collect();
        let mut nodes = Vec::new();
        if roles.contains(&VmRole::Head) {
            nodes.push(&mut self.head);
        }
        if let Some(w) = self.workers.as_mut().filter(|_| roles.iter().any(|r| *r != VmRole::Head))
        {
            nodes.push(&mut w.template);
        }
        nodes
    }

    /// The head node's hostname (NFS and batch server).
    pub fn head_hostname(&self) -> &str {
        &self.head.name
    }

    /// The batch system the head's server runs, if any.
    pub fn batch_system(&self) -> Option<BatchSystem> {
        self.head.roles.batch.and_then(BatchRole::server_of)
    }

    /// Whether it runs Slurm (its VMs then share a MUNGE key).
    pub fn runs_slurm(&self) -> bool {
        self.batch_system() == Some(BatchSystem::Slurm)
    }
}
