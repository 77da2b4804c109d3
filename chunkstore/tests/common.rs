//! Helpers shared by the chunk store's integration tests.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

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

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
