//! The meaning of a document: required parts, node count, names, sizes, references
//! between roles. Errors point at the element or attribute concerned.

use std::collections::BTreeSet;

use vw_chunkstore::ImageRef;

use super::xml::{Document, XNode, XRoles};
use super::{
    parse_size, Access, BatchRole, Boot, Error, GuestType, Integration, Network, NfsMount, Nic,
    NodeSpec, Partition, PartitionRole, Roles, Staging, Swap, Workers, WorkspaceKind,
    WorkspaceSpec, DEFAULT_SWAP,
};

/// Guest memory bounds in MiB.
pub(crate) const MEMORY_MIB: std::ops::RangeInclusive<u64> = 32..=(1 << 20);
/// vCPU bounds (Xen's limit for PV and PVH guests is 128 on common builds).
pub(crate) const VCPUS: std::ops::RangeInclusive<u32> = 1..=128;
/// Swap size bounds (mkswap needs ten pages).
const SWAP: std::ops::RangeInclusive<u64> = (40 << 10)..=(64 << 30);
/// Longest Xen domain name vw makes.
const MAX_VM_NAME: usize = 63;

type Result<T> = std::result::Result<T, Error>;

/// Which element a node came from, for paths and messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Head,
    Worker,
    Atomic,
}

impl Slot {
    fn element(self) -> &'static str {
        match self {
            Slot::Head => "headnode",
            Slot::Worker => "workernode",
            Slot::Atomic => "node",
        }
    }
}

pub(super) fn spec(doc: &Document<'_>) -> Result<WorkspaceSpec> {
    let root = &doc.root;
    let kind = match required(doc, "@type", root.kind.as_deref(), "virtualWorkspace")? {
        "cluster" => WorkspaceKind::Cluster,
        "atomicvm" => WorkspaceKind::AtomicVm,
        other => {
            let message = format!("type `{other}` is not `cluster` or `atomicvm`");
            return Err(doc.error("@type", &message));
        }
    };
    let name = required(doc, "@name", root.name.as_deref(), "virtualWorkspace")?;
    label(doc, "@name", name, "the workspace name")?;
    let node_number =
        required(doc, "@nodeNumber", root.node_number.as_deref(), "virtualWorkspace")?;
    let node_number: u32 = number(doc, "@nodeNumber", node_number)?;
    let staging = match root.staging.as_deref() {
        None | Some("full") => Staging::Full,
        Some("lazy") => Staging::Lazy,
        Some(other) => {
            let message = format!("staging `{other}` is not `full` or `lazy`");
            return Err(doc.error("@staging", &message));
        }
    };

    let (head, workers) = match kind {
        WorkspaceKind::Cluster => {
            if root.node.is_some() {
                let message =
                    "<node> is for atomicvm workspaces; a cluster has <headnode> and <workernode>";
                return Err(doc.error("node", message));
            }
            let (Some(head), Some(worker)) = (&root.headnode, &root.workernode) else {
                let message = "a cluster needs a <headnode> and a <workernode>";
                return Err(doc.error("", message));
            };
            if node_number < 2 {
                let message = format!(
                    "nodeNumber is {node_number}: a cluster has a head node and at least one worker"
                );
                return Err(doc.error("@nodeNumber", &message));
            }
            let count = match &worker.count {
                None => node_number - 1,
                Some(text) => {
                    let count: u32 = number(doc, "workernode.@count", text)?;
                    if count + 1 != node_number {
                        let message = format!(
                            "nodeNumber is {node_number} but <workernode count=\"{count}\">: a cluster is one head node plus its workers, so count must be {}",
                            node_number - 1
                        );
                        return Err(doc.error("workernode.@count", &message));
                    }
                    count
                }
            };
            let head = node(doc, Slot::Head, head)?;
            let template = node(doc, Slot::Worker, worker)?;
            (head, Some(Workers { count, template }))
        }
        WorkspaceKind::AtomicVm => {
            for element in ["headnode", "workernode"] {
                if doc.has(element) {
                    let message = format!(
                        "<{element}> is for cluster workspaces; an atomicvm has one <node>"
                    );
                    return Err(doc.error(element, &message));
                }
            }
            let Some(vm) = &root.node else {
                return Err(doc.error("", "an atomicvm workspace needs a <node>"));
            };
            if node_number != 1 {
                let message = format!("nodeNumber is {node_number} but an atomicvm is one node");
                return Err(doc.error("@nodeNumber", &message));
            }
            (node(doc, Slot::Atomic, vm)?, None)
        }
    };

    let spec = WorkspaceSpec {
        kind,
        name: name.to_owned(),
        node_number,
        creation_time: root.creation_time.clone(),
        head,
        workers,
        staging,
    };
    cross_checks(doc, &spec)?;
    Ok(spec)
}

