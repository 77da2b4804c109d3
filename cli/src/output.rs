//! Text and JSON output. Results go to stdout; notes, progress and errors to stderr.

use std::fmt::Write as _;

use serde::Serialize;
use vw_node::chunkstore::{
    CacheStats, Diff, GcReport, ImageInfo, ImageRef, ImportReport, VerifyReport,
};

/// Where results go and in which form.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a result: `value` as JSON, or `text()`.
    pub fn emit<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("serialisable"));
        } else {
            println!("{}", text());
        }
    }

    /// Prints a side note on stderr (text mode only).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    /// Reports a failure: on stderr, and as `{"error": ...}` on stdout with `--json`.
    pub fn error(&self, e: &anyhow::Error) {
        eprintln!("error: {e:#}");
        if self.json {
            println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
        }
    }
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    vw_node::planner::human_bytes(n)
}

/// Parses `20G`, `512M`, `1.5T`, `4096` (binary units).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    vw_node::workspace::parse_size(s).map_err(anyhow::Error::msg)
}

fn rate(len: u64, millis: u64) -> String {
    format!("{}/s", bytes((len as f64 / (millis.max(1) as f64 / 1000.0)) as u64))
}

pub fn import_text(r: &ImportReport) -> String {
    format!(
        "imported {name} as {id:#}\n  {len} in {chunks} chunks, {ms} ms ({rate})\n  new:    {nc} chunks, {nb}\n  cached: {cc} chunks, {cb}\n  zero:   {zc} chunks, {zb} (holes, not stored)",
        name = r.name.as_deref().unwrap_or("(unnamed)"),
        id = r.manifest,
        len = bytes(r.len),
        chunks = r.chunks,
        ms = r.millis,
        rate = rate(r.len, r.millis),
        nc = r.counts.new_chunks,
        nb = bytes(r.counts.new_bytes),
        cc = r.counts.cached_chunks,
        cb = bytes(r.counts.cached_bytes),
        zc = r.counts.zero_chunks,
        zb = bytes(r.counts.zero_bytes),
    )
}

pub fn ls_text(images: &[ImageInfo]) -> String {
    if images.is_empty() {
        return "no images; `vw image import FILE --name VO/NAME:TAG` adds one".into();
    }
    let mut s = format!(
        "{:<32} {:<10} {:>10} {:>8} {:>10}  PINNED\n",
        "NAME", "MANIFEST", "SIZE", "CHUNKS", "HOLES"
    );
    for i in images {
        let names = if i.names.is_empty() { vec!["<none>".to_string()] } else { i.names.clone() };
        let pins: Vec<String> = i.pins.iter().map(ToString::to_string).collect();
        for n in names {
            let _ = writeln!(
                s,
                "{n:<32} {:<10} {:>10} {:>8} {:>10}  {}",
                i.id.to_string(),
                bytes(i.len),
                i.chunks,
                bytes(i.zero_bytes),
                pins.join(",")
            );
        }
    }
    s.trim_end().to_string()
}

pub fn verify_text(r: &VerifyReport) -> String {
    let mut s =
        format!("checked {} chunks ({}) of {} manifests", r.chunks, bytes(r.bytes), r.manifests);
    if r.is_clean() {
        s.push_str(": all good");
    }
    for id in &r.corrupt {
        let _ = write!(s, "\ncorrupt chunk {id:#}");
    }
    for (m, c) in &r.missing {
        let _ = write!(s, "\nmanifest {m} lists missing chunk {c:#}");
    }
    if !r.corrupt.is_empty() {
        s.push_str("\ncorrupt chunks count as missing: re-import (or re-stage) the images that use them to repair");
    }
    s
}

pub fn diff_text(a: &ImageRef, b: &ImageRef, d: &Diff) -> String {
    let total_a = d.shared_bytes + d.only_a_bytes;
    let total_b = d.shared_bytes + d.only_b_bytes;
    let pct =
        |part: u64, whole: u64| if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 };
    format!(
        "shared: {} in {} chunks ({:.1}% of {a}, {:.1}% of {b})\nonly in {a}: {}\nonly in {b}: {}\nholes: {} / {}",
        bytes(d.shared_bytes),
        d.shared_chunks,
        pct(d.shared_bytes, total_a),
        pct(d.shared_bytes, total_b),
        bytes(d.only_a_bytes),
        bytes(d.only_b_bytes),
        bytes(d.zero_bytes.0),
        bytes(d.zero_bytes.1),
    )
}

pub fn stats_text(s: &CacheStats) -> String {
    format!(
        "capacity:   {}\nstored:     {} in {} chunks ({} corrupt)\nreferenced: {}\npinned:     {} ({} manifests pinned)\nloose:      {} in {} chunks (reclaimed by `vw gc`)\nmanifests:  {} ({} names)\npack files: {} ({} on disk)",
        s.capacity.map_or("none".to_string(), bytes),
        bytes(s.chunk_bytes),
        s.chunks,
        s.corrupt_chunks,
        bytes(s.referenced_bytes),
        bytes(s.pinned_bytes),
        s.pinned_manifests,
        bytes(s.loose_bytes),
        s.loose_chunks,
        s.manifests,
        s.names,
        s.pack_files,
        bytes(s.pack_bytes),
    )
}

pub fn gc_text(r: &GcReport) -> String {
    let mut s = format!(
        "removed {} chunks ({}); compacted {} and deleted {} pack files ({} reclaimed)",
        r.chunks_removed,
        bytes(r.bytes_removed),
        r.packs_compacted,
        r.packs_deleted,
        bytes(r.disk_bytes_reclaimed)
    );
    for (id, names) in &r.evicted {
        let _ = write!(
            s,
            "\nevicted {id} ({})",
            if names.is_empty() { "unnamed".into() } else { names.join(", ") }
        );
    }
    if r.over_capacity > 0 {
        let _ = write!(
            s,
            "\nstill {} over capacity: everything left is pinned",
            bytes(r.over_capacity)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").ok(), Some(20 << 30));
        assert_eq!(parse_size("512m").ok(), Some(512 << 20));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("1.5K").ok(), Some(1536));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
