//! Lazy disk reads (issue 19). Run: `cargo bench --profile dev -p vw-node --bench lazy`.
//!
//! What a guest's 4 KiB read costs, each beside its baseline in the same run (these
//! machines are shared and noisy: read the ratios):
//! - `plain_pread`: `pread` of a plain file, the page cache warm (the baseline);
//! - `nbd_file`: the same read through vw's NBD server over a Unix socket, the export
//!   a plain file (the protocol's cost per read);
//! - `lazy_present`: through the NBD server, from a lazy disk whose chunk is present
//!   (a held chunk read once, or one the stage brought);
//! - `lazy_held`: the first read of a chunk the host's store holds (read from the
//!   store, verified, placed in the copy), on a fresh disk each time;
//! - `lazy_missing`: the first read of a chunk the host lacks, fetched from another
//!   store through the `Supply` (no network: the lazy disk's own cost of a demand
//!   fetch; the network's is one urgent stream, measured in the lab runs).

use std::hint::black_box;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::future::BoxFuture;
use vw_node::chunkstore::testdata::noise;
use vw_node::chunkstore::{ChunkId, Manifest, Store};
use vw_node::lazy::disk::{LazyDisk, Supply};
use vw_node::lazy::nbd::{self, BlockDevice, Client, Errno};

const READ: usize = 4096;
const IMAGE: usize = 8 << 20;

/// An export that is a plain file.
struct PlainFile(std::fs::File, u64);

impl BlockDevice for PlainFile {
    fn size(&self) -> u64 {
        self.1
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.read_exact_at(buf, offset).map_err(|_| Errno(nbd::errno::EIO))
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), Errno> {
        self.0.write_all_at(data, offset).map_err(|_| Errno(nbd::errno::EIO))
    }
    async fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
}

/// Lands a chunk from another store, as a stage's intake would.
#[derive(Default)]
struct Origin {
    store: OnceLock<Arc<Store>>,
    disk: Mutex<Option<Weak<LazyDisk>>>,
}

impl Supply for Origin {
    fn fetch(&self, id: ChunkId, _len: u32) -> BoxFuture<'static, Result<(), String>> {
        let data = self.store.get().expect("origin").read_chunk(&id).map_err(|e| e.to_string());
        let disk = self.disk.lock().expect("lock").as_ref().and_then(Weak::upgrade);
        let landed = data.and_then(|d| {
            disk.ok_or("no disk".to_owned())?.place(&id, &d).map_err(|e| e.to_string())
        });
        Box::pin(async move { landed })
    }
}

/// Serves `device` on one end of a socket pair and returns a client of the other.
async fn client<D: BlockDevice + 'static>(device: Arc<D>) -> Client<tokio::net::UnixStream> {
    let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("socketpair");
    tokio::spawn(async move {
        if nbd::handshake(&mut ours, "bench", device.size()).await.expect("handshake") {
            let _ = nbd::serve(&mut ours, &*device).await;
        }
    });
    Client::connect(theirs, "bench").await.expect("client")
}

fn reads(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = noise(IMAGE, 5);
    let plain = dir.path().join("plain.img");
    std::fs::write(&plain, &data).expect("write");
    let origin_store = Arc::new(Store::open(&dir.path().join("origin")).expect("store"));
    let id = origin_store.import(&plain, None, &()).expect("import").manifest;
    let manifest = origin_store.manifest(&id).expect("manifest");
    let held = Arc::new(Store::open(&dir.path().join("held")).expect("store"));
    held.import(&plain, None, &()).expect("import");
    let empty = Arc::new(Store::open(&dir.path().join("empty")).expect("store"));
    let file = std::fs::File::open(&plain).expect("open");
    let offsets: Vec<u64> =
        (0..IMAGE / READ).map(|i| ((i * 7919) % (IMAGE / READ) * READ) as u64).collect();
    let mut at = offsets.iter().cycle();

    let mut g = c.benchmark_group("lazy_read_4k");
    let mut buf = vec![0u8; READ];
    g.bench_function("plain_pread", |b| {
        b.iter(|| file.read_exact_at(&mut buf, *at.next().expect("cycle")).expect("read"))
    });
    let mut plain_client = rt.block_on(client(Arc::new(PlainFile(
        std::fs::File::open(&plain).expect("open"),
        IMAGE as u64,
    ))));
    g.bench_function("nbd_file", |b| {
        b.iter(|| {
            black_box(rt.block_on(plain_client.read(*at.next().expect("cycle"), READ as u32)))
        })
    });
    // Every chunk present: the whole image read once.
    let (present, _) = lazy(&manifest, &dir.path().join("present.img"), &held, &origin_store);
    rt.block_on(async {
        let mut all = vec![0u8; IMAGE];
        present.read(0, &mut all).await.expect("read all");
    });
    let mut present_client = rt.block_on(client(present));
    g.bench_function("lazy_present", |b| {
        b.iter(|| {
            black_box(rt.block_on(present_client.read(*at.next().expect("cycle"), READ as u32)))
        })
    });
    let mut n = 0;
    for (name, store) in [("lazy_held", &held), ("lazy_missing", &empty)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let path = dir.path().join(format!("fresh-{n}.img"));
                    let (disk, _origin) = lazy(&manifest, &path, store, &origin_store);
                    (disk, path)
                },
                |(disk, path)| {
                    let mut buf = vec![0u8; READ];
                    rt.block_on(disk.read(IMAGE as u64 / 2, &mut buf)).expect("read");
                    drop(disk);
                    let _ = std::fs::remove_file(path);
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// A lazy disk of `manifest` at `path` over `store`, fetching what it lacks from `origin`.
fn lazy(
    manifest: &Manifest,
    path: &Path,
    store: &Arc<Store>,
    origin: &Arc<Store>,
) -> (Arc<LazyDisk>, Arc<Origin>) {
    let supply = Arc::new(Origin::default());
    let _ = supply.store.set(Arc::clone(origin));
    let as_supply: Arc<dyn Supply> = supply.clone();
    let disk = Arc::new(
        LazyDisk::create("bench/xvda1", manifest, path, Arc::clone(store), as_supply)
            .expect("disk"),
    );
    *supply.disk.lock().expect("lock") = Some(Arc::downgrade(&disk));
    (disk, supply)
}

criterion_group!(benches, reads);
criterion_main!(benches);
