//! Verify: re-hash stored chunks and check that manifests are complete.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::ChunkRecord;
use crate::{ChunkId, Error, ManifestId, Progress, Store};

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Manifests checked for completeness.
    pub manifests: usize,
    /// Chunks re-hashed.
    pub chunks: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks whose bytes do not match their id (now marked corrupt).
    pub corrupt: Vec<ChunkId>,
    /// Chunks a manifest lists that the store does not hold.
    pub missing: Vec<(ManifestId, ChunkId)>,
}

impl VerifyReport {
    /// True if nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

impl Store {
    /// Re-hashes the chunks of one manifest, or of the whole store, on two threads.
    pub fn verify(
        &self,
        only: Option<&ManifestId>,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        let manifests = match only {
            Some(id) => vec![*id],
            None => self.manifest_ids()?,
        };
        // The chunks to re-hash: those of the one manifest, or every stored chunk.
        let mut records: BTreeMap<ChunkId, ChunkRecord> = BTreeMap::new();
        for id in &manifests {
            let ids = self.manifest(id)?.stored_ids();
            for (cid, rec) in ids.iter().zip(self.db.chunk_records(&ids)?) {
                match rec {
                    None => report.missing.push((*id, *cid)),
                    Some(rec) if only.is_some() => {
                        records.insert(*cid, rec);
                    }
                    Some(_) => {}
                }
            }
        }
        report.manifests = manifests.len();
        if only.is_none() {
            for r in self.db.chunks() {
                let (id, rec) = r?;
                records.insert(id, rec);
            }
        }
        let records: Vec<(ChunkId, ChunkRecord)> = records.into_iter().collect();
        progress.start(records.iter().map(|(_, r)| u64::from(r.loc.len)).sum());
        let half = records.len().div_ceil(2);
        let results: Vec<Result<Vec<ChunkId>, Error>> = std::thread::scope(|s| {
            let workers: Vec<_> = records
                .chunks(half.max(1))
                .map(|part| {
                    s.spawn(move || {
                        let mut bad = Vec::new();
                        let mut buf = Vec::new();
                        for (id, rec) in part {
                            match self.read_verified(id, rec, &mut buf) {
                                Ok(()) => {}
                                Err(Error::CorruptChunk { .. }) => bad.push(*id),
                                Err(e) => return Err(e),
                            }
                            progress.advance(u64::from(rec.loc.len));
                        }
                        Ok(bad)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("verify worker panicked")).collect()
        });
        for r in results {
            report.corrupt.extend(r?);
        }
        report.chunks = records.len();
        report.bytes = records.iter().map(|(_, r)| u64::from(r.loc.len)).sum();
        Ok(report)
    }
}
