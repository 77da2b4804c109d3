//! A lazy disk: a VM's own copy of an image, served while the image's chunks are still
//! arriving.
//!
//! The copy is a sparse file of the image's size. Each chunk of the image is a slot:
//! absent (its bytes are not in the file yet), present (the file holds the image's
//! verified bytes there) or written (the guest wrote into it: the file holds the
//! guest's bytes, and no arriving chunk ever lands on it). A read makes every slot it
//! touches present first: from the store when the host holds the chunk, else through
//! the [`Supply`], which fetches it at once and waits until it lands ([`LazyDisk::place`]
//! is how every chunk the stage receives lands, fetched on demand or by the background
//! cascade). A write makes the slots it covers only in part present, then marks every
//! slot it covers written. Reads and writes never touch the shared chunks: the store
//! is read, never written, here.
//!
//! When the stage has every chunk, [`LazyDisk::complete`] fills the slots still absent
//! from the store: the copy is then whole, and the VM reads local data only.
//!
//! The first read of each chunk is recorded in order ([`LazyDisk::trace`]): what a boot
//! of the image reads, for later stages to fetch first.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::StreamExt as _;
use vw_chunkstore::{ChunkId, Layout, Manifest, ManifestId, Placed, Store};

use super::nbd::{errno, BlockDevice, Errno};
use super::LazyError;

/// How a chunk the host does not hold gets here.
pub trait Supply: Send + Sync + 'static {
    /// Fetches chunk `id` (of `len` bytes) at once, ahead of the background cascade,
    /// verified; returns once it has landed in every lazy disk of the stage
    /// ([`LazyDisk::place`]), or why it cannot be had.
    fn fetch(&self, id: ChunkId, len: u32) -> BoxFuture<'static, Result<(), String>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Absent,
    Present,
    Written,
}

pub use crate::report::LazyCounts;

/// A read that failed: which chunk and why (the guest got `EIO`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadFailure {
    /// The chunk (full hex).
    pub chunk: String,
    /// Why it could not be had.
    pub why: String,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    /// Whether each chunk has been read yet (the trace records the first read).
    seen: Vec<bool>,
    trace: Vec<u32>,
    /// How much of the trace was read before the guest was up (its boot).
    booted: Option<usize>,
    counts: LazyCounts,
    failures: Vec<ReadFailure>,
    /// Set once the copy is whole: nothing is fetched any more.
    whole: bool,
}

/// Most read failures a disk keeps for its report.
const MAX_FAILURES: usize = 16;
/// Most chunks one read makes present at once (a read may span hundreds).
const READ_FETCHES: usize = 8;

/// A VM's disk served while its image arrives; see the module doc.
pub struct LazyDisk {
    label: String,
    path: PathBuf,
    file: File,
    manifest: ManifestId,
    size: u64,
    /// Where each chunk is.
    layout: Layout,
    state: Mutex<State>,
    store: Arc<Store>,
    /// Chunks the store holds that this disk must fetch all the same (held only for
    /// images an isolated VO keeps to itself).
    hidden: Arc<HashSet<ChunkId>>,
    supply: Mutex<Option<Arc<dyn Supply>>>,
}

impl std::fmt::Debug for LazyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyDisk").field("label", &self.label).field("path", &self.path).finish()
    }
}

impl LazyDisk {
    /// Makes `path` (which must not exist) the copy of `manifest`'s image for `label`
    /// (`VM/DEVICE`, for messages), sized to the image, every chunk absent but the zero
    /// ones. Chunks the store holds are read from it; the rest come through `supply`.
    pub fn create(
        label: &str,
        manifest: &Manifest,
        path: &Path,
        store: Arc<Store>,
        supply: Arc<dyn Supply>,
    ) -> Result<Self, LazyError> {
        let io = |op: &'static str| move |error| LazyError::Io { op, path: path.to_owned(), error };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("create"))?;
        file.set_len(manifest.len()).map_err(io("size"))?;
        let slots =
            manifest
                .chunks()
                .iter()
                .map(|c| if c.is_zero() { Slot::Present } else { Slot::Absent });
        let n = manifest.chunks().len();
        Ok(LazyDisk {
            label: label.to_owned(),
            path: path.to_owned(),
            file,
            manifest: manifest.id(),
            size: manifest.len(),
            layout: manifest.layout(),
            state: Mutex::new(State {
                slots: slots.collect(),
                seen: vec![false; n],
                trace: Vec::new(),
                booted: None,
                counts: LazyCounts::default(),
                failures: Vec::new(),
                whole: false,
            }),
            store,
            hidden: Arc::default(),
            supply: Mutex::new(Some(supply)),
        })
    }

