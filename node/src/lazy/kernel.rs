//! A lazy disk as a kernel block device: Linux's `nbd` driver is handed one end of a
//! socket pair already in transmission (the ioctls `nbd-client` uses), and vwd serves
//! the other end. A device-mapper device over it ([`Mapping`]) is what the domain's
//! config names (`/dev/dm-N`), which Xen's block backend reads like any other; once
//! the copy is whole, [`KernelDevice::hand_over`] maps it onto the copy and the NBD
//! device is disconnected. Without device-mapper, the domain reads `/dev/nbdN` and
//! goes through vwd until it stops.
//!
//! The driver must be loaded (`modprobe nbd`; the Xen lab's dom0 loads it at boot). A
//! device is free when its `/sys/block/nbdN/pid` is absent; attaching takes the first
//! free one. The ioctl that runs the device blocks until it is disconnected, so each
//! device has a thread of its own.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::LazyDisk;
use super::mapper::Mapping;
use super::nbd::{self, BlockDevice as _};
use super::LazyError;

// The driver's ioctls: _IO(0xab, n).
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// The block size the device is given.
const BLOCK: u64 = 512;
/// Seconds the kernel waits for a reply before it fails the request: longer than a
/// chunk fetch may take from every holder in turn (each within the chunk protocol's
/// quiet time), so a guest read fails with vw's I/O error, not the kernel's timeout.
const REQUEST_TIMEOUT_S: libc::c_ulong = 600;
/// How long a disconnect may take before the device's socket is taken from it.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most NBD devices looked at.
const MAX_DEVICES: u32 = 256;

/// A lazy disk attached as `/dev/nbdN`, mapped as `/dev/dm-N` when device-mapper is
/// there; dropping it removes the map and disconnects the NBD device (waiting for it
/// to stop, bounded: see `stop`).
#[derive(Debug)]
pub struct KernelDevice {
    device: PathBuf,
    control: File,
    /// The device's thread, until it is stopped.
    runner: Option<std::thread::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    /// The map the domain reads, over the NBD device until handed over.
    mapping: Option<Arc<Mapping>>,
    /// The map's activation, under way on a thread of its own until waited for.
    activation: Option<std::thread::JoinHandle<Result<(), LazyError>>>,
}

impl KernelDevice {
    /// Attaches `disk` to the first free NBD device under `dev` (`/dev`), read-write.
    /// Must be called inside a tokio runtime (the disk is served on it).
    pub fn attach(disk: Arc<LazyDisk>, dev: &Path) -> Result<Self, LazyError> {
        let size = disk.size();
        if !size.is_multiple_of(BLOCK) {
            return Err(LazyError::Unaligned { size });
        }
        let (device, control) = free_device(dev)?;
        let kernel = |op| LazyError::kernel(&device, op);
        let (ours, theirs) = UnixStream::pair().map_err(kernel("socketpair"))?;
        let fd = control.as_raw_fd();
        ioctl(fd, NBD_CLEAR_SOCK, 0).map_err(kernel("clear socket"))?;
        ioctl(fd, NBD_SET_BLKSIZE, BLOCK as libc::c_ulong).map_err(kernel("set block size"))?;
        ioctl(fd, NBD_SET_SIZE_BLOCKS, (size / BLOCK) as libc::c_ulong)
            .map_err(kernel("set size"))?;
        ioctl(fd, NBD_SET_TIMEOUT, REQUEST_TIMEOUT_S).map_err(kernel("set timeout"))?;
        ioctl(fd, NBD_SET_FLAGS, libc::c_ulong::from(nbd::TRANSMISSION_FLAGS))
            .map_err(kernel("set flags"))?;
        ioctl(fd, NBD_SET_SOCK, theirs.as_raw_fd() as libc::c_ulong)
            .map_err(kernel("set socket"))?;
        ours.set_nonblocking(true).map_err(kernel("socket"))?;
        let ours = tokio::net::UnixStream::from_std(ours).map_err(kernel("socket"))?;
        let label = device.display().to_string();
        let server = tokio::spawn(async move {
            let mut ours = ours;
            match nbd::serve(&mut ours, &*disk).await {
                Ok(s) => {
                    tracing::info!(device = %label, reads = s.reads, writes = s.writes, "NBD device disconnected")
                }
                Err(e) => {
                    tracing::warn!(device = %label, error = %e, "NBD device's connection ended")
                }
            }
        });
        let runner_fd = control.try_clone().map_err(kernel("open"))?;
        let runner = std::thread::Builder::new()
            .name("vw-nbd".into())
            .spawn(move || {
                // The kernel holds its end; ours goes when the device stops.
                let _theirs = theirs;
                let fd = runner_fd.as_raw_fd();
                if let Err(e) = ioctl(fd, NBD_DO_IT, 0) {
                    tracing::debug!(error = %e, "NBD device stopped");
                }
                let _ = ioctl(fd, NBD_CLEAR_QUE, 0);
                let _ = ioctl(fd, NBD_CLEAR_SOCK, 0);
            })
            .map_err(kernel("start its thread"))?;
        let mut attached = KernelDevice {
            device,
            control,
            runner: Some(runner),
            server,
            mapping: None,
            activation: None,
        };
        // This process's: one left by an earlier vwd may still be held by its domain.
        let name = format!(
            "vw-{}-{}",
            std::process::id(),
            attached.device.file_name().unwrap_or_default().to_string_lossy()
        );
        match Mapping::create(&name, size / BLOCK, dev) {
            Ok(m) => {
                // Activating opens the NBD device, and the kernel may read it then,
                // before the stage can fetch: on a thread, waited for once it can
                // (`KernelDevice::activated`).
                let (m, under) = (Arc::new(m), attached.device.clone());
                let activating = Arc::clone(&m);
                let thread = std::thread::Builder::new()
                    .name("vw-dm".into())
                    .spawn(move || activating.activate(&under))
                    .map_err(LazyError::kernel(&attached.device, "start its thread"))?;
                attached.mapping = Some(m);
                attached.activation = Some(thread);
            }
            Err(e) => tracing::warn!(
                device = %attached.device.display(), error = %e,
                "no device-mapper: the domain reads the NBD device, through vwd, until it stops"
            ),
        }
        Ok(attached)
    }

