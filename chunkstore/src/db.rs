//! The store's RocksDB database (`db/`): one column family per record type, every value
//! versioned (see [`crate::record`]).
//!
//! | family | key | value |
//! |---|---|---|
//! | `meta` | `format`, `capacity` | store format version, cache capacity |
//! | `chunks` | chunk id | [`ChunkRecord`]: pack location, when added |
//! | `corrupt` | chunk id | [`CorruptRecord`]: when its bytes were found not to match |
//! | `manifests` | manifest id | the manifest's canonical encoding (itself versioned) |
//! | `names` | `vo/name:tag` | [`NameRecord`]: the manifest it points at |
//! | `seals` | `vo/name:tag` | the name's [`crate::Seal`], encoded: its VO's signature |
//! | `pins` | manifest id + reason | [`PinRecord`] |
//! | `usage` | manifest id | [`UsageRecord`]: imported and last used |

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DataBlockIndexType,
    IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::pack::Loc;
use crate::{record, ChunkId, Error, ManifestId};

/// The store format this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;

pub(crate) const META: &str = "meta";
pub(crate) const CHUNKS: &str = "chunks";
pub(crate) const MANIFESTS: &str = "manifests";
pub(crate) const NAMES: &str = "names";
pub(crate) const PINS: &str = "pins";
pub(crate) const USAGE: &str = "usage";
pub(crate) const CORRUPT: &str = "corrupt";
pub(crate) const SEALS: &str = "seals";
const FAMILIES: [&str; 8] = [META, CHUNKS, MANIFESTS, NAMES, PINS, USAGE, CORRUPT, SEALS];

pub(crate) const CHUNK_RECORD_V: u8 = 1;
pub(crate) const NAME_RECORD_V: u8 = 1;
pub(crate) const PIN_RECORD_V: u8 = 1;
pub(crate) const USAGE_RECORD_V: u8 = 1;
pub(crate) const CORRUPT_RECORD_V: u8 = 1;
pub(crate) const META_V: u8 = 1;
pub(crate) const SEAL_RECORD_V: u8 = 1;

/// Where a stored chunk is and what the store knows about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkRecord {
    pub loc: Loc,
    /// Milliseconds since the epoch when the chunk was stored: the LRU order of chunks
    /// no manifest references.
    pub added_ms: u64,
}

/// A chunk whose stored bytes do not match its id, found by `verify` or a read. It
/// counts as missing, so the next import or fetch of it writes a good copy (which
/// removes this record). Kept apart from [`ChunkRecord`] so the set is small enough to
/// hold in memory and check without touching the chunk index.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct CorruptRecord {
    pub since_ms: u64,
}

/// A name's target.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct NameRecord {
    pub manifest: ManifestId,
    pub created_ms: u64,
}

/// A pin on a manifest.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct PinRecord {
    pub since_ms: u64,
}

/// When a manifest was imported and last used (imported, exported, staged).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct UsageRecord {
    pub imported_ms: u64,
    pub last_used_ms: u64,
}

/// A raw key and value read from a column family.
pub(crate) type Entry = (Box<[u8]>, Box<[u8]>);

/// The open database.
#[derive(Debug)]
pub(crate) struct Db {
    db: DB,
    dir: PathBuf,
    /// Families opened for records of higher layers (see `records.rs`).
    pub(crate) extra: Vec<&'static str>,
}

