//! Records of higher layers kept in the store's database: the host manager's VMs,
//! deployments and address allocations live beside the chunks (`docs/ARCHITECTURE.md`),
//! in column families the caller names when it opens the store. The store does not know
//! what they mean, nor how they are encoded (the layer that owns a family versions its
//! records and reads the versions it wrote before); it writes each batch atomically and
//! durably.

use rocksdb::WriteBatch;

use crate::db::Db;
use crate::{Error, Store};

/// Typed access to the extra families (see [`Store::open_with_records`]).
#[derive(Debug)]
pub struct Records<'s> {
    db: &'s Db,
}

/// Writes to apply together.
#[derive(Debug, Default)]
pub struct RecordBatch {
    ops: Vec<(&'static str, String, Option<Vec<u8>>)>,
}

impl RecordBatch {
    /// Sets `family[key]` to `value`, encoded by the layer that owns the family.
    pub fn put(&mut self, family: &'static str, key: &str, value: Vec<u8>) {
        self.ops.push((family, key.to_owned(), Some(value)));
    }

    /// Deletes `family[key]`.
    pub fn delete(&mut self, family: &'static str, key: &str) {
        self.ops.push((family, key.to_owned(), None));
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Store {
    /// The extra record families opened with [`Store::open_with_records`].
    pub fn records(&self) -> Records<'_> {
        Records { db: &self.db }
    }
}

impl Records<'_> {
    fn check(&self, family: &'static str) {
        assert!(self.db.extra.contains(&family), "record family {family} was not opened");
    }

    /// `family[key]`, as the layer that owns the family encoded it.
    pub fn get(&self, family: &'static str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.check(family);
        self.db.get(family, key.as_bytes())
    }

    /// Every record of `family`, in key order.
    pub fn scan(&self, family: &'static str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.check(family);
        self.db
            .scan(family)
            .map(|entry| {
                let (k, v) = entry?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.into_vec()))
            })
            .collect()
    }

    /// Applies `batch` atomically and durably (synced before returning).
    pub fn write(&self, batch: RecordBatch) -> Result<(), Error> {
        let mut wb = WriteBatch::default();
        for (family, key, value) in batch.ops {
            self.check(family);
            match value {
                Some(v) => wb.put_cf(self.db.cf(family), key.as_bytes(), v),
                None => wb.delete_cf(self.db.cf(family), key.as_bytes()),
            }
        }
        self.db.write(wb, true)
    }
}
