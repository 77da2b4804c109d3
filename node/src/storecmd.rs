//! The store commands (`vw image …`, `vw cache …`, `vw gc`) as one function over a store,
//! [`run`]: `vw` runs it on a store it opens itself, and the `vwd` that owns a store
//! runs it for `vw` on a request from its socket, so both give the same results in the
//! same words. Files travel as open descriptors: `vw` opens the image it imports (with
//! its own permissions) or makes the temporary file it exports into, and `vwd` reads
//! or writes only that file, never a path it was given.

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vw_chunkstore::{
    CacheStats, Diff, GcReport, ImageFile, ImageInfo, ImageName, ImageRef, ImportReport, PinReason,
    Progress, Seal, Store, VerifyReport,
};

use crate::config::ClusterConfig;

/// A store command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op")]
pub enum StoreOp {
    /// Import the file that comes with the request (named `path` in messages) under
    /// `seal` (encoded), which the cluster config's key for its VO must verify.
    Import {
        /// The file as the client named it.
        path: PathBuf,
        /// The seal (`Seal::encode`).
        seal: Vec<u8>,
    },
    /// Rebuild `image` into the file that comes with the request (a temporary file the
    /// client renames to `out` once this succeeded).
    Export {
        /// Name or manifest id.
        image: String,
        /// The file the client will rename it to, for messages.
        out: PathBuf,
    },
    /// List the images.
    Ls,
    /// Remove a name (and its manifest when no name is left).
    Rm {
        /// Name or manifest id.
        image: String,
    },
    /// Re-hash stored chunks (of one image, or all).
    Verify {
        /// Name or manifest id; all when absent.
        image: Option<String>,
    },
    /// Shared and unique bytes of two images.
    Diff {
        /// First image.
        a: String,
        /// Second image.
        b: String,
    },
    /// Occupancy.
    Stats,
    /// Pin an image as a base image.
    Pin {
        /// Name or manifest id.
        image: String,
    },
    /// Remove the base-image pin.
    Unpin {
        /// Name or manifest id.
        image: String,
    },
    /// Set the capacity in bytes (`None`: unlimited) and evict to it.
    Limit {
        /// Bytes.
        capacity: Option<u64>,
    },
    /// Drop unused chunks, evict to the capacity, compact packs.
    Gc,
    /// Keep a boot trace (`BootTrace`, encoded) for its image: later lazy deploys
    /// fetch its chunks first. Its VO must be trusted and its signature verify; every
    /// chunk must be the image's.
    KeepTrace {
        /// The trace.
        trace: Vec<u8>,
    },
}

impl StoreOp {
    /// What a progress bar calls it.
    pub fn verb(&self) -> &'static str {
        match self {
            StoreOp::Import { .. } => "import",
            StoreOp::Export { .. } => "export",
            StoreOp::Verify { .. } => "verify",
            _ => "store",
        }
    }

    /// Whether it comes with a file.
    pub fn takes_file(&self) -> bool {
        matches!(self, StoreOp::Import { .. } | StoreOp::Export { .. })
    }
}

/// What a store command did, in both forms `vw` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The result as `--json` prints it.
    pub json: serde_json::Value,
    /// The result as text.
    pub text: String,
    /// A side note for stderr (what an import evicted).
    pub note: Option<String>,
    /// Whether `vw` exits 1 (corrupt chunks found).
    pub failed: bool,
}

impl Outcome {
    fn of<T: Serialize>(value: &T, text: String) -> Self {
        let json = serde_json::to_value(value).expect("reports serialise");
        Outcome { json, text, note: None, failed: false }
    }
}

