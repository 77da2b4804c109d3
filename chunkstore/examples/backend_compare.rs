//! Where chunk bytes should live, measured: RocksDB BlobDB against append-only pack
//! files with a RocksDB index, and whether per-chunk zstd pays. Run on a real image:
//!
//! `cargo run -p vw-chunkstore --example backend_compare -- IMAGE [SCRATCH_DIR]`
//!
//! Writes every distinct non-zero chunk of IMAGE both ways (WAL on, synced at the end),
//! reads them back in image order warm and, as root, cold (after dropping the page
//! cache), and compresses each chunk with zstd levels 1 and 3. Prints one Markdown table.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use vw_chunkstore::chunker::{is_zero, Chunker, ChunkerParams};
use vw_chunkstore::ChunkId;

fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn mbps(bytes: u64, secs: f64) -> String {
    format!("{:.0}", bytes as f64 / 1e6 / secs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let image = args.get(1).ok_or("usage: backend_compare IMAGE [SCRATCH_DIR]")?;
    let scratch = tempfile::tempdir_in(args.get(2).map_or("/var/tmp", String::as_str))?;

    let mut data = Vec::new();
    File::open(image)?.read_to_end(&mut data)?;
    let chunker = Chunker::new(ChunkerParams::DEFAULT)?;
    let mut seen = HashSet::new();
    let chunks: Vec<(ChunkId, std::ops::Range<usize>)> = chunker
        .cut_all(&data)
        .into_iter()
        .filter(|s| !is_zero(&data[s.range()]))
        .map(|s| (ChunkId::of(&data[s.range()]), s.range()))
        .filter(|(id, _)| seen.insert(*id))
        .collect();
    let bytes: u64 = chunks.iter().map(|(_, r)| r.len() as u64).sum();
    println!(
        "{image}: {} distinct non-zero chunks, {:.1} MiB\n",
        chunks.len(),
        bytes as f64 / 1048576.0
    );
    println!("| what | MB/s | note |");
    println!("|---|---:|---|");

    // BlobDB: chunk bytes as blob values, WAL on, one sync at the end.
    let blob_dir = scratch.path().join("blobdb");
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_enable_blob_files(true);
    opts.set_min_blob_size(0);
    opts.set_blob_file_size(256 << 20);
    opts.set_write_buffer_size(64 << 20);
    let db = DB::open(&opts, &blob_dir)?;
    let t = Instant::now();
    for group in chunks.chunks(64) {
        let mut batch = WriteBatch::default();
        for (id, r) in group {
            batch.put(id.as_bytes(), &data[r.clone()]);
        }
        db.write(batch)?;
    }
    db.flush()?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.put_opt(b"done", b"", &sync)?;
    println!(
        "| BlobDB write | {} | WAL on, flushed and synced |",
        mbps(bytes, t.elapsed().as_secs_f64())
    );
    let read_blob = |label: &str| -> Result<(), Box<dyn std::error::Error>> {
        let t = Instant::now();
        for (id, r) in &chunks {
            let v = db.get_pinned(id.as_bytes())?.ok_or("lost chunk")?;
            assert_eq!(v.len(), r.len());
        }
        println!(
            "| BlobDB read, {label} | {} | image order |",
            mbps(bytes, t.elapsed().as_secs_f64())
        );
        Ok(())
    };
    read_blob("warm")?;

    // Pack file + RocksDB index.
    let idx = DB::open(
        &{
            let mut o = Options::default();
            o.create_if_missing(true);
            o
        },
        scratch.path().join("index"),
    )?;
    let pack_path = scratch.path().join("00000001.pack");
    let t = Instant::now();
    let mut pack = std::io::BufWriter::with_capacity(4 << 20, File::create(&pack_path)?);
    let mut offset = 0u64;
    let mut locs = Vec::with_capacity(chunks.len());
    let mut batch = WriteBatch::default();
    for (id, r) in &chunks {
        pack.write_all(&(r.len() as u32).to_le_bytes())?;
        pack.write_all(id.as_bytes())?;
        pack.write_all(&data[r.clone()])?;
        let at = offset + 36;
        offset = at + r.len() as u64;
        locs.push((at, r.len()));
        let mut v = at.to_le_bytes().to_vec();
        v.extend((r.len() as u32).to_le_bytes());
        batch.put(id.as_bytes(), v);
    }
    let pack = pack.into_inner().map_err(|e| e.into_error())?;
    pack.sync_data()?;
    idx.write_opt(batch, &sync)?;
    println!(
        "| pack + index write | {} | pack synced, then index batch synced |",
        mbps(bytes, t.elapsed().as_secs_f64())
    );
    let read_pack = |label: &str| -> Result<(), Box<dyn std::error::Error>> {
        let f = File::open(&pack_path)?;
        let mut buf = Vec::new();
        let t = Instant::now();
        for (&(at, len), (id, _)) in locs.iter().zip(&chunks) {
            let _loc = idx.get_pinned(id.as_bytes())?.ok_or("lost index entry")?;
            buf.resize(len, 0);
            f.read_exact_at(&mut buf, at)?;
        }
        println!(
            "| pack read, {label} | {} | index lookup + pread, image order |",
            mbps(bytes, t.elapsed().as_secs_f64())
        );
        Ok(())
    };
    read_pack("warm")?;
    if drop_caches() {
        read_blob("cold")?;
        drop_caches();
        read_pack("cold")?;
    }

    for level in [1, 3] {
        let t = Instant::now();
        let compressed: Vec<Vec<u8>> = chunks
            .iter()
            .map(|(_, r)| zstd::bulk::compress(&data[r.clone()], level))
            .collect::<Result<_, _>>()?;
        let secs = t.elapsed().as_secs_f64();
        let out: u64 = compressed.iter().map(|c| c.len() as u64).sum();
        let t = Instant::now();
        for (c, (_, r)) in compressed.iter().zip(&chunks) {
            let d = zstd::bulk::decompress(c, r.len())?;
            assert_eq!(d.len(), r.len());
        }
        println!(
            "| zstd -{level} per chunk, compress | {} | ratio {:.3} (compressed / plain) |",
            mbps(bytes, secs),
            out as f64 / bytes as f64
        );
        println!(
            "| zstd -{level} per chunk, decompress | {} | |",
            mbps(bytes, t.elapsed().as_secs_f64())
        );
    }
    Ok(())
}
