//! Lazy disks (issue 19): a VM boots while its image's chunks are still arriving.
//!
//! Each lazy partition is a [`disk::LazyDisk`]: the VM's own copy, filled as chunks
//! arrive, that fetches at once whatever the guest reads before the stage has brought
//! it. It is served to the hypervisor over NBD ([`nbd`]): on a Xen host through the
//! kernel's `nbd` driver ([`kernel`]), mapped through device-mapper ([`mapper`]) so
//! the running domain is handed over to its local copy once that is whole; elsewhere on a Unix socket ([`export`]), which the simulated driver's guest and the
//! tests read with [`nbd::Client`]. Why NBD and what it costs per read: decision 81 in
//! docs/decisions.md.

pub mod disk;
pub mod export;
pub mod kernel;
pub mod mapper;
pub mod nbd;

use std::path::PathBuf;

use vw_chunkstore::ChunkId;

/// Why a lazy disk could not be made, served or completed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// A file operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        error: std::io::Error,
    },
    /// A chunk's bytes are not as long as the image says.
    #[error("chunk {chunk:#} is {len} bytes where the image has {expected}")]
    ChunkLength {
        /// The chunk.
        chunk: ChunkId,
        /// Its bytes.
        len: usize,
        /// What the manifest says.
        expected: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vw_chunkstore::Error),
    /// The kernel refused (its NBD driver, device-mapper, a loop device).
    #[error("{device}: {op}: {error}")]
    Kernel {
        /// The device.
        device: PathBuf,
        /// The step.
        op: &'static str,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// No NBD device is free, or the driver is not loaded.
    #[error("no free NBD device: {0}")]
    NoDevice(String),
    /// The image cannot be a block device.
    #[error("image of {size} bytes: a lazy disk must be a whole number of 512-byte sectors")]
    Unaligned {
        /// Its size.
        size: u64,
    },
}

impl LazyError {
    /// A kernel error on `device` at step `op`, for `map_err`.
    pub fn kernel(
        device: &std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let device = device.to_owned();
        move |error| LazyError::Kernel { device, op, error }
    }
}
