//! Helpers shared by the chunk store's integration tests.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use vw_chunkstore::testdata::noise;

/// Writes a sparse image of `size` bytes with noise extents `(offset, len, seed)`.
pub fn write_image(path: &Path, size: u64, extents: &[(u64, usize, u64)]) {
    let mut f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for &(offset, len, seed) in extents {
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(&noise(len, seed)).expect("write");
    }
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read back")
}

/// A file system mounted for a test (needs root), unmounted on drop before its mount
/// point and backing file are removed.
#[derive(Debug)]
pub struct Mounted {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    _backing: Option<tempfile::TempDir>,
}

impl Mounted {
    /// A tmpfs of `size` (e.g. "4m").
    pub fn tmpfs(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], dir.path());
        Self { path: dir.path().to_owned(), _dir: dir, _backing: None }
    }

    /// An XFS with reflink support on a loop device (needs xfsprogs).
    pub fn xfs_with_reflink() -> Self {
        let backing = tempfile::tempdir().expect("tempdir");
        let image = backing.path().join("xfs.img");
        File::create(&image).and_then(|f| f.set_len(320 << 20)).expect("backing file");
        let ok = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image)
            .status()
            .expect("run mkfs.xfs (scripts/install-deps.sh installs xfsprogs)")
            .success();
        assert!(ok, "mkfs.xfs {}", image.display());
        let dir = tempfile::tempdir().expect("tempdir");
        mount(&["-o", "loop", image.to_str().expect("utf8 path")], dir.path());
        Self { path: dir.path().to_owned(), _dir: dir, _backing: Some(backing) }
    }
}

fn mount(args: &[&str], at: &Path) {
    let ok = Command::new("mount").args(args).arg(at).status().expect("run mount").success();
    assert!(ok, "mount {args:?} at {}", at.display());
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