    /// Chunks the store holds that this disk fetches all the same, as the stage does
    /// (an isolated VO's).
    pub fn with_hidden(mut self, hidden: Arc<HashSet<ChunkId>>) -> Self {
        self.hidden = hidden;
        self
    }

    /// The copy's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image it is a copy of.
    pub fn manifest(&self) -> ManifestId {
        self.manifest
    }

    /// What it has done so far.
    pub fn counts(&self) -> LazyCounts {
        self.lock().counts
    }

    /// The reads that failed, and why (the first [`MAX_FAILURES`]).
    pub fn failures(&self) -> Vec<ReadFailure> {
        self.lock().failures.clone()
    }

    /// The image's chunks in the order the guest first read them (indices into the
    /// manifest's chunk list; zero chunks are never listed).
    pub fn trace(&self) -> Vec<u32> {
        self.lock().trace.clone()
    }

    /// The guest is up: what it read until now is its boot. Only the first call counts.
    pub fn booted(&self) {
        let mut st = self.lock();
        if st.booted.is_none() {
            st.booted = Some(st.trace.len());
        }
    }

    /// Whether its guest has been seen up ([`LazyDisk::booted`]).
    pub fn seen_up(&self) -> bool {
        self.lock().booted.is_some()
    }

    /// The chunks its boot read, in the order first read (all read so far if it has
    /// not been seen up), each once: what a [`vw_chunkstore::BootTrace`] records.
    pub fn boot_trace(&self) -> Vec<ChunkId> {
        let st = self.lock();
        let read = &st.trace[..st.booted.unwrap_or(st.trace.len())];
        let mut seen = HashSet::new();
        read.iter()
            .map(|&i| self.layout.chunks()[i as usize].id)
            .filter(|id| seen.insert(*id))
            .take(vw_chunkstore::trace::MAX_TRACE_CHUNKS)
            .collect()
    }

    /// Whether the copy is whole (every slot present or written).
    pub fn is_whole(&self) -> bool {
        self.lock().whole
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lazy disk lock")
    }

    /// Writes chunk `id` (verified by the caller) at every place the image has it that
    /// is still absent; a chunk the image does not use is ignored.
    pub fn place(&self, id: &ChunkId, data: &[u8]) -> Result<(), LazyError> {
        let at = self.layout.places(id);
        // Under the lock: a guest write to a slot must not race a chunk landing on it.
        let mut st = self.lock();
        for &i in at {
            if st.slots[i] != Slot::Absent {
                continue;
            }
            let c = self.layout.chunks()[i];
            if data.len() != c.len as usize {
                return Err(LazyError::ChunkLength {
                    chunk: *id,
                    len: data.len(),
                    expected: c.len,
                });
            }
            self.file.write_all_at(data, c.offset).map_err(|error| LazyError::Io {
                op: "write",
                path: self.path.clone(),
                error,
            })?;
            st.slots[i] = Slot::Present;
        }
        Ok(())
    }

