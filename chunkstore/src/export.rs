//! Export: manifest → image file, byte-exact.
//!
//! The image is written to a temporary name beside the target, zero chunks become holes
//! (the file is sized first and they are never written), the whole-image BLAKE3 is
//! checked, and only then is the file synced and renamed into place. On any failure the
//! temporary file is removed, so no partial image ever exists under the final name.
//!
//! Two threads: one reads chunks in order and hashes them into the image hash, one
//! writes them at their offsets. Chunks are not hashed one by one on this path: the
//! image hash covers every byte, and only if it fails are the chunks checked one by one
//! to name the corrupt ones.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::bounded;
use serde::Serialize;

use crate::{pack, ChunkId, Error, Manifest, ManifestId, Progress, Store};

/// Zeros to hash in place of a zero chunk; as long as the largest chunk fastcdc allows.
pub(crate) static ZEROS: [u8; 16 << 20] = [0; 16 << 20];

/// Bytes of chunk data per message from reader to writer.
const BATCH: usize = 8 << 20;

/// What an export did.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The manifest written.
    pub manifest: ManifestId,
    /// The file written.
    pub path: PathBuf,
    /// Image length.
    pub len: u64,
    /// Bytes left as holes.
    pub hole_bytes: u64,
    /// Wall time in milliseconds.
    pub millis: u64,
}

struct Piece {
    offset: u64,
    data: Vec<u8>,
}

impl Store {
    /// Rebuilds manifest `id` into the file `out`. Refuses to replace an existing file
    /// unless `overwrite`.
    pub fn export(
        &self,
        id: &ManifestId,
        out: &Path,
        overwrite: bool,
        progress: &dyn Progress,
    ) -> Result<ExportReport, Error> {
        let target = ExportTarget::create(out, overwrite)?;
        let report = self.export_into(id, target.file(), out, progress)?;
        target.commit()?;
        Ok(report)
    }

    /// Rebuilds manifest `id` into `file` (open for writing; an [`ExportTarget`]'s,
    /// perhaps in another process), named `out` in messages: sizes it, writes every
    /// non-zero chunk at its offset, checks the whole image's hash and syncs the file.
    /// Renaming it into place is the caller's ([`ExportTarget::commit`]).
    pub fn export_into(
        &self,
        id: &ManifestId,
        file: &File,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<ExportReport, Error> {
        let started = Instant::now();
        let manifest = self.manifest(id)?;
        let written = self.write_image(&manifest, file, out, progress).and_then(|hash| {
            if hash != manifest.image_hash() {
                return Err(Error::CorruptImage {
                    manifest: *id,
                    chunks: self.find_corrupt(&manifest)?,
                });
            }
            file.sync_all().map_err(|e| Error::io("fsync", out, e))
        });
        if let Err(e) = written {
            return Err(match e {
                Error::NoSpace { .. } => Error::NoSpace { path: out.to_owned() },
                e => e,
            });
        }
        self.touch(id)?;
        Ok(ExportReport {
            manifest: *id,
            path: out.to_owned(),
            len: manifest.len(),
            hole_bytes: manifest.zero_bytes(),
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Writes the image into `file` and returns the hash of what was written.
    fn write_image(
        &self,
        manifest: &Manifest,
        file: &File,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<blake3::Hash, Error> {
        file.set_len(manifest.len()).map_err(|e| Error::io("size", path, e))?;
        progress.start(manifest.len());
        let (tx, rx) = bounded::<Vec<Piece>>(2);
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<(), Error> {
                for batch in rx {
                    for p in &batch {
                        file.write_all_at(&p.data, p.offset)
                            .map_err(|e| Error::io("write", path, e))?;
                        progress.advance(p.data.len() as u64);
                    }
                }
                Ok(())
            });
            let read = self.read_pieces(manifest, &tx, progress);
            drop(tx);
            let written = writer.join().expect("export writer panicked");
            // A writer error stops the reader (its channel closes), so report it first.
            written.and(read)
        })
    }

    /// Reader side of [`Self::write_image`]: streams non-zero chunks in batches and
    /// hashes every byte, zeros included, in image order.
    fn read_pieces(
        &self,
        manifest: &Manifest,
        tx: &crossbeam_channel::Sender<Vec<Piece>>,
        progress: &dyn Progress,
    ) -> Result<blake3::Hash, Error> {
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        for group in manifest.chunks().chunks(BATCH / manifest.params().avg as usize) {
            let mut ids: Vec<ChunkId> =
                group.iter().filter(|c| !c.is_zero()).map(|c| c.id).collect();
            ids.sort_unstable();
            ids.dedup();
            let records = self.db.chunk_records(&ids)?;
            let mut batch = Vec::with_capacity(group.len());
            for c in group {
                if c.is_zero() {
                    hasher.update(&ZEROS[..c.len as usize]);
                    progress.advance(u64::from(c.len));
                } else {
                    let i = ids.binary_search(&c.id).expect("every id was looked up");
                    let rec = records[i].ok_or(Error::MissingChunk { id: c.id })?;
                    let mut data = Vec::new();
                    self.packs.read(rec.loc, &mut data)?;
                    hasher.update(&data);
                    batch.push(Piece { offset, data });
                }
                offset += u64::from(c.len);
            }
            if tx.send(batch).is_err() {
                break;
            }
        }
        Ok(hasher.finalize())
    }

    /// Checks every chunk of `manifest` and returns those whose bytes do not match their
    /// id (marking them corrupt).
    pub(crate) fn find_corrupt(&self, manifest: &Manifest) -> Result<Vec<ChunkId>, Error> {
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        let ids = manifest.stored_ids();
        for (id, rec) in ids.iter().zip(self.db.chunk_records(&ids)?) {
            let Some(rec) = rec else { continue };
            match self.read_verified(id, &rec, &mut buf) {
                Ok(()) => {}
                Err(Error::CorruptChunk { .. }) => bad.push(*id),
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }
}

/// A hidden temporary name beside `out`, unique to this process.
/// Where an export is written: a new temporary file beside `out`, renamed to `out` by
/// [`ExportTarget::commit`] once the image in it is whole and verified, and removed if
/// it is dropped before that. So no partial image ever exists under `out`.
#[derive(Debug)]
pub struct ExportTarget {
    out: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl ExportTarget {
    /// Makes the temporary file for `out` (refusing a directory, and an existing file
    /// unless `overwrite`).
    pub fn create(out: &Path, overwrite: bool) -> Result<Self, Error> {
        if out.is_dir() {
            return Err(Error::NotRegularFile { path: out.to_owned(), kind: "directory" });
        }
        if !overwrite && out.exists() {
            return Err(Error::OutputExists { path: out.to_owned() });
        }
        let (tmp, file) = create_temp(out)?;
        Ok(ExportTarget { out: out.to_owned(), tmp, file, committed: false })
    }

    /// The temporary file, open for writing.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Renames the (written, verified, synced) file into place and syncs its directory.
    pub fn commit(mut self) -> Result<(), Error> {
        std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io("rename", &self.out, e))?;
        self.committed = true;
        pack::sync_dir(
            self.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
        )
    }
}

impl Drop for ExportTarget {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!(".{name}.vw-part-{}", std::process::id()))
}

/// Makes `out`'s temporary file ([`temp_path`]), which must not exist, open for
/// writing and reading back (an assembly hashes what it wrote).
pub(crate) fn create_temp(out: &Path) -> Result<(PathBuf, File), Error> {
    let tmp = temp_path(out);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    Ok((tmp, file))
}
