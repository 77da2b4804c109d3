//! The host manager: takes a workspace from images in the store to Xen domains, the way
//! the paper's VW Manager does, one host at a time.
//!
//! [`Manager::submit`] records a deployment (the validated workspace, one record per
//! VM, addresses from the cluster's pools); [`Manager::run`] applies an [`Op`] to its
//! VMs. The steps come from the pure state machine in [`lifecycle`], so an operation
//! is idempotent and an impossible one is refused before anything is done. Each step
//! is timed and its result persisted (one synced batch) before the next starts or the
//! caller hears of it. [`Manager::open`] reconciles the records with the hypervisor,
//! which may have moved on (a crash between a driver call and its record, a host
//! reboot).
//!
//! On disk, under the store directory: `images/<deployment>/.shared/<manifest>.img`
//! (each partition rebuilt once per deployment), `images/<deployment>/<vm>/` (per-VM
//! clones, swap, seed volume) and `xen/<vm>.cfg`.

mod addresses;
mod error;
pub mod ready;
pub mod records;
mod stage;
mod stored;

pub use addresses::preview_addresses;
pub use error::ManagerError;
pub use stage::{LazyAttach, LazyImages};

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vw_chunkstore::{ImageRef, ManifestId, PinReason, RecordBatch, Store};

use crate::config::{ClusterConfig, DriverKind, Pools};
use crate::integrate::MungeKey;
pub use crate::lifecycle::{self, Op, Refusal, Step, VmState};
pub use crate::report::{HostCapacity, Reconciled, VmReport, VmStatus};
use crate::workspace::{NodeSpec, VmRole, WorkspaceSpec};
use crate::xen::simulated::SimulatedDriver;
use crate::xen::xl::XlDriver;
use crate::xen::{DomainState, Driver, XenError};
use records::{ClusterShare, Db, DeploymentRecord, Timing, VmRecord};

/// The host manager.
#[derive(Debug)]
pub struct Manager {
    store: std::sync::Arc<Store>,
    root: PathBuf,
    config: ClusterConfig,
    pools: Pools,
    driver: Box<dyn Driver>,
    /// MUNGE keys by deployment, as the head sent them (memory only).
    munge_keys: std::sync::Mutex<HashMap<String, MungeKey>>,
    /// What this process derives MUNGE keys from for deployments staged without a head.
    munge_secret: [u8; 32],
}

impl Manager {
    /// Opens the store at `root` with the driver the config names, and reconciles.
    pub fn open(
        root: &Path,
        config: ClusterConfig,
    ) -> Result<(Self, Vec<Reconciled>), ManagerError> {
        let driver: Box<dyn Driver> = match config.driver()? {
            DriverKind::Simulated => Box::new(SimulatedDriver::new(&root.join("xen-sim"))),
            DriverKind::Xl => Box::new(
                XlDriver::new(
                    config.xen.xl.clone(),
                    std::time::Duration::from_secs(config.xen.shutdown_timeout_s),
                    std::time::Duration::from_secs(config.xen.command_timeout_s),
                )
                .with_guest_channel(
                    config.xen.xenstore_read.clone(),
                    (!config.xen.console_dir.as_os_str().is_empty())
                        .then(|| config.xen.console_dir.clone()),
                )
                .with_bootloader_user(config.xen.bootloader_user.clone()),
            ),
        };
        Self::with_driver(root, config, driver)
    }

    /// Opens with a given driver, and reconciles.
    pub fn with_driver(
        root: &Path,
        config: ClusterConfig,
        driver: Box<dyn Driver>,
    ) -> Result<(Self, Vec<Reconciled>), ManagerError> {
        let store = std::sync::Arc::new(Store::open_with_records(root, &records::FAMILIES)?);
        let pools = config.pools();
        let mut munge_secret = [0u8; 32];
        getrandom::fill(&mut munge_secret).map_err(|e| ManagerError::Random(e.to_string()))?;
        let m = Manager {
            store,
            root: root.to_owned(),
            config,
            pools,
            driver,
            munge_keys: Default::default(),
            munge_secret,
        };
        let migrated = records::migrate(&m.db())?;
        if migrated > 0 {
            tracing::info!(
                records = migrated,
                store = %root.display(),
                "rewrote records an earlier release wrote in this release's versions"
            );
        }
        let reconciled = m.reconcile()?;
        Ok((m, reconciled))
    }

