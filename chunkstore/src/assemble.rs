//! Assembly: an image written at its chunks' offsets while they arrive, so that staging
//! ends with the last chunk instead of rebuilding the image from the store afterwards.
//!
//! A stage places each verified chunk from the network ([`Assembly::place`]) and the
//! chunks the store already holds ([`Store::fill`]) into one temporary file beside the
//! target, in any order and from several threads. The whole-image BLAKE3 is computed
//! as the written prefix grows: every chunk at the prefix's end is read back from the
//! file and hashed in image order, zero chunks as zeros (they stay holes). So when the
//! last chunk lands, the check of the whole image is all but done, and
//! [`Store::complete`] only hashes the tail, syncs and renames. Nothing is ever under
//! the target's name unless every byte of it matched the manifest's image hash.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::export::{ExportTarget, ZEROS};
use crate::{ChunkId, Error, ExportReport, Layout, Manifest, ManifestId, Placed, Store};

/// Bytes written between syncs of the file, so that the final sync is short: the
/// kernel's own writeback would wait for gigabytes of dirty pages on a big host.
const SYNC_EVERY: u64 = 32 << 20;

/// An image being written from its chunks as they come; see the module doc.
#[derive(Debug)]
pub struct Assembly {
    manifest: ManifestId,
    image_hash: blake3::Hash,
    out: PathBuf,
    /// Renamed into place by [`Store::complete`] (taken then), removed if dropped.
    target: Mutex<Option<ExportTarget>>,
    /// The temporary file (positional reads and writes need no lock).
    file: File,
    /// Where each chunk goes.
    layout: Layout,
    state: Mutex<State>,
    started: Instant,
}

#[derive(Debug)]
struct State {
    /// Which chunks are written (zero chunks count as written).
    written: Vec<bool>,
    /// The first chunk not yet hashed: every one before it is written and hashed.
    hashed: usize,
    hasher: blake3::Hasher,
    /// Bytes written since the last sync.
    unsynced: u64,
    buf: Vec<u8>,
}

impl Assembly {
    /// Starts writing `manifest`'s image to a temporary file beside `out` (which must
    /// not exist), sized to the image so that zero chunks are holes.
    pub fn create(manifest: &Manifest, out: &Path) -> Result<Self, Error> {
        let target = ExportTarget::create(out, false)?;
        target.file().set_len(manifest.len()).map_err(|e| Error::io("size", out, e))?;
        let file = target.file().try_clone().map_err(|e| Error::io("open", out, e))?;
        let written = manifest.chunks().iter().map(|c| c.is_zero()).collect();
        let assembly = Assembly {
            manifest: manifest.id(),
            image_hash: manifest.image_hash(),
            out: out.to_owned(),
            target: Mutex::new(Some(target)),
            file,
            layout: manifest.layout(),
            state: Mutex::new(State {
                written,
                hashed: 0,
                hasher: blake3::Hasher::new(),
                unsynced: 0,
                buf: Vec::new(),
            }),
            started: Instant::now(),
        };
        // An image that starts with zeros (or is all zeros) hashes them now.
        let mut st = assembly.state.lock().expect("assembly lock");
        assembly.hash_prefix(&mut st)?;
        drop(st);
        Ok(assembly)
    }

    /// The image being written.
    pub fn manifest(&self) -> ManifestId {
        self.manifest
    }

    /// The path it will have once complete.
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// Whether the image uses chunk `id` (and it is not written yet).
    pub fn wants(&self, id: &ChunkId) -> bool {
        let Some(&first) = self.layout.places(id).first() else { return false };
        !self.state.lock().expect("assembly lock").written[first]
    }

    /// Writes chunk `id` (verified by the caller: its bytes match its id) at every
    /// offset the image has it; a chunk the image does not use, or already written, is
    /// ignored. Safe to call from several threads.
    pub fn place(&self, id: &ChunkId, data: &[u8]) -> Result<(), Error> {
        let at = self.layout.places(id);
        if at.first().is_none_or(|&i| self.state.lock().expect("assembly lock").written[i]) {
            return Ok(());
        }
        for &i in at {
            let c = self.layout.chunks()[i];
            if data.len() != c.len as usize {
                return Err(Error::ChunkMismatch { id: *id, len: data.len() });
            }
            self.file.write_all_at(data, c.offset).map_err(|e| self.io_error("write", e))?;
        }
        let sync = {
            let mut st = self.state.lock().expect("assembly lock");
            for &i in at {
                st.written[i] = true;
            }
            self.hash_prefix(&mut st)?;
            st.unsynced += (data.len() * at.len()) as u64;
            st.unsynced >= SYNC_EVERY && {
                st.unsynced = 0;
                true
            }
        };
        if sync {
            self.file.sync_data().map_err(|e| self.io_error("fsync", e))?;
        }
        Ok(())
    }

