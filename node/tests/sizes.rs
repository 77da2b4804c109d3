//! No message grows with an image: a deployment of a manifest with as many distinct
//! chunk ids as 200 GiB of image has at the default 64 KiB average (3,276,800) goes
//! through the head, the inventories, the stage orders and the chunk streams on
//! loopback. Each chunk is cut at 64 bytes, fastcdc's smallest, so the bytes moved stay
//! at 200 MiB per host while every list of ids is as long as at 200 GiB: the manifest
//! alone encodes to 108 MiB, past the 64 MiB a control message may carry.

use std::path::Path;
use std::time::Instant;

use vw_localnet::{cluster_workspace, DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::chunkstore::chunker::ChunkerParams;
use vw_node::chunkstore::{
    ChunkId, ChunkRef, ImageName, ImageRef, Manifest, ManifestId, Seal, Store, Visibility,
};
use vw_node::control::deployment::{DeployOptions, DeployReport};
use vw_node::control::protocol::MAX_MESSAGE;
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::planner::{Policy, Strategy};

/// Distinct chunk ids in 200 GiB at the default 64 KiB average.
const CHUNKS: u32 = (200u64 * (1 << 30) / (64 << 10)) as u32;
/// Bytes per chunk: fastcdc's smallest.
const CHUNK: usize = 64;

/// Chunk `i`'s bytes: distinct for every `i`, and incompressible.
fn chunk(i: u32) -> [u8; CHUNK] {
    let mut out = [0; CHUNK];
    blake3::Hasher::new().update(&i.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Stores the chunks and records the manifest of the image in `store`, sealed by
/// `vos`'s VO `demo` as `name`; returns the manifest.
fn write_huge_image(store: &Store, vos: &LocalVos, name: &str) -> Manifest {
    let params = ChunkerParams { min: CHUNK as u32, avg: 4 * CHUNK as u32, max: 16 * CHUNK as u32 };
    let mut image = blake3::Hasher::new();
    let mut refs = Vec::with_capacity(CHUNKS as usize);
    let mut receiving = store.receiving();
    for i in 0..CHUNKS {
        let bytes = chunk(i);
        let id = ChunkId::of(&bytes);
        receiving.put(&id, &bytes).expect("put");
        image.update(&bytes);
        refs.push(ChunkRef { id, len: CHUNK as u32 });
    }
    let len = u64::from(CHUNKS) * CHUNK as u64;
    let manifest = Manifest::new(params, len, image.finalize(), refs).expect("manifest");
    receiving.finish(&manifest, None).expect("recorded");
    let name: ImageName = name.parse().expect("name");
    let seal = Seal::sign(vos.key("demo"), &name, manifest.id(), Visibility::Public).expect("seal");
    store.put_seal(&seal).expect("sealed");
    manifest
}

/// Whether the store at `dir` holds image `name`, as manifest `id`, byte for byte.
fn holds(dir: &Path, name: &str, id: ManifestId) {
    let store = Store::open(dir).expect("store");
    let named = store.resolve(&ImageRef::Name(name.parse().expect("name"))).expect("named");
    assert_eq!(named, id, "{name} in {}", dir.display());
    let out = dir.join("check.img");
    let report = store.export(&id, &out, false, &()).expect("exported and checked whole");
    assert_eq!(report.len, u64::from(CHUNKS) * CHUNK as u64);
    std::fs::remove_file(&out).expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_of_200_gib_of_chunk_ids_deploys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vos =
        LocalVos::create(&dir.path().join("cluster.toml"), &[("demo", false, "")]).expect("VOs");
    let options = LocalNetOptions {
        cluster_config: Some(vos.cluster_config.clone()),
        compress: Some("never".into()),
        ..Default::default()
    };
    let net = LocalNet::create(dir.path(), 3, &options).expect("net");
    let images = DemoImages::write(dir.path(), 8).expect("images");
    let started = Instant::now();
    let huge = {
        let store = Store::open(&net.data_dirs[0]).expect("head store");
        vos.import(&store, &images.base, "demo/base:1", Visibility::Public).expect("import");
        write_huge_image(&store, &vos, "demo/huge:1")
    };
    let encoded = huge.encode().len();
    eprintln!(
        "{} distinct chunks, manifest {encoded} bytes, written in {:.1} s",
        huge.distinct().len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(huge.distinct().len(), CHUNKS as usize);
    assert!(encoded > MAX_MESSAGE, "the manifest alone is more than a control message carries");

    let vwds = net.start().await.expect("vwds");
    // One head node on the small image, two workers on the huge one: spread, each
    // worker on a host that holds none of it.
    let workspace = cluster_workspace("huge", "demo/base:1", "demo/huge:1", 2);
    let ticket = vos
        .ticket_with("demo", &workspace, |t| {
            t.manifests.insert(huge.id());
        })
        .expect("ticket");
    let request = LocalRequest::Deploy {
        workspace,
        source: "huge.xml".into(),
        ticket,
        options: DeployOptions::new(Strategy::Auto, Policy::Spread),
    };
    let socket = net.head_socket();
    let started = Instant::now();
    let report: DeployReport = tokio::task::spawn_blocking(move || {
        match local::call(&socket, &request, |_| {}).expect("socket") {
            LocalReply::Deployed { report } => *report,
            other => panic!("deploy failed: {other:?}"),
        }
    })
    .await
    .expect("task");
    eprintln!("deployed in {:.1} s: {report:#?}", started.elapsed().as_secs_f64());
    assert!(report.lost.is_empty(), "no host lost: {:?}", report.lost);
    let workers: Vec<&str> = report
        .placement
        .iter()
        .filter(|p| p.vm.as_str().contains("worker"))
        .map(|p| p.host.as_str())
        .collect();
    assert_eq!(workers.len(), 2);
    for w in &workers {
        let host = report.hosts.iter().find(|h| h.host == *w).expect("host");
        let stage = host.stage.as_ref().expect("staged");
        if *w != net.names[0] {
            assert!(
                stage.chunks >= u64::from(CHUNKS),
                "{w} received every chunk of the huge image: {}",
                stage.chunks
            );
        }
    }
    for v in vwds {
        v.shutdown().await;
    }
    for w in workers {
        let i = net.names.iter().position(|n| n == w).expect("host");
        holds(&net.data_dirs[i], "demo/huge:1", huge.id());
    }
}
