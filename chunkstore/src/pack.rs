//! Append-only pack files holding chunk bytes (`packs/NNNNNNNN.pack`).
//!
//! Layout: a 16-byte header (`VWPACK\0\0`, format version u32 LE, pack number u32 LE),
//! then records `len u32 LE | chunk id (32) | bytes`. The index in RocksDB points at the
//! bytes; the record header lets `verify` and recovery tools walk a pack on their own.
//! A pack is written by one writer, synced before any index entry that points into it
//! is written, and never modified afterwards: space is reclaimed by copying the live
//! chunks of a mostly dead pack into the current one and deleting the old file.
//! Chunk bytes live here rather than in RocksDB's BlobDB because appends run at about
//! twice BlobDB's rate here (docs/decisions.md).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::{ChunkId, Error};

const MAGIC: [u8; 8] = *b"VWPACK\0\0";
pub(crate) const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: u64 = 4 + 32;
/// A pack is closed and a new one started once it passes this size.
pub(crate) const PACK_TARGET_LEN: u64 = 1 << 30;
/// Appends are gathered in memory up to this size before one `write` call.
const WRITE_BUFFER: usize = 4 << 20;

/// Where a chunk's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loc {
    /// Pack number.
    pub pack: u32,
    /// Offset of the chunk's first byte in the pack file.
    pub offset: u64,
    /// Chunk length.
    pub len: u32,
}

/// The open pack files: shared read handles and the one writer.
#[derive(Debug)]
pub(crate) struct Packs {
    dir: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
}

/// The pack being appended to.
#[derive(Debug)]
pub(crate) struct PackWriter {
    number: u32,
    path: PathBuf,
    file: File,
    /// Bytes in the file plus bytes buffered.
    len: u64,
    buf: Vec<u8>,
    /// Bytes appended since the last sync.
    unsynced: u64,
}

pub(crate) fn pack_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.pack"))
}

impl Packs {
    /// Opens every pack in `dir`, checking each header.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut readers = HashMap::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
            let path = entry.map_err(|e| Error::io("list", dir, e))?.path();
            let Some(number) = parse_pack_name(&path) else { continue };
            let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            check_header(&file, &path, number)?;
            readers.insert(number, Arc::new(file));
        }
        Ok(Self { dir: dir.to_owned(), readers: RwLock::new(readers) })
    }

    /// Pack numbers present on disk.
    pub(crate) fn numbers(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.readers.read().expect("pack map lock").keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Size of a pack file on disk.
    pub(crate) fn file_len(&self, number: u32) -> Result<u64, Error> {
        let path = pack_path(&self.dir, number);
        fs::metadata(&path).map(|m| m.len()).map_err(|e| Error::io("stat", &path, e))
    }

    /// Starts a new pack numbered after every existing one.
    pub(crate) fn create_writer(&self) -> Result<PackWriter, Error> {
        let number = self.numbers().last().map_or(1, |n| n + 1);
        let path = pack_path(&self.dir, number);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&number.to_le_bytes());
        file.write_all(&header).map_err(|e| Error::io("write", &path, e))?;
        let reader = file.try_clone().map_err(|e| Error::io("open", &path, e))?;
        self.readers.write().expect("pack map lock").insert(number, Arc::new(reader));
        Ok(PackWriter {
            number,
            path,
            file,
            len: HEADER_LEN,
            buf: Vec::with_capacity(WRITE_BUFFER),
            unsynced: 0,
        })
    }

    /// Reads a chunk's bytes into `out` (replacing its contents). Does not verify them:
    /// callers hash what they read.
    pub(crate) fn read(&self, loc: Loc, out: &mut Vec<u8>) -> Result<(), Error> {
        let file = self.readers.read().expect("pack map lock").get(&loc.pack).cloned();
        let path = || pack_path(&self.dir, loc.pack);
        let file = file.ok_or_else(|| {
            Error::io("read", path(), std::io::Error::from(std::io::ErrorKind::NotFound))
        })?;
        out.resize(loc.len as usize, 0);
        file.read_exact_at(out, loc.offset).map_err(|e| Error::io("read", path(), e))
    }

    /// Forgets and deletes a pack file. Callers must have removed every index entry
    /// pointing into it first.
    pub(crate) fn delete(&self, number: u32) -> Result<(), Error> {
        self.readers.write().expect("pack map lock").remove(&number);
        let path = pack_path(&self.dir, number);
        fs::remove_file(&path).map_err(|e| Error::io("delete", &path, e))?;
        sync_dir(&self.dir)
    }
}

impl PackWriter {
    /// The pack's number.
    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// True once the pack has reached its target size.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= PACK_TARGET_LEN
    }

    /// Bytes appended since the last [`Self::sync`].
    pub(crate) fn unsynced(&self) -> u64 {
        self.unsynced
    }

    /// Appends a chunk and returns where its bytes will be. They are durable only after
    /// the next [`Self::sync`].
    pub(crate) fn append(&mut self, id: &ChunkId, data: &[u8]) -> Result<Loc, Error> {
        let len = u32::try_from(data.len()).expect("chunks are at most 16 MiB");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        let offset = self.len + RECORD_HEADER_LEN;
        self.buf.extend_from_slice(data);
        self.len = offset + u64::from(len);
        self.unsynced += RECORD_HEADER_LEN + u64::from(len);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(Loc { pack: self.number, offset, len })
    }

    fn flush(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf).map_err(|e| Error::io("write", &self.path, e))?;
            let start = self.len - self.buf.len() as u64;
            start_writeback(&self.file, start, self.buf.len() as u64);
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes out buffered appends and makes everything appended durable.
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        self.flush()?;
        if self.unsynced > 0 {
            self.file.sync_data().map_err(|e| Error::io("fsync", &self.path, e))?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

/// Asks the kernel to start writing a just-written range back now, without waiting, so
/// the next [`PackWriter::sync`] only waits for the tail instead of stalling the import
/// pipeline for everything at once (what RocksDB's `bytes_per_sync` does). A hint: an
/// error here changes nothing, the sync still makes the bytes durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by
    // `file` and open for the duration of the call.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

fn parse_pack_name(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".pack")?;
    (digits.len() == 8).then(|| digits.parse().ok()).flatten()
}

fn check_header(mut file: &File, path: &Path, number: u32) -> Result<(), Error> {
    let mut header = [0u8; HEADER_LEN as usize];
    let bad = |reason: String| Error::BadRecord {
        table: "pack",
        key: path.display().to_string(),
        reason,
    };
    file.read_exact(&mut header).map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if header[..8] != MAGIC {
        return Err(bad("not a vw pack file (bad magic)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let found = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(bad(format!("pack format {version}, this build reads {VERSION}")));
    }
    if found != number {
        return Err(bad(format!("header says pack {found}")));
    }
    Ok(())
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync", dir, e))
}