    /// Makes slot `i` present: from the store, else through the supply.
    async fn ensure(&self, i: usize) -> Result<(), ReadFailure> {
        let Placed { id, len, .. } = self.layout.chunks()[i];
        let supply = {
            let st = self.lock();
            if st.slots[i] != Slot::Absent {
                return Ok(());
            }
            self.supply.lock().expect("supply lock").clone()
        };
        let fail = |why: String| ReadFailure { chunk: format!("{id:#}"), why };
        let held =
            !self.hidden.contains(&id) && self.store.holds(&id).map_err(|e| fail(e.to_string()))?;
        let began = std::time::Instant::now();
        let micros = || u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        if held {
            let data = self.store.read_chunk(&id).map_err(|e| fail(e.to_string()))?;
            self.place(&id, &data).map_err(|e| fail(e.to_string()))?;
            let mut st = self.lock();
            st.counts.local += u64::from(len);
            st.counts.local_chunks += 1;
            st.counts.local_micros += micros();
        } else {
            let Some(supply) = supply else {
                return Err(fail("the store does not hold it and the stage is over".into()));
            };
            if let Err(why) = supply.fetch(id, len).await {
                // The stage may have ended meanwhile, with the chunk in the store.
                if self.hidden.contains(&id) || !self.store.holds(&id).unwrap_or(false) {
                    return Err(fail(why));
                }
                let data = self.store.read_chunk(&id).map_err(|e| fail(e.to_string()))?;
                self.place(&id, &data).map_err(|e| fail(e.to_string()))?;
            }
            let mut st = self.lock();
            st.counts.fetched_chunks += 1;
            st.counts.fetched += u64::from(len);
            st.counts.fetch_micros += micros();
        }
        match self.lock().slots[i] {
            Slot::Absent => Err(fail("it arrived but did not land in this disk".into())),
            _ => Ok(()),
        }
    }

    fn failed(&self, failure: ReadFailure) -> Errno {
        tracing::warn!(disk = %self.label, chunk = %failure.chunk, why = %failure.why, "a guest read failed");
        let mut st = self.lock();
        st.counts.failed += 1;
        if st.failures.len() < MAX_FAILURES {
            st.failures.push(failure);
        }
        Errno(errno::EIO)
    }

