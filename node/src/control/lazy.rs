//! A host's side of a lazy stage (issue 19): its VMs' disks are made, served and
//! booted from before their chunks have arrived.
//!
//! [`LazyStage`] makes each partition's [`LazyDisk`] when the manager stages the VM
//! (`Manager::stage_lazily`), serves it to the hypervisor (the kernel's NBD driver
//! under the `xl` driver, a socket under the simulated one) and collects the disks for
//! the stage's intake, which lands every chunk in them as it arrives. [`LazyVms`]
//! keeps each VM's disks served while its domain may read them, and says what they
//! did; [`Settling`] holds the stages still fetching after their answer, until the head
//! asks for their end (`Request::Settle`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vw_chunkstore::{ChunkId, Manifest, ManifestId, Store};

use super::error::ControlError;
use super::protocol::StageReport;
use crate::chunks::demand::Demand;
use crate::lazy::disk::{LazyDisk, ReadFailure};
use crate::lazy::export::SocketExport;
use crate::lazy::kernel::KernelDevice;
use crate::lazy::LazyError;
use crate::manager::LazyAttach;
use crate::report::LazyCounts;

/// How a lazy disk reaches the hypervisor; dropping it stops serving.
#[derive(Debug)]
enum Served {
    /// `/dev/dm-N` over `/dev/nbdN` (the `xl` driver); locked while handed over.
    Kernel(Arc<Mutex<KernelDevice>>),
    /// A Unix socket (the simulated driver's guest).
    Socket(#[allow(dead_code)] SocketExport),
}

/// One lazy disk of a VM, served.
#[derive(Debug)]
struct ServedDisk {
    disk: Arc<LazyDisk>,
    served: Served,
}

impl ServedDisk {
    /// The disk and its kernel device, if it reaches the hypervisor through the kernel.
    fn kernel(&self) -> Option<(Arc<LazyDisk>, Arc<Mutex<KernelDevice>>)> {
        match &self.served {
            Served::Kernel(k) => Some((Arc::clone(&self.disk), Arc::clone(k))),
            Served::Socket(_) => None,
        }
    }
}

/// Makes the lazy disks of one stage; see the module doc.
pub(crate) struct LazyStage {
    store: Arc<Store>,
    manifests: HashMap<ManifestId, Arc<Manifest>>,
    demand: Demand,
    hidden: Arc<HashSet<ChunkId>>,
    /// Attach through the kernel's NBD driver (else serve a socket).
    kernel: bool,
    made: Mutex<Vec<(String, ServedDisk)>>,
}

impl std::fmt::Debug for LazyStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStage").field("kernel", &self.kernel).finish_non_exhaustive()
    }
}

impl LazyStage {
    /// Disks of `manifests`, reading what the store holds (but `hidden`) and fetching
    /// the rest through `demand`; attached through the kernel when `kernel`.
    pub(crate) fn new(
        store: Arc<Store>,
        manifests: impl IntoIterator<Item = Arc<Manifest>>,
        demand: Demand,
        hidden: HashSet<ChunkId>,
        kernel: bool,
    ) -> Self {
        LazyStage {
            store,
            manifests: manifests.into_iter().map(|m| (m.id(), m)).collect(),
            demand,
            hidden: Arc::new(hidden),
            kernel,
            made: Mutex::default(),
        }
    }

    /// Every disk made so far.
    pub(crate) fn disks(&self) -> Vec<Arc<LazyDisk>> {
        self.made.lock().expect("made lock").iter().map(|(_, d)| Arc::clone(&d.disk)).collect()
    }

