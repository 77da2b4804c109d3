//! Applying the cache policy: eviction, garbage collection, pack compaction, and the
//! statistics `vw cache stats` prints.
//!
//! Deletion is crash-correct by construction: the records of dropped manifests, the
//! names pointing at them and the dropped chunks go in one synced batch, and pack files
//! are only deleted or compacted after that batch, under the exclusive `collect` lock.
//! A crash at any point leaves every remaining manifest complete; at worst some pack
//! bytes are unreferenced until the next `gc` reclaims them.

use std::collections::{BTreeMap, HashMap, HashSet};

use rocksdb::WriteBatch;
use serde::Serialize;

use crate::cache::{self, CacheView, ChunkEntry, ManifestEntry, Mode, Plan};
use crate::db::{self, ChunkRecord};
use crate::import::append;
use crate::{ChunkId, Error, ManifestId, Store};

/// A pack is rewritten when less than this share of it is live.
const COMPACT_BELOW_LIVE: f64 = 0.5;
const RECORD_HEADER_LEN: u64 = 36;
const PACK_HEADER_LEN: u64 = 16;

/// What a collection did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Manifests dropped, with their names.
    pub evicted: Vec<(ManifestId, Vec<String>)>,
    /// Chunks dropped.
    pub chunks_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Pack files rewritten.
    pub packs_compacted: usize,
    /// Pack files deleted (empty, or replaced by compaction).
    pub packs_deleted: usize,
    /// Pack file bytes given back to the file system.
    pub disk_bytes_reclaimed: u64,
    /// Bytes still over the capacity because everything left is pinned.
    pub over_capacity: u64,
}

/// The store's occupancy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CacheStats {
    /// Capacity in bytes of stored chunks, if limited.
    pub capacity: Option<u64>,
    /// Stored chunks.
    pub chunks: usize,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Chunks known to be corrupt.
    pub corrupt_chunks: usize,
    /// Chunks some manifest lists, and their bytes.
    pub referenced_bytes: u64,
    /// Bytes of chunks listed by pinned manifests.
    pub pinned_bytes: u64,
    /// Chunks no manifest lists (reclaimed by `gc`).
    pub loose_chunks: usize,
    /// Their bytes.
    pub loose_bytes: u64,
    /// Stored manifests.
    pub manifests: usize,
    /// Pinned manifests.
    pub pinned_manifests: usize,
    /// Names.
    pub names: usize,
    /// Pack files.
    pub pack_files: usize,
    /// Their size on disk (live chunks plus reclaimable space).
    pub pack_bytes: u64,
}

impl Store {
    /// The capacity, if one is set.
    pub fn capacity(&self) -> Result<Option<u64>, Error> {
        Ok(self.db.get_meta::<Option<u64>>("capacity")?.flatten())
    }

    /// Sets or clears the capacity; evicts at once if the store is over it.
    pub fn set_capacity(&self, capacity: Option<u64>) -> Result<GcReport, Error> {
        let mut batch = WriteBatch::default();
        self.db.put_meta(&mut batch, "capacity", &capacity);
        self.db.write(batch, true)?;
        self.collect_garbage(Mode::FitCapacity, &[])
    }

    /// Drops every chunk no manifest lists, evicts to the capacity, and compacts packs.
    pub fn gc(&self) -> Result<GcReport, Error> {
        self.collect_garbage(Mode::Collect, &[])
    }

    /// Evicts what the capacity requires (nothing without a capacity), treating `keep`
    /// as pinned: an import never evicts the image it just stored.
    pub(crate) fn fit_capacity_keeping(&self, keep: &[ManifestId]) -> Result<GcReport, Error> {
        self.collect_garbage(Mode::FitCapacity, keep)
    }

    fn collect_garbage(&self, mode: Mode, keep: &[ManifestId]) -> Result<GcReport, Error> {
        let _exclusive = self.collect.write().expect("collect lock");
        let mut view = self.cache_view()?;
        for m in view.manifests.iter_mut().filter(|m| keep.contains(&m.id)) {
            m.pinned = true;
        }
        if mode == Mode::FitCapacity
            && view
                .capacity
                .is_none_or(|cap| view.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() <= cap)
        {
            return Ok(GcReport::default());
        }
        let plan = cache::plan(&view, mode);
        let mut report = self.apply(&plan)?;
        if mode == Mode::Collect || !plan.is_empty() {
            self.compact(&mut report)?;
        }
        Ok(report)
    }

    fn cache_view(&self) -> Result<CacheView, Error> {
        let mut chunks = Vec::new();
        for r in self.db.chunks() {
            let (id, rec) = r?;
            chunks.push(ChunkEntry { id, len: rec.loc.len, added_ms: rec.added_ms });
        }
        let pins = self.pins()?;
        let mut manifests = Vec::new();
        for id in self.manifest_ids()? {
            let ids = self.manifest(&id)?.stored_ids();
            let last_used_ms = self.db.usage(&id)?.map_or(0, |u| u.last_used_ms);
            manifests.push(ManifestEntry {
                id,
                chunks: ids,
                last_used_ms,
                pinned: pins.contains_key(&id),
            });
        }
        Ok(CacheView { capacity: self.capacity()?, chunks, manifests })
    }

