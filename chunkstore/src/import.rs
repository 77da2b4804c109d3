//! Import: image file → chunks in packs + a manifest, pipelined over three threads.
//!
//! ```text
//! reader: read 8 MiB blocks, cut chunks ──▶ hasher: BLAKE3 each chunk and the whole
//!   ▲ (buffers come back through a pool)        image, spot zero chunks
//!   └──────────────────────────────────── writer: skip cached chunks, append new ones,
//!                                          sync the pack, then index them
//! ```
//! Channels and the buffer pool are bounded, so memory in flight is about
//! `POOL × BLOCK` whatever the image size. The manifest (and its name) is written in
//! one synced batch after the last pack sync, so it only ever lists durable chunks.

use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use rocksdb::WriteBatch;
use serde::Serialize;

use crate::chunker::{is_zero, Chunker, Span};
use crate::db::{self, ChunkRecord};
use crate::pack::PackWriter;
use crate::{ChunkId, ChunkRef, Error, GcReport, ImageName, Manifest, ManifestId, Progress, Store};

/// Bytes read per block.
const BLOCK: usize = 8 << 20;
/// Buffers in flight (reader, hasher, writer, and one spare).
const POOL: usize = 4;
/// New pack bytes between syncs. Each sync lets the index entries gathered so far be
/// written, which bounds the pending batch (about 16k entries per GiB); writeback has
/// been running since each write (see `pack::start_writeback`), so a sync only waits
/// for the tail. Syncing every 128 MiB instead cost about 40% of import speed.
const SYNC_EVERY: u64 = 1 << 30;

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// The manifest recorded.
    pub manifest: ManifestId,
    /// The name pointed at it, if one was given.
    pub name: Option<String>,
    /// Image length.
    pub len: u64,
    /// Chunks in the image, zero chunks included.
    pub chunks: usize,
    /// Chunk counts by kind.
    #[serde(flatten)]
    pub counts: ChunkCounts,
    /// Wall time in milliseconds.
    pub millis: u64,
    /// What the store dropped afterwards to stay within its capacity (never this image).
    pub eviction: GcReport,
}

/// An import's chunks by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChunkCounts {
    /// Chunks written because the store lacked them.
    pub new_chunks: usize,
    /// Their bytes.
    pub new_bytes: u64,
    /// Chunks the store already held (before this import or earlier in this image).
    pub cached_chunks: usize,
    /// Their bytes.
    pub cached_bytes: u64,
    /// All-zero chunks (stored as nothing, written as holes).
    pub zero_chunks: usize,
    /// Their bytes.
    pub zero_bytes: u64,
}

/// What the writer stage hands back.
struct Written {
    counts: ChunkCounts,
    chunks: Vec<ChunkRef>,
    /// Index entries not yet written (their pack bytes are synced).
    batch: WriteBatch,
    /// Chunks it wrote that the index did not have.
    added: Vec<ChunkId>,
    /// Corrupt chunks it wrote good copies of.
    repaired: Vec<ChunkId>,
}

struct Block {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

struct HashedBlock {
    block: Block,
    ids: Vec<ChunkId>,
}

impl Store {
    /// Imports the image file at `path`, optionally naming it. Returns once the manifest
    /// is durable and the store is back within its capacity (evicting other unpinned
    /// images if needed, never this one). Uses up to three threads.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&ImageName>,
        progress: &dyn Progress,
    ) -> Result<ImportReport, Error> {
        self.import_from(ImageFile::open(path)?, name, progress)
    }

