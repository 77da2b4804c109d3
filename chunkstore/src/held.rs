//! The chunk ids the index holds, as an in-memory set, for missing-set queries about
//! manifests this store does not hold.
//!
//! Looking 134k ids up in RocksDB took 76–86 ms; a hash set answers in a few. The set
//! is built on the first such query (a scan of the `chunks` keys) and then kept in
//! step: imports add what they wrote after their batch is durable (so the set may lag
//! and call a chunk missing that is not, which only costs a redundant fetch), and
//! garbage collection removes what it deleted before it releases the exclusive
//! `collect` lock (so the set never holds a deleted chunk while a reader can look).
//!
//! Keys are the ids' first 16 bytes: two different chunks collide with probability
//! about n²/2^129, and forcing a collision costs about 2^64 BLAKE3 evaluations. The
//! set costs about 19 bytes per chunk (about 3 MB per 10 GiB of distinct data).

use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard};

use crate::db::{self, Db};
use crate::store::chunk_key;
use crate::{ChunkId, Error};

#[derive(Debug, Default)]
pub(crate) struct Held {
    set: RwLock<Option<HashSet<u128>>>,
}

fn key(id: &ChunkId) -> u128 {
    let mut head = [0u8; 16];
    head.copy_from_slice(&id.as_bytes()[..16]);
    u128::from_le_bytes(head)
}

impl Held {
    /// A read view of the set, building it first if needed. Callers hold the `collect`
    /// lock shared, so no chunk is deleted meanwhile.
    pub(crate) fn view(&self, db: &Db) -> Result<HeldView<'_>, Error> {
        loop {
            let guard = self.set.read().expect("held set lock");
            if guard.is_some() {
                return Ok(HeldView(guard));
            }
            drop(guard);
            let mut guard = self.set.write().expect("held set lock");
            if guard.is_none() {
                let mut set = HashSet::new();
                for r in db.scan(db::CHUNKS) {
                    set.insert(key(&chunk_key(&r?.0)?));
                }
                *guard = Some(set);
            }
        }
    }

    /// Records chunks whose index entries are now durable.
    pub(crate) fn insert(&self, ids: &[ChunkId]) {
        if let Some(set) = self.set.write().expect("held set lock").as_mut() {
            set.extend(ids.iter().map(key));
        }
    }

    /// Forgets deleted chunks. Called under the exclusive `collect` lock.
    pub(crate) fn remove(&self, ids: &[ChunkId]) {
        if let Some(set) = self.set.write().expect("held set lock").as_mut() {
            for id in ids {
                set.remove(&key(id));
            }
        }
    }
}

/// A built set, read-locked.
pub(crate) struct HeldView<'a>(RwLockReadGuard<'a, Option<HashSet<u128>>>);

impl HeldView<'_> {
    /// Whether the index holds `id`.
    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.0.as_ref().is_some_and(|set| set.contains(&key(id)))
    }
}