fn node(doc: &Document<'_>, slot: Slot, x: &XNode) -> Result<NodeSpec> {
    let el = slot.element();
    let at = |rest: &str| format!("{el}.{rest}");
    let name = required(doc, &at("@name"), x.name.as_deref(), el)?;
    label(doc, &at("@name"), name, "a node name")?;
    if x.count.is_some() && slot != Slot::Worker {
        return Err(doc.error(&at("@count"), "only <workernode> has a count"));
    }

    let memory = required(doc, &at("memory"), x.memory.as_deref(), el)?;
    let memory_mib = memory_mib(memory).map_err(|m| doc.error(&at("memory"), &m))?;
    if !MEMORY_MIB.contains(&memory_mib) {
        let message = format!(
            "memory {memory_mib} MiB is outside {}..={} MiB",
            MEMORY_MIB.start(),
            MEMORY_MIB.end()
        );
        return Err(doc.error(&at("memory"), &message));
    }
    let vcpus: u32 =
        number(doc, &at("vcpus"), required(doc, &at("vcpus"), x.vcpus.as_deref(), el)?)?;
    if !VCPUS.contains(&vcpus) {
        let message = format!("{vcpus} vCPUs is outside {}..={}", VCPUS.start(), VCPUS.end());
        return Err(doc.error(&at("vcpus"), &message));
    }
    let cpus = match &x.cpus {
        None => None,
        Some(text) => Some(cpu_list(text).map_err(|m| doc.error(&at("cpus"), &m))?),
    };

    let partitions = partitions(doc, el, x)?;
    let boot = boot(doc, el, x, &partitions)?;
    let swap = match &x.swap {
        None => None,
        Some(s) => {
            let device = required(doc, &at("swap.@device"), s.device.as_deref(), "swap")?;
            let size = match &s.size {
                None => DEFAULT_SWAP,
                Some(text) => parse_size(text).map_err(|m| doc.error(&at("swap.@size"), &m))?,
            };
            if !SWAP.contains(&size) {
                let message = format!("swap size {size} bytes is outside 40 KiB..=64 GiB");
                return Err(doc.error(&at("swap.@size"), &message));
            }
            Some(Swap { device: device.to_owned(), size })
        }
    };
    let mut devices = BTreeSet::new();
    let all = partitions.iter().map(|p| &p.device).chain(swap.as_ref().map(|s| &s.device));
    for (i, device) in all.enumerate() {
        let path = if i < partitions.len() {
            at(&format!("partition[{i}].@device"))
        } else {
            at("swap.@device")
        };
        vdev(device).map_err(|m| doc.error(&path, &m))?;
        if !devices.insert(device.clone()) {
            return Err(doc.error(&path, &format!("device {device} is used twice in <{el}>")));
        }
    }

    let nics = nics(doc, slot, x)?;
    let integration = match x.integration.as_ref().and_then(|i| i.strategy.as_deref()) {
        None | Some("seed") => Integration::Seed,
        Some("edit") => Integration::Edit,
        Some(other) => {
            let message = format!("integration strategy `{other}` is not `seed` or `edit`");
            return Err(doc.error(&at("integration.@strategy"), &message));
        }
    };
    let roles = roles(doc, slot, x.roles.as_ref())?;
    Ok(NodeSpec {
        name: name.to_owned(),
        memory_mib,
        vcpus,
        cpus,
        boot,
        partitions,
        swap,
        nics,
        integration,
        roles,
    })
}

fn partitions(doc: &Document<'_>, el: &str, x: &XNode) -> Result<Vec<Partition>> {
    if x.partition.is_empty() {
        return Err(doc.error(el, &format!("<{el}> needs at least one <partition>")));
    }
    let mut out = Vec::new();
    for (i, p) in x.partition.iter().enumerate() {
        let at = |attr: &str| format!("{el}.partition[{i}].@{attr}");
        let image = required(doc, &at("image"), p.image.as_deref(), "partition")?;
        let image: ImageRef =
            image.parse().map_err(|e| doc.error(&at("image"), &format!("{e}")))?;
        let device = required(doc, &at("device"), p.device.as_deref(), "partition")?;
        let role = match p.role.as_deref() {
            None | Some("data") => PartitionRole::Data,
            Some("root") => PartitionRole::Root,
            Some(other) => {
                let message = format!("partition role `{other}` is not `root` or `data`");
                return Err(doc.error(&at("role"), &message));
            }
        };
        let access = match p.access.as_deref() {
            None | Some("rw") => Access::Rw,
            Some("ro") => Access::Ro,
            Some(other) => {
                let message = format!("access `{other}` is not `rw` or `ro`");
                return Err(doc.error(&at("access"), &message));
            }
        };
        out.push(Partition { image, device: device.to_owned(), role, access });
    }
    let roots: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role == PartitionRole::Root)
        .map(|(i, _)| i)
        .collect();
    match roots.as_slice() {
        [_] => Ok(out),
        [] => Err(doc.error(el, &format!("<{el}> needs one partition with role=\"root\""))),
        [_, second, ..] => Err(doc.error(
            &format!("{el}.partition[{second}].@role"),
            &format!("<{el}> has more than one root partition"),
        )),
    }
}