    /// [`Store::import`] of a file already open (one a client handed `vwd` over its
    /// socket, opened with the client's own permissions).
    pub fn import_from(
        &self,
        image: ImageFile,
        name: Option<&ImageName>,
        progress: &dyn Progress,
    ) -> Result<ImportReport, Error> {
        let started = Instant::now();
        let ImageFile { file, len, path } = image;
        let path = path.as_path();
        let chunker = Chunker::new(self.params)?;
        let collect = self.collect.read().expect("collect lock");
        // Held for the whole import; a pack is opened only when a chunk is new.
        let mut slot = self.writer.lock().expect("pack writer lock");
        progress.start(len);

        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(POOL);
        for _ in 0..POOL {
            pool_tx.send(Vec::with_capacity(BLOCK)).expect("the pool has room");
        }
        let (cut_tx, cut_rx) = bounded::<Block>(1);
        let (hashed_tx, hashed_rx) = bounded::<HashedBlock>(1);
        let (read, hashed, written) = std::thread::scope(|s| {
            // Each stage owns the sending end of its output, so the next stage sees the
            // channel close when it finishes or fails.
            let (chunker, pool_rx) = (&chunker, &pool_rx);
            let reader = s.spawn(move || read_and_cut(file, path, chunker, pool_rx, cut_tx));
            let hasher = s.spawn(move || hash_blocks(cut_rx, hashed_tx));
            let written = self.write_blocks(&mut slot, hashed_rx, pool_tx, progress);
            if written.is_err() {
                // A failed writer may leave the pack file out of step with its length:
                // start a fresh pack next time. Unindexed bytes are reclaimed by `gc`.
                *slot = None;
            }
            let read = reader.join().expect("reader thread panicked");
            let hashed = hasher.join().expect("hasher thread panicked");
            (read, hashed, written)
        });
        let read = read?;
        let Written { counts, chunks, batch, added, repaired } = written?;
        if read != len {
            return Err(Error::FileChanged { path: path.to_owned(), expected: len, read });
        }
        let manifest = Manifest::new(self.params, len, hashed, chunks)?;
        let manifest_id = self.commit_manifest(&manifest, name, batch)?;
        self.held.insert(&added);
        drop((slot, collect));
        self.forget_corrupt(&repaired);
        tracing::info!(manifest = %manifest_id, len, new = counts.new_bytes, "imported {}", path.display());
        let eviction = self.fit_capacity_keeping(&[manifest_id])?;
        Ok(ImportReport {
            manifest: manifest_id,
            name: name.map(ToString::to_string),
            len,
            chunks: manifest.chunks().len(),
            counts,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            eviction,
        })
    }

    /// The writer stage: skips cached chunks, appends new ones, indexes them.
    fn write_blocks(
        &self,
        slot: &mut Option<PackWriter>,
        hashed: Receiver<HashedBlock>,
        pool: Sender<Vec<u8>>,
        progress: &dyn Progress,
    ) -> Result<Written, Error> {
        let mut stats = ChunkCounts::default();
        let mut chunks = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let mut pending = WriteBatch::default();
        let mut repaired = Vec::new();
        let mut added = Vec::new();
        let now = db::now_ms();
        let mut candidates: Vec<(ChunkId, Span)> = Vec::new();
        for HashedBlock { block, ids } in hashed {
            candidates.clear();
            for (span, &id) in block.spans.iter().zip(&ids) {
                let len = span.len as u32;
                chunks.push(ChunkRef { id, len });
                if id.is_zero() {
                    stats.zero_chunks += 1;
                    stats.zero_bytes += u64::from(len);
                } else if seen.insert(id) {
                    candidates.push((id, *span));
                } else {
                    stats.cached_chunks += 1;
                    stats.cached_bytes += u64::from(len);
                }
            }
            // Look the ids up sorted (RocksDB's batched lookup wants that) but append
            // new chunks in image order, so an export reads each pack sequentially.
            let mut sorted: Vec<ChunkId> = candidates.iter().map(|(id, _)| *id).collect();
            sorted.sort_unstable();
            let records = self.db.chunk_records(&sorted)?;
            for (id, span) in &candidates {
                let at = sorted.binary_search(id).expect("every candidate was looked up");
                let corrupt = self.is_corrupt(id);
                if records[at].is_some() && !corrupt {
                    stats.cached_chunks += 1;
                    stats.cached_bytes += span.len as u64;
                    continue;
                }
                let loc = append(self, slot, id, &block.buf[span.range()])?;
                self.db.put_chunk(&mut pending, id, &ChunkRecord { loc, added_ms: now });
                if corrupt {
                    self.db.delete_corrupt(&mut pending, id);
                    repaired.push(*id);
                } else {
                    added.push(*id);
                }
                stats.new_chunks += 1;
                stats.new_bytes += span.len as u64;
            }
            if let Some(writer) = slot.as_mut().filter(|w| w.unsynced() >= SYNC_EVERY) {
                writer.sync()?;
                self.db.write(std::mem::take(&mut pending), false)?;
            }
            progress.advance(block.spans.iter().map(|s| s.len as u64).sum());
            let _ = pool.send(block.buf);
        }
        if let Some(writer) = slot.as_mut() {
            writer.sync()?;
        }
        Ok(Written { counts: stats, chunks, batch: pending, added, repaired })
    }
}

/// Appends a chunk to the current pack, first rolling to a new pack (after syncing the
/// full one) when it has reached its size.
pub(crate) fn append(
    store: &Store,
    slot: &mut Option<PackWriter>,
    id: &ChunkId,
    data: &[u8],
) -> Result<crate::pack::Loc, Error> {
    if slot.as_ref().is_none_or(PackWriter::is_full) {
        if let Some(mut full) = slot.take() {
            full.sync()?;
        }
        *slot = Some(store.packs.create_writer()?);
    }
    slot.as_mut().expect("just opened").append(id, data)
}

/// An image file open for import: a regular file, its length, and the path that names
/// it in messages.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    len: u64,
    path: PathBuf,
}

