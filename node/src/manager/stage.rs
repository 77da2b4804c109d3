//! Local staging: rebuild each partition from the store once per deployment, clone it
//! per VM (reflink or sparse copy), make the swap partition, integrate, and write the
//! domain config. And the reverse, unstaging.
//!
//! The last VM of a stage run that needs a rebuilt copy takes it by rename instead of
//! cloning it: on file systems without reflink a clone is a full copy, and a copy
//! nobody else will clone is not worth keeping. A VM staged later rebuilds it again.
//!
//! A VM's directory is rebuilt from scratch on every stage, so a stage interrupted
//! halfway (disk full, crash) leaves nothing that a retry trusts. Every file is written
//! under a temporary name and renamed when complete.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vw_chunkstore::{clone_image, ImageRef, ManifestId, PinReason};

use super::records::{DeploymentRecord, StagePhases, StagedFiles, VmRecord};
use super::{node_of, Manager, ManagerError, VmState};
use crate::integrate::{self, ClusterView, NicSetup, VmSetup};
use crate::workspace::{Access, BatchRole, Integration, Network, PartitionRole, VmRole};
use crate::xen::config::{Disk, DomainConfig, Vif};

/// `images/<deployment>`.
fn deployment_dir(m: &Manager, dep: &str) -> PathBuf {
    m.root.join("images").join(dep)
}

/// `images/<deployment>/<vm>`: a VM's own files.
fn vm_dir(m: &Manager, dep: &str, vm: &str) -> PathBuf {
    deployment_dir(m, dep).join(vm)
}

/// `images/<deployment>/.shared`: the images its VMs here clone.
pub(super) fn shared_dir(m: &Manager, dep: &str) -> PathBuf {
    deployment_dir(m, dep).join(".shared")
}

/// The manifests of a lazy stage's images, by the reference the workspace names each
/// with (they are not in the store until their chunks have all arrived).
#[derive(Clone, Debug, Default)]
pub struct LazyImages(pub HashMap<String, ManifestId>);

impl LazyImages {
    /// The manifest of `image` (by the name the order gave it, or by id), if the stage
    /// brings it.
    pub fn get(&self, image: &ImageRef) -> Option<ManifestId> {
        match image {
            ImageRef::Id(id) => self.0.values().find(|m| *m == id).copied(),
            ImageRef::Name(_) => self.0.get(&image.to_string()).copied(),
        }
    }
}

/// Makes a VM's lazy disks: the host's side of a lazy stage (control/lazy.rs).
pub trait LazyAttach {
    /// Makes `copy` (which does not exist) the lazy disk of partition `device` of `vm`,
    /// image `manifest`, served to the hypervisor while its chunks arrive; returns what
    /// the domain config names as its target.
    fn attach(
        &self,
        vm: &str,
        device: &str,
        manifest: ManifestId,
        copy: &Path,
    ) -> Result<PathBuf, crate::lazy::LazyError>;
}

/// How a lazy stage stages: each image's manifest, and who makes its disks.
pub(super) struct Lazy<'a> {
    pub images: &'a LazyImages,
    pub attach: &'a dyn LazyAttach,
}

