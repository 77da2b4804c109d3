//! The hand-over of a running lazy disk to its local copy: the domain reads a
//! device-mapper device (`/dev/dm-N`), a linear map onto the lazy disk's NBD device
//! while the image arrives; once the copy is whole, the map is swapped, suspended and
//! resumed in place, onto a loop device over the copy. From then on the domain's
//! reads and writes go to the local file through the kernel alone: vwd is out of the
//! data path, and the NBD device is disconnected. This is how LVM moves a mounted
//! volume (`pvmove`); decision 85 in docs/decisions.md.
//!
//! The device-mapper and loop ioctls are made here (no `dmsetup` or `losetup` is
//! run): `/dev/mapper/control` and `/dev/loop-control` must exist (the `dm_mod` and
//! `loop` modules, which opening them loads on most systems; the package's
//! modules-load.d names them).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use super::LazyError;

/// `struct dm_ioctl`'s size (linux/dm-ioctl.h).
const DM_HEADER: usize = 312;
/// `struct dm_target_spec`'s size.
const DM_TARGET: usize = 40;
/// The interface version asked for (4.0.0: any kernel of the last twenty years).
const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_NAME_LEN: usize = 128;
const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// Remove the device once its last user closes it (a domain still holding it).
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_ioctl(nr: u32) -> libc::c_ulong {
    ((3u32 << 30) | ((DM_HEADER as u32) << 16) | (0xfd << 8) | nr) as libc::c_ulong
}
const DM_DEV_CREATE: libc::c_ulong = dm_ioctl(3);
const DM_DEV_REMOVE: libc::c_ulong = dm_ioctl(4);
const DM_DEV_SUSPEND: libc::c_ulong = dm_ioctl(6);
const DM_TABLE_LOAD: libc::c_ulong = dm_ioctl(9);

const LOOP_SET_FD: libc::c_ulong = 0x4c00;
const LOOP_CLR_FD: libc::c_ulong = 0x4c01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4c04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4c82;
/// `struct loop_info64`'s size, and where its `lo_flags` is.
const LOOP_INFO: usize = 232;
const LOOP_INFO_FLAGS: usize = 52;
/// The loop device goes once its last user (the map) closes it.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Tries at a free loop device (another process may take the one offered first).
const LOOP_TRIES: usize = 8;

/// A device-mapper linear device over one block device, swapped in place onto another
/// ([`Mapping::hand_over`]); removed when dropped (once its last user has closed it).
#[derive(Debug)]
pub struct Mapping {
    name: String,
    path: PathBuf,
    sectors: u64,
}

impl Mapping {
    /// Makes a new device of `sectors` 512-byte sectors named `name` (`vw-PID-nbd0`),
    /// with no table yet: [`Mapping::activate`] maps it. A stale device of that name (a
    /// vwd of the same pid that died) is removed first.
    pub fn create(name: &str, sectors: u64, dev: &Path) -> Result<Self, LazyError> {
        let fail = |op| LazyError::kernel(Path::new(CONTROL), op);
        let control = control()?;
        let mut created = call(&control, DM_DEV_CREATE, name, 0, &[]);
        if matches!(&created, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) {
            tracing::warn!(map = name, "removing a device-mapper device left by an earlier vwd");
            call(&control, DM_DEV_REMOVE, name, 0, &[]).map_err(fail("remove a stale map"))?;
            created = call(&control, DM_DEV_CREATE, name, 0, &[]);
        }
        let header = created.map_err(fail("create a device-mapper device"))?;
        let devt = u64::from_ne_bytes(header[40..48].try_into().expect("8 bytes"));
        // The kernel's new_encode_dev.
        let minor = (devt & 0xff) | ((devt >> 12) & 0xfff00);
        Ok(Mapping { name: name.to_owned(), path: dev.join(format!("dm-{minor}")), sectors })
    }

