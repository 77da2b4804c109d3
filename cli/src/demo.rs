//! `vw demo`: the most complete path there is today, on generated images in a scratch
//! directory. It grows with the project (the peer issue turns it into a local
//! multi-peer deployment).
//!
//! Two hosts' stores, two images that share a base OS, and every step the staging path
//! relies on: import, dedup across images, the missing set a second host would fetch,
//! a byte-exact sparse export, and a per-VM clone. Then host a deploys a head node and
//! two workers through its manager with the simulated Xen driver (which says so):
//! stage, load, start, pause, stop, unstage, each timed.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use vw_node::chunkstore::testdata::noise;
use vw_node::chunkstore::{clone_image, ImageName, ImageRef, PinReason, Store};
use vw_node::config::ClusterConfig;
use vw_node::manager::{Manager, Op, VmReport};
use vw_node::workspace;

use crate::output::{bytes, import_text, Out};

#[derive(Serialize)]
struct DemoReport {
    scratch: String,
    base: vw_node::chunkstore::ImportReport,
    worker: vw_node::chunkstore::ImportReport,
    shared_bytes: u64,
    host_b_missing_bytes: u64,
    host_b_missing_chunks: usize,
    export_identical: bool,
    export_allocated_bytes: u64,
    clone_method: vw_node::chunkstore::CloneMethod,
    lifecycle: Vec<(Op, Vec<VmReport>)>,
}

/// The demo cluster: a head node and two workers, integrated by seed volumes.
const WORKSPACE: &str = r#"<virtualWorkspace type="cluster" name="demo" nodeNumber="3">
  <headnode name="head">
    <memory>512</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="demo/base:1" device="xvda1" role="root"/>
    <swap device="xvda2"/>
    <roles><nfsServer export="/home"/><batchServer/></roles>
  </headnode>
  <workernode name="worker" count="2">
    <memory>256</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="demo/worker:1" device="xvda1" role="root"/>
    <swap device="xvda2"/>
    <roles><nfsClient export="/home"/><batchWorker/></roles>
  </workernode>
</virtualWorkspace>"#;

/// Runs the demo cluster's lifecycle on host a's store.
fn lifecycle(dir: &Path, out: &Out) -> anyhow::Result<Vec<(Op, Vec<VmReport>)>> {
    let say = |s: &str| out.note(s);
    let (m, _) = Manager::open(&dir.join("host-a"), ClusterConfig::embedded())?;
    anyhow::ensure!(m.driver().simulated(), "the demo uses the simulated Xen driver");
    say("\n[host a] deploying a head node and two workers (simulated Xen driver: configs are checked and states tracked, no guest runs)");
    let spec = workspace::parse(WORKSPACE, "(demo workspace)")?;
    m.submit(&spec)?;
    let mut done = Vec::new();
    for (op, vm) in [
        (Op::Create, None),
        (Op::Pause, Some("demo-worker1")),
        (Op::Stop, None),
        (Op::Unstage, None),
    ] {
        let reports = m.run("demo", vm, op)?;
        for r in &reports {
            let steps: Vec<String> = r
                .steps
                .iter()
                .map(|t| format!("{} {:.3} s", t.step, t.micros as f64 / 1e6))
                .collect();
            say(&format!(
                "[host a] {:<8} {:<13} → {:<9} {}",
                op.to_string(),
                r.vm,
                r.state.to_string(),
                steps.join(", ")
            ));
        }
        if op == Op::Create {
            let cfg = std::fs::read_to_string(m.config_path("demo-head"))?;
            say(&format!("[host a] xen/demo-head.cfg:\n{}", cfg.trim_end()));
        }
        done.push((op, reports));
    }
    Ok(done)
}

/// Writes a sparse file of `size` bytes: data extents `(offset, len, seed)`, holes
/// elsewhere. Each extent's content comes from its seed, so two images that place the
/// same extent share its bytes.
fn write_image(path: &Path, size: u64, extents: &[(u64, u64, u64)]) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(size)?;
    for &(offset, len, seed) in extents {
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&noise(usize::try_from(len)?, seed))?;
    }
    f.sync_all()?;
    Ok(())
}