/// Stages one VM; returns the files it uses. `lazy`: its partitions are lazy disks.
pub(super) fn stage_vm(
    m: &Manager,
    dep: &DeploymentRecord,
    vm: &VmRecord,
    all: &[VmRecord],
    lazy: Option<&Lazy<'_>>,
) -> Result<StagedFiles, ManagerError> {
    let node = node_of(&dep.spec, vm.role);
    let stage_err = |error| ManagerError::Stage { vm: vm.name.clone(), error: Box::new(error) };
    let shared = shared_dir(m, &dep.name);
    let dir = vm_dir(m, &dep.name, &vm.name);
    if lazy.is_some() && node.integration == Integration::Edit {
        return Err(ManagerError::Lazy {
            vm: vm.name.clone(),
            why: "a lazy stage needs the `seed` integration: `edit` writes into the root \
                  image before it boots"
                .into(),
        });
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| ManagerError::io("remove", &dir, e))?;
    }
    for d in [&shared, &dir] {
        fs::create_dir_all(d).map_err(|e| ManagerError::io("create", d, e))?;
    }

    let resolve = |image: &ImageRef| {
        if let Some(id) = lazy.and_then(|l| l.images.get(image)) {
            return Ok(id);
        }
        m.store.resolve(image).map_err(|error| ManagerError::MissingImage {
            vm: vm.name.clone(),
            image: Box::new(image.clone()),
            error: Box::new(error),
        })
    };
    // The images still to be placed after this VM: every partition of the deployment's
    // VMs here that are not staged yet.
    let mut pending: Vec<ManifestId> = Vec::new();
    let waiting = |o: &&VmRecord| {
        o.name != vm.name
            && dep.vms.contains(&o.name)
            && matches!(o.state, VmState::Described | VmState::Unstaged)
    };
    for other in all.iter().filter(waiting).filter(|_| lazy.is_none()) {
        for p in &node_of(&dep.spec, other.role).partitions {
            pending.push(resolve(&p.image)?);
        }
    }
    let ids: Vec<ManifestId> =
        node.partitions.iter().map(|p| resolve(&p.image)).collect::<Result<_, _>>()?;

    let mut phases = StagePhases::default();
    let mut disks = Vec::new();
    let mut root = None;
    // The hotplug script of the VM's lazy disks, written once for them all.
    let script = if lazy.is_some() { m.lazy_block_script()? } else { None };
    for (i, (p, id)) in node.partitions.iter().zip(&ids).enumerate() {
        if let Some(lazy) = lazy {
            // Pinned once the image is in the store (`Manager::settle_lazily`).
            let copy = dir.join(format!("{}.img", p.device));
            let target = lazy.attach.attach(&vm.name, &p.device, *id, &copy).map_err(|e| {
                ManagerError::Lazy { vm: vm.name.clone(), why: format!("{}: {e}", p.device) }
            })?;
            disks.push(Disk {
                script: script.clone(),
                ..Disk::new(p.device.clone(), p.access, target)
            });
            continue;
        }
        m.store.pin(&ImageRef::Id(*id), &PinReason::Deployment(dep.name.clone()))?;
        let staged = m.shared_image(&dep.name, id);
        let t = Instant::now();
        if !staged.exists() {
            // Written as its chunks arrived (when this host fetched any), else rebuilt
            // once per deployment; either way verified against the image's BLAKE3.
            m.store.export(id, &staged, false, &()).map_err(stage_err)?;
            phases.rebuilt += 1;
        }
        phases.rebuild += micros(t);
        let t = Instant::now();
        let copy = dir.join(format!("{}.img", p.device));
        if ids[i + 1..].contains(id) || pending.contains(id) {
            let method = clone_image(&staged, &copy).map_err(stage_err)?;
            tracing::debug!(device = %p.device, ?method, "partition cloned");
            phases.cloned += 1;
        } else {
            fs::rename(&staged, &copy).map_err(|e| ManagerError::io("rename", &staged, e))?;
            tracing::debug!(device = %p.device, "took the last use of the rebuilt copy");
            phases.taken += 1;
        }
        phases.clone += micros(t);
        if p.role == PartitionRole::Root {
            root = Some(copy.clone());
        }
        disks.push(Disk::new(p.device.clone(), p.access, copy));
    }
    let t = Instant::now();
    if let Some(swap) = &node.swap {
        let path = dir.join(format!("{}.swap.img", swap.device));
        make_swap(&path, swap.size)
            .map_err(|error| ManagerError::Integration { vm: vm.name.clone(), error })?;
        disks.push(Disk::new(swap.device.clone(), Access::Rw, path));
    }
    phases.swap = micros(t);

    let t = Instant::now();
    let setup = setup(m, dep, vm, all);
    let integration_err = |error| ManagerError::Integration { vm: vm.name.clone(), error };
    match node.integration {
        Integration::Seed => {
            let path = dir.join("seed.img");
            integrate::seed::make(&setup, &path).map_err(integration_err)?;
            let vdev = free_disk(disks.iter().map(|d| d.vdev.as_str()));
            disks.push(Disk::new(vdev, Access::Ro, path));
        }
        Integration::Edit => {
            let root = root.expect("validation requires a root partition");
            integrate::ext4::edit(&root, &integrate::files::guest_files(&setup))
                .map_err(integration_err)?;
        }
    }
    phases.integrate = micros(t);

    let t = Instant::now();
    let (config, disks) = write_config(m, dep, vm, disks)?;
    phases.config = micros(t);
    Ok(StagedFiles { config, disks, phases })
}