/// Why a store command failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCmdError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] vw_chunkstore::Error),
    /// An image reference that does not parse.
    #[error("`{text}` is not an image name or manifest id: {reason}")]
    BadRef {
        /// What was given.
        text: String,
        /// Why.
        reason: String,
    },
    /// An import or export without its file.
    #[error("{op} needs the file sent with the request, and none came")]
    NoFile {
        /// The command.
        op: &'static str,
    },
    /// A seal that does not decode or does not verify.
    #[error("seal for {path}: {reason}")]
    Seal {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn image_ref(text: &str) -> Result<ImageRef, StoreCmdError> {
    text.parse().map_err(|e: vw_chunkstore::Error| StoreCmdError::BadRef {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks `seal` (encoded) for the image at `path` against the key `config` trusts for
/// its VO.
pub fn checked_seal(
    config: &ClusterConfig,
    seal: &[u8],
    path: &std::path::Path,
) -> Result<Seal, StoreCmdError> {
    let bad = |reason: String| StoreCmdError::Seal { path: path.to_owned(), reason };
    let seal = Seal::decode(seal).map_err(|e| bad(e.to_string()))?;
    let name: &ImageName = seal.name();
    let vo = config.vo(name.vo()).ok_or_else(|| {
        bad(format!(
            "VO {} is not trusted by the cluster config {} (no [[vo]] entry)",
            name.vo(),
            config.source
        ))
    })?;
    seal.verify(&vo.public()).map_err(|e| bad(e.to_string()))?;
    Ok(seal)
}

/// Runs `op` on `store`, with `file` for an import or an export, checking seals against
/// `config`.
pub fn run(
    store: &Store,
    config: &ClusterConfig,
    op: StoreOp,
    file: Option<File>,
    progress: &dyn Progress,
) -> Result<Outcome, StoreCmdError> {
    Ok(match op {
        StoreOp::Import { path, seal } => {
            let file = file.ok_or(StoreCmdError::NoFile { op: "import" })?;
            let seal = checked_seal(config, &seal, &path)?;
            let r =
                store.import_presealed_from(ImageFile::from_file(file, &path)?, &seal, progress)?;
            let mut outcome = Outcome::of(&r, import_text(&r));
            if !r.eviction.evicted.is_empty() || r.eviction.chunks_removed > 0 {
                outcome.note = Some(gc_text(&r.eviction));
            }
            outcome
        }
        StoreOp::Export { image, out } => {
            let file = file.ok_or(StoreCmdError::NoFile { op: "export" })?;
            let id = store.resolve(&image_ref(&image)?)?;
            let r = store.export_into(&id, &file, &out, progress)?;
            let text = format!(
                "wrote {} ({}, {} as holes) from {id} in {} ms",
                r.path.display(),
                bytes(r.len),
                bytes(r.hole_bytes),
                r.millis
            );
            Outcome::of(&r, text)
        }
        StoreOp::Ls => {
            let images = store.images()?;
            Outcome::of(&images, ls_text(&images))
        }
        StoreOp::Rm { image } => {
            let image = image_ref(&image)?;
            let removed = store.remove(&image)?;
            let json =
                serde_json::json!({ "removed": image.to_string(), "manifest_removed": removed });
            let text = match removed {
                Some(id) => {
                    format!("removed {image} (manifest {id}; its chunks stay cached until gc)")
                }
                None => format!("removed the name {image}; its manifest has other names"),
            };
            Outcome::of(&json, text)
        }
        StoreOp::Verify { image } => {
            let id = image
                .as_deref()
                .map(image_ref)
                .transpose()?
                .map(|i| store.resolve(&i))
                .transpose()?;
            let r = store.verify(id.as_ref(), progress)?;
            Outcome { failed: !r.is_clean(), ..Outcome::of(&r, verify_text(&r)) }
        }
        StoreOp::Diff { a, b } => {
            let (a, b) = (image_ref(&a)?, image_ref(&b)?);
            let d = store.diff(&a, &b)?;
            Outcome::of(&d, diff_text(&a, &b, &d))
        }
        StoreOp::Stats => {
            let s = store.stats()?;
            Outcome::of(&s, stats_text(&s))
        }
        StoreOp::Pin { image } => {
            let image = image_ref(&image)?;
            let id = store.pin(&image, &PinReason::Base)?;
            let json = serde_json::json!({ "pinned": image.to_string(), "manifest": id });
            Outcome::of(&json, format!("pinned {image} ({id}) as a base image"))
        }
        StoreOp::Unpin { image } => {
            let image = image_ref(&image)?;
            let existed = store.unpin(&image, &PinReason::Base)?;
            let json = serde_json::json!({ "unpinned": image.to_string(), "was_pinned": existed });
            let text = if existed {
                format!("unpinned {image}")
            } else {
                format!("{image} was not pinned")
            };
            Outcome::of(&json, text)
        }
        StoreOp::Limit { capacity } => {
            let r = store.set_capacity(capacity)?;
            let limit = capacity.map_or("none".to_string(), bytes);
            let json = serde_json::json!({ "capacity": capacity, "gc": r });
            Outcome::of(&json, format!("capacity {limit}\n{}", gc_text(&r)))
        }
        StoreOp::Gc => {
            let r = store.gc()?;
            Outcome::of(&r, gc_text(&r))
        }
        StoreOp::KeepTrace { trace } => {
            let trace = vw_chunkstore::BootTrace::decode(&trace)?;
            let vo = config.vo(trace.vo()).ok_or_else(|| vw_chunkstore::Error::BadTrace {
                manifest: trace.manifest().to_string(),
                reason: format!(
                    "VO {} is not trusted by the cluster config {} (no [[vo]] entry)",
                    trace.vo(),
                    config.source
                ),
            })?;
            trace.verify(&vo.public())?;
            store.put_trace(&trace)?;
            let kept = serde_json::json!({
                "manifest": format!("{:#}", trace.manifest()),
                "vo": trace.vo(),
                "chunks": trace.chunks().len(),
            });
            let text = format!(
                "kept the boot trace of {} ({} chunks, signed by {}): lazy deploys fetch them first",
                trace.manifest(),
                trace.chunks().len(),
                trace.vo()
            );
            Outcome { json: kept, text, note: None, failed: false }
        }
    })
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    vw_planner::human_bytes(n)
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
