//! `vw-chunkstore`: VM partition images as content-defined chunks, stored once and
//! shared between images, rebuilt byte-exact.
//!
//! - [`chunker`]: FastCDC v2020 cut points over large buffers; parameters recorded in
//!   every manifest.
//! - [`Manifest`]: an image as an ordered `(ChunkId, len)` list plus length and
//!   whole-image BLAKE3, in a canonical versioned encoding named by [`ManifestId`].
//! - [`Store`]: RocksDB index + append-only pack files; import (pipelined), export
//!   (holes, verified, atomic), missing sets, verify, names, pins, and the cache
//!   ([`cache`] decides, the store applies).
//! - [`clone_image`]: per-VM copies by reflink or sparse copy.
//!
//! The `store` feature (default) brings RocksDB and everything that touches disk
//! through it; without it the crate is the formats alone (used by the fuzz targets).

pub mod cache;
pub mod chunker;
mod error;
mod id;
mod manifest;
mod name;
pub mod testdata;
pub mod trace;
pub mod vo;

#[cfg(feature = "store")]
mod assemble;
#[cfg(feature = "store")]
mod clone;
#[cfg(feature = "store")]
mod db;
#[cfg(feature = "store")]
mod export;
#[cfg(feature = "store")]
mod gc;
#[cfg(all(test, feature = "store"))]
mod golden;
#[cfg(feature = "store")]
mod held;
#[cfg(feature = "store")]
mod import;
#[cfg(feature = "store")]
mod pack;
#[cfg(feature = "store")]
mod receive;
#[cfg(feature = "store")]
mod record;
#[cfg(feature = "store")]
mod records;
#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
mod verify;

pub use error::Error;
pub use id::{ChunkId, ManifestId};
pub use manifest::{
    ChunkRef, Layout, Manifest, Placed, MAX_CHUNK_LEN, MAX_ENCODED_LEN as MAX_MANIFEST_LEN,
};
pub use name::{ImageName, ImageRef};
pub use trace::BootTrace;
pub use vo::{Seal, Visibility, VoKey, VoPublic};

#[cfg(feature = "store")]
pub use assemble::Assembly;
#[cfg(feature = "store")]
pub use clone::{clone_image, CloneMethod};
#[cfg(feature = "store")]
pub use export::{ExportReport, ExportTarget};
#[cfg(feature = "store")]
pub use gc::{CacheStats, GcReport};
#[cfg(feature = "store")]
pub use import::{manifest_of_file, ChunkCounts, ImageFile, ImportReport};
#[cfg(feature = "store")]
pub use receive::Receiving;
#[cfg(feature = "store")]
pub use records::{RecordBatch, Records};
#[cfg(feature = "store")]
pub use store::{Diff, ImageInfo, Missing, PinReason, Store};
#[cfg(feature = "store")]
pub use verify::VerifyReport;

/// Progress of a long operation (import, export, verify), in bytes. Implementations must
/// be cheap: `advance` is called once per block.
pub trait Progress: Sync {
    /// The operation will process `total` bytes.
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// No progress reporting.
impl Progress for () {}

/// Milliseconds since the Unix epoch: how the store stamps its records, and the
/// layers above theirs.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