impl Db {
    /// Opens the database with the store's families and `extra` ones.
    pub(crate) fn open(dir: &Path, extra: &[&'static str]) -> Result<Self, Error> {
        let db_err = |error| Error::Db { dir: dir.to_owned(), error };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);

        // Chunk lookups are point reads of random 32-byte keys, often of keys that are
        // absent (the missing set): bloom filters in tables and in the memtable (where
        // a fresh import's entries sit), hashed data blocks, a shared block cache.
        let cache = Cache::new_lru_cache(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
        let mut chunk_opts = Options::default();
        chunk_opts.set_block_based_table_factory(&table);
        chunk_opts.set_write_buffer_size(32 << 20);
        chunk_opts.set_memtable_whole_key_filtering(true);
        chunk_opts.set_memtable_prefix_bloom_ratio(0.1);
        let mut small = Options::default();
        small.set_write_buffer_size(4 << 20);

        if let Some(clash) = extra.iter().find(|name| FAMILIES.contains(name)) {
            panic!("record family {clash} clashes with the store's own");
        }
        // Families another opener added (the host manager's records) are opened too,
        // untouched: RocksDB refuses to open a database without all of them.
        let others: Vec<String> = DB::list_cf(&opts, dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                n != "default" && !FAMILIES.contains(&n.as_str()) && !extra.contains(&n.as_str())
            })
            .collect();
        let families = FAMILIES
            .iter()
            .chain(extra)
            .map(|&name| {
                let o = if name == CHUNKS { chunk_opts.clone() } else { small.clone() };
                ColumnFamilyDescriptor::new(name, o)
            })
            .chain(others.iter().map(|n| ColumnFamilyDescriptor::new(n, small.clone())))
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&opts, dir, families).map_err(db_err)?;
        let this = Self { db, dir: dir.to_owned(), extra: extra.to_vec() };
        this.check_format()?;
        Ok(this)
    }

    fn check_format(&self) -> Result<(), Error> {
        let key = b"format";
        match self.get(META, key)? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(META), key, record::encode(META_V, &FORMAT_VERSION));
                self.write(batch, true)
            }
            Some(bytes) => {
                let found: u32 = record::decode(META, &"format", META_V, &bytes)?;
                if found == FORMAT_VERSION {
                    Ok(())
                } else {
                    Err(Error::StoreVersion {
                        dir: self.dir.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
            }
        }
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("every column family is opened")
    }

    fn err(&self, source: rocksdb::Error) -> Error {
        Error::Db { dir: self.dir.clone(), error: source }
    }

    pub(crate) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| self.err(e))
    }

    /// Whether `key` is in a family (its value is not copied out).
    pub(crate) fn contains(&self, cf: &str, key: &[u8]) -> Result<bool, Error> {
        Ok(self.db.get_pinned_cf(self.cf(cf), key).map_err(|e| self.err(e))?.is_some())
    }

    /// Applies `batch` atomically; with `sync`, durably before returning.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(|e| self.err(e))
    }

    /// Every key and value of a family, in key order.
    pub(crate) fn scan(&self, cf: &str) -> impl Iterator<Item = Result<Entry, Error>> + '_ {
        self.db.iterator_cf(self.cf(cf), IteratorMode::Start).map(|r| r.map_err(|e| self.err(e)))
    }

    /// Chunk records for `ids` (sorted ascending), in the same order.
    pub(crate) fn chunk_records(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkRecord>>, Error> {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must be sorted and unique");
        let keys = ids.iter().map(|id| id.as_bytes().as_slice());
        let values = self.db.batched_multi_get_cf(self.cf(CHUNKS), keys, true);
        ids.iter()
            .zip(values)
            .map(|(id, v)| match v.map_err(|e| self.err(e))? {
                None => Ok(None),
                Some(bytes) => decode_chunk(id, &bytes).map(Some),
            })
            .collect()
    }

    /// Every chunk record, in id order.
    pub(crate) fn chunks(
        &self,
    ) -> impl Iterator<Item = Result<(ChunkId, ChunkRecord), Error>> + '_ {
        self.scan(CHUNKS).map(|r| {
            let (k, v) = r?;
            let id = crate::store::chunk_key(&k)?;
            Ok((id, decode_chunk(&id, &v)?))
        })
    }

    pub(crate) fn chunk_record(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, Error> {
        self.get(CHUNKS, id.as_bytes())?.map(|b| decode_chunk(id, &b)).transpose()
    }

    pub(crate) fn put_chunk(&self, batch: &mut WriteBatch, id: &ChunkId, rec: &ChunkRecord) {
        batch.put_cf(self.cf(CHUNKS), id.as_bytes(), record::encode(CHUNK_RECORD_V, rec));
    }

    /// Every chunk recorded as corrupt.
    pub(crate) fn corrupt_ids(&self) -> Result<HashSet<ChunkId>, Error> {
        self.scan(CORRUPT)
            .map(|r| {
                let (k, v) = r?;
                let id = crate::store::chunk_key(&k)?;
                record::decode::<CorruptRecord>(CORRUPT, &id, CORRUPT_RECORD_V, &v)?;
                Ok(id)
            })
            .collect()
    }

    pub(crate) fn put_corrupt(&self, batch: &mut WriteBatch, id: &ChunkId) {
        let rec = CorruptRecord { since_ms: now_ms() };
        batch.put_cf(self.cf(CORRUPT), id.as_bytes(), record::encode(CORRUPT_RECORD_V, &rec));
    }

    pub(crate) fn delete_corrupt(&self, batch: &mut WriteBatch, id: &ChunkId) {
        batch.delete_cf(self.cf(CORRUPT), id.as_bytes());
    }

    pub(crate) fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, Error> {
        self.get(META, key.as_bytes())?.map(|b| record::decode(META, &key, META_V, &b)).transpose()
    }

    pub(crate) fn put_meta<T: Serialize>(&self, batch: &mut WriteBatch, key: &str, value: &T) {
        batch.put_cf(self.cf(META), key.as_bytes(), record::encode(META_V, value));
    }

    pub(crate) fn put_name(&self, batch: &mut WriteBatch, name: &str, rec: &NameRecord) {
        batch.put_cf(self.cf(NAMES), name.as_bytes(), record::encode(NAME_RECORD_V, rec));
    }

    pub(crate) fn put_seal(&self, batch: &mut WriteBatch, seal: &crate::Seal) {
        let name = seal.name().to_string();
        batch.put_cf(
            self.cf(SEALS),
            name.as_bytes(),
            record::encode(SEAL_RECORD_V, &seal.encode()),
        );
    }

    pub(crate) fn put_pin(&self, batch: &mut WriteBatch, key: &[u8], rec: &PinRecord) {
        batch.put_cf(self.cf(PINS), key, record::encode(PIN_RECORD_V, rec));
    }

    pub(crate) fn put_usage(&self, batch: &mut WriteBatch, id: &ManifestId, rec: &UsageRecord) {
        batch.put_cf(self.cf(USAGE), id.as_bytes(), record::encode(USAGE_RECORD_V, rec));
    }

    pub(crate) fn usage(&self, id: &ManifestId) -> Result<Option<UsageRecord>, Error> {
        self.get(USAGE, id.as_bytes())?
            .map(|b| record::decode(USAGE, id, USAGE_RECORD_V, &b))
            .transpose()
    }
}

pub(crate) fn decode_chunk(id: &ChunkId, bytes: &[u8]) -> Result<ChunkRecord, Error> {
    record::decode(CHUNKS, id, CHUNK_RECORD_V, bytes)
}

pub(crate) fn decode_name(name: &str, bytes: &[u8]) -> Result<NameRecord, Error> {
    record::decode(NAMES, &name, NAME_RECORD_V, bytes)
}

/// A stored seal: decoded and checked for form (the signature is the reader's to
/// verify against the key it trusts).
pub(crate) fn decode_seal(name: &str, bytes: &[u8]) -> Result<crate::Seal, Error> {
    let encoded: Vec<u8> = record::decode(SEALS, &name, SEAL_RECORD_V, bytes)?;
    crate::Seal::decode(&encoded).map_err(|e| Error::BadRecord {
        table: SEALS,
        key: name.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn decode_pin(key: &str, bytes: &[u8]) -> Result<PinRecord, Error> {
    record::decode(PINS, &key, PIN_RECORD_V, bytes)
}

pub(crate) use crate::now_ms;