impl ImageFile {
    /// Opens `path`: it must exist, be a regular file and be readable.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::FileNotFound { path: path.to_owned() },
            _ => Error::io("read", path, e),
        })?;
        regular(&meta, path)?;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        Ok(ImageFile { file, len: meta.len(), path: path.to_owned() })
    }

    /// A file someone else opened, named `path` in messages: it must be a regular file.
    pub fn from_file(file: File, path: &Path) -> Result<Self, Error> {
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        regular(&meta, path)?;
        Ok(ImageFile { file, len: meta.len(), path: path.to_owned() })
    }

    /// The path that names it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Refuses anything but a regular file, naming what it is.
fn regular(meta: &std::fs::Metadata, path: &Path) -> Result<(), Error> {
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "named pipe"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(Error::NotRegularFile { path: path.to_owned(), kind });
    }
    Ok(())
}

/// The manifest the image file at `path` would have if imported, cut with `params`,
/// without a store: what a VO seals where its key lives (`vw vo seal`), so that the
/// head imports the image under that seal and never holds the key. Reads the file once,
/// on the import's reader and hasher threads, with the same bounded memory.
pub fn manifest_of_file(
    path: &Path,
    params: crate::chunker::ChunkerParams,
) -> Result<Manifest, Error> {
    let ImageFile { file, len, .. } = ImageFile::open(path)?;
    let chunker = Chunker::new(params)?;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(POOL);
    for _ in 0..POOL {
        pool_tx.send(Vec::with_capacity(BLOCK)).expect("the pool has room");
    }
    let (cut_tx, cut_rx) = bounded::<Block>(1);
    let (hashed_tx, hashed_rx) = bounded::<HashedBlock>(1);
    let (read, image_hash, chunks) = std::thread::scope(|s| {
        let (chunker, pool_rx) = (&chunker, &pool_rx);
        let reader = s.spawn(move || read_and_cut(file, path, chunker, pool_rx, cut_tx));
        let hasher = s.spawn(move || hash_blocks(cut_rx, hashed_tx));
        let mut chunks = Vec::new();
        for HashedBlock { block, ids } in hashed_rx {
            for (span, id) in block.spans.iter().zip(ids) {
                chunks.push(ChunkRef { id, len: span.len as u32 });
            }
            // The reader may have stopped taking buffers (it read the last block).
            let _ = pool_tx.send(block.buf);
        }
        drop(pool_tx);
        let read = reader.join().expect("reader thread panicked");
        (read, hasher.join().expect("hasher thread panicked"), chunks)
    });
    let read = read?;
    if read != len {
        return Err(Error::FileChanged { path: path.to_owned(), expected: len, read });
    }
    Manifest::new(params, len, image_hash, chunks)
}

/// Reader stage: fills pooled buffers, carrying each block's unfinished tail into the
/// next. Returns the bytes read.
fn read_and_cut(
    mut file: File,
    path: &Path,
    chunker: &Chunker,
    pool: &Receiver<Vec<u8>>,
    out: Sender<Block>,
) -> Result<u64, Error> {
    let mut carry: Vec<u8> = Vec::with_capacity(chunker.params().max as usize);
    let mut total = 0u64;
    loop {
        let Ok(mut buf) = pool.recv() else { return Ok(total) };
        buf.clear();
        buf.extend_from_slice(&carry);
        let mut last = false;
        while buf.len() < BLOCK {
            let filled = buf.len();
            buf.resize(BLOCK, 0);
            match file.read(&mut buf[filled..]) {
                Ok(0) => {
                    buf.truncate(filled);
                    last = true;
                    break;
                }
                Ok(n) => {
                    buf.truncate(filled + n);
                    total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => buf.truncate(filled),
                Err(e) => return Err(Error::io("read", path, e)),
            }
        }
        let mut spans = Vec::with_capacity(BLOCK / chunker.params().avg as usize * 2);
        let used = chunker.cut_block(&buf, last, &mut spans);
        carry.clear();
        carry.extend_from_slice(&buf[used..]);
        if out.send(Block { buf, spans }).is_err() || last {
            return Ok(total);
        }
    }
}

/// Hasher stage: chunk ids and the whole-image hash.
fn hash_blocks(input: Receiver<Block>, out: Sender<HashedBlock>) -> blake3::Hash {
    let mut image = blake3::Hasher::new();
    for block in input {
        let mut ids = Vec::with_capacity(block.spans.len());
        for span in &block.spans {
            let data = &block.buf[span.range()];
            image.update(data);
            if is_zero(data) {
                ids.push(ChunkId::ZERO);
            } else {
                ids.push(ChunkId::of(data));
            }
        }
        if out.send(HashedBlock { block, ids }).is_err() {
            break;
        }
    }
    image.finalize()
}
