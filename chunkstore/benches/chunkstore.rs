//! Chunk store benchmarks. Run: `cargo bench -p vw-chunkstore --bench chunkstore`.
//!
//! Each group measures a baseline in the same run so results read as ratios on a
//! shared, noisy machine: fastcdc alone and BLAKE3 alone next to chunk+hash; page-cache
//! read next to import; file copy next to export.
//!
//! `VW_BENCH_DIR` (default `$CARGO_TARGET_DIR/vw-bench` or `target/vw-bench`) holds the
//! inputs, including the store behind the missing-set bench, which imports
//! `VW_BENCH_MISSING_GIB` (default 10) GiB of data once and reuses it afterwards.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vw_chunkstore::chunker::{Chunker, ChunkerParams};
use vw_chunkstore::testdata::noise;
use vw_chunkstore::{ChunkId, ChunkRef, Manifest, Store};

const MIB: usize = 1 << 20;

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("VW_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
        target.join("vw-bench")
    });
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// A 256 MiB image like a partition: data extents with holes and repeated blocks.
fn image_file(dir: &Path) -> PathBuf {
    let path = dir.join("image-256m.img");
    if !path.exists() {
        let mut data = Vec::with_capacity(256 * MIB);
        for i in 0..32u64 {
            data.extend(noise(5 * MIB, i + 1));
            data.extend(std::iter::repeat_n(0u8, 3 * MIB));
        }
        std::fs::write(&path, data).expect("write bench image");
    }
    path
}

fn chunk_hash(c: &mut Criterion) {
    let data = noise(64 * MIB, 42);
    let chunker = Chunker::new(ChunkerParams::DEFAULT).expect("params");
    let mut g = c.benchmark_group("chunk_hash_1core");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.bench_function("fastcdc_only", |b| b.iter(|| black_box(chunker.cut_all(&data).len())));
    g.bench_function("blake3_only", |b| b.iter(|| black_box(blake3::hash(&data))));
    g.bench_function("cut_and_hash", |b| {
        b.iter(|| {
            let spans = chunker.cut_all(&data);
            let ids: Vec<ChunkId> = spans.iter().map(|s| ChunkId::of(&data[s.range()])).collect();
            black_box(ids)
        })
    });
    g.finish();
}

fn import(c: &mut Criterion) {
    let dir = bench_dir();
    let img = image_file(&dir);
    let len = std::fs::metadata(&img).expect("stat").len();
    let mut g = c.benchmark_group("import_256m");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let mut buf = vec![0u8; 8 * MIB];
    g.bench_function("read_page_cache", |b| {
        b.iter(|| {
            use std::io::Read;
            let mut f = std::fs::File::open(&img).expect("open");
            let mut total = 0;
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                total += n;
            }
            black_box(total)
        })
    });
    g.bench_function("fresh_store", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(&dir).expect("tempdir"),
            |store_dir| {
                let store = Store::open(store_dir.path()).expect("open");
                black_box(store.import(&img, None, &()).expect("import"));
                store_dir
            },
            BatchSize::PerIteration,
        )
    });
    let store_dir = tempfile::tempdir_in(&dir).expect("tempdir");
    let store = Store::open(store_dir.path()).expect("open");
    store.import(&img, None, &()).expect("import");
    g.bench_function("all_cached", |b| {
        b.iter(|| black_box(store.import(&img, None, &()).expect("import")))
    });
    g.finish();
}

fn export(c: &mut Criterion) {
    let dir = bench_dir();
    let img = image_file(&dir);
    let len = std::fs::metadata(&img).expect("stat").len();
    let store_dir = tempfile::tempdir_in(&dir).expect("tempdir");
    let store = Store::open(store_dir.path()).expect("open");
    let manifest = store.import(&img, None, &()).expect("import").manifest;
    let out = store_dir.path().join("out.img");
    let mut g = c.benchmark_group("export_256m");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("copy_file_baseline", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            std::fs::copy(&img, &out).expect("copy");
            std::fs::File::open(&out).and_then(|f| f.sync_all()).expect("sync");
        })
    });
    g.bench_function("export", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            black_box(store.export(&manifest, &out, false, &()).expect("export"))
        })
    });
    g.finish();
}

/// A store holding `gib` GiB of distinct chunks, imported once and kept.
fn missing_store(gib: u64) -> (Store, Manifest) {
    let dir = bench_dir().join(format!("missing-{gib}g"));
    let done = dir.join("manifest");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let img = dir.join("data.img");
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&img).expect("create"));
            for i in 0..gib * 16 {
                f.write_all(&noise(64 * MIB, i + 7)).expect("write");
            }
        }
        let store = Store::open(&dir.join("store")).expect("open");
        let r = store.import(&img, None, &()).expect("import");
        std::fs::remove_file(&img).expect("remove input");
        std::fs::write(&done, store.manifest(&r.manifest).expect("manifest").encode())
            .expect("save");
    }
    let manifest = Manifest::decode(&std::fs::read(&done).expect("read")).expect("decode");
    (Store::open(&dir.join("store")).expect("open"), manifest)
}

fn missing(c: &mut Criterion) {
    let gib: u64 =
        std::env::var("VW_BENCH_MISSING_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let (store, held) = missing_store(gib);
    // The same number of chunks, none of which the store holds.
    let absent: Vec<ChunkRef> = held
        .chunks()
        .iter()
        .enumerate()
        .map(|(i, c)| ChunkRef { id: ChunkId::of(&(i as u64).to_le_bytes()), len: c.len })
        .collect();
    let absent = Manifest::new(held.params(), held.len(), blake3::hash(b"absent"), absent)
        .expect("manifest");
    // The same chunks under another image hash: every chunk is present but the manifest
    // is not stored, so the store must look each one up.
    let unknown =
        Manifest::new(held.params(), held.len(), blake3::hash(b"other"), held.chunks().to_vec())
            .expect("manifest");
    let mut g = c.benchmark_group(format!("missing_set_{gib}g"));
    g.throughput(Throughput::Elements(held.chunks().len() as u64));
    g.sample_size(20);
    // The first query about a manifest the store does not hold also builds the
    // in-memory set of indexed ids: measured on a freshly opened store each time.
    let store_dir = bench_dir().join(format!("missing-{gib}g/store"));
    drop(store);
    g.bench_function("first_query_after_open", |b| {
        b.iter_batched(
            || Store::open(&store_dir).expect("open"),
            |store| {
                black_box(store.missing(&unknown).expect("missing"));
                store
            },
            BatchSize::PerIteration,
        )
    });
    let store = Store::open(&store_dir).expect("open");
    g.bench_function("stored_manifest", |b| {
        b.iter(|| black_box(store.missing(&held).expect("missing")))
    });
    g.bench_function("all_present", |b| {
        b.iter(|| black_box(store.missing(&unknown).expect("missing")))
    });
    g.bench_function("all_absent", |b| {
        b.iter(|| black_box(store.missing(&absent).expect("missing")))
    });
    g.finish();
}

criterion_group!(benches, chunk_hash, import, export, missing);
criterion_main!(benches);
