//! [`Store`]: one host's chunk store, `<dir>/db` (RocksDB) and `<dir>/packs`.
//!
//! One process owns a store at a time (an exclusive `flock` on `<dir>/vw.lock`, which
//! also records the owner's pid for the error message). Within the process a `Store` is
//! `Sync`: imports and reads run concurrently; garbage collection and eviction take the
//! `collect` lock exclusively so that no chunk is deleted while an import is about to
//! reference it.
//!
//! Rules the code never breaks:
//! - pack bytes are synced before any index entry pointing at them is written;
//! - a manifest is written only after every chunk it lists is indexed and durable;
//! - a chunk is deleted only in the same atomic batch that deletes every manifest still
//!   listing it (so no manifest ever points at a missing chunk);
//! - bytes read from a pack are hashed before they are handed out as a chunk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use rocksdb::WriteBatch;
use serde::Serialize;

use crate::chunker::ChunkerParams;
use crate::db::{self, ChunkRecord, Db, NameRecord, PinRecord, UsageRecord};
use crate::held::Held;
use crate::pack::{PackWriter, Packs};
use crate::{ChunkId, ChunkRef, Error, ImageName, ImageRef, Manifest, ManifestId};

/// Why a manifest is pinned. A pinned manifest and its chunks are never evicted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PinReason {
    /// Pinned by the operator as a base image (`vw cache pin`).
    Base,
    /// In use by a deployment.
    Deployment(String),
}

impl PinReason {
    fn key_suffix(&self) -> String {
        match self {
            PinReason::Base => "base".into(),
            PinReason::Deployment(d) => format!("deployment:{d}"),
        }
    }

    fn from_key_suffix(s: &str) -> Option<Self> {
        match (s, s.strip_prefix("deployment:")) {
            ("base", _) => Some(PinReason::Base),
            (_, Some(d)) => Some(PinReason::Deployment(d.into())),
            _ => None,
        }
    }
}

impl std::fmt::Display for PinReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key_suffix())
    }
}

/// What a store lacks of a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// Distinct non-zero chunks absent (or known corrupt), in first-use order.
    pub chunks: Vec<ChunkRef>,
    /// Their total size.
    pub bytes: u64,
}

/// One manifest as `vw image ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The manifest id.
    pub id: ManifestId,
    /// Names pointing at it.
    pub names: Vec<String>,
    /// The names that carry a VO's seal, with the visibility it gives.
    pub sealed: Vec<(String, crate::Visibility)>,
    /// Image length.
    pub len: u64,
    /// Number of chunks (zero chunks included).
    pub chunks: usize,
    /// Bytes in zero chunks (holes).
    pub zero_bytes: u64,
    /// Why it is pinned, if it is.
    pub pins: Vec<PinReason>,
    /// Milliseconds since the epoch of the last import, export or stage.
    pub last_used_ms: u64,
}

/// How two images compare, in bytes of distinct non-zero chunks.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    /// Bytes of chunks both use.
    pub shared_bytes: u64,
    /// Number of chunks both use.
    pub shared_chunks: usize,
    /// Bytes only the first uses.
    pub only_a_bytes: u64,
    /// Bytes only the second uses.
    pub only_b_bytes: u64,
    /// Zero (hole) bytes in each.
    pub zero_bytes: (u64, u64),
}