fn boot(doc: &Document<'_>, el: &str, x: &XNode, partitions: &[Partition]) -> Result<Boot> {
    let at = |rest: &str| format!("{el}.{rest}");
    match (&x.kernel, &x.bootloader) {
        (Some(_), Some(_)) => {
            Err(doc.error(&at("bootloader"), "give a <kernel> or a <bootloader>, not both"))
        }
        (None, None) => Err(doc.error(el, &format!("<{el}> needs a <kernel> or a <bootloader>"))),
        (None, Some(b)) => {
            let path = required(doc, &at("bootloader.@path"), b.path.as_deref(), "bootloader")?;
            if path != PYGRUB {
                let message =
                    format!("bootloader `{path}` is not `{PYGRUB}`, the only one vw runs");
                return Err(doc.error(&at("bootloader.@path"), &message));
            }
            if let Some(args) = &b.args {
                bootloader_args(doc, &at("bootloader.@args"), args)?;
            }
            Ok(Boot::Bootloader { path: path.to_owned(), args: b.args.clone() })
        }
        (Some(k), None) => {
            let mode = match k.mode.as_deref() {
                None | Some("pvh") => GuestType::Pvh,
                Some("pv") => GuestType::Pv,
                Some(other) => {
                    let message = format!("kernel type `{other}` is not `pv` or `pvh`");
                    return Err(doc.error(&at("kernel.@type"), &message));
                }
            };
            let kernel = required(doc, &at("kernel.@path"), k.path.as_deref(), "kernel")?;
            host_path(doc, &at("kernel.@path"), kernel)?;
            if let Some(ramdisk) = &k.ramdisk {
                host_path(doc, &at("kernel.@ramdisk"), ramdisk)?;
            }
            let root = match &k.root {
                Some(root) => root.clone(),
                None => {
                    let device = partitions
                        .iter()
                        .find(|p| p.role == PartitionRole::Root)
                        .map_or("xvda1", |p| p.device.as_str());
                    format!("/dev/{device} ro")
                }
            };
            text_value(doc, &at("kernel.@root"), &root)?;
            if let Some(extra) = &k.extra {
                text_value(doc, &at("kernel.@extra"), extra)?;
            }
            Ok(Boot::Kernel {
                mode,
                kernel: kernel.to_owned(),
                ramdisk: k.ramdisk.clone(),
                root,
                extra: k.extra.clone(),
            })
        }
    }
}

fn nics(doc: &Document<'_>, slot: Slot, x: &XNode) -> Result<Vec<Nic>> {
    let el = slot.element();
    if x.nic.is_empty() {
        let mut nics = vec![Nic { network: Network::Private }];
        if slot == Slot::Head {
            nics.push(Nic { network: Network::Public });
        }
        return Ok(nics);
    }
    let mut out: Vec<Nic> = Vec::new();
    for (i, n) in x.nic.iter().enumerate() {
        let path = format!("{el}.nic[{i}].@network");
        let network = match required(doc, &path, n.network.as_deref(), "nic")? {
            "private" => Network::Private,
            "public" => Network::Public,
            other => {
                let message = format!("network `{other}` is not `private` or `public`");
                return Err(doc.error(&path, &message));
            }
        };
        if out.iter().any(|o| o.network == network) {
            let message = format!("a second NIC on the same network in <{el}>");
            return Err(doc.error(&path, &message));
        }
        if network == Network::Public && slot == Slot::Worker {
            let message =
                "workers have no public address: only the head node joins the public pool";
            return Err(doc.error(&path, message));
        }
        out.push(Nic { network });
    }
    if out[0].network != Network::Private {
        let message = "the first NIC must be on the private network (the cluster's own)";
        return Err(doc.error(&format!("{el}.nic[0].@network"), message));
    }
    Ok(out)
}

