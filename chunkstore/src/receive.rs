//! Chunks that arrive one by one from peers rather than from an image file.
//!
//! A [`Receiving`] session holds the pack writer and keeps garbage collection out (chunks
//! received but not yet listed by a manifest would look unreferenced) until it is
//! finished or dropped. Each chunk is verified against its id before a byte is written;
//! a chunk the store holds already is skipped. Pack bytes are synced before the index
//! entries that point at them ([`Receiving::sync`], also every 64 MiB or every second),
//! so a crash loses at most unsynced chunks, which a restart fetches again. [`Receiving::finish`] records
//! the manifest once every chunk it lists is held.

use std::collections::HashSet;
use std::sync::{MutexGuard, RwLockReadGuard};

use rocksdb::WriteBatch;

use crate::db::{self, ChunkRecord};
use crate::pack::PackWriter;
use crate::{ChunkId, Error, ImageName, Manifest, ManifestId, Store};

/// Sync pack and index after this many new bytes…
const SYNC_EVERY: u64 = 64 << 20;
/// …or this long after the last sync, so a crash loses at most about a second of
/// received chunks.
const SYNC_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A session of chunks received from peers (see the module docs).
pub struct Receiving<'s> {
    store: &'s Store,
    slot: MutexGuard<'s, Option<PackWriter>>,
    _collect: RwLockReadGuard<'s, ()>,
    pending: WriteBatch,
    /// Written but not yet synced and indexed.
    unsynced: Vec<ChunkId>,
    unsynced_bytes: u64,
    last_sync: std::time::Instant,
    /// Written this session (to skip a chunk sent twice before it is indexed).
    written: HashSet<ChunkId>,
    repaired: Vec<ChunkId>,
}

impl std::fmt::Debug for Receiving<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiving").field("written", &self.written.len()).finish_non_exhaustive()
    }
}

impl Store {
    /// Starts receiving chunks; imports and garbage collection wait until it ends.
    pub fn receiving(&self) -> Receiving<'_> {
        let collect = self.collect.read().expect("collect lock");
        let slot = self.writer.lock().expect("pack writer lock");
        Receiving {
            store: self,
            slot,
            _collect: collect,
            pending: WriteBatch::default(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            last_sync: std::time::Instant::now(),
            written: HashSet::new(),
            repaired: Vec::new(),
        }
    }

    /// Whether the store holds a good copy of `id` (indexed and not known corrupt).
    pub fn holds(&self, id: &ChunkId) -> Result<bool, Error> {
        Ok(!id.is_zero() && !self.is_corrupt(id) && self.db.chunk_record(id)?.is_some())
    }
}

impl Receiving<'_> {
    /// Verifies `data` against `id` and stores it. Returns whether it was new. A chunk
    /// whose bytes do not hash to its id is refused with [`Error::ChunkMismatch`] and
    /// nothing is written.
    pub fn put(&mut self, id: &ChunkId, data: &[u8]) -> Result<bool, Error> {
        if ChunkId::from(blake3::hash(data)) != *id {
            return Err(Error::ChunkMismatch { id: *id, len: data.len() });
        }
        if id.is_zero() || self.written.contains(id) || self.store.holds(id)? {
            return Ok(false);
        }
        let loc = match crate::import::append(self.store, &mut self.slot, id, data) {
            Ok(loc) => loc,
            Err(e) => {
                // The pack may be out of step with its length: start a fresh one.
                *self.slot = None;
                return Err(e);
            }
        };
        let rec = ChunkRecord { loc, added_ms: db::now_ms() };
        self.store.db.put_chunk(&mut self.pending, id, &rec);
        if self.store.is_corrupt(id) {
            self.store.db.delete_corrupt(&mut self.pending, id);
            self.repaired.push(*id);
        }
        self.written.insert(*id);
        self.unsynced.push(*id);
        self.unsynced_bytes += data.len() as u64;
        if self.unsynced_bytes >= SYNC_EVERY || self.last_sync.elapsed() >= SYNC_AFTER {
            self.sync()?;
        }
        Ok(true)
    }

    /// Makes every chunk put so far durable: the pack first, then its index entries.
    pub fn sync(&mut self) -> Result<(), Error> {
        if let Some(writer) = self.slot.as_mut() {
            writer.sync()?;
        }
        self.store.db.write(std::mem::take(&mut self.pending), true)?;
        self.store.held.insert(&self.unsynced);
        self.unsynced.clear();
        self.unsynced_bytes = 0;
        self.last_sync = std::time::Instant::now();
        Ok(())
    }

    /// Makes everything durable and records `manifest` under `name`. Every chunk it
    /// lists must be held, or [`Error::Incomplete`] names the first few that are not.
    pub fn finish(
        mut self,
        manifest: &Manifest,
        name: Option<&ImageName>,
    ) -> Result<ManifestId, Error> {
        self.sync()?;
        let missing = self.store.missing_locked(manifest)?;
        if !missing.chunks.is_empty() {
            return Err(Error::Incomplete { manifest: manifest.id(), missing: missing.chunks });
        }
        let id = self.store.commit_manifest(manifest, name, WriteBatch::default())?;
        let repaired = std::mem::take(&mut self.repaired);
        let store = self.store;
        drop(self);
        store.forget_corrupt(&repaired);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise;

    #[test]
    fn received_chunks_rebuild_an_image_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            Store::open(&dir.path().join("a")).expect("a"),
            Store::open(&dir.path().join("b")).expect("b"),
        );
        let img = dir.path().join("x.img");
        let mut data = noise(3 << 20, 5);
        data.resize(4 << 20, 0);
        std::fs::write(&img, &data).expect("write");
        let report = a.import(&img, None, &()).expect("import");
        let manifest = a.manifest(&report.manifest).expect("manifest");

        let missing = b.missing(&manifest).expect("missing");
        let mut rx = b.receiving();
        // A bad chunk is refused before anything is written.
        let first = missing.chunks[0].id;
        let err = rx.put(&first, b"not it").expect_err("mismatch");
        assert!(matches!(err, Error::ChunkMismatch { .. }), "{err}");
        for c in &missing.chunks {
            assert!(rx.put(&c.id, &a.read_chunk(&c.id).expect("read")).expect("put"));
        }
        // The same chunk again is skipped.
        assert!(!rx.put(&first, &a.read_chunk(&first).expect("read")).expect("put"));
        let name: ImageName = "vo/x:1".parse().expect("name");
        assert_eq!(rx.finish(&manifest, Some(&name)).expect("finish"), report.manifest);

        let out = dir.path().join("out.img");
        b.export(&report.manifest, &out, false, &()).expect("export");
        assert!(std::fs::read(&out).expect("read") == data);
        assert!(b.missing(&manifest).expect("missing").chunks.is_empty());
    }

    #[test]
    fn finishing_without_every_chunk_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            Store::open(&dir.path().join("a")).expect("a"),
            Store::open(&dir.path().join("b")).expect("b"),
        );
        let img = dir.path().join("x.img");
        std::fs::write(&img, noise(1 << 20, 9)).expect("write");
        let report = a.import(&img, None, &()).expect("import");
        let manifest = a.manifest(&report.manifest).expect("manifest");
        let err = b.receiving().finish(&manifest, None).expect_err("incomplete");
        assert!(matches!(err, Error::Incomplete { .. }), "{err}");
    }
}