/// A chunk store. See the module docs for the rules it keeps.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    pub(crate) db: Db,
    pub(crate) packs: Packs,
    pub(crate) writer: Mutex<Option<PackWriter>>,
    /// Shared by operations that add references, exclusive for deleting chunks.
    pub(crate) collect: RwLock<()>,
    /// Mirror of the `corrupt` column family. Written after the database, so it may
    /// briefly list a chunk already repaired (conservative), never the reverse.
    corrupt: RwLock<HashSet<ChunkId>>,
    /// The indexed chunk ids in memory, built on first need (see `held.rs`).
    pub(crate) held: Held,
    pub(crate) params: ChunkerParams,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. Fails with
    /// [`Error::StoreLocked`] if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with_records(dir, &[])
    }

    /// Opens the store with extra column families for a higher layer's records (the
    /// host manager's VMs and deployments), reached through [`Store::records`].
    pub fn open_with_records(dir: &Path, families: &[&'static str]) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let lock = lock_store(dir)?;
        let db = Db::open(&dir.join("db"), families)?;
        let packs = Packs::open(&dir.join("packs"))?;
        let corrupt = RwLock::new(db.corrupt_ids()?);
        Ok(Self {
            dir: dir.to_owned(),
            db,
            packs,
            writer: Mutex::new(None),
            collect: RwLock::new(()),
            corrupt,
            held: Held::default(),
            params: ChunkerParams::DEFAULT,
            _lock: lock,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chunker parameters imports use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The manifest a reference points at.
    pub fn resolve(&self, image: &ImageRef) -> Result<ManifestId, Error> {
        match image {
            ImageRef::Id(id) => {
                if self.db.get(db::MANIFESTS, id.as_bytes())?.is_none() {
                    return Err(Error::UnknownManifest { id: *id });
                }
                Ok(*id)
            }
            ImageRef::Name(name) => self
                .name_target(name)?
                .map(|r| r.manifest)
                .ok_or_else(|| Error::UnknownName { name: name.clone() }),
        }
    }

    fn name_target(&self, name: &ImageName) -> Result<Option<NameRecord>, Error> {
        let key = name.to_string();
        self.db.get(db::NAMES, key.as_bytes())?.map(|b| db::decode_name(&key, &b)).transpose()
    }

    /// The stored manifest `id`.
    pub fn manifest(&self, id: &ManifestId) -> Result<Manifest, Error> {
        let bytes =
            self.db.get(db::MANIFESTS, id.as_bytes())?.ok_or(Error::UnknownManifest { id: *id })?;
        Manifest::decode(&bytes).map_err(|e| Error::BadRecord {
            table: db::MANIFESTS,
            key: id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Whether the store records manifest `id` (without reading it).
    pub fn has_manifest(&self, id: &ManifestId) -> Result<bool, Error> {
        self.db.contains(db::MANIFESTS, id.as_bytes())
    }

    /// Records `manifest` (all of whose chunks must already be stored and durable) and
    /// points `name` at it, in one durable batch together with what `batch` holds.
    pub(crate) fn commit_manifest(
        &self,
        manifest: &Manifest,
        name: Option<&ImageName>,
        mut batch: WriteBatch,
    ) -> Result<ManifestId, Error> {
        let id = manifest.id();
        let now = db::now_ms();
        batch.put_cf(self.db.cf(db::MANIFESTS), id.as_bytes(), manifest.encode());
        self.put_used_now(&mut batch, &id, now)?;
        if let Some(name) = name {
            self.db.put_name(
                &mut batch,
                &name.to_string(),
                &NameRecord { manifest: id, created_ms: now },
            );
        }
        self.db.write(batch, true)?;
        Ok(id)
    }

    /// Notes that a manifest was just used (exported, staged): the LRU order.
    pub fn touch(&self, id: &ManifestId) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        self.put_used_now(&mut batch, id, db::now_ms())?;
        self.db.write(batch, false)
    }

    /// Adds to `batch` that `id` was used at `now`, keeping when it was first imported.
    fn put_used_now(&self, batch: &mut WriteBatch, id: &ManifestId, now: u64) -> Result<(), Error> {
        let imported_ms = self.db.usage(id)?.map_or(now, |u| u.imported_ms);
        self.db.put_usage(batch, id, &UsageRecord { imported_ms, last_used_ms: now });
        Ok(())
    }

    /// Points `name` at the stored manifest `id`.
    pub fn tag(&self, name: &ImageName, id: &ManifestId) -> Result<(), Error> {
        self.manifest(id)?;
        let mut batch = WriteBatch::default();
        let rec = NameRecord { manifest: *id, created_ms: db::now_ms() };
        self.db.put_name(&mut batch, &name.to_string(), &rec);
        self.db.write(batch, true)
    }

    /// Records `seal`: its name now points at its manifest (which must be stored), and
    /// the seal is kept beside the name, in one write. The signature is not checked
    /// here: the caller verified it against the key it trusts.
    pub fn put_seal(&self, seal: &crate::Seal) -> Result<(), Error> {
        self.manifest(&seal.manifest())?;
        let mut batch = WriteBatch::default();
        let rec = NameRecord { manifest: seal.manifest(), created_ms: db::now_ms() };
        self.db.put_name(&mut batch, &seal.name().to_string(), &rec);
        self.db.put_seal(&mut batch, seal);
        self.db.write(batch, true)
    }

    /// Imports the image at `path` as `name`, sealed by `key` (its VO's) with
    /// `visibility`: the manifest is stored first, then the name with its seal in one
    /// write, so no name is ever left unsealed.
    pub fn import_sealed(
        &self,
        path: &Path,
        name: &ImageName,
        key: &crate::VoKey,
        visibility: crate::Visibility,
        progress: &dyn crate::Progress,
    ) -> Result<crate::ImportReport, Error> {
        self.import_sealed_from(crate::ImageFile::open(path)?, name, key, visibility, progress)
    }

    /// [`Store::import_sealed`] of a file already open.
    pub fn import_sealed_from(
        &self,
        image: crate::ImageFile,
        name: &ImageName,
        key: &crate::VoKey,
        visibility: crate::Visibility,
        progress: &dyn crate::Progress,
    ) -> Result<crate::ImportReport, Error> {
        key.may_sign(name)?;
        let report = self.import_from(image, None, progress)?;
        self.put_seal(&crate::Seal::sign(key, name, report.manifest, visibility)?)?;
        Ok(crate::ImportReport { name: Some(name.to_string()), ..report })
    }

    /// Imports the image at `path` under `seal`, made where its VO's key lives (`vw vo
    /// seal`): the image must be the manifest the seal names, or nothing is named and
    /// a manifest this import added is removed again. The seal's signature is not
    /// checked here: the caller verified it against the key it trusts.
    pub fn import_presealed(
        &self,
        path: &Path,
        seal: &crate::Seal,
        progress: &dyn crate::Progress,
    ) -> Result<crate::ImportReport, Error> {
        self.import_presealed_from(crate::ImageFile::open(path)?, seal, progress)
    }

    /// [`Store::import_presealed`] of a file already open.
    pub fn import_presealed_from(
        &self,
        image: crate::ImageFile,
        seal: &crate::Seal,
        progress: &dyn crate::Progress,
    ) -> Result<crate::ImportReport, Error> {
        let path = image.path().to_owned();
        let before: HashSet<ManifestId> = self.manifest_ids()?.into_iter().collect();
        let report = self.import_from(image, None, progress)?;
        if report.manifest != seal.manifest() {
            // Only what this import added goes; a manifest stored before stays.
            if !before.contains(&report.manifest) {
                self.remove(&ImageRef::Id(report.manifest))?;
            }
            return Err(Error::SealMismatch {
                path,
                sealed: seal.manifest(),
                found: report.manifest,
            });
        }
        self.put_seal(seal)?;
        Ok(crate::ImportReport { name: Some(seal.name().to_string()), ..report })
    }

    /// The seal recorded for `name`, if any.
    pub fn seal(&self, name: &ImageName) -> Result<Option<crate::Seal>, Error> {
        let key = name.to_string();
        self.db.get(db::SEALS, key.as_bytes())?.map(|v| db::decode_seal(&key, &v)).transpose()
    }

    /// Every recorded seal, by name.
    pub fn seals(&self) -> Result<Vec<crate::Seal>, Error> {
        self.db
            .scan(db::SEALS)
            .map(|r| {
                let (k, v) = r?;
                db::decode_seal(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    /// Which chunks of `manifest` (and how many bytes) this store lacks. Zero chunks are
    /// never missing. Corrupt chunks count as missing.
    ///
    /// A manifest stored here is complete (the store never deletes a chunk a manifest
    /// lists), so for it only corrupt chunks can be missing and no chunk is looked up.
    /// Otherwise the distinct ids are checked against the in-memory set of indexed ids
    /// (built by the first such query).
    pub fn missing(&self, manifest: &Manifest) -> Result<Missing, Error> {
        let _collect = self.collect.read().expect("collect lock");
        self.missing_locked(manifest)
    }

    /// [`Store::missing`] for a caller that holds the collect lock already.
    pub(crate) fn missing_locked(&self, manifest: &Manifest) -> Result<Missing, Error> {
        let stored = self.db.get(db::MANIFESTS, manifest.id().as_bytes())?.is_some();
        let corrupt = self.corrupt.read().expect("corrupt set lock");
        if stored && corrupt.is_empty() {
            return Ok(Missing::default());
        }
        let held = if stored { None } else { Some(self.held.view(&self.db)?) };
        let mut seen = HashSet::with_capacity(manifest.chunks().len());
        let mut out = Missing::default();
        for c in manifest.chunks().iter().filter(|c| !c.is_zero()) {
            let lacking =
                corrupt.contains(&c.id) || held.as_ref().is_some_and(|h| !h.contains(&c.id));
            if lacking && seen.insert(c.id) {
                out.chunks.push(*c);
                out.bytes += u64::from(c.len);
            }
        }
        Ok(out)
    }

    /// True if the chunk is known to be corrupt.
    pub(crate) fn is_corrupt(&self, id: &ChunkId) -> bool {
        self.corrupt.read().expect("corrupt set lock").contains(id)
    }

    /// Number of chunks known to be corrupt.
    pub(crate) fn corrupt_count(&self) -> usize {
        self.corrupt.read().expect("corrupt set lock").len()
    }

    /// Forgets that these chunks were corrupt: a good copy of each is now durable.
    pub(crate) fn forget_corrupt(&self, ids: &[ChunkId]) {
        if !ids.is_empty() {
            let mut set = self.corrupt.write().expect("corrupt set lock");
            for id in ids {
                set.remove(id);
            }
        }
    }

    /// Reads a chunk and checks its bytes against its id. A mismatch marks the chunk
    /// corrupt and fails with [`Error::CorruptChunk`]; bad bytes are never returned.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let rec = self.db.chunk_record(id)?.ok_or(Error::MissingChunk { id: *id })?;
        let mut out = Vec::new();
        self.read_verified(id, &rec, &mut out)?;
        Ok(out)
    }

    pub(crate) fn read_verified(
        &self,
        id: &ChunkId,
        rec: &ChunkRecord,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let corrupt = Error::CorruptChunk { id: *id, pack: rec.loc.pack, offset: rec.loc.offset };
        if self.is_corrupt(id) {
            return Err(corrupt);
        }
        self.packs.read(rec.loc, out)?;
        if ChunkId::of(out) != *id {
            self.mark_corrupt(id, rec)?;
            return Err(corrupt);
        }
        Ok(())
    }

    pub(crate) fn mark_corrupt(&self, id: &ChunkId, rec: &ChunkRecord) -> Result<(), Error> {
        tracing::warn!(chunk = %id, pack = rec.loc.pack, offset = rec.loc.offset, "corrupt chunk");
        let mut batch = WriteBatch::default();
        self.db.put_corrupt(&mut batch, id);
        self.db.write(batch, true)?;
        self.corrupt.write().expect("corrupt set lock").insert(*id);
        Ok(())
    }

    /// Every name, sorted, with its target.
    pub fn names(&self) -> Result<Vec<(String, ManifestId)>, Error> {
        self.db
            .scan(db::NAMES)
            .map(|r| {
                let (k, v) = r?;
                let name = String::from_utf8_lossy(&k).into_owned();
                let rec = db::decode_name(&name, &v)?;
                Ok((name, rec.manifest))
            })
            .collect()
    }

    /// Every pin, by manifest.
    pub fn pins(&self) -> Result<BTreeMap<ManifestId, Vec<PinReason>>, Error> {
        let mut out: BTreeMap<ManifestId, Vec<PinReason>> = BTreeMap::new();
        for r in self.db.scan(db::PINS) {
            let (k, v) = r?;
            let (id, reason) = split_pin_key(&k)?;
            db::decode_pin(&reason.to_string(), &v)?;
            out.entry(id).or_default().push(reason);
        }
        Ok(out)
    }

    /// Every stored manifest id, sorted.
    pub fn manifest_ids(&self) -> Result<Vec<ManifestId>, Error> {
        self.db
            .scan(db::MANIFESTS)
            .map(|r| {
                let (k, _) = r?;
                manifest_key(&k)
            })
            .collect()
    }

    /// Every stored manifest with its names and pins, most recently used first.
    pub fn images(&self) -> Result<Vec<ImageInfo>, Error> {
        let mut names: BTreeMap<ManifestId, Vec<String>> = BTreeMap::new();
        for (name, id) in self.names()? {
            names.entry(id).or_default().push(name);
        }
        let mut sealed: BTreeMap<ManifestId, Vec<(String, crate::Visibility)>> = BTreeMap::new();
        for seal in self.seals()? {
            sealed
                .entry(seal.manifest())
                .or_default()
                .push((seal.name().to_string(), seal.visibility()));
        }
        let pins = self.pins()?;
        let mut out = Vec::new();
        for id in self.manifest_ids()? {
            let m = self.manifest(&id)?;
            out.push(ImageInfo {
                id,
                names: names.remove(&id).unwrap_or_default(),
                sealed: sealed.remove(&id).unwrap_or_default(),
                len: m.len(),
                chunks: m.chunks().len(),
                zero_bytes: m.zero_bytes(),
                pins: pins.get(&id).cloned().unwrap_or_default(),
                last_used_ms: self.db.usage(&id)?.map_or(0, |u| u.last_used_ms),
            });
        }
        out.sort_by(|a, b| b.last_used_ms.cmp(&a.last_used_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Pins an image so that it and its chunks are never evicted.
    pub fn pin(&self, image: &ImageRef, reason: &PinReason) -> Result<ManifestId, Error> {
        let id = self.resolve(image)?;
        let mut batch = WriteBatch::default();
        self.db.put_pin(&mut batch, &pin_key(&id, reason), &PinRecord { since_ms: db::now_ms() });
        self.db.write(batch, true)?;
        Ok(id)
    }

    /// Removes a pin; returns whether it existed.
    pub fn unpin(&self, image: &ImageRef, reason: &PinReason) -> Result<bool, Error> {
        let id = self.resolve(image)?;
        let key = pin_key(&id, reason);
        let existed = self.db.get(db::PINS, &key)?.is_some();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.db.cf(db::PINS), key);
        self.db.write(batch, true)?;
        Ok(existed)
    }

    /// Removes an image. By name: removes the name, and the manifest too once no name
    /// points at it. By id: removes the manifest and every name pointing at it. A pinned
    /// manifest is refused. Its chunks stay cached until eviction or `gc`. Returns the
    /// manifest removed, if one was.
    pub fn remove(&self, image: &ImageRef) -> Result<Option<ManifestId>, Error> {
        let id = self.resolve(image)?;
        let names: Vec<String> =
            self.names()?.into_iter().filter(|(_, m)| *m == id).map(|(n, _)| n).collect();
        let mut batch = WriteBatch::default();
        let drop_names: Vec<&String> = match image {
            ImageRef::Name(name) => {
                let name = name.to_string();
                names.iter().filter(|n| **n == name).collect()
            }
            ImageRef::Id(_) => names.iter().collect(),
        };
        let drop_manifest = drop_names.len() == names.len();
        if drop_manifest {
            if let Some(reasons) = self.pins()?.get(&id) {
                let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                return Err(Error::Pinned { name: image.to_string(), reasons: reasons.join(", ") });
            }
            batch.delete_cf(self.db.cf(db::MANIFESTS), id.as_bytes());
            batch.delete_cf(self.db.cf(db::USAGE), id.as_bytes());
        }
        for n in drop_names {
            batch.delete_cf(self.db.cf(db::NAMES), n.as_bytes());
            batch.delete_cf(self.db.cf(db::SEALS), n.as_bytes());
        }
        self.db.write(batch, true)?;
        Ok(drop_manifest.then_some(id))
    }

    /// Compares two stored images.
    pub fn diff(&self, a: &ImageRef, b: &ImageRef) -> Result<Diff, Error> {
        let ma = self.manifest(&self.resolve(a)?)?;
        let mb = self.manifest(&self.resolve(b)?)?;
        let distinct = |m: &Manifest| -> BTreeMap<ChunkId, u32> {
            m.chunks().iter().filter(|c| !c.is_zero()).map(|c| (c.id, c.len)).collect()
        };
        let (da, db_) = (distinct(&ma), distinct(&mb));
        let shared: Vec<u64> =
            da.iter().filter(|(id, _)| db_.contains_key(id)).map(|(_, l)| u64::from(*l)).collect();
        let shared_bytes: u64 = shared.iter().sum();
        let total = |d: &BTreeMap<ChunkId, u32>| d.values().map(|&l| u64::from(l)).sum::<u64>();
        Ok(Diff {
            shared_bytes,
            shared_chunks: shared.len(),
            only_a_bytes: total(&da) - shared_bytes,
            only_b_bytes: total(&db_) - shared_bytes,
            zero_bytes: (ma.zero_bytes(), mb.zero_bytes()),
        })
    }
}

pub(crate) fn pin_key(id: &ManifestId, reason: &PinReason) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(reason.key_suffix().as_bytes());
    key
}

fn split_pin_key(key: &[u8]) -> Result<(ManifestId, PinReason), Error> {
    let id = manifest_key(key.get(..32).unwrap_or(key))?;
    let bad = |reason: String| Error::BadRecord { table: db::PINS, key: id.to_string(), reason };
    let reason = std::str::from_utf8(&key[32..]).map_err(|_| bad("reason is not UTF-8".into()))?;
    let reason = PinReason::from_key_suffix(reason)
        .ok_or_else(|| bad(format!("unknown pin reason `{reason}`")))?;
    Ok((id, reason))
}

pub(crate) fn manifest_key(key: &[u8]) -> Result<ManifestId, Error> {
    <[u8; 32]>::try_from(key).map(ManifestId::from_bytes).map_err(|_| Error::BadRecord {
        table: db::MANIFESTS,
        key: format!("{key:02x?}"),
        reason: "key is not 32 bytes".into(),
    })
}

pub(crate) fn chunk_key(key: &[u8]) -> Result<ChunkId, Error> {
    <[u8; 32]>::try_from(key).map(ChunkId::from_bytes).map_err(|_| Error::BadRecord {
        table: db::CHUNKS,
        key: format!("{key:02x?}"),
        reason: "key is not 32 bytes".into(),
    })
}

/// Takes the store's exclusive lock and records our pid in it.
/// How long opening waits for a busy store.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn lock_store(dir: &Path) -> Result<File, Error> {
    use rustix::fs::{flock, FlockOperation};
    let path = dir.join("vw.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    // A lock can outlive its holder by a moment: a process that closed the store while
    // another of its threads was spawning a child shares the lock with that child until
    // it execs. So wait briefly before reporting the store as busy.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
                return Err(Error::StoreLocked { dir: dir.to_owned(), holder });
            }
            Err(e) => return Err(Error::io("lock", &path, e.into())),
        }
    }
    file.set_len(0).map_err(|e| Error::io("write", &path, e))?;
    writeln!(file, "{}", std::process::id()).map_err(|e| Error::io("write", &path, e))?;
    Ok(file)
}