    /// Hashes the chunks at the end of the hashed prefix that are written, reading each
    /// back from the file.
    fn hash_prefix(&self, st: &mut State) -> Result<(), Error> {
        while st.hashed < self.layout.chunks().len() && st.written[st.hashed] {
            let c = self.layout.chunks()[st.hashed];
            if c.id.is_zero() {
                st.hasher.update(&ZEROS[..c.len as usize]);
            } else {
                st.buf.resize(c.len as usize, 0);
                self.file
                    .read_exact_at(&mut st.buf, c.offset)
                    .map_err(|e| self.io_error("read", e))?;
                let State { hasher, buf, .. } = st;
                hasher.update(buf);
            }
            st.hashed += 1;
        }
        Ok(())
    }

    fn io_error(&self, op: &'static str, error: std::io::Error) -> Error {
        Error::io(op, &self.out, error)
    }

    /// The distinct non-zero chunks not yet written.
    pub fn unwritten(&self) -> Vec<ChunkId> {
        let st = self.state.lock().expect("assembly lock");
        self.layout.distinct().filter(|(_, at)| !st.written[at[0]]).map(|(id, _)| *id).collect()
    }
}

impl Store {
    /// Writes into `assembly` every chunk of its image that this store holds, except
    /// those in `leave` (the ones a stage fetches, even if held: an isolated VO's).
    /// Returns the bytes written. Chunks are not hashed one by one here: the image hash
    /// covers them, and [`Store::complete`] names the corrupt ones if it fails.
    pub fn fill(&self, assembly: &Assembly, leave: &HashSet<ChunkId>) -> Result<u64, Error> {
        let mut ids: Vec<ChunkId> =
            assembly.unwritten().into_iter().filter(|id| !leave.contains(id)).collect();
        ids.sort_unstable();
        let mut bytes = 0;
        let mut data = Vec::new();
        for group in ids.chunks(256) {
            for (id, rec) in group.iter().zip(self.db.chunk_records(group)?) {
                let Some(rec) = rec else { continue };
                self.packs.read(rec.loc, &mut data)?;
                assembly.place(id, &data)?;
                bytes += data.len() as u64;
            }
        }
        Ok(bytes)
    }

    /// Finishes `assembly`: every chunk must be written and the whole image must match
    /// its hash (else the stored chunks that do not match their ids are named: those
    /// from the network were checked as they came); then the file is synced and renamed
    /// into place. On failure the temporary file is removed.
    pub fn complete(&self, assembly: &Assembly) -> Result<ExportReport, Error> {
        let mut st = assembly.state.lock().expect("assembly lock");
        assembly.hash_prefix(&mut st)?;
        if let Some(&Placed { id, .. }) = assembly.layout.chunks().get(st.hashed) {
            drop(st);
            assembly.target.lock().expect("assembly lock").take();
            return Err(Error::MissingChunk { id });
        }
        let hash = st.hasher.finalize();
        drop(st);
        let target = assembly.target.lock().expect("assembly lock").take();
        let target = target.ok_or_else(|| Error::OutputExists { path: assembly.out.clone() })?;
        if hash != assembly.image_hash {
            let manifest = self.manifest(&assembly.manifest)?;
            return Err(Error::CorruptImage {
                manifest: assembly.manifest,
                chunks: self.find_corrupt(&manifest)?,
            });
        }
        target.file().sync_all().map_err(|e| assembly.io_error("fsync", e))?;
        target.commit()?;
        self.touch(&assembly.manifest)?;
        let chunks = assembly.layout.chunks();
        let len = chunks.last().map_or(0, Placed::end);
        let holes = chunks.iter().filter(|c| c.id.is_zero()).map(|c| u64::from(c.len));
        Ok(ExportReport {
            manifest: assembly.manifest,
            path: assembly.out.clone(),
            len,
            hole_bytes: holes.sum(),
            millis: u64::try_from(assembly.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}
