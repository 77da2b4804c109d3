//! One `/vw/chunks/1` stream on loopback: a host fetches a whole image from another.
//! Prints MB/s, CPU seconds per GB (user + system of this process, both peers in it) and
//! the process's peak RSS.
//! `cargo run --profile dev -p vw-node --example loopback_fetch -- 512` (MiB).

use std::sync::Arc;
use std::time::Instant;

use libp2p::identity;
use vw_node::chunks::fetch;
use vw_node::chunkstore::{testdata::noise, Store};
use vw_node::peer::{Peer, PeerConfig};

/// User + system CPU of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields after the command: state is not numeric, so utime and stime are 11 and 12.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("b"));
    let img = dir.path().join("x.img");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&img).expect("create");
        for i in 0..mib as u64 {
            f.write_all(&noise(1 << 20, 11 + i)).expect("write");
        }
    }
    let report = a.import(&img, None, &()).expect("import");
    let manifest = a.manifest(&report.manifest).expect("manifest");
    let (ka, kb) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
    let grants = Arc::new(vw_node::access::grants::Grants::default());
    let cfg = |k: &identity::Keypair, other: &identity::Keypair| PeerConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        keypair: k.clone(),
        allowed: vec![other.public().to_peer_id()],
        mdns: false,
        known: vec![],
    };
    let sending = vw_node::chunks::Sending { grants: Arc::clone(&grants), ..Default::default() };
    let pa = Peer::start(cfg(&ka, &kb), vec![vw_node::chunks::server(a.clone(), sending)])
        .await
        .expect("a");
    let pb = Peer::start(cfg(&kb, &ka), vec![]).await.expect("b");
    let addr = pa.addresses().await.expect("addrs")[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(pa.id()));
    pb.dial(addr).await.expect("dial");
    grants.allow("bench", "bench", &[(&manifest, &[pb.id()])], u64::MAX);
    let purpose = vw_node::chunks::Purpose { deployment: "bench".into(), manifest: manifest.id() };
    let missing = b.missing(&manifest).expect("missing");
    // Peak RSS from here on only (writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let got = fetch(&mut pb.control(), pa.id(), &purpose, &missing.chunks, Arc::clone(&b))
        .await
        .expect("fetch");
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let gb = got.bytes as f64 / 1e9;
    println!(
        "{} chunks, {:.1} MB in {:.2} s: {:.0} MB/s, {:.2} CPU s per GB (both peers, verify and store included)",
        got.chunks,
        got.bytes as f64 / 1e6,
        secs,
        got.bytes as f64 / 1e6 / secs,
        cpu / gb
    );
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "peak RSS while fetching (both peers and both stores in this process): {} MiB",
        hwm / 1024
    );
    pa.shutdown().await;
    pb.shutdown().await;
}
