//! Chunk-size sweep: for each candidate min/avg/max, cut every image given, and report
//! chunk counts, the distinct bytes a store would hold, and what each pair of images
//! shares. Used to choose [`ChunkerParams::DEFAULT`] (docs/experiments.md).
//!
//! `cargo run -p vw-chunkstore --example chunk_sweep -- IMAGE...`

use std::collections::{HashMap, HashSet};
use std::io::Read;

use vw_chunkstore::chunker::{is_zero, Chunker, ChunkerParams};
use vw_chunkstore::ChunkId;

fn chunks_of(path: &str, chunker: &Chunker) -> std::io::Result<Vec<(ChunkId, u32)>> {
    const BLOCK: usize = 16 << 20;
    let mut file = std::fs::File::open(path)?;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK);
    let mut out = Vec::new();
    let mut spans = Vec::new();
    loop {
        let filled = buf.len();
        buf.resize(BLOCK, 0);
        let n = file.read(&mut buf[filled..])?;
        buf.truncate(filled + n);
        let last = n == 0;
        spans.clear();
        let used = chunker.cut_block(&buf, last, &mut spans);
        for s in &spans {
            let data = &buf[s.range()];
            // Zero chunks are never stored: mark them with a zero length.
            let len = if is_zero(data) { 0 } else { s.len as u32 };
            out.push((ChunkId::of(data), len));
        }
        buf.drain(..used);
        if last {
            return Ok(out);
        }
    }
}

fn main() -> std::io::Result<()> {
    let images: Vec<String> = std::env::args().skip(1).collect();
    if images.is_empty() {
        eprintln!("usage: chunk_sweep IMAGE...");
        std::process::exit(2);
    }
    let candidates = [
        ChunkerParams { min: 8 << 10, avg: 32 << 10, max: 128 << 10 },
        ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 },
        ChunkerParams { min: 32 << 10, avg: 128 << 10, max: 512 << 10 },
    ];
    println!("| min/avg/max KiB | image | chunks | non-zero MiB | distinct MiB |");
    println!("|---|---|---:|---:|---:|");
    let mut summary = Vec::new();
    for params in candidates {
        let chunker = Chunker::new(params).map_err(std::io::Error::other)?;
        let label = format!("{}/{}/{}", params.min >> 10, params.avg >> 10, params.max >> 10);
        let mut sets: Vec<HashMap<ChunkId, u32>> = Vec::new();
        let mut logical = 0u64;
        for img in &images {
            let chunks = chunks_of(img, &chunker)?;
            let nonzero: u64 = chunks.iter().map(|c| u64::from(c.1)).sum();
            let distinct: HashMap<ChunkId, u32> =
                chunks.iter().filter(|c| c.1 > 0).copied().collect();
            let distinct_bytes: u64 = distinct.values().map(|&l| u64::from(l)).sum();
            logical += nonzero;
            println!(
                "| {label} | {} | {} | {:.1} | {:.1} |",
                img.rsplit('/').next().unwrap_or(img),
                chunks.len(),
                nonzero as f64 / 1048576.0,
                distinct_bytes as f64 / 1048576.0
            );
            sets.push(distinct);
        }
        let mut union: HashSet<ChunkId> = HashSet::new();
        let mut stored = 0u64;
        for s in &sets {
            for (id, len) in s {
                if union.insert(*id) {
                    stored += u64::from(*len);
                }
            }
        }
        let mut pairs = Vec::new();
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                let shared: u64 = sets[i]
                    .iter()
                    .filter(|(id, _)| sets[j].contains_key(id))
                    .map(|(_, &l)| u64::from(l))
                    .sum();
                pairs.push(format!("{}-{}: {:.1}", i, j, shared as f64 / 1048576.0));
            }
        }
        summary.push(format!(
            "| {label} | {:.1} | {:.1} | {:.3} | {} |",
            logical as f64 / 1048576.0,
            stored as f64 / 1048576.0,
            logical as f64 / stored.max(1) as f64,
            pairs.join(", ")
        ));
    }
    println!("\n| min/avg/max KiB | non-zero MiB, all images | stored MiB | dedup ratio | shared MiB per image pair |");
    println!("|---|---:|---:|---:|---|");
    for s in summary {
        println!("{s}");
    }
    Ok(())
}