pub fn run(out: &Out, keep: bool, size_mib: u64) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(size_mib >= 16, "--size-mib must be at least 16");
    let scratch = tempfile::Builder::new().prefix("vw-demo-").tempdir()?;
    let dir = scratch.path();
    let say = |s: &str| out.note(s);
    let size = size_mib << 20;
    let mib = 1u64 << 20;

    // A "base OS" image: 40% data in extents, the rest holes, like a fresh ext4.
    let base_extents: Vec<(u64, u64, u64)> =
        (0..size / (10 * mib)).map(|i| (i * 10 * mib, 4 * mib, 1000 + i)).collect();
    // A "worker" image: the same base plus application data in former holes and a few
    // small edits (hostname, config files).
    let mut worker_extents = base_extents.clone();
    worker_extents
        .extend((0..size / (40 * mib)).map(|i| (i * 40 * mib + 5 * mib, 3 * mib, 9000 + i)));
    worker_extents.extend((0..8).map(|i| (i * 7 * mib + 12_288, 4096, 7000 + i)));
    let (base_img, worker_img) = (dir.join("base.img"), dir.join("worker.img"));
    write_image(&base_img, size, &base_extents)?;
    write_image(&worker_img, size, &worker_extents)?;
    say(&format!("generated two {size_mib} MiB images in {}", dir.display()));

    let host_a = Store::open(&dir.join("host-a"))?;
    let base_name: ImageName = "demo/base:1".parse()?;
    let worker_name: ImageName = "demo/worker:1".parse()?;
    let base = host_a.import(&base_img, Some(&base_name), &())?;
    say(&format!("\n[host a] {}", import_text(&base)));
    let worker = host_a.import(&worker_img, Some(&worker_name), &())?;
    say(&format!("\n[host a] {}", import_text(&worker)));
    host_a.pin(&ImageRef::Name(base_name.clone()), &PinReason::Base)?;
    let diff =
        host_a.diff(&ImageRef::Name(base_name.clone()), &ImageRef::Name(worker_name.clone()))?;
    say(&format!("\n[host a] base and worker share {} of data", bytes(diff.shared_bytes)));

    // A second host that caches only the base image lacks only the worker's own bytes.
    let host_b = Store::open(&dir.join("host-b"))?;
    host_b.import(&base_img, Some(&base_name), &())?;
    let missing = host_b.missing(&host_a.manifest(&worker.manifest)?)?;
    say(&format!(
        "[host b] caches only the base: staging the worker would fetch {} in {} chunks, not {}",
        bytes(missing.bytes),
        missing.chunks.len(),
        bytes(worker.len)
    ));

    let exported = dir.join("worker-export.img");
    host_a.export(&worker.manifest, &exported, false, &())?;
    let identical = file_hash(&exported)? == file_hash(&worker_img)?;
    let allocated = std::fs::metadata(&exported)?.blocks() * 512;
    say(&format!(
        "\n[host a] exported the worker: byte-identical {identical}, {} allocated of {} (zero chunks are holes)",
        bytes(allocated),
        bytes(worker.len)
    ));
    let method = clone_image(&exported, &dir.join("worker-vm2.img"))?;
    say(&format!("[host a] cloned it for a second VM by {method:?}"));

    let report = DemoReport {
        scratch: dir.display().to_string(),
        base,
        worker,
        shared_bytes: diff.shared_bytes,
        host_b_missing_bytes: missing.bytes,
        host_b_missing_chunks: missing.chunks.len(),
        export_identical: identical,
        export_allocated_bytes: allocated,
        clone_method: method,
        lifecycle: Vec::new(),
    };
    drop((host_a, host_b));
    let lifecycle = lifecycle(dir, out)?;
    let report = DemoReport { lifecycle, ..report };
    if keep {
        let kept = scratch.keep();
        say(&format!("\nkept {}", kept.display()));
    }
    out.emit(&report, || {
        format!(
            "\ndemo ok: the worker image shares {} with the base; a host that caches the base fetches {} to stage it; a 3-VM cluster went through create, pause, stop and unstage",
            bytes(report.shared_bytes),
            bytes(report.host_b_missing_bytes)
        )
    });
    anyhow::ensure!(identical, "the exported image differs from the original");
    Ok(ExitCode::SUCCESS)
}

fn file_hash(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize())
}