    /// Fills every absent slot from the store, which must now hold the whole image,
    /// and syncs the copy: from here on the VM reads local data only.
    pub fn complete(&self) -> Result<(), LazyError> {
        let absent: Vec<ChunkId> = {
            let st = self.lock();
            self.layout
                .distinct()
                .filter(|(_, at)| at.iter().any(|&i| st.slots[i] == Slot::Absent))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in absent {
            let data = self.store.read_chunk(&id)?;
            self.place(&id, &data)?;
        }
        self.file.sync_data().map_err(|error| LazyError::Io {
            op: "fsync",
            path: self.path.clone(),
            error,
        })?;
        self.lock().whole = true;
        *self.supply.lock().expect("supply lock") = None;
        Ok(())
    }
}

impl BlockDevice for LazyDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let range = self.layout.covering(offset, buf.len() as u64);
        {
            let mut st = self.lock();
            for i in range.clone() {
                if !st.seen[i] && !self.layout.chunks()[i].id.is_zero() {
                    st.seen[i] = true;
                    st.trace.push(i as u32);
                }
            }
            st.counts.read += buf.len() as u64;
        }
        // The chunks a read spans come together, not one round trip after another; a
        // failure names the first chunk that could not be had.
        let mut ensured =
            futures::stream::iter(range.map(|i| self.ensure(i))).buffered(READ_FETCHES);
        while let Some(r) = ensured.next().await {
            if let Err(f) = r {
                return Err(self.failed(f));
            }
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            self.failed(ReadFailure {
                chunk: "-".into(),
                why: format!("{}: {e}", self.path.display()),
            })
        })
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
        let end = offset + data.len() as u64;
        let range = self.layout.covering(offset, data.len() as u64);
        // A chunk the write covers only in part keeps the rest of its bytes.
        for i in [range.start, range.end.saturating_sub(1)] {
            if range.contains(&i) {
                let c = self.layout.chunks()[i];
                if c.offset < offset || c.end() > end {
                    if let Err(f) = self.ensure(i).await {
                        return Err(self.failed(f));
                    }
                }
            }
        }
        let mut st = self.lock();
        for i in range {
            st.slots[i] = Slot::Written;
        }
        st.counts.written += data.len() as u64;
        self.file.write_all_at(data, offset).map_err(|_| Errno(errno::EIO))?;
        drop(st);
        if fua {
            self.file.sync_data().map_err(|_| Errno(errno::EIO))?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), Errno> {
        self.file.sync_data().map_err(|_| Errno(errno::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{OnceLock, Weak};

    /// Fetches from another store (the image's holder) and lands the chunk in the
    /// disk, as a stage's intake would; refuses the chunks in `unreachable`.
    #[derive(Default)]
    struct Origin {
        store: OnceLock<Arc<Store>>,
        disk: OnceLock<Weak<LazyDisk>>,
        unreachable: Mutex<HashSet<ChunkId>>,
        asked: Mutex<Vec<ChunkId>>,
    }

    impl Supply for Origin {
        fn fetch(&self, id: ChunkId, _len: u32) -> BoxFuture<'static, Result<(), String>> {
            self.asked.lock().expect("test step").push(id);
            let result = if self.unreachable.lock().expect("test step").contains(&id) {
                Err("every holder was tried: peer 12D3KooW… went away".to_owned())
            } else {
                let data = self.store.get().expect("test step").read_chunk(&id).expect("test step");
                let disk = self.disk.get().expect("test step").upgrade().expect("test step");
                disk.place(&id, &data).map_err(|e| e.to_string())
            };
            Box::pin(async move { result })
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        image: Vec<u8>,
        manifest: Manifest,
        origin: Arc<Origin>,
        disk: Arc<LazyDisk>,
        here: Arc<Store>,
    }

    /// An image with a run of zeros, imported on the origin; this host's store holds
    /// its first chunk only.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("test step");
        let mut image = vw_chunkstore::testdata::noise(3 << 20, 19);
        image[1 << 20..(1 << 20) + (512 << 10)].fill(0);
        let file = dir.path().join("image.img");
        std::fs::write(&file, &image).expect("test step");
        let origin_store = Arc::new(Store::open(&dir.path().join("origin")).expect("test step"));
        let id = origin_store.import(&file, None, &()).expect("test step").manifest;
        let manifest = origin_store.manifest(&id).expect("test step");
        let here = Arc::new(Store::open(&dir.path().join("here")).expect("test step"));
        let first = manifest.chunks()[0].id;
        let mut put = here.receiving();
        put.put(&first, &origin_store.read_chunk(&first).expect("test step")).expect("test step");
        put.sync().expect("test step");
        drop(put);
        let origin = Arc::new(Origin::default());
        let _ = origin.store.set(origin_store);
        let supply: Arc<dyn Supply> = origin.clone();
        let disk = Arc::new(
            LazyDisk::create(
                "vm1/xvda1",
                &manifest,
                &dir.path().join("vm1.img"),
                here.clone(),
                supply,
            )
            .expect("test step"),
        );
        let _ = origin.disk.set(Arc::downgrade(&disk));
        Fixture { _dir: dir, image, manifest, origin, disk, here }
    }

    async fn read(disk: &LazyDisk, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        disk.read(offset, &mut buf).await.map(|()| buf)
    }

    #[tokio::test]
    async fn reads_fetch_what_the_host_lacks_and_record_the_order() {
        let f = fixture();
        let len = f.image.len() as u64;
        // The end first, then the start: the trace keeps the order of first reads.
        let tail = read(&f.disk, len - 4096, 4096).await.expect("test step");
        assert_eq!(tail, f.image[f.image.len() - 4096..]);
        let head = read(&f.disk, 0, 8192).await.expect("test step");
        assert_eq!(head, f.image[..8192]);
        let last = f.manifest.chunks().len() as u32 - 1;
        assert_eq!(f.disk.trace(), vec![last, 0]);
        let counts = f.disk.counts();
        // The first chunk was held here; the last was fetched.
        assert_eq!(counts.fetched_chunks, 1);
        assert_eq!(counts.local, u64::from(f.manifest.chunks()[0].len));
        assert_eq!(counts.read, 12288);
        // A read over the zero run fetches nothing for its zero chunks.
        let asked = f.origin.asked.lock().expect("test step").len();
        let z = read(&f.disk, (1 << 20) + 65536, 65536).await.expect("test step");
        assert_eq!(z, f.image[(1 << 20) + 65536..(1 << 20) + 131072]);
        let zeros = f.manifest.chunks().iter().filter(|c| c.is_zero()).count();
        assert!(zeros > 0, "the image has zero chunks");
        assert!(
            f.origin.asked.lock().expect("test step").len() - asked <= 2,
            "only the run's edges"
        );
        // Everything, across every chunk boundary.
        let all = read(&f.disk, 0, f.image.len()).await.expect("test step");
        assert_eq!(all, f.image);
        f.disk.complete().expect("test step");
        assert!(f.disk.is_whole());
        assert_eq!(std::fs::read(f.disk.path()).expect("test step"), f.image);
    }

    #[tokio::test]
    async fn writes_go_to_the_copy_and_no_arriving_chunk_lands_on_them() {
        let f = fixture();
        // A write inside one chunk keeps the rest of that chunk's bytes (fetched first).
        let at = 2 << 20;
        f.disk.write(at + 100, b"guest bytes", false).await.expect("test step");
        let mut want = f.image.clone();
        want[at as usize + 100..at as usize + 111].copy_from_slice(b"guest bytes");
        assert_eq!(
            read(&f.disk, at, 4096).await.expect("test step"),
            want[at as usize..at as usize + 4096]
        );
        // The chunk arriving again (the background cascade) leaves the guest's bytes.
        let i = f.disk.layout.covering(at + 100, 1).start;
        let id = f.manifest.chunks()[i].id;
        let data = f.origin.store.get().expect("test step").read_chunk(&id).expect("test step");
        f.disk.place(&id, &data).expect("test step");
        // The store is only read: the guest's bytes never reach it.
        assert!(!f.here.holds(&id).expect("test step"));
        // The stage ends with every chunk in the store: the rest of the copy from it.
        let mut put = f.here.receiving();
        for c in f.manifest.chunks().iter().filter(|c| !c.is_zero()) {
            put.put(
                &c.id,
                &f.origin.store.get().expect("test step").read_chunk(&c.id).expect("test step"),
            )
            .expect("test step");
        }
        put.sync().expect("test step");
        drop(put);
        f.disk.complete().expect("test step");
        assert_eq!(std::fs::read(f.disk.path()).expect("test step"), want);
        assert_eq!(
            f.here.read_chunk(&id).expect("test step"),
            data,
            "the shared chunk is the image's"
        );
    }

    #[tokio::test]
    async fn a_chunk_that_cannot_be_fetched_fails_the_read_naming_it() {
        let f = fixture();
        let c = f.manifest.chunks().len() - 1;
        let id = f.manifest.chunks()[c].id;
        f.origin.unreachable.lock().expect("test step").insert(id);
        let len = f.image.len() as u64;
        assert_eq!(read(&f.disk, len - 512, 512).await, Err(Errno(errno::EIO)));
        let failures = f.disk.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].chunk, format!("{id:#}"));
        assert!(failures[0].why.contains("every holder was tried"), "{failures:?}");
        assert_eq!(f.disk.counts().failed, 1);
        // Once a holder is back, the same read succeeds: nothing unverified was kept.
        f.origin.unreachable.lock().expect("test step").clear();
        assert_eq!(
            read(&f.disk, len - 512, 512).await.expect("test step"),
            f.image[f.image.len() - 512..]
        );
    }

    #[tokio::test]
    async fn the_disk_is_served_over_nbd() {
        let f = fixture();
        let (io, mut server) = tokio::io::duplex(1 << 20);
        let disk = Arc::clone(&f.disk);
        let task = tokio::spawn(async move {
            assert!(super::super::nbd::handshake(&mut server, "vm1/xvda1", disk.size()).await?);
            super::super::nbd::serve(&mut server, &*disk).await
        });
        let mut c = super::super::nbd::Client::connect(io, "vm1/xvda1").await.expect("test step");
        assert_eq!(c.size(), f.image.len() as u64);
        assert_eq!(
            c.read(1_000_000, 300_000).await.expect("test step"),
            f.image[1_000_000..1_300_000]
        );
        c.disconnect().await.expect("test step");
        task.await.expect("test step").expect("test step");
    }
}