    /// The block device the domain reads (`/dev/dm-N`, or `/dev/nbdN` unmapped).
    pub fn path(&self) -> &Path {
        self.mapping.as_deref().map_or(&self.device, Mapping::path)
    }

    /// Waits until the map is active (its node exists): call it once the disk's reads
    /// of missing chunks can be answered (the stage fetches), before a domain is made
    /// on it. Blocks.
    pub fn activated(&mut self) -> Result<(), LazyError> {
        match self.activation.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(LazyError::kernel(&self.device, "activate the map")(
                std::io::Error::other("its thread panicked"),
            )),
        }
    }

    /// Maps the device onto `copy`, the disk's whole local copy, and disconnects the
    /// NBD device: the domain's I/O then goes to the file through the kernel alone.
    /// False if the device is not mapped (it goes on through vwd) or was handed over
    /// already. Blocks: call it off the async runtime (the NBD device's last requests
    /// are served on it).
    pub fn hand_over(&mut self, copy: &Path) -> Result<bool, LazyError> {
        self.activated()?;
        let Some(mapping) = self.mapping.clone().filter(|_| self.runner.is_some()) else {
            return Ok(false); // not mapped, or handed over already
        };
        mapping.hand_over(copy)?;
        self.stop();
        Ok(true)
    }

    /// Asks the device to disconnect (the kernel sends the server a disconnect once its
    /// requests are answered); if it has not stopped within [`STOP_WAIT`], stops
    /// serving and takes the socket from the kernel, which fails what is still queued.
    /// Blocks until the device's thread ends, or leaves it (logged) if even that
    /// does not stop it.
    fn stop(&mut self) {
        let Some(runner) = self.runner.take() else { return };
        let fd = self.control.as_raw_fd();
        let _ = ioctl(fd, NBD_DISCONNECT, 0);
        let stopped = |wait: std::time::Duration| {
            let until = std::time::Instant::now() + wait;
            while !runner.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            runner.is_finished()
        };
        if !stopped(STOP_WAIT) {
            tracing::warn!(device = %self.device.display(), "NBD device slow to disconnect: its socket taken");
            self.server.abort();
            let _ = ioctl(fd, NBD_CLEAR_SOCK, 0);
        }
        if stopped(STOP_WAIT) {
            let _ = runner.join();
            CLAIMED.lock().expect("claimed devices lock").retain(|d| *d != self.device);
        } else {
            // Still claimed: this process does not hand the device out again.
            tracing::error!(device = %self.device.display(), "NBD device did not stop; left attached");
        }
        self.server.abort();
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        // The map first: it holds the NBD device open.
        self.mapping.take();
        self.stop();
    }
}

/// The devices this process has attached: a device's `pid` appears only once its
/// thread runs, so two attaches at once must not both take it.
static CLAIMED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The first NBD device under `dev` that no process runs and this one has not
/// claimed, opened and claimed.
fn free_device(dev: &Path) -> Result<(PathBuf, File), LazyError> {
    let mut claimed = CLAIMED.lock().expect("claimed devices lock");
    let mut seen = 0;
    for n in 0..MAX_DEVICES {
        let device = dev.join(format!("nbd{n}"));
        if !device.exists() {
            break;
        }
        seen += 1;
        if claimed.contains(&device) || Path::new(&format!("/sys/block/nbd{n}/pid")).exists() {
            continue;
        }
        match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(f) => {
                claimed.push(device.clone());
                return Ok((device, f));
            }
            Err(e) => return Err(LazyError::kernel(&device, "open")(e)),
        }
    }
    Err(LazyError::NoDevice(if seen == 0 {
        format!("{} has no nbd devices: load the kernel's driver (modprobe nbd)", dev.display())
    } else {
        format!("all {seen} NBD devices under {} are in use", dev.display())
    }))
}

fn ioctl(fd: libc::c_int, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the nbd driver's ioctls take an integer argument (a size, a flag set, a
    // file descriptor we own and keep open) and no pointer; `fd` is an open file.
    let r = unsafe { libc::ioctl(fd, request as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