fn roles(doc: &Document<'_>, slot: Slot, x: Option<&XRoles>) -> Result<Roles> {
    let el = slot.element();
    let Some(x) = x else { return Ok(Roles::default()) };
    let mut roles = Roles::default();
    for (i, e) in x.nfs_server.iter().enumerate() {
        let path = format!("{el}.roles.nfsServer[{i}].@export");
        if slot == Slot::Worker {
            let message = "only the head node exports over NFS; workers mount with <nfsClient>";
            return Err(doc.error(&path, message));
        }
        let export = required(doc, &path, e.export.as_deref(), "nfsServer")?;
        guest_path(doc, &path, export)?;
        roles.nfs_exports.push(export.to_owned());
    }
    for (i, m) in x.nfs_client.iter().enumerate() {
        let at = |a: &str| format!("{el}.roles.nfsClient[{i}].@{a}");
        if slot != Slot::Worker {
            let message = "<nfsClient> mounts the head node's export: only workers have it";
            return Err(doc.error(&at("export"), message));
        }
        let export = required(doc, &at("export"), m.export.as_deref(), "nfsClient")?;
        guest_path(doc, &at("export"), export)?;
        let mount = m.mount.as_deref().unwrap_or(export);
        guest_path(doc, &at("mount"), mount)?;
        roles.nfs_mounts.push(NfsMount { export: export.to_owned(), mount: mount.to_owned() });
    }
    if let Some(server) = &x.batch_server {
        let path = format!("{el}.roles.batchServer");
        if slot == Slot::Worker {
            return Err(doc.error(&path, "only the head node runs the batch server"));
        }
        roles.batch = Some(match server.system.as_deref() {
            None | Some("torque") => BatchRole::Server,
            Some("slurm") => BatchRole::SlurmServer,
            Some(other) => {
                let message = format!(
                    "batch system `{other}` is not supported; vw configures `torque` or `slurm`"
                );
                return Err(doc.error(&format!("{path}.@system"), &message));
            }
        });
    }
    if x.batch_worker.is_some() {
        if roles.batch.is_some() {
            let message = "a node is the batch server or a batch worker, not both";
            return Err(doc.error(&format!("{el}.roles.batchWorker"), message));
        }
        roles.batch = Some(BatchRole::Worker);
    }
    Ok(roles)
}

/// Checks across nodes: VM names, NFS and batch references.
fn cross_checks(doc: &Document<'_>, spec: &WorkspaceSpec) -> Result<()> {
    if spec.staging == Staging::Lazy {
        for vm in spec.vms() {
            if vm.node.integration == Integration::Edit {
                let el = match vm.role {
                    super::VmRole::Head if spec.workers.is_some() => "headnode",
                    super::VmRole::Head => "node",
                    super::VmRole::Worker(_) => "workernode",
                };
                let message = "staging=\"lazy\" boots before the image has arrived, so nothing \
                               can be written into it first: use <integration strategy=\"seed\"/>";
                return Err(doc.error(&format!("{el}.integration.@strategy"), message));
            }
        }
    }
    let mut names = BTreeSet::new();
    for vm in spec.vms() {
        let name = spec.vm_name(&vm);
        let path = match vm.role {
            super::VmRole::Head => {
                format!("{}.@name", if spec.workers.is_some() { "headnode" } else { "node" })
            }
            super::VmRole::Worker(_) => "workernode.@name".to_owned(),
        };
        if name.len() > MAX_VM_NAME {
            let message = format!("VM name {name} is longer than {MAX_VM_NAME} characters; shorten the workspace or node name");
            return Err(doc.error(&path, &message));
        }
        if !names.insert(name.clone()) {
            let message =
                format!("duplicate VM name {name}: the head node's name collides with a worker's");
            return Err(doc.error(&path, &message));
        }
    }
    let Some(workers) = &spec.workers else { return Ok(()) };
    for (i, mount) in workers.template.roles.nfs_mounts.iter().enumerate() {
        if !spec.head.roles.nfs_exports.contains(&mount.export) {
            let message = format!(
                "workers mount {} but the head node does not export it; add <nfsServer export=\"{}\"/> to <headnode>",
                mount.export, mount.export
            );
            return Err(doc.error(&format!("workernode.roles.nfsClient[{i}].@export"), &message));
        }
    }
    if workers.template.roles.batch == Some(BatchRole::Worker)
        && !spec.head.roles.batch.is_some_and(BatchRole::is_server)
    {
        let message = "workers are batch workers but the head node has no <batchServer/>";
        return Err(doc.error("workernode.roles.batchWorker", message));
    }
    Ok(())
}