/// Renders `vm`'s domain config with `disks` and writes it in place; returns its path
/// and the disks.
fn write_config(
    m: &Manager,
    dep: &DeploymentRecord,
    vm: &VmRecord,
    disks: Vec<Disk>,
) -> Result<(PathBuf, Vec<Disk>), ManagerError> {
    let node = node_of(&dep.spec, vm.role);
    let bridge = |n: Network| match n {
        Network::Private => m.config.network.private_bridge.clone(),
        Network::Public => m.config.network.public.bridge.clone(),
    };
    let config = DomainConfig {
        name: vm.name.clone(),
        memory_mib: node.memory_mib,
        vcpus: node.vcpus,
        // The head's choice of cores when it placed the VM; else the document's own.
        cpus: match dep.pinned_cores(&vm.name) {
            Some(cores) => Some(cores.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
            None => node.cpus.clone(),
        },
        boot: node.boot.clone(),
        disks,
        vifs: vm
            .nics
            .iter()
            .map(|n| Vif { mac: n.mac, ip: n.ip, bridge: bridge(n.network) })
            .collect(),
        on_poweroff: m.config.xen.on_poweroff.clone(),
        on_reboot: m.config.xen.on_reboot.clone(),
        on_crash: m.config.xen.on_crash.clone(),
        bootloader_user: m.config.xen.bootloader_user.clone(),
    };
    let text = config.render().map_err(|error| ManagerError::Xen {
        vm: vm.name.clone(),
        step: super::Step::Stage,
        error,
    })?;
    let path = m.config_path(&vm.name);
    write_atomic(&path, text.as_bytes())?;
    Ok((path, config.disks))
}

/// A lazily staged VM once its copies are whole: its config names each partition's
/// local copy instead of the device that served it. `None`: it was not staged.
pub(super) fn settle_vm(
    m: &Manager,
    dep: &DeploymentRecord,
    vm: &VmRecord,
) -> Result<Option<StagedFiles>, ManagerError> {
    let Some(staged) = &vm.staged else { return Ok(None) };
    let dir = vm_dir(m, &dep.name, &vm.name);
    let partitions = &node_of(&dep.spec, vm.role).partitions;
    let disks = staged
        .disks
        .iter()
        .map(|d| match partitions.iter().find(|p| p.device == d.vdev) {
            Some(p) => Disk::new(d.vdev.clone(), d.access, dir.join(format!("{}.img", p.device))),
            None => d.clone(),
        })
        .collect();
    let (config, disks) = write_config(m, dep, vm, disks)?;
    Ok(Some(StagedFiles { config, disks, phases: staged.phases }))
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// What `vm` needs to know to join the cluster.
fn setup(m: &Manager, dep: &DeploymentRecord, vm: &VmRecord, all: &[VmRecord]) -> VmSetup {
    let net = &m.config.network;
    let node = node_of(&dep.spec, vm.role);
    let has_public = vm.nics.iter().any(|n| n.network == Network::Public);
    let nics = vm
        .nics
        .iter()
        .map(|n| {
            let (prefix, gateway) = match n.network {
                // The default route goes out of the public NIC when there is one.
                Network::Private => (
                    net.subnet.prefix_len(),
                    if has_public && net.public.gateway.is_some() { None } else { net.gateway },
                ),
                Network::Public => (net.public.prefix, net.public.gateway),
            };
            NicSetup {
                network: n.network,
                address: ipnet::Ipv4Net::new(n.ip, prefix)
                    .expect("prefixes are checked when the config is read"),
                mac: n.mac,
                gateway,
            }
        })
        .collect();
    let private_ip =
        |r: &VmRecord| r.nics.iter().find(|n| n.network == Network::Private).map(|n| n.ip);
    let hosts = all.iter().filter_map(|r| Some((r.hostname.clone(), private_ip(r)?))).collect();
    let batch_nodes = match &dep.spec.workers {
        Some(w) if w.template.roles.batch == Some(BatchRole::Worker) => all
            .iter()
            .filter(|r| matches!(r.role, VmRole::Worker(_)))
            .map(|r| (r.hostname.clone(), w.template.vcpus))
            .collect(),
        _ => Vec::new(),
    };
    let batch_system = dep.spec.batch_system();
    VmSetup {
        instance_id: format!("{}-{}-{}", dep.name, vm.name, dep.created_ms),
        hostname: vm.hostname.clone(),
        nics,
        dns: net.dns.clone(),
        roles: node.roles.clone(),
        vcpus: node.vcpus,
        swap: node.swap.as_ref().map(|s| s.device.clone()),
        cluster: ClusterView {
            name: dep.name.clone(),
            hosts,
            head: dep.spec.head_hostname().to_owned(),
            private_net: net.subnet.trunc(),
            batch_nodes,
            batch_system,
            munge_key: dep.spec.runs_slurm().then(|| m.munge_key(&dep.name, dep.created_ms)),
        },
    }
}

/// The first whole disk (`xvdb`, `xvdc`, …) no device uses.
fn free_disk<'a>(used: impl Iterator<Item = &'a str> + Clone) -> String {
    ('b'..='z')
        .map(|c| format!("xvd{c}"))
        .find(|d| !used.clone().any(|u| u.starts_with(d.as_str())))
        .unwrap_or_else(|| "xvdzz".to_owned())
}

/// A swap partition of `size` bytes: a sparse file with a swap signature (`mkswap`).
fn make_swap(path: &Path, size: u64) -> Result<(), integrate::IntegrationError> {
    use integrate::IntegrationError;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let f = fs::File::create(&tmp).map_err(|e| IntegrationError::io("create", &tmp, e))?;
        f.set_len(size).map_err(|e| IntegrationError::io("size", &tmp, e))?;
        integrate::run_tool(
            "mkswap",
            "util-linux",
            &["-L".as_ref(), "swap".as_ref(), tmp.as_os_str()],
            &tmp,
        )?;
        f.sync_all().map_err(|e| IntegrationError::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| IntegrationError::io("rename", &tmp, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a temp file, fsync and rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ManagerError> {
    let dir = path.parent().expect("config paths have a directory");
    fs::create_dir_all(dir).map_err(|e| ManagerError::io("create", dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| ManagerError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ManagerError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ManagerError::io("rename", &tmp, e))
}

/// Removes one VM's files.
pub(super) fn unstage_vm(
    m: &Manager,
    dep: &DeploymentRecord,
    vm: &VmRecord,
) -> Result<(), ManagerError> {
    let dir = vm_dir(m, &dep.name, &vm.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| ManagerError::io("remove", &dir, e))?;
    }
    let cfg = m.config_path(&vm.name);
    match fs::remove_file(&cfg) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ManagerError::io("remove", &cfg, e))
        }
        _ => Ok(()),
    }
}

/// Removes a deployment's shared copies (once all its VMs are unstaged).
pub(super) fn remove_deployment_files(
    m: &Manager,
    dep: &DeploymentRecord,
) -> Result<(), ManagerError> {
    let dir = deployment_dir(m, &dep.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| ManagerError::io("remove", &dir, e))?;
    }
    Ok(())
}
