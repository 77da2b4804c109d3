//! Helpers shared by the chunk store's integration tests.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift64); distinct seeds give distinct bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

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
