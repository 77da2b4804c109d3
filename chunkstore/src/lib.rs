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

pub mod cache;
pub mod chunker;
mod clone;
mod db;
mod error;
mod export;
mod gc;
mod id;
mod import;
mod manifest;
mod name;
mod pack;
mod record;
mod store;
mod verify;

pub use clone::{clone_image, CloneMethod};
pub use error::Error;
pub use export::ExportReport;
pub use gc::{CacheStats, GcReport};
pub use id::{ChunkId, ManifestId};
pub use import::ImportReport;
pub use manifest::{ChunkRef, Manifest};
pub use name::{ImageName, ImageRef};
pub use store::{Diff, ImageInfo, Missing, PinReason, Store};
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