    /// Maps the device linearly onto `under` (a block device) and activates it: its
    /// node (`path`) appears. Blocks while the kernel opens `under`, which may read it
    /// (a partition scan): a lazy disk's device must be served, and its reads of
    /// missing chunks answerable, meanwhile.
    pub fn activate(&self, under: &Path) -> Result<(), LazyError> {
        let fail = |op| LazyError::kernel(under, op);
        let control = control()?;
        self.load(&control, under).map_err(fail("map"))?;
        call(&control, DM_DEV_SUSPEND, &self.name, 0, &[]).map_err(fail("activate the map"))?;
        Ok(())
    }

    /// The device a domain names (`/dev/dm-N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maps the device onto `copy` (a file of the same size) instead, through a loop
    /// device: I/O in progress on the old device is finished first (the map is
    /// suspended), none is lost or reordered. Blocks until done. On failure the map
    /// still reads the old device.
    pub fn hand_over(&self, copy: &Path) -> Result<(), LazyError> {
        let fail = |op| LazyError::kernel(&self.path, op);
        let (looped, _held) = attach_loop(copy)?;
        let control = control()?;
        call(&control, DM_DEV_SUSPEND, &self.name, DM_SUSPEND_FLAG, &[])
            .map_err(fail("suspend the map"))?;
        let loaded = self.load(&control, &looped);
        // Resumed either way: onto the copy if the new table loaded, else as it was.
        let resumed = call(&control, DM_DEV_SUSPEND, &self.name, 0, &[]);
        loaded.map_err(fail("map onto the local copy"))?;
        resumed.map_err(fail("resume the map"))?;
        Ok(())
    }

    /// Loads a table mapping the whole device linearly onto `under`.
    fn load(&self, control: &File, under: &Path) -> std::io::Result<()> {
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(under)?);
        call(control, DM_TABLE_LOAD, &self.name, 0, &linear(self.sectors, rdev)).map(drop)
    }
}

/// A table of one `linear` target: `sectors` sectors of device `rdev` from its start
/// (a `struct dm_target_spec`, then its parameters, NUL-ended, padded to 8 bytes).
fn linear(sectors: u64, rdev: libc::dev_t) -> Vec<u8> {
    let params = format!("{}:{} 0\0", libc::major(rdev), libc::minor(rdev));
    let padded = (DM_TARGET + params.len()).next_multiple_of(8);
    let mut target = vec![0u8; padded];
    target[0..8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
    target[8..16].copy_from_slice(&sectors.to_ne_bytes()); // length
    target[20..24].copy_from_slice(&(padded as u32).to_ne_bytes()); // next
    target[24..30].copy_from_slice(b"linear");
    target[DM_TARGET..DM_TARGET + params.len()].copy_from_slice(params.as_bytes());
    target
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let removed = control().map_err(|e| e.to_string()).and_then(|c| {
            call(&c, DM_DEV_REMOVE, &self.name, DM_DEFERRED_REMOVE, &[]).map_err(|e| e.to_string())
        });
        if let Err(e) = removed {
            tracing::warn!(map = %self.name, error = %e, "device-mapper device not removed");
        }
    }
}

/// Device-mapper's control device, which every ioctl goes through.
const CONTROL: &str = "/dev/mapper/control";

fn control() -> Result<File, LazyError> {
    let path = Path::new(CONTROL);
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(LazyError::kernel(path, "open (is the dm_mod module loaded?)"))
}

/// One device-mapper ioctl on device `name` with `flags` and `data` after the header.
/// Returns the header the kernel wrote back.
fn call(
    control: &File,
    request: libc::c_ulong,
    name: &str,
    flags: u32,
    data: &[u8],
) -> std::io::Result<[u8; DM_HEADER]> {
    let mut buf = dm_request(name, flags, data)?;
    // SAFETY: `buf` is a `struct dm_ioctl` followed by its data, `data_size` bytes long
    // as its header says; the kernel reads and writes within that size only.
    let r = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut header = [0u8; DM_HEADER];
    header.copy_from_slice(&buf[..DM_HEADER]);
    Ok(header)
}

