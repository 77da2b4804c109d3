//! The chunk store's one error type.

use std::io;
use std::path::PathBuf;

use crate::chunker::ChunkerParams;
use crate::{ChunkId, ImageName, ManifestId};

/// Everything the chunk store can fail with. Each variant names what failed and on what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image file does not exist.
    #[error("image file {path} does not exist")]
    FileNotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not a regular file.
    #[error("{path} is a {kind}, not a regular image file")]
    NotRegularFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead ("directory", "block device", ...).
        kind: &'static str,
    },
    /// The file changed size while it was being imported.
    #[error("{path} changed while it was being imported ({expected} bytes when opened, {read} read); import it again once nothing writes to it")]
    FileChanged {
        /// The image file.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
        /// Bytes read.
        read: u64,
    },
    /// An image is not the manifest its seal names.
    #[error("{path} is manifest {found}, but its seal is for manifest {sealed}: it is not the image the VO sealed (seal it again with `vw vo seal` on this very file)")]
    SealMismatch {
        /// The image file.
        path: PathBuf,
        /// The manifest the seal names.
        sealed: ManifestId,
        /// The manifest the file is.
        found: ManifestId,
    },
    /// An I/O operation failed.
    #[error("cannot {op} {path}: {error}")]
    Io {
        /// What was being done ("read", "write", "fsync", ...).
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error (part of the message, so not chained as a source).
        error: io::Error,
    },
    /// The output file exists and replacing it was not asked for.
    #[error(
        "{path} already exists; choose another path or replace it (`vw image export --force`)"
    )]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// The file system is full.
    #[error("no space left on the device while writing {path}; free space or choose another location (nothing was registered and no partial file is left)")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// Another process holds the store.
    #[error("store {dir} is in use by another process{}; wait for it or stop it", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    StoreLocked {
        /// The store directory.
        dir: PathBuf,
        /// The holder's pid, if it recorded one.
        holder: Option<u32>,
    },
    /// RocksDB failed.
    #[cfg(feature = "store")]
    #[error("store database {dir}: {error}")]
    Db {
        /// The database directory.
        dir: PathBuf,
        /// RocksDB's error (part of the message).
        error: rocksdb::Error,
    },
    /// A stored record could not be read back.
    #[error("stored {table} record {key} is unreadable: {reason}; run `vw image verify`")]
    BadRecord {
        /// The column family.
        table: &'static str,
        /// The record's key, printed.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The store was written by a newer build.
    #[error("store {dir} has format version {found}; this build reads version {supported}")]
    StoreVersion {
        /// The store directory.
        dir: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build supports.
        supported: u32,
    },
    /// A chunk's bytes do not hash to its id.
    #[error("chunk {id:#} is corrupt (pack {pack}, offset {offset}); re-import or re-fetch the images that use it")]
    CorruptChunk {
        /// The chunk.
        id: ChunkId,
        /// The pack file it lives in.
        pack: u32,
        /// Its offset there.
        offset: u64,
    },
    /// An image could not be rebuilt byte-exact.
    #[error("image {manifest} does not match its hash: corrupt chunks {}", list(chunks))]
    CorruptImage {
        /// The manifest.
        manifest: ManifestId,
        /// The chunks found corrupt.
        chunks: Vec<ChunkId>,
    },
    /// A chunk the operation needs is not in the store.
    #[error("chunk {id:#} is not in the store")]
    MissingChunk {
        /// The chunk.
        id: ChunkId,
    },
    /// Received bytes do not hash to the chunk id they came with.
    #[error("received chunk {id:#} ({len} bytes) does not match its id; the sender is faulty or malicious")]
    ChunkMismatch {
        /// The id it was sent as.
        id: ChunkId,
        /// How many bytes came.
        len: usize,
    },
    /// A manifest cannot be recorded while chunks it lists are missing.
    #[error("manifest {manifest:#} lacks {} chunks ({}); fetch them first", missing.len(), list(&missing.iter().map(|c| c.id).collect::<Vec<_>>()))]
    Incomplete {
        /// The manifest.
        manifest: ManifestId,
        /// The chunks still missing.
        missing: Vec<crate::ChunkRef>,
    },
    /// Manifest bytes are invalid.
    #[error("invalid manifest: {reason}")]
    BadManifest {
        /// What was wrong.
        reason: String,
    },
    /// Chunker parameters outside fastcdc's limits.
    #[error("invalid chunker parameters {}/{}/{}: {reason}", params.min, params.avg, params.max)]
    BadChunkerParams {
        /// The parameters.
        params: ChunkerParams,
        /// What was wrong.
        reason: String,
    },
    /// A malformed image name.
    #[error("invalid image name `{input}`: {reason}")]
    BadName {
        /// The text given.
        input: String,
        /// What was wrong.
        reason: String,
    },
    /// A seal (a VO's signed statement naming a manifest) is malformed or does not
    /// verify.
    #[error("the seal of image {name} is refused: {reason}")]
    BadSeal {
        /// The image name it carries.
        name: String,
        /// Why.
        reason: String,
    },
    /// A boot trace is refused (issue 19).
    #[error("the boot trace of image {manifest} is refused: {reason}")]
    BadTrace {
        /// The manifest it claims to trace.
        manifest: String,
        /// Why.
        reason: String,
    },
    /// A VO key file cannot be used.
    #[error("VO key {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A malformed id.
    #[error("`{input}` is not a {what} (64 hex digits)")]
    BadId {
        /// "chunk id" or "manifest id".
        what: &'static str,
        /// The text given.
        input: String,
    },
    /// No image has this name.
    #[error("no image named {name} in the store; `vw image ls` lists them")]
    UnknownName {
        /// The name.
        name: ImageName,
    },
    /// No manifest has this id.
    #[error("no manifest {id:#} in the store")]
    UnknownManifest {
        /// The id.
        id: ManifestId,
    },
    /// The image is pinned and cannot be removed.
    #[error("image {name} is pinned ({reasons}); run `vw cache unpin {name}` first")]
    Pinned {
        /// The name given.
        name: String,
        /// Why it is pinned.
        reasons: String,
    },
    /// A size given on the command line or in config is malformed.
    #[error("invalid size `{input}`: expected a number with an optional K, M, G or T suffix")]
    BadSize {
        /// The text given.
        input: String,
    },
}

fn list(ids: &[ChunkId]) -> String {
    let shown: Vec<String> = ids.iter().take(8).map(|id| format!("{id:#}")).collect();
    let more = ids.len().saturating_sub(8);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(feature = "store")]
impl Error {
    /// An I/O error on `path`, mapping "disk full" to [`Error::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || source.kind() == io::ErrorKind::StorageFull
        {
            return Error::NoSpace { path };
        }
        Error::Io { op, path, error: source }
    }
}
