//! Records of higher layers kept in the store's database: the host manager's VMs,
//! deployments and address allocations live beside the chunks (`docs/ARCHITECTURE.md`),
//! in column families the caller names when it opens the store. The store does not know
//! what they mean; it versions and encodes them like its own ([`crate::record`]) and
//! writes each batch atomically and durably.

use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::Db;
use crate::{record, Error, Store};

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
    /// Sets `family[key]` to `value` behind version byte `version`.
    pub fn put<T: Serialize>(&mut self, family: &'static str, key: &str, version: u8, value: &T) {
        self.ops.push((family, key.to_owned(), Some(Self::encoded(version, value))));
    }

    /// The bytes [`Self::put`] stores for `value` behind version byte `version` (for
    /// the layers' golden tests).
    pub fn encoded<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
        record::encode(version, value)
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

    /// `family[key]`, decoded as version `version`.
    pub fn get<T: DeserializeOwned>(
        &self,
        family: &'static str,
        key: &str,
        version: u8,
    ) -> Result<Option<T>, Error> {
        self.check(family);
        self.db
            .get(family, key.as_bytes())?
            .map(|bytes| record::decode(family, &key, version, &bytes))
            .transpose()
    }

    /// Every record of `family`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        family: &'static str,
        version: u8,
    ) -> Result<Vec<(String, T)>, Error> {
        self.check(family);
        self.db
            .scan(family)
            .map(|entry| {
                let (k, v) = entry?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let value = record::decode(family, &key, version, &v)?;
                Ok((key, value))
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