    /// Keeps the MUNGE key the head sent for deployment `name`, for its stages.
    pub fn keep_munge_key(&self, name: &str, key: MungeKey) {
        self.munge_keys.lock().expect("munge keys").insert(name.to_owned(), key);
    }

    /// Deployment `name`'s MUNGE key: the head's, else (staged on this host alone) one
    /// derived from this process's own secret, the same for all its VMs here.
    pub(crate) fn munge_key(&self, name: &str, created_ms: u64) -> MungeKey {
        let keys = self.munge_keys.lock().expect("munge keys");
        keys.get(name)
            .cloned()
            .unwrap_or_else(|| MungeKey::derive(&self.munge_secret, name, created_ms))
    }

    /// The chunk store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The chunk store, to share with the peer that serves and receives chunks.
    pub fn shared_store(&self) -> std::sync::Arc<Store> {
        std::sync::Arc::clone(&self.store)
    }

    /// The hypervisor driver.
    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }

    /// The cluster configuration it runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// What this host gives guests, measured now where the config does not say
    /// ([`HostCapacity::measure`]; with the `xl` driver that runs `xl info`).
    pub fn host(&self) -> Result<HostCapacity, ManagerError> {
        let host = &self.config.host;
        let xen = match (host.memory_mib, host.cpus) {
            (Some(_), Some(_)) => None,
            _ => self.driver.machine().map_err(ManagerError::XenMachine)?,
        };
        let running_mib = if xen.is_some() { self.running_mib()? } else { 0 };
        Ok(HostCapacity::measure(&self.config, xen, running_mib, &crate::machine::Counted::here()))
    }

    /// Guest memory vw's domains hold now, by their records.
    fn running_mib(&self) -> Result<u64, ManagerError> {
        let db = self.db();
        let deployments = db.deployments()?;
        let holding = [VmState::Loaded, VmState::Running, VmState::Paused];
        Ok(db
            .vms()?
            .iter()
            .filter(|vm| holding.contains(&vm.state))
            .filter_map(|vm| {
                let d = deployments.iter().find(|d| d.name == vm.deployment)?;
                Some(node_of(&d.spec, vm.role).memory_mib)
            })
            .fold(0u64, u64::saturating_add))
    }

    fn db(&self) -> Db<'_> {
        Db { records: self.store.records() }
    }

    /// The recorded deployment `name`, if any.
    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, ManagerError> {
        self.db().deployment(name)
    }

    /// The recorded deployments.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, ManagerError> {
        self.db().deployments()
    }

    /// Records `spec` as a deployment (idempotent for the same document): checks its
    /// images are in the store, that the host can hold it, and assigns addresses.
    pub fn submit(&self, spec: &WorkspaceSpec) -> Result<DeploymentRecord, ManagerError> {
        self.record(spec, None, None, None)
    }

    /// Records this host's share of a cluster deployment the head placed (idempotent
    /// for the same document and share): the VMs of `share.here`, with the head's
    /// addresses, deployed for `vo`. Their images must be in the store.
    pub fn submit_share(
        &self,
        spec: &WorkspaceSpec,
        share: ClusterShare,
        vo: &str,
    ) -> Result<DeploymentRecord, ManagerError> {
        self.record(spec, Some(share), Some(vo), None)
    }

    /// [`Manager::submit_share`] for a lazy stage: the images are not in the store yet
    /// (their chunks are still arriving); `images` names each one's manifest (the
    /// head's checked order).
    pub fn submit_share_lazily(
        &self,
        spec: &WorkspaceSpec,
        share: ClusterShare,
        vo: &str,
        images: &LazyImages,
    ) -> Result<DeploymentRecord, ManagerError> {
        self.record(spec, Some(share), Some(vo), Some(images))
    }

    /// Stages the VMs of `deployment` on lazy disks: each partition's copy is made and
    /// served by `attach` while its chunks arrive, and the domain config names what
    /// `attach` returns. Needs the `seed` integration (nothing is written into an
    /// image before it boots).
    pub fn stage_lazily(
        &self,
        deployment: &str,
        images: &LazyImages,
        attach: &dyn LazyAttach,
    ) -> Result<Vec<VmReport>, ManagerError> {
        self.run_with(deployment, None, Op::Stage, Some(&stage::Lazy { images, attach }))
    }

    /// After a lazy stage has every chunk (each copy is whole): pins the deployment's
    /// images and points each VM's domain config at its local copy, so a later load
    /// runs from local files only.
    pub fn settle_lazily(&self, deployment: &str) -> Result<(), ManagerError> {
        let db = self.db();
        let dep = db
            .deployment(deployment)?
            .ok_or_else(|| ManagerError::UnknownDeployment { name: deployment.to_owned() })?;
        for mut record in db.vms_of(&dep)? {
            for p in &node_of(&dep.spec, record.role).partitions {
                let id =
                    self.store.resolve(&p.image).map_err(|error| ManagerError::MissingImage {
                        vm: record.name.clone(),
                        image: Box::new(p.image.clone()),
                        error: Box::new(error),
                    })?;
                self.store.pin(&ImageRef::Id(id), &PinReason::Deployment(dep.name.clone()))?;
            }
            if let Some(staged) = stage::settle_vm(self, &dep, &record)? {
                record.staged = Some(staged);
                let mut batch = RecordBatch::default();
                records::put_vm(&mut batch, &record);
                db.write(batch)?;
            }
        }
        Ok(())
    }

    /// `spec` with the kernel and ramdisk of each node with a VM here (`share`, or every
    /// VM of a local deployment) resolved to a file in the kernel directories this host
    /// allows `vo` (docs/security.md); refused if any lies elsewhere.
    fn resolve_boot(
        &self,
        spec: &WorkspaceSpec,
        share: Option<&ClusterShare>,
        vo: Option<&str>,
    ) -> Result<WorkspaceSpec, ManagerError> {
        let here = match share {
            Some(share) => share.here_names(),
            None => spec.vms().iter().map(|vm| spec.vm_name(vm)).collect(),
        };
        crate::xen::boot::resolve_spec(spec, &here, self.config.kernel_dirs(vo))
            .map_err(|error| ManagerError::Boot { deployment: spec.name.clone(), error })
    }

    fn record(
        &self,
        spec: &WorkspaceSpec,
        share: Option<ClusterShare>,
        vo: Option<&str>,
        lazy: Option<&LazyImages>,
    ) -> Result<DeploymentRecord, ManagerError> {
        // Before anything is recorded or written: the spec with its kernels resolved
        // inside this host's allowed directories, which is what the domain configs name.
        // How it was staged is the head's order, not the record's.
        let spec = &WorkspaceSpec {
            staging: crate::workspace::Staging::Full,
            ..self.resolve_boot(spec, share.as_ref(), vo)?
        };
        let db = self.db();
        if let Some(existing) = db.deployment(&spec.name)? {
            if existing.spec == *spec && existing.share == share && existing.vo.as_deref() == vo {
                return Ok(existing);
            }
            return Err(ManagerError::DeploymentExists { name: spec.name.clone() });
        }
        let _span = tracing::info_span!("submit", deployment = %spec.name).entered();
        let all = spec.vms();
        let vms: Vec<_> = match &share {
            None => all,
            Some(share) => {
                let mut here = Vec::new();
                for m in share.here.iter().chain(&share.elsewhere) {
                    if !all.iter().any(|vm| spec.vm_name(vm) == m.name) {
                        return Err(ManagerError::UnknownVm {
                            deployment: spec.name.clone(),
                            vm: m.name.to_string(),
                        });
                    }
                }
                for vm in all {
                    if share.here.iter().any(|m| m.name == spec.vm_name(&vm)) {
                        here.push(vm);
                    }
                }
                here
            }
        };
        let names: Vec<String> = vms.iter().map(|vm| spec.vm_name(vm)).collect();
        for name in &names {
            if let Some(other) = db.vm(name)? {
                return Err(ManagerError::DuplicateVm {
                    vm: name.clone(),
                    other: other.deployment,
                });
            }
        }
        for (vm, name) in vms.iter().zip(&names) {
            for p in &vm.node.partitions {
                if lazy.is_some_and(|l| l.get(&p.image).is_some()) {
                    continue; // arriving
                }
                self.store.resolve(&p.image).map_err(|error| ManagerError::MissingImage {
                    vm: name.clone(),
                    image: Box::new(p.image.clone()),
                    error: Box::new(error),
                })?;
            }
        }
        self.check_capacity(&vms, &names)?;

        let mut records: Vec<VmRecord> = vms
            .iter()
            .zip(&names)
            .map(|(vm, name)| VmRecord {
                name: name.clone(),
                deployment: spec.name.clone(),
                hostname: vm.hostname(),
                role: vm.role,
                state: VmState::Described,
                nics: Vec::new(),
                staged: None,
                timings: Vec::new(),
                note: None,
            })
            .collect();
        let deployment = DeploymentRecord {
            name: spec.name.clone(),
            spec: spec.clone(),
            created_ms: now_ms(),
            vo: vo.map(str::to_owned),
            vms: names,
            share,
        };
        // One batch: the deployment, its VMs and their addresses (which also puts
        // every VM record, all of them lacking addresses yet).
        let mut batch = RecordBatch::default();
        records::put_deployment(&mut batch, &deployment);
        self.assign_addresses(&deployment, &mut records, &mut batch)?;
        db.write(batch)?;
        tracing::info!(vms = records.len(), "deployment recorded");
        Ok(deployment)
    }

    /// What the VMs here take (memory, vCPUs, pinned cores; every VM not unstaged) and
    /// the addresses they hold: what a head plans around.
    pub fn committed(&self) -> Result<crate::report::Commitments, ManagerError> {
        let db = self.db();
        let deployments = db.deployments()?;
        let mut taken = Vec::new();
        let mut nics = Vec::new();
        for vm in db.vms()? {
            nics.extend(vm.nics.iter().copied());
            let Some(d) = deployments.iter().find(|d| d.name == vm.deployment) else { continue };
            if vm.state == VmState::Unstaged {
                continue;
            }
            let node = node_of(&d.spec, vm.role);
            let cores = d.pinned_cores(&vm.name).unwrap_or_else(|| {
                node.cpus
                    .as_deref()
                    .and_then(|c| crate::workspace::cpu_ranges(c).ok())
                    .map(|r| r.iter().flat_map(|&(a, b)| a..=b).collect())
                    .unwrap_or_default()
            });
            taken.push(crate::report::VmTake {
                memory_mib: node.memory_mib,
                vcpus: node.vcpus,
                cores,
            });
        }
        Ok(crate::report::Commitments { vms: taken, addresses: nics })
    }

    /// On a head: the cluster deployment of that name.
    pub fn cluster(&self, name: &str) -> Result<Option<records::ClusterDeployment>, ManagerError> {
        self.db().cluster(name)
    }

    /// On a head: every cluster deployment.
    pub fn clusters(&self) -> Result<Vec<records::ClusterDeployment>, ManagerError> {
        self.db().clusters()
    }

    /// On a head: records (or replaces) a cluster deployment.
    pub fn record_cluster(&self, d: &records::ClusterDeployment) -> Result<(), ManagerError> {
        let mut batch = RecordBatch::default();
        records::put_cluster(&mut batch, d);
        self.db().write(batch)
    }

    /// On a head: forgets a cluster deployment (once unstaged everywhere).
    pub fn forget_cluster(&self, name: &str) -> Result<(), ManagerError> {
        let mut batch = RecordBatch::default();
        batch.delete(records::CLUSTERS, name);
        self.db().write(batch)
    }

    /// Every VM of `dep`, here and (for a cluster share) elsewhere: what integration
    /// describes to each guest.
    fn cluster_of(&self, dep: &DeploymentRecord) -> Result<Vec<VmRecord>, ManagerError> {
        let mut all = self.db().vms_of(dep)?;
        if let Some(share) = &dep.share {
            for vm in dep.spec.vms() {
                let name = dep.spec.vm_name(&vm);
                if let Some(m) = share.elsewhere.iter().find(|m| m.name == name) {
                    all.push(VmRecord {
                        name,
                        deployment: dep.name.clone(),
                        hostname: vm.hostname(),
                        role: vm.role,
                        state: VmState::Described,
                        nics: m.nics.clone(),
                        staged: None,
                        timings: Vec::new(),
                        note: None,
                    });
                }
            }
        }
        Ok(all)
    }

    fn check_capacity(
        &self,
        vms: &[crate::workspace::VmSlot<'_>],
        names: &[String],
    ) -> Result<(), ManagerError> {
        let host = self.host()?;
        let db = self.db();
        let deployments = db.deployments()?;
        let mut used: u64 = 0;
        for vm in db.vms()?.iter().filter(|v| v.state != VmState::Unstaged) {
            if let Some(d) = deployments.iter().find(|d| d.name == vm.deployment) {
                used += node_of(&d.spec, vm.role).memory_mib;
            }
        }
        for (vm, name) in vms.iter().zip(names) {
            let node = vm.node;
            if node.vcpus > host.cpus {
                let reason = format!("{} vCPUs but this host has {} CPUs", node.vcpus, host.cpus);
                return Err(ManagerError::Capacity { vm: name.clone(), reason });
            }
            if let (Some(cpus), Some(highest)) = (&node.cpus, node.highest_cpu()) {
                if highest >= host.cpus {
                    let reason = format!(
                        "cpus `{cpus}` names a CPU this host lacks (it has 0-{})",
                        host.cpus - 1
                    );
                    return Err(ManagerError::Capacity { vm: name.clone(), reason });
                }
            }
            used += node.memory_mib;
            if used > host.memory_mib {
                let reason = format!(
                    "{used} MiB of guest memory needed with the VMs already here, but this host has {} MiB ({}); set [host] memory_mib if that is wrong",
                    host.memory_mib, host.memory_from
                );
                return Err(ManagerError::Capacity { vm: name.clone(), reason });
            }
        }
        Ok(())
    }

    /// Applies `op` to the VMs of `deployment` (or just `vm`), head first (workers first
    /// for stop and unstage, so clients go before their servers). Every VM's plan is
    /// checked before anything is done.
    pub fn run(
        &self,
        deployment: &str,
        vm: Option<&str>,
        op: Op,
    ) -> Result<Vec<VmReport>, ManagerError> {
        self.run_with(deployment, vm, op, None)
    }

    /// [`Manager::run`], staging on lazy disks when `lazy` says how.
    fn run_with(
        &self,
        deployment: &str,
        vm: Option<&str>,
        op: Op,
        lazy: Option<&stage::Lazy<'_>>,
    ) -> Result<Vec<VmReport>, ManagerError> {
        let db = self.db();
        let dep = db
            .deployment(deployment)?
            .ok_or_else(|| ManagerError::UnknownDeployment { name: deployment.to_owned() })?;
        let _span = tracing::info_span!("deployment", name = %dep.name, %op).entered();
        let mut names: Vec<&String> = match vm {
            Some(v) => vec![dep.vms.iter().find(|n| *n == v).ok_or_else(|| {
                ManagerError::UnknownVm { deployment: deployment.to_owned(), vm: v.to_owned() }
            })?],
            None => dep.vms.iter().collect(),
        };
        if matches!(op, Op::Stop | Op::Unstage) {
            names.reverse();
        }
        let mut plans = Vec::new();
        for name in names {
            let record = db.vm(name)?.ok_or_else(|| ManagerError::UnknownVm {
                deployment: deployment.to_owned(),
                vm: name.clone(),
            })?;
            let steps = lifecycle::plan(record.state, op)
                .map_err(|refusal| ManagerError::Refused { vm: name.clone(), refusal })?;
            plans.push((record, steps));
        }
        if plans.iter().any(|(_, steps)| steps.contains(&Step::Stage)) {
            self.readdress(&dep)?;
        }
        let mut reports = Vec::new();
        for (record, steps) in plans {
            let _vm_span = tracing::info_span!("vm", vm = %record.name).entered();
            let mut record = db.vm(&record.name)?.unwrap_or(record);
            let mut taken = Vec::new();
            for step in steps {
                let started = Instant::now();
                let result = self.step(&dep, &mut record, step, lazy);
                let micros = started.elapsed().as_micros() as u64;
                if let Err(e) = result {
                    // The state stays; the failure is noted for `vw status`.
                    tracing::warn!(%step, error = %e, "step failed");
                    record.note = Some(format!("{step} failed: {e}"));
                    let mut batch = RecordBatch::default();
                    records::put_vm(&mut batch, &record);
                    db.write(batch)?;
                    return Err(e);
                }
                let timing = Timing { step, micros, at_ms: now_ms() };
                record.state = step.target();
                record.timings.push(timing);
                record.note = None;
                let mut batch = RecordBatch::default();
                if step == Step::Unstage {
                    records::release_addresses(&mut batch, &record);
                    record.nics.clear();
                    record.staged = None;
                }
                records::put_vm(&mut batch, &record);
                db.write(batch)?;
                tracing::info!(%step, micros, state = %record.state, "step done");
                taken.push(timing);
            }
            reports.push(VmReport { vm: record.name.clone(), state: record.state, steps: taken });
        }
        if op == Op::Unstage {
            self.forget_if_unstaged(&dep)?;
        }
        Ok(reports)
    }

    /// Performs one step's side effects (the caller records the transition).
    fn step(
        &self,
        dep: &DeploymentRecord,
        record: &mut VmRecord,
        step: Step,
        lazy: Option<&stage::Lazy<'_>>,
    ) -> Result<(), ManagerError> {
        let xen = |error| ManagerError::Xen { vm: record.name.clone(), step, error };
        match step {
            Step::Stage => {
                let all = self.cluster_of(dep)?;
                record.staged = Some(stage::stage_vm(self, dep, record, &all, lazy)?);
                Ok(())
            }
            Step::Load => {
                self.driver.load(&record.name, &self.config_path(&record.name)).map_err(xen)
            }
            Step::Start | Step::Unpause => self.driver.unpause(&record.name).map_err(xen),
            Step::Pause => self.driver.pause(&record.name).map_err(xen),
            // A loaded domain never ran: nothing to shut down cleanly.
            Step::Stop if record.state == VmState::Loaded => {
                self.driver.destroy(&record.name).map(drop).map_err(xen)
            }
            Step::Stop => self.driver.stop(&record.name).map(drop).map_err(xen),
            Step::Unstage => stage::unstage_vm(self, dep, record),
        }
    }

    /// Once every VM of `dep` is unstaged: drops the shared copies, its pins and its
    /// records.
    fn forget_if_unstaged(&self, dep: &DeploymentRecord) -> Result<(), ManagerError> {
        let db = self.db();
        let records = db.vms_of(dep)?;
        if records.iter().any(|r| r.state != VmState::Unstaged) {
            return Ok(());
        }
        stage::remove_deployment_files(self, dep)?;
        self.munge_keys.lock().expect("munge keys").remove(&dep.name);
        let reason = PinReason::Deployment(dep.name.clone());
        let manifests: BTreeSet<ManifestId> = dep
            .spec
            .vms()
            .iter()
            .flat_map(|vm| vm.node.partitions.iter())
            .filter_map(|p| self.store.resolve(&p.image).ok())
            .collect();
        for id in manifests {
            self.store.unpin(&ImageRef::Id(id), &reason)?;
        }
        let mut batch = RecordBatch::default();
        for r in &records {
            batch.delete(records::VMS, &r.name);
        }
        batch.delete(records::DEPLOYMENTS, &dep.name);
        db.write(batch)
    }

    /// Asks the guest of every running VM of `deployment` but those in `answered`
    /// whether it is up.
    pub fn probe_ready(
        &self,
        deployment: &str,
        answered: &[String],
    ) -> Result<Vec<ready::Probe>, ManagerError> {
        let db = self.db();
        let dep = db
            .deployment(deployment)?
            .ok_or_else(|| ManagerError::UnknownDeployment { name: deployment.to_owned() })?;
        let mut probes = Vec::new();
        let pending = |r: &VmRecord| r.state == VmState::Running && !answered.contains(&r.name);
        for record in db.vms_of(&dep)?.into_iter().filter(pending) {
            let started_ms = record
                .timings
                .iter()
                .rev()
                .find(|t| matches!(t.step, Step::Start | Step::Unpause))
                .map_or_else(now_ms, |t| t.at_ms.saturating_sub(t.micros / 1000));
            let seen = match self.driver.guest_report(&record.name) {
                Ok(Some(report)) => {
                    let node = node_of(&dep.spec, record.role);
                    let expected = crate::xen::ready::Expected {
                        nics: record.nics.iter().map(|n| (n.mac, n.ip)).collect(),
                        swap_bytes: node.swap.as_ref().map(|s| s.size),
                        nfs_mounts: node.roles.nfs_mounts.iter().map(|m| m.mount.clone()).collect(),
                    };
                    let disagreements = crate::xen::ready::disagreements(&report, &expected);
                    ready::Seen::Ready(report, disagreements)
                }
                Ok(None) => match self.driver.status(&record.name) {
                    Ok(None) => ready::Seen::Failed(
                        "its domain is gone (crashed, or shut down by the guest)".to_owned(),
                    ),
                    Ok(Some(_)) => ready::Seen::Waiting,
                    Err(e) => {
                        tracing::warn!(vm = %record.name, error = %e, "status while waiting for the guest");
                        ready::Seen::Waiting
                    }
                },
                Err(e @ XenError::BadReport { .. }) => ready::Seen::Failed(e.to_string()),
                Err(e) => {
                    tracing::warn!(vm = %record.name, error = %e, "reading the guest's report");
                    ready::Seen::Waiting
                }
            };
            probes.push(ready::Probe { vm: record.name, started_ms, seen });
        }
        Ok(probes)
    }

    /// Probes every `poll` until each running VM of `deployment` is ready or `timeout`
    /// has passed (for callers that own the manager; the daemon polls
    /// [`Manager::probe_ready`] itself, so as not to hold the manager meanwhile).
    pub fn await_ready(
        &self,
        deployment: &str,
        timeout: std::time::Duration,
        poll: std::time::Duration,
    ) -> Result<Vec<crate::report::VmReady>, ManagerError> {
        let deadline = Instant::now() + timeout;
        let mut wait = ready::ReadyWait::default();
        while !wait.absorb(self.probe_ready(deployment, &wait.answered())?, now_ms())
            && Instant::now() < deadline
        {
            std::thread::sleep(poll);
        }
        Ok(wait.finish(timeout.as_secs(), |vm| self.driver.console_tail(vm, ready::CONSOLE_LINES)))
    }

    /// The VMs of one deployment (or all), with what the hypervisor says now.
    pub fn status(&self, deployment: Option<&str>) -> Result<Vec<VmStatus>, ManagerError> {
        let db = self.db();
        if let Some(d) = deployment {
            if db.deployment(d)?.is_none() {
                return Err(ManagerError::UnknownDeployment { name: d.to_owned() });
            }
        }
        let mut out = Vec::new();
        for dep in db.deployments()?.iter().filter(|d| deployment.is_none_or(|n| n == d.name)) {
            for name in &dep.vms {
                let Some(record) = db.vm(name)? else { continue };
                let domain = self
                    .driver
                    .status(name)
                    .map_err(|error| ManagerError::XenStatus { vm: name.clone(), error })?;
                out.push(VmStatus { record, domain });
            }
        }
        Ok(out)
    }

    /// Makes the records agree with the hypervisor, which wins: a domain that vanished
    /// means the VM stopped; a domain the records do not know (a crash between a
    /// driver call and its record) is adopted.
    fn reconcile(&self) -> Result<Vec<Reconciled>, ManagerError> {
        let db = self.db();
        let mut out = Vec::new();
        for mut record in db.vms()? {
            let domain = self
                .driver
                .status(&record.name)
                .map_err(|error| ManagerError::XenStatus { vm: record.name.clone(), error })?;
            let now = match (record.state, domain) {
                (VmState::Loaded | VmState::Running | VmState::Paused, None) => {
                    Some((VmState::Stopped, "its domain is gone (the host or hypervisor restarted, or it was destroyed outside vw)"))
                }
                (VmState::Running, Some(DomainState::Paused)) => Some((VmState::Paused, "the hypervisor has it paused")),
                (VmState::Paused | VmState::Loaded, Some(DomainState::Running)) => {
                    Some((VmState::Running, "the hypervisor has it running"))
                }
                (VmState::Staged | VmState::Stopped, Some(DomainState::Paused)) => {
                    Some((VmState::Loaded, "a paused domain of this name exists (a load was interrupted)"))
                }
                (VmState::Staged | VmState::Stopped, Some(DomainState::Running)) => {
                    Some((VmState::Running, "a running domain of this name exists (a start was interrupted)"))
                }
                _ => None,
            };
            if let Some((state, reason)) = now {
                tracing::warn!(vm = %record.name, was = %record.state, now = %state, reason, "reconciled");
                out.push(Reconciled {
                    vm: record.name.clone(),
                    was: record.state,
                    now: state,
                    reason: reason.to_owned(),
                });
                record.state = state;
                record.note = Some(format!("reconciled: {reason}"));
                let mut batch = RecordBatch::default();
                records::put_vm(&mut batch, &record);
                db.write(batch)?;
            }
        }
        Ok(out)
    }

    /// `xen/vw-block`, a lazy disk's hotplug script (decision 88), written as this vwd
    /// has it (and executable) under the `xl` driver; `None` under the simulated one,
    /// whose lazy disks are sockets.
    pub fn lazy_block_script(&self) -> Result<Option<PathBuf>, ManagerError> {
        use std::os::unix::fs::PermissionsExt as _;
        if self.driver().kind() != DriverKind::Xl {
            return Ok(None);
        }
        let path = self.root.join("xen").join("vw-block");
        let script = crate::xen::config::LAZY_BLOCK_SCRIPT.as_bytes();
        if std::fs::read(&path).ok().as_deref() != Some(script) {
            stage::write_atomic(&path, script)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ManagerError::io("chmod", &path, e))?;
        Ok(Some(path))
    }

    /// `xen/<vm>.cfg`.
    pub fn config_path(&self, vm: &str) -> PathBuf {
        self.root.join("xen").join(format!("{vm}.cfg"))
    }

    /// `images/<deployment>/.shared/<id>.img`: image `id` written once for a
    /// deployment's VMs here (each clones it, the last takes it). A stage writes it as
    /// the chunks arrive; staging a VM rebuilds it from the store if it is not there.
    pub fn shared_image(&self, deployment: &str, id: &ManifestId) -> PathBuf {
        stage::shared_dir(self, deployment).join(format!("{}.img", id.to_hex()))
    }
}

/// The template a VM was made from.
pub(crate) fn node_of(spec: &WorkspaceSpec, role: VmRole) -> &NodeSpec {
    match (role, &spec.workers) {
        (VmRole::Worker(_), Some(w)) => &w.template,
        _ => &spec.head,
    }
}

pub(crate) use vw_chunkstore::now_ms;