    /// Waits until every disk served through the kernel can have a domain made on it
    /// (its map active). Call it once the stage fetches: activating a map may read the
    /// disk (the kernel's partition scan), and a read of a chunk the host lacks waits
    /// for the stage.
    pub(crate) async fn activated(&self) -> Result<(), ControlError> {
        let devices: Vec<_> =
            self.made.lock().expect("made lock").iter().filter_map(|(_, d)| d.kernel()).collect();
        tokio::task::spawn_blocking(move || {
            for (disk, device) in devices {
                device.lock().expect("kernel device lock").activated().map_err(|e| {
                    ControlError::Refused(format!("lazy disk {}: {e}", disk.path().display()))
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ControlError::thread("activating lazy disks", e))?
    }

    /// The disks made, by VM, to keep served.
    fn take(&self) -> Vec<(String, ServedDisk)> {
        std::mem::take(&mut *self.made.lock().expect("made lock"))
    }
}

impl LazyAttach for LazyStage {
    fn attach(
        &self,
        vm: &str,
        device: &str,
        manifest: ManifestId,
        copy: &Path,
    ) -> Result<PathBuf, LazyError> {
        let m = self.manifests.get(&manifest).ok_or_else(|| LazyError::Io {
            op: "stage",
            path: copy.to_owned(),
            error: std::io::Error::other(format!("manifest {manifest} is not in this stage")),
        })?;
        let label = format!("{vm}/{device}");
        let supply: Arc<dyn crate::lazy::disk::Supply> = Arc::new(self.demand.clone());
        let disk = Arc::new(
            LazyDisk::create(&label, m, copy, Arc::clone(&self.store), supply)?
                .with_hidden(Arc::clone(&self.hidden)),
        );
        // Served even when the host holds every chunk: the copy is then written while
        // the guest boots, not before (on the Xen lab, copying the whole image first
        // held the stage 139 s; docs/decisions.md, 84).
        let (served, target) = if self.kernel {
            let device = KernelDevice::attach(Arc::clone(&disk), Path::new("/dev"))?;
            let target = device.path().to_owned();
            (Served::Kernel(Arc::new(Mutex::new(device))), target)
        } else {
            let socket = copy.with_extension("nbd");
            let export = SocketExport::start(Arc::clone(&disk), &label, &socket)?;
            (Served::Socket(export), socket)
        };
        tracing::info!(disk = %label, target = %target.display(), "lazy disk served");
        self.made.lock().expect("made lock").push((vm.to_owned(), ServedDisk { disk, served }));
        Ok(target)
    }
}

/// The lazy disks of this host's VMs, served while their domains may read them.
#[derive(Debug, Default)]
pub(crate) struct LazyVms(Mutex<HashMap<String, Vec<ServedDisk>>>);

impl LazyVms {
    /// Keeps serving the disks `stage` made.
    pub(crate) fn keep(&self, stage: &LazyStage) {
        let mut vms = self.0.lock().expect("lazy VMs lock");
        for (vm, disk) in stage.take() {
            vms.entry(vm).or_default().push(disk);
        }
    }

    /// `vm`'s guest has answered (up, or never will be): what its lazy disks read
    /// until now is its boot. Returns what they did, and the reads that failed; `None`:
    /// it has none.
    pub(crate) fn answered(&self, vm: &str) -> Option<(LazyCounts, Vec<ReadFailure>)> {
        let vms = self.0.lock().expect("lazy VMs lock");
        let disks = vms.get(vm)?;
        for d in disks {
            d.disk.booted();
        }
        let counts = disks.iter().fold(LazyCounts::default(), |a, d| a + d.disk.counts());
        Some((counts, disks.iter().flat_map(|d| d.disk.failures()).collect()))
    }

    /// Hands every whole disk that reaches the hypervisor through the kernel over to
    /// its local copy: its domain then reads and writes the file without vwd. A disk
    /// that cannot be handed over (logged) goes on through vwd until its domain stops.
    pub(crate) async fn hand_over_whole(&self) {
        let devices: Vec<_> = {
            let vms = self.0.lock().expect("lazy VMs lock");
            vms.values()
                .flatten()
                .filter(|d| d.disk.is_whole())
                .filter_map(ServedDisk::kernel)
                .collect()
        };
        if devices.is_empty() {
            return;
        }
        // Blocking: the map waits for the NBD device's requests, served on the runtime.
        let done = tokio::task::spawn_blocking(move || {
            for (disk, device) in devices {
                let mut device = device.lock().expect("kernel device lock");
                match device.hand_over(disk.path()) {
                    Ok(true) => tracing::info!(
                        disk = ?disk, device = %device.path().display(),
                        "lazy disk handed over to its local copy: vwd is out of its data path"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        disk = ?disk, error = %e,
                        "lazy disk not handed over: its domain reads through vwd until it stops"
                    ),
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "handing lazy disks over failed");
        }
    }

    /// Stops serving `vms`' disks (their domains are gone; a later load reads the
    /// local copies).
    pub(crate) async fn release(&self, vms: Vec<String>) {
        let gone: Vec<ServedDisk> = {
            let mut all = self.0.lock().expect("lazy VMs lock");
            vms.iter().filter_map(|vm| all.remove(vm)).flatten().collect()
        };
        if gone.is_empty() {
            return;
        }
        // Stopping a kernel device blocks until it has disconnected.
        if let Err(e) = tokio::task::spawn_blocking(move || drop(gone)).await {
            tracing::error!(error = %e, "releasing lazy disks failed");
        }
        tracing::info!(vms = ?vms, "lazy disks released");
    }
}

/// How far the head has taken a lazy stage's deployment, as this host has heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Went {
    /// The stage answered; the head creates the domains (paused).
    Staged,
    /// The head starts the guests: it has created every domain of the deployment.
    Started,
    /// The head settles: every guest is up or given up on.
    Settled,
}

/// How often [`booted`] looks at the guests.
const BOOTED_POLL: Duration = Duration::from_secs(1);

/// Waits until the head starts the guests (`went`), at most `at_most`: a lazy stage
/// under `[xen] lazy_fetch = "after-create"` waits so before its background fetch
/// (docs/decisions.md, 89).
pub(crate) async fn started(went: &mut watch::Receiver<Went>, at_most: Duration) {
    // Reached, or the stage's record is gone (nobody will tell it more).
    if tokio::time::timeout(at_most, went.wait_for(|w| *w >= Went::Started)).await.is_err() {
        tracing::info!(
            after_s = at_most.as_secs(),
            "the head has not started the guests: fetching all the same"
        );
    }
}

/// Waits until a lazy stage may write its images and its disks' copies from the store
/// (and hash them): once the head settles (`went`: every guest of the deployment up or
/// given up on), or every guest here has answered (`answered`, looked at every
/// [`BOOTED_POLL`]), or `at_most` has passed (the head waits no longer for its
/// guests). That work reads and writes whole images; it waits so as not to compete
/// with the boots for the host's disk and CPU (docs/decisions.md, 87).
pub(crate) async fn booted(
    went: &mut watch::Receiver<Went>,
    answered: impl Fn() -> bool,
    at_most: Duration,
) {
    let polled = async {
        while !answered() {
            tokio::time::sleep(BOOTED_POLL).await;
        }
    };
    tokio::select! {
        // Settled, or the stage's record is gone (nobody will settle it).
        _ = went.wait_for(|w| *w == Went::Settled) => {}
        () = polled => {}
        () = tokio::time::sleep(at_most) => {
            tracing::info!(after_s = at_most.as_secs(), "guests not all up: writing the images all the same");
        }
    }
}

/// The rest of a lazy stage, fetching after the host answered the head.
#[derive(Debug)]
struct Rest {
    task: tokio::task::JoinHandle<Result<StageReport, ControlError>>,
    deployment: String,
    /// Tells the task how far the head has come ([`started`], [`booted`]).
    went: watch::Sender<Went>,
    /// The disks of the images that came without a trace.
    first_boots: Vec<Arc<LazyDisk>>,
}

/// The stages still fetching after answering the head (lazy), by stage.
#[derive(Debug, Default)]
pub(crate) struct Settling(Mutex<HashMap<String, Rest>>);

impl Settling {
    /// Keeps `task`, the rest of `stage` (of `deployment`), the sender that tells it
    /// how far the head has come, and the disks whose reads are the first boot of
    /// their images.
    pub(crate) fn insert(
        &self,
        stage: &str,
        deployment: &str,
        task: tokio::task::JoinHandle<Result<StageReport, ControlError>>,
        went: watch::Sender<Went>,
        first_boots: Vec<Arc<LazyDisk>>,
    ) {
        let rest = Rest { task, deployment: deployment.to_owned(), went, first_boots };
        self.0.lock().expect("settling lock").insert(stage.to_owned(), rest);
    }

    /// The head has started `deployment`'s guests.
    pub(crate) fn started(&self, deployment: &str) {
        for rest in self.0.lock().expect("settling lock").values() {
            if rest.deployment == deployment {
                rest.went.send_if_modified(|w| {
                    let earlier = *w < Went::Started;
                    *w = (*w).max(Went::Started);
                    earlier
                });
            }
        }
    }

    /// Waits for the rest of `stage` and returns its report, with the boot trace of
    /// each untraced image: what the first of its disks whose guest was seen up read
    /// until then (the head settles after its guests were seen up or given up on; a
    /// guest never seen up, whose domain may not even have loaded, gives none).
    pub(crate) async fn settle(&self, stage: &str) -> Result<StageReport, ControlError> {
        let rest = self.0.lock().expect("settling lock").remove(stage);
        let Some(Rest { task, went, first_boots, .. }) = rest else {
            return Err(ControlError::NoStage { stage: stage.to_owned() });
        };
        went.send_replace(Went::Settled);
        let mut report = task.await.map_err(|e| ControlError::thread("a lazy stage", e))??;
        for d in first_boots.iter().filter(|d| d.seen_up()) {
            if !report.traces.iter().any(|(m, _)| *m == d.manifest()) {
                report.traces.push((d.manifest(), d.boot_trace()));
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::time::Instant;

    /// How long [`booted`] waits with `answered()` true after `up` (if given) and the
    /// head settling after `settle` (if given; the sender dropped at once if `None`
    /// and `drop_sender`), at most a minute.
    async fn waited(up: Option<Duration>, settle: Option<Duration>, drop_sender: bool) -> Duration {
        let (tx, mut rx) = watch::channel(Went::Staged);
        let flag = Arc::new(AtomicBool::new(false));
        if let Some(after) = up {
            let flag = Arc::clone(&flag);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                flag.store(true, Ordering::SeqCst);
            });
        }
        match settle {
            Some(after) => {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    tx.send_replace(Went::Settled);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
            None if drop_sender => drop(tx),
            None => std::mem::forget(tx),
        }
        let began = Instant::now();
        booted(&mut rx, || flag.load(Ordering::SeqCst), Duration::from_secs(60)).await;
        began.elapsed()
    }

    /// The images are written once the head settles, or every guest here has answered,
    /// or the head can wait no longer: whichever comes first, and never before.
    #[tokio::test(start_paused = true)]
    async fn a_lazy_stage_writes_its_images_once_its_guests_have_booted() {
        let s = Duration::from_secs;
        let near = |got: Duration, want: Duration| {
            assert!(got >= want && got <= want + BOOTED_POLL, "waited {got:?}, not {want:?}");
        };
        near(waited(None, Some(s(7)), false).await, s(7));
        near(waited(Some(s(5)), Some(s(30)), false).await, s(5));
        near(waited(Some(s(40)), Some(s(20)), false).await, s(20));
        // Nobody will settle (the stage's record is gone): at once.
        near(waited(None, None, true).await, s(0));
        // The guests never answer and the head never settles: at most the while.
        near(waited(None, None, false).await, s(60));
    }

    /// A stage that fetches after create waits for the head to start the guests (or
    /// settle), or for the head no longer.
    #[tokio::test(start_paused = true)]
    async fn an_after_create_stage_fetches_once_the_guests_start() {
        for (went, after, want) in
            [(Went::Started, 5, 5), (Went::Settled, 8, 8), (Went::Staged, 1, 60)]
        {
            let (tx, mut rx) = watch::channel(Went::Staged);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(after)).await;
                tx.send_replace(went);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
            let began = Instant::now();
            started(&mut rx, Duration::from_secs(60)).await;
            assert_eq!(began.elapsed().as_secs(), want, "{went:?} after {after} s");
        }
    }
}