    fn apply(&self, plan: &Plan) -> Result<GcReport, Error> {
        let mut report = GcReport {
            chunks_removed: plan.chunks.len(),
            bytes_removed: plan.freed_bytes,
            over_capacity: plan.over_capacity,
            ..GcReport::default()
        };
        if plan.is_empty() {
            return Ok(report);
        }
        let mut names: HashMap<ManifestId, Vec<String>> = HashMap::new();
        for (name, id) in self.names()? {
            names.entry(id).or_default().push(name);
        }
        let mut batch = WriteBatch::default();
        // A seal goes with its manifest: one left behind would name an image nothing
        // can stage or read, and whoever trusts the seals (an isolated VO's inventory)
        // would fail on it.
        for seal in self.seals()? {
            if plan.manifests.contains(&seal.manifest()) {
                batch.delete_cf(self.db.cf(db::SEALS), seal.name().to_string().as_bytes());
            }
        }
        for id in &plan.manifests {
            batch.delete_cf(self.db.cf(db::MANIFESTS), id.as_bytes());
            batch.delete_cf(self.db.cf(db::USAGE), id.as_bytes());
            let dropped = names.remove(id).unwrap_or_default();
            for n in &dropped {
                batch.delete_cf(self.db.cf(db::NAMES), n.as_bytes());
            }
            report.evicted.push((*id, dropped));
        }
        for id in &plan.chunks {
            batch.delete_cf(self.db.cf(db::CHUNKS), id.as_bytes());
        }
        self.db.write(batch, true)?;
        self.held.remove(&plan.chunks);
        for (id, names) in &report.evicted {
            tracing::info!(manifest = %id, ?names, "evicted");
        }
        Ok(report)
    }

    /// Rewrites mostly dead packs and deletes empty ones. Runs under the `collect` lock.
    fn compact(&self, report: &mut GcReport) -> Result<(), Error> {
        let mut live: BTreeMap<u32, Vec<(ChunkId, ChunkRecord)>> = BTreeMap::new();
        for r in self.db.chunks() {
            let (id, rec) = r?;
            live.entry(rec.loc.pack).or_default().push((id, rec));
        }
        let mut slot = self.writer.lock().expect("pack writer lock");
        let current = slot.as_ref().map(|w| w.number());
        for number in self.packs.numbers() {
            if Some(number) == current {
                continue;
            }
            let file_len = self.packs.file_len(number)?;
            let chunks = live.remove(&number).unwrap_or_default();
            let live_bytes: u64 =
                chunks.iter().map(|(_, r)| RECORD_HEADER_LEN + u64::from(r.loc.len)).sum();
            let payload = file_len.saturating_sub(PACK_HEADER_LEN).max(1);
            if !chunks.is_empty() && (live_bytes as f64) / (payload as f64) >= COMPACT_BELOW_LIVE {
                continue;
            }
            let mut batch = WriteBatch::default();
            let mut buf = Vec::new();
            let mut found_corrupt = Vec::new();
            for (id, rec) in &chunks {
                self.packs.read(rec.loc, &mut buf)?;
                // Bad bytes move with the chunk (its manifests still list it), but are
                // recorded as corrupt so nothing hands them out.
                if !self.is_corrupt(id) && ChunkId::of(&buf) != *id {
                    self.db.put_corrupt(&mut batch, id);
                    found_corrupt.push((*id, *rec));
                }
                let loc = append(self, &mut slot, id, &buf)?;
                self.db.put_chunk(&mut batch, id, &ChunkRecord { loc, ..*rec });
            }
            if let Some(w) = slot.as_mut() {
                w.sync()?;
            }
            self.db.write(batch, true)?;
            for (id, rec) in found_corrupt {
                self.mark_corrupt(&id, &rec)?;
            }
            self.packs.delete(number)?;
            report.disk_bytes_reclaimed += file_len.saturating_sub(live_bytes);
            report.packs_deleted += 1;
            if !chunks.is_empty() {
                report.packs_compacted += 1;
            }
        }
        Ok(())
    }

    /// Occupancy figures.
    pub fn stats(&self) -> Result<CacheStats, Error> {
        let view = self.cache_view()?;
        let mut s = CacheStats { capacity: view.capacity, ..CacheStats::default() };
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        let mut pinned: HashSet<ChunkId> = HashSet::new();
        for m in &view.manifests {
            referenced.extend(m.chunks.iter().copied());
            if m.pinned {
                pinned.extend(m.chunks.iter().copied());
                s.pinned_manifests += 1;
            }
        }
        for c in &view.chunks {
            let len = u64::from(c.len);
            s.chunks += 1;
            s.chunk_bytes += len;
            if referenced.contains(&c.id) {
                s.referenced_bytes += len;
            } else {
                s.loose_chunks += 1;
                s.loose_bytes += len;
            }
            if pinned.contains(&c.id) {
                s.pinned_bytes += len;
            }
        }
        s.corrupt_chunks = self.corrupt_count();
        s.manifests = view.manifests.len();
        s.names = self.names()?.len();
        for n in self.packs.numbers() {
            s.pack_files += 1;
            s.pack_bytes += self.packs.file_len(n)?;
        }
        Ok(s)
    }
}