fn required<'t>(
    doc: &Document<'_>,
    path: &str,
    value: Option<&'t str>,
    el: &str,
) -> Result<&'t str> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    value.ok_or_else(|| {
        let what = path.rsplit('.').next().unwrap_or(path);
        let message = match what.strip_prefix('@') {
            Some(attr) => format!("<{el}> needs a `{attr}` attribute"),
            None => format!("<{el}> needs a <{what}> element"),
        };
        // Point at the element that lacks it.
        doc.error(path.rsplit_once('.').map_or("", |(owner, _)| owner), &message)
    })
}

fn number<T: std::str::FromStr>(doc: &Document<'_>, path: &str, text: &str) -> Result<T> {
    text.trim().parse().map_err(|_| doc.error(path, &format!("`{text}` is not a whole number")))
}

/// Memory: a bare number is MiB (as in xl), or a size with a unit.
fn memory_mib(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    if let Ok(mib) = t.parse::<u64>() {
        return Ok(mib);
    }
    let bytes = parse_size(t)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("memory `{text}` is not a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

/// A DNS label: lowercase letters, digits and `-`, starting with a letter, at most 32.
fn label(doc: &Document<'_>, path: &str, name: &str, what: &str) -> Result<()> {
    let ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        let message = format!(
            "{what} `{name}` must be a hostname label: lowercase letters, digits and `-`, starting with a letter, at most 32 characters"
        );
        Err(doc.error(path, &message))
    }
}

/// xl's `cpus` syntax: `all`, or a comma list of `n` and `n-m`.
fn cpu_list(text: &str) -> std::result::Result<String, String> {
    super::cpu_ranges(text)?;
    Ok(text.trim().to_owned())
}

/// A Xen virtual block device name: `xvd` + letters + an optional partition number.
fn vdev(device: &str) -> std::result::Result<(), String> {
    let rest = device.strip_prefix("xvd").unwrap_or("");
    let letters = rest.chars().take_while(char::is_ascii_lowercase).count();
    let digits = &rest[letters..];
    if (1..=2).contains(&letters) && digits.chars().all(|c| c.is_ascii_digit()) && digits.len() <= 2
    {
        Ok(())
    } else {
        Err(format!("device `{device}` is not a Xen block device like `xvda1` or `xvdb`"))
    }
}

/// The only bootloader a workspace may ask for (run restricted: docs/security.md).
pub const PYGRUB: &str = "pygrub";

/// Options of pygrub that choose what to boot inside the guest's own disk; the rest
/// (`--output`, `--runas`, `--output-directory`, `--isconfig`, …) name host files or
/// users, and a bare word would be taken as the disk.
const PYGRUB_OPTIONS: [&str; 4] = ["--entry=", "--kernel=", "--ramdisk=", "--args="];

/// pygrub's arguments: whitespace-separated `--entry=`, `--kernel=`, `--ramdisk=` or
/// `--args=` options.
fn bootloader_args(doc: &Document<'_>, path: &str, value: &str) -> Result<()> {
    text_value(doc, path, value)?;
    for arg in value.split_whitespace() {
        if !PYGRUB_OPTIONS.iter().any(|o| arg.starts_with(o)) || arg.contains(['"', '\\']) {
            let message = format!(
                "pygrub argument `{arg}` is not one of {}VALUE (no spaces or quotes in VALUE)",
                PYGRUB_OPTIONS.join("VALUE, ")
            );
            return Err(doc.error(path, &message));
        }
    }
    Ok(())
}

/// A kernel or ramdisk: a file name, or a path, in one of the host's kernel directories
/// (the host resolves it: `crate::xen::boot`). No `..`, no control characters.
fn host_path(doc: &Document<'_>, path: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.split('/').any(|part| part == "..") {
        let message =
            format!("`{value}` must name a file in the host's kernel directories, without `..`");
        return Err(doc.error(path, &message));
    }
    text_value(doc, path, value)
}

/// A path inside the guest, written into its config files: absolute, no spaces.
fn guest_path(doc: &Document<'_>, path: &str, value: &str) -> Result<()> {
    let ok = value.starts_with('/')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\#".contains(c));
    if ok {
        Ok(())
    } else {
        let message = format!("`{value}` must be an absolute path without spaces, quotes or `#`");
        Err(doc.error(path, &message))
    }
}

/// Free text that ends up in a domain config: no control characters.
fn text_value(doc: &Document<'_>, path: &str, value: &str) -> Result<()> {
    if value.chars().any(char::is_control) {
        return Err(doc.error(path, &format!("{value:?} contains a control character")));
    }
    Ok(())
}
