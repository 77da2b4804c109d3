//! Staging a virtual cluster on a loopback cluster of `vwd`s, against the physical
//! limit measured in the same run (docs/experiments.md, "Staging on loopback").
//!
//! The head runs in this process and holds the images; hosts 1..N are `vwd` child
//! processes (so their memory is their own), every one capped at `--cap` both ways.
//! The workspace is a head node on the head host and one worker per other host, so each
//! worker host lacks the worker image's distinct bytes. The limit is that over the cap;
//! a star takes about N-1 times it (the head's uplink), a chain about once.
//!
//! ```text
//! cargo build --profile dev -p vw-node --bin vwd --example stage_bench
//! target/debug/examples/stage_bench --hosts 8 --cap 100Mbit --strategy chain --size-mib 128
//! target/debug/examples/stage_bench --hosts 8 --cap none --image /var/cache/vw-images/worker.img
//! ```
//! Prints one JSON line.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vw_localnet::{
    cluster_workspace, write_image, DemoImages, LocalNet, LocalNetOptions, LocalVos,
};
use vw_node::chunkstore::{Store, Visibility};
use vw_node::control::deployment::{DeployOptions, DeployReport};
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::planner::{Policy, Strategy};

struct Args {
    hosts: usize,
    cap: Option<String>,
    strategy: Strategy,
    size_mib: u64,
    image: Option<PathBuf>,
    compress: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        hosts: 8,
        cap: Some("100Mbit".into()),
        strategy: Strategy::Chain,
        size_mib: 128,
        image: None,
        compress: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--hosts" => a.hosts = value.parse()?,
            "--cap" => a.cap = (value != "none").then(|| value.clone()),
            "--strategy" => a.strategy = value.parse().map_err(anyhow::Error::msg)?,
            "--size-mib" => a.size_mib = value.parse()?,
            "--image" => a.image = Some(value.into()),
            "--compress" => a.compress = Some(value.clone()),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    anyhow::ensure!(a.hosts >= 2, "--hosts must be at least 2");
    let dir = tempfile::Builder::new().prefix("vw-stage-bench-").tempdir_in("/var/tmp")?;
    let vos = LocalVos::create(&dir.path().join("cluster.toml"), &[("bench", false, "")])?;
    let net = LocalNet::create(
        dir.path(),
        a.hosts,
        &LocalNetOptions {
            cap: a.cap.clone(),
            compress: a.compress.clone(),
            cluster_config: Some(vos.cluster_config.clone()),
            ..Default::default()
        },
    )?;
    let worker = match &a.image {
        Some(p) => p.clone(),
        None => DemoImages::write(dir.path(), a.size_mib)?.worker,
    };
    let head_img = dir.path().join("head.img");
    write_image(&head_img, 16 << 20, &[(0, 1 << 20, 77)])?;
    {
        let store = Store::open(&net.data_dirs[0])?;
        for (path, name) in [(&head_img, "bench/head:1"), (&worker, "bench/worker:1")] {
            vos.import(&store, path, name, Visibility::Private)?;
        }
    }
    let vwd = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vwd"))
        .context("locating vwd next to the examples directory")?;
    let children = (1..a.hosts)
        .map(|i| net.spawn(i, &vwd, &dir.path().join(format!("{}.log", net.names[i]))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let head = runtime.block_on(net.start_one(0))?;

    let workspace = cluster_workspace("bench", "bench/head:1", "bench/worker:1", a.hosts - 1);
    let request = LocalRequest::Deploy {
        ticket: vos.ticket("bench", &workspace)?,
        workspace,
        source: "bench.xml".into(),
        options: DeployOptions::new(a.strategy, Policy::Spread),
    };
    let report: DeployReport = match local::call(&net.head_socket(), &request, |_| {})? {
        LocalReply::Deployed { report } => *report,
        other => anyhow::bail!("deploy failed: {other:?}"),
    };
    let rss: Vec<u64> = children.iter().filter_map(|c| c.peak_rss()).collect();
    drop(children);
    runtime.block_on(head.shutdown());

    let cap =
        a.cap.as_deref().map(vw_node::hosts::parse_rate).transpose().map_err(anyhow::Error::msg)?;
    let stages: Vec<_> = report.hosts.iter().filter_map(|h| h.stage.as_ref()).collect();
    let lacked_max = stages.iter().map(|s| s.lacked).max().unwrap_or(0);
    let fetch_max = stages.iter().map(|s| s.fetch_micros).max().unwrap_or(0) as f64 / 1e6;
    let stage_s = report
        .phases
        .iter()
        .find(|p| p.phase.to_string() == "stage")
        .map_or(0.0, |p| p.micros as f64 / 1e6);
    let limit = cap.map(|c| lacked_max as f64 / c);
    let line = serde_json::json!({
        "strategy": report.strategy.map(|s| s.to_string()),
        "hosts": a.hosts,
        "cap_bytes_per_s": cap,
        "image": a.image.as_ref().map_or(format!("generated {} MiB", a.size_mib), |p| p.display().to_string()),
        "lacked_per_host": lacked_max,
        "sent": stages.iter().map(|s| s.received).sum::<u64>(),
        "wire": stages.iter().map(|s| s.wire).sum::<u64>(),
        "compress": a.compress.as_deref().unwrap_or("auto"),
        "lacked": stages.iter().map(|s| s.lacked).sum::<u64>(),
        "fetch_s": fetch_max,
        "stage_phase_s": stage_s,
        "limit_s": limit,
        "fetch_over_limit": limit.map(|l| fetch_max / l),
        "predicted_s": report.predicted_s,
        "lost": report.lost,
        "host_peak_rss_mib_max": rss.iter().max().map(|b| b >> 20),
    });
    println!("{line}");
    Ok(())
}
