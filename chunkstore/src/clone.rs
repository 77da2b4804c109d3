//! Cloning a staged image for a co-located VM.
//!
//! A reflink (`FICLONE`) shares extents where the file system supports it (XFS, btrfs).
//! Elsewhere (ext4 has no reflink) the copy is sparse: only data extents, found with
//! `SEEK_DATA`/`SEEK_HOLE`, are copied with `copy_file_range`, so holes stay holes
//! (`copy_file_range` over a hole on ext4 would write zeros). Like export, the clone is
//! written to a temporary name, synced and renamed.

use std::fs::File;
use std::path::Path;

use rustix::fs::{copy_file_range, seek, SeekFrom};
use rustix::io::Errno;
use serde::Serialize;

use crate::export::create_temp;
use crate::{pack, Error};

/// How a clone was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CloneMethod {
    /// Extents shared with the source (copy-on-write).
    Reflink,
    /// Data extents copied, holes kept.
    SparseCopy,
}

/// Clones `src` to `dst` (which must not exist).
pub fn clone_image(src: &Path, dst: &Path) -> Result<CloneMethod, Error> {
    let from = File::open(src).map_err(|e| Error::io("open", src, e))?;
    let (tmp, to) = create_temp(dst)?;
    let result = copy(&from, &to, src, &tmp).and_then(|method| {
        to.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        std::fs::hard_link(&tmp, dst).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::OutputExists { path: dst.to_owned() },
            _ => Error::io("create", dst, e),
        })?;
        std::fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        pack::sync_dir(
            dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
        )?;
        Ok(method)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn copy(from: &File, to: &File, src: &Path, dst: &Path) -> Result<CloneMethod, Error> {
    match rustix::fs::ioctl_ficlone(to, from) {
        Ok(()) => return Ok(CloneMethod::Reflink),
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {}
        Err(e) => return Err(Error::io("clone", dst, e.into())),
    }
    let len = from.metadata().map_err(|e| Error::io("stat", src, e))?.len();
    to.set_len(len).map_err(|e| Error::io("size", dst, e))?;
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(Error::io("seek", src, e.into())),
        };
        let hole =
            seek(from, SeekFrom::Hole(data)).map_err(|e| Error::io("seek", src, e.into()))?;
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = usize::try_from(hole - off_in).unwrap_or(usize::MAX).min(1 << 30);
            let n = copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)
                .map_err(|e| Error::io("copy", dst, e.into()))?;
            if n == 0 {
                return Err(Error::io("copy", src, std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        pos = hole;
    }
    Ok(CloneMethod::SparseCopy)
}