/// A `struct dm_ioctl` for device `name` with `flags`, followed by `data`
/// (`target_count` is 1 when there is data: a table of one target).
fn dm_request(name: &str, flags: u32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains(['\0', '/']) {
        return Err(std::io::Error::other(format!("bad device-mapper name {name:?}")));
    }
    let mut buf = vec![0u8; DM_HEADER + data.len()];
    for (i, v) in DM_VERSION.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let size = u32::try_from(buf.len()).map_err(std::io::Error::other)?;
    buf[12..16].copy_from_slice(&size.to_ne_bytes()); // data_size
    buf[16..20].copy_from_slice(&(DM_HEADER as u32).to_ne_bytes()); // data_start
    buf[20..24].copy_from_slice(&u32::from(!data.is_empty()).to_ne_bytes()); // target_count
    buf[28..32].copy_from_slice(&flags.to_ne_bytes());
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    buf[DM_HEADER..].copy_from_slice(data);
    Ok(buf)
}

/// Attaches `file` to a free loop device that goes once its last user closes it;
/// returns its path and the open device (keep it until another user has opened it).
fn attach_loop(file: &Path) -> Result<(PathBuf, File), LazyError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(|error| LazyError::Io { op: "open", path: file.to_owned(), error })?;
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctl_path)
        .map_err(LazyError::kernel(ctl_path, "open (is the loop module loaded?)"))?;
    let mut last = None;
    for _ in 0..LOOP_TRIES {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(LazyError::kernel(ctl_path, "find a free loop device")(
                std::io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(LazyError::kernel(&path, "open"))?;
        // SAFETY: LOOP_SET_FD takes an open file descriptor, which `backing` keeps open.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                last = Some(e); // taken meanwhile: another
                continue;
            }
            return Err(LazyError::kernel(&path, "attach the copy")(e));
        }
        let mut info = [0u8; LOOP_INFO];
        info[LOOP_INFO_FLAGS..LOOP_INFO_FLAGS + 4]
            .copy_from_slice(&LO_FLAGS_AUTOCLEAR.to_ne_bytes());
        // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, `LOOP_INFO` bytes.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64 as _, info.as_ptr()) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: LOOP_CLR_FD takes no argument.
            unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD as _) };
            return Err(LazyError::kernel(&path, "set the loop device to clear itself")(e));
        }
        return Ok((path, device));
    }
    Err(LazyError::kernel(ctl_path, "attach the copy")(
        last.unwrap_or_else(|| std::io::Error::other("no free loop device")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    /// The layouts linux/dm-ioctl.h gives: the kernel reads these bytes as they are.
    #[test]
    fn a_table_load_is_laid_out_as_the_kernel_reads_it() {
        let table = linear(1_073_152, libc::makedev(43, 0));
        assert_eq!(&table[40..], b"43:0 0\0\0"); // NUL-ended, padded to 8
        assert_eq!(table.len(), 48);
        assert_eq!(u32_at(&table, 20) as usize, table.len());
        assert_eq!(u64::from_ne_bytes(table[8..16].try_into().expect("8 bytes")), 1_073_152);
        assert_eq!(&table[24..31], b"linear\0");

        let req = dm_request("vw-1-nbd0", DM_SUSPEND_FLAG, &table).expect("a good name");
        assert_eq!(req.len(), DM_HEADER + table.len());
        assert_eq!([u32_at(&req, 0), u32_at(&req, 4), u32_at(&req, 8)], DM_VERSION);
        assert_eq!(u32_at(&req, 12) as usize, req.len());
        assert_eq!(u32_at(&req, 16) as usize, DM_HEADER);
        assert_eq!(u32_at(&req, 20), 1);
        assert_eq!(u32_at(&req, 28), DM_SUSPEND_FLAG);
        assert_eq!(&req[48..58], b"vw-1-nbd0\0");
        assert_eq!(&req[DM_HEADER..], &table[..]);
        // No table, no target.
        assert_eq!(u32_at(&dm_request("vw", 0, &[]).expect("a good name"), 20), 0);
        // _IOWR(0xfd, 3, struct dm_ioctl), as dmsetup issues it.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
    }

    #[test]
    fn a_name_the_kernel_would_refuse_or_cut_is_refused() {
        for bad in ["", "a/b", "nul\0", &"x".repeat(DM_NAME_LEN)] {
            assert!(dm_request(bad, 0, &[]).is_err(), "{bad:?}");
        }
    }
}
