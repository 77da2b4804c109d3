//! Peers on loopback: a host fetches the chunks it lacks from another over
//! `/vw/chunks` and rebuilds the image byte for byte; a peer not on the allow list
//! gets nothing, and a listed peer only the chunks of a manifest it was granted.

use std::sync::Arc;

use libp2p::{identity, Multiaddr};
use vw_node::access::grants::Grants;
use vw_node::chunks::demand::{Demand, DemandImage};
use vw_node::chunks::rate::{RateLimit, UploadMeter};
use vw_node::chunks::{
    self, fetch, fetch_from_any, fetch_into, ChunkSource, Floor, Intake, PullReport, Purpose,
    Relay, Sending,
};
use vw_node::chunkstore::{testdata::noise, ImageName, Manifest, Store};
use vw_node::lazy::disk::{LazyDisk, Supply};
use vw_node::peer::{Peer, PeerConfig, PeerError};

/// The deployment every test fetches for.
fn purpose(m: &Manifest) -> Purpose {
    Purpose { deployment: "d".into(), manifest: m.id() }
}

/// Lets `peers` fetch `manifest` for deployment `d` from every peer sharing `grants`.
fn grant(grants: &Grants, manifest: &Manifest, peers: &[libp2p::PeerId]) {
    grants.allow("d", "vo", &[(manifest, peers)], u64::MAX);
}

/// A peer on loopback allowing `allowed`, and how it sends chunks (to those `grants`
/// lets fetch them).
fn config(
    key: &identity::Keypair,
    allowed: &[&identity::Keypair],
    grants: &Arc<Grants>,
) -> (PeerConfig, Sending) {
    let config = PeerConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        keypair: key.clone(),
        allowed: allowed.iter().map(|k| k.public().to_peer_id()).collect(),
        mdns: false,
        known: vec![],
    };
    (config, Sending { grants: Arc::clone(grants), ..Default::default() })
}

/// Starts a peer serving chunks from `source`.
async fn start(
    (config, sending): (PeerConfig, Sending),
    source: Arc<dyn ChunkSource>,
) -> Result<Peer, PeerError> {
    Peer::start(config, vec![chunks::server(source, sending)]).await
}

/// `pc`, whose store is `c`, is granted `manifest`, dials `senders` and pulls what it
/// lacks of it from them in that order with `floor`; the report, once written.
async fn pull_from(
    pc: &Peer,
    c: &Arc<Store>,
    grants: &Grants,
    manifest: &Manifest,
    senders: &[&Peer],
    floor: Floor,
) -> Result<PullReport, PeerError> {
    grant(grants, manifest, &[pc.id()]);
    for s in senders {
        pc.dial(address(s).await).await.expect("dial");
    }
    let missing = c.missing(manifest).expect("missing");
    let intake = Intake::start(c.clone(), None);
    let ids: Vec<_> = senders.iter().map(|s| s.id()).collect();
    let (report, pulled) = fetch_from_any(
        &mut pc.control(),
        &ids,
        &purpose(manifest),
        &missing.chunks,
        &intake,
        floor,
    )
    .await;
    intake.finish().await.expect("durable");
    pulled.map(|()| report)
}

async fn address(peer: &Peer) -> Multiaddr {
    let addr = peer.addresses().await.expect("addresses")[0].clone();
    addr.with(libp2p::multiaddr::Protocol::P2p(peer.id()))
}

/// A sender serving `source` (sending as `sending` says) and a receiver, each allowing
/// only the other, the receiver connected to the sender.
async fn pair(
    source: Arc<dyn ChunkSource>,
    sending: Sending,
    receiver: Arc<Store>,
) -> (Peer, Peer) {
    let (ka, kb) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
    let none = Arc::new(Grants::default());
    let pa = start((config(&ka, &[&kb], &none).0, sending), source).await.expect("sender");
    let pb = start(config(&kb, &[&ka], &none), receiver).await.expect("receiver");
    pb.dial(address(&pa).await).await.expect("dial");
    (pa, pb)
}

/// Records `manifest` in `store` (every chunk must be there), exports it and checks the
/// image is `data`, byte for byte.
fn rebuilds_exactly(store: &Store, manifest: &Manifest, name: Option<&ImageName>, data: &[u8]) {
    store.receiving().finish(manifest, name).expect("complete");
    let out = tempfile::NamedTempFile::new().expect("tempfile");
    store.export(&manifest.id(), out.path(), true, &()).expect("export");
    assert!(std::fs::read(out.path()).expect("read") == data, "byte-identical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_fetches_what_it_lacks_and_rebuilds_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    // An image of 6 MiB of data and 2 MiB of zeros; b already holds a part of it.
    let mut data = noise(6 << 20, 3);
    data.resize(8 << 20, 0);
    let img = dir.path().join("x.img");
    std::fs::write(&img, &data).expect("write");
    let report = a.import(&img, Some(&"vo/x:1".parse().expect("name")), &()).expect("import");
    let part = dir.path().join("part.img");
    std::fs::write(&part, &data[..2 << 20]).expect("write");
    b.import(&part, None, &()).expect("import part");
    let grants = Arc::new(Grants::default());
    let sending = Sending { grants: grants.clone(), ..Default::default() };
    let (pa, pb) = pair(a.clone(), sending, b.clone()).await;

    let manifest = a.manifest(&report.manifest).expect("manifest");
    grant(&grants, &manifest, &[pb.id()]);
    let missing = b.missing(&manifest).expect("missing");
    assert!(missing.bytes < 6 << 20, "b holds part of it already");
    let got =
        fetch(&mut pb.control(), pa.id(), &purpose(&manifest), &missing.chunks, Arc::clone(&b))
            .await
            .expect("fetch");
    assert_eq!(got.chunks as usize, missing.chunks.len());
    assert_eq!(got.bytes, missing.bytes, "only what b lacked was sent");
    rebuilds_exactly(&b, &manifest, Some(&"vo/x:1".parse().expect("name")), &data);

    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_peer_is_reached_without_an_earlier_connection() {
    // A stream opened by peer id must find the address from the configuration: a host
    // whose connection to its sender never came up (or idled out) must still pull.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    let img = dir.path().join("x.img");
    let data = noise(1 << 20, 9);
    std::fs::write(&img, &data).expect("write");
    let report = a.import(&img, None, &()).expect("import");
    let manifest = a.manifest(&report.manifest).expect("manifest");
    let (ka, kb) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
    let grants = Arc::new(Grants::default());
    let pa = start(config(&ka, &[&kb], &grants), a.clone()).await.expect("sender");
    let known = vec![(pa.id(), pa.addresses().await.expect("addresses")[0].clone())];
    let (receiver, sending) = config(&kb, &[&ka], &grants);
    let pb = start((PeerConfig { known, ..receiver }, sending), b.clone()).await.expect("receiver");
    grant(&grants, &manifest, &[pb.id()]);
    let missing = b.missing(&manifest).expect("missing");
    let got =
        fetch(&mut pb.control(), pa.id(), &purpose(&manifest), &missing.chunks, Arc::clone(&b))
            .await
            .expect("dialled by id from the configured address");
    assert_eq!(got.bytes, missing.bytes);
    rebuilds_exactly(&b, &manifest, None, &data);
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_on_the_allow_list_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ka, kc) = (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let c = Arc::new(Store::open(&dir.path().join("c")).expect("store c"));
    let img = dir.path().join("x.img");
    std::fs::write(&img, noise(1 << 20, 4)).expect("write");
    let report = a.import(&img, None, &()).expect("import");
    let manifest = a.manifest(&report.manifest).expect("manifest");

    // a allows nobody; c allows a.
    let grants = Arc::new(Grants::default());
    let pa = start(config(&ka, &[], &grants), a.clone()).await.expect("peer a");
    let pc = start(config(&kc, &[&ka], &grants), c.clone()).await.expect("peer c");
    grant(&grants, &manifest, &[pc.id()]);
    let _ = pc.dial(address(&pa).await).await;
    let missing = c.missing(&manifest).expect("missing");
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        fetch(&mut pc.control(), pa.id(), &purpose(&manifest), &missing.chunks, Arc::clone(&c)),
    )
    .await
    .expect("refused promptly, not hanging");
    let err = result.expect_err("an unknown peer was served");
    assert!(err.to_string().contains("allow list"), "{err}");
    assert_eq!(c.missing(&manifest).expect("missing").chunks.len(), missing.chunks.len());
    pa.shutdown().await;
    pc.shutdown().await;
}

/// Serves every chunk with its last byte flipped.
struct Corrupting(Arc<Store>);

impl ChunkSource for Corrupting {
    fn chunk(&self, id: &vw_node::chunkstore::ChunkId) -> Option<Vec<u8>> {
        let mut data = self.0.read_chunk(id).ok()?;
        *data.last_mut()? ^= 1;
        Some(data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_a_bad_chunk_is_caught_before_anything_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    let img = dir.path().join("x.img");
    std::fs::write(&img, noise(1 << 20, 6)).expect("write");
    let report = a.import(&img, None, &()).expect("import");
    let manifest = a.manifest(&report.manifest).expect("manifest");
    let grants = Arc::new(Grants::default());
    let sending = Sending { grants: grants.clone(), ..Default::default() };
    let (pa, pb) = pair(Arc::new(Corrupting(Arc::clone(&a))), sending, b.clone()).await;
    grant(&grants, &manifest, &[pb.id()]);
    let missing = b.missing(&manifest).expect("missing");
    let err =
        fetch(&mut pb.control(), pa.id(), &purpose(&manifest), &missing.chunks, Arc::clone(&b))
            .await
            .expect_err("bad chunk");
    assert!(err.to_string().contains("do not match its id"), "{err}");
    assert!(
        err.to_string().contains(&format!("{:#}", missing.chunks[0].id)),
        "names the chunk: {err}"
    );
    assert_eq!(
        b.missing(&manifest).expect("missing").chunks.len(),
        missing.chunks.len(),
        "nothing stored"
    );
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_peer_is_dropped_and_the_chunks_come_from_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ka, kb, kc] = &keypairs();
    let (a, c) = source_and_receiver(dir.path());
    let (manifest, data) = imported(&a, dir.path(), 2, 12);

    // b is a corrupting copy of a; c pulls from b first, then a.
    let grants = Arc::new(Grants::default());
    let pa = start(config(ka, &[kc], &grants), a.clone()).await.expect("peer a");
    let pb =
        start(config(kb, &[kc], &grants), Arc::new(Corrupting(a.clone()))).await.expect("peer b");
    let pc = start(config(kc, &[ka, kb], &grants), c.clone()).await.expect("peer c");
    let pulled = pull_from(&pc, &c, &grants, &manifest, &[&pb, &pa], Floor::Fixed)
        .await
        .expect("completes from the good peer");
    assert_eq!(pulled.dropped.len(), 1, "{pulled:?}");
    assert_eq!(pulled.dropped[0].0, pb.id().to_string());
    assert!(pulled.dropped[0].1.contains("do not match its id"), "{pulled:?}");
    rebuilds_exactly(&c, &manifest, None, &data);
    for p in [pa, pb, pc] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forwards_chunks_before_its_own_image_is_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<identity::Keypair> =
        (0..3).map(|_| identity::Keypair::generate_ed25519()).collect();
    let [ka, kb, kc] = [&keys[0], &keys[1], &keys[2]];
    let stores: Vec<Arc<Store>> = ["a", "b", "c"]
        .iter()
        .map(|n| Arc::new(Store::open(&dir.path().join(n)).expect("store")))
        .collect();
    let (a, b, c) = (stores[0].clone(), stores[1].clone(), stores[2].clone());
    let img = dir.path().join("x.img");
    let data = noise(16 << 20, 21);
    std::fs::write(&img, &data).expect("write");
    let report = a.import(&img, None, &()).expect("import");
    let manifest = a.manifest(&report.manifest).expect("manifest");
    let wanted = b.missing(&manifest).expect("missing").chunks;

    // a → b → c: b serves c from a relay over its store.
    let relay = Relay::new(b.clone());
    let grants = Arc::new(Grants::default());
    let pa = start(config(ka, &[kb], &grants), a.clone()).await.expect("peer a");
    let pb = start(config(kb, &[ka, kc], &grants), relay.clone()).await.expect("peer b");
    let pc = start(config(kc, &[kb], &grants), c.clone()).await.expect("peer c");
    grant(&grants, &manifest, &[pb.id(), pc.id()]);
    pb.dial(address(&pa).await).await.expect("dial a");
    pc.dial(address(&pb).await).await.expect("dial b");

    // Both fetches run at once: c asks b for chunks b does not have yet.
    let (mut cb, mut cc) = (pb.control(), pc.control());
    let (b_id, a_id) = (pb.id(), pa.id());
    let (wb, wc) = (wanted.clone(), wanted.clone());
    let (b2, c2, relay2) = (b.clone(), c.clone(), relay.clone());
    let (m2, m3) = (manifest.clone(), manifest.clone());
    let from_a = tokio::spawn(async move {
        let intake = Intake::start(b2, Some(relay2));
        let got = fetch_into(&mut cb, a_id, &purpose(&m2), &wb, &intake).await;
        intake.finish().await.map(|()| got)
    });
    let from_b = tokio::spawn(async move { fetch(&mut cc, b_id, &purpose(&m3), &wc, c2).await });
    let got_b = from_a.await.expect("task").expect("b's store").expect("b fetches from a");
    let got_c = from_b.await.expect("task").expect("c fetches from b while b is still receiving");
    assert_eq!(got_b.bytes, got_c.bytes);
    assert_eq!(got_c.missing, 0, "b never answered Missing for a chunk it was receiving");
    for s in [&b, &c] {
        rebuilds_exactly(s, &manifest, None, &data);
    }
    for p in [pa, pb, pc] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressing_sender_sends_fewer_bytes_and_the_image_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    // Text-like data: compresses well, but no chunk is all zeros.
    let mut data = Vec::new();
    let mut i = 0u64;
    while data.len() < 4 << 20 {
        data.extend_from_slice(format!("line {i}: the quick brown fox {}\n", i % 97).as_bytes());
        i += 1;
    }
    let img = dir.path().join("t.img");
    std::fs::write(&img, &data).expect("write");
    let report = a.import(&img, None, &()).expect("import");
    let grants = Arc::new(Grants::default());
    let sending = Sending { compress: true, grants: grants.clone(), ..Default::default() };
    let (pa, pb) = pair(a.clone(), sending, b.clone()).await;
    let manifest = a.manifest(&report.manifest).expect("manifest");
    grant(&grants, &manifest, &[pb.id()]);
    let missing = b.missing(&manifest).expect("missing");
    let got =
        fetch(&mut pb.control(), pa.id(), &purpose(&manifest), &missing.chunks, Arc::clone(&b))
            .await
            .expect("fetch");
    assert_eq!(got.bytes, missing.bytes, "every chunk, counted uncompressed");
    assert!(got.wire * 2 < got.bytes, "compressed on the wire: {got:?}");
    rebuilds_exactly(&b, &manifest, None, &data);
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_a_chunk_id_is_not_enough_to_fetch_it() {
    // a holds VO A's private image and VO B's image; b stages B's image for deployment
    // d. b may fetch B's chunks, but neither A's chunks (even named under B's manifest)
    // nor anything for a deployment it is not staging.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    let (private, theirs) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&private, noise(1 << 20, 31)).expect("write");
    std::fs::write(&theirs, noise(1 << 20, 32)).expect("write");
    let private = a.manifest(&a.import(&private, None, &()).expect("import").manifest).expect("m");
    let theirs = a.manifest(&a.import(&theirs, None, &()).expect("import").manifest).expect("m");
    let grants = Arc::new(Grants::default());
    let sending = Sending { grants: grants.clone(), ..Default::default() };
    let (pa, pb) = pair(a.clone(), sending, b.clone()).await;
    grants.allow("d", "vo-b", &[(&theirs, &[pb.id()])], u64::MAX);
    grants.allow("d-a", "vo-a", &[(&private, &[pa.id()])], u64::MAX);

    let refused = |r: Result<_, PeerError>| r.expect_err("refused").to_string();
    let secret = b.missing(&private).expect("missing").chunks;
    // A's chunks asked for as part of B's manifest.
    let as_theirs = Purpose { deployment: "d".into(), manifest: theirs.id() };
    let err = refused(fetch(&mut pb.control(), pa.id(), &as_theirs, &secret, b.clone()).await);
    assert!(err.contains("is not in manifest"), "{err}");
    // A's manifest, for A's deployment, which b does not stage.
    let as_a = Purpose { deployment: "d-a".into(), manifest: private.id() };
    let err = refused(fetch(&mut pb.control(), pa.id(), &as_a, &secret, b.clone()).await);
    assert!(err.contains("is not staging"), "{err}");
    // A's manifest under b's own deployment.
    let mixed = Purpose { deployment: "d".into(), manifest: private.id() };
    let err = refused(fetch(&mut pb.control(), pa.id(), &mixed, &secret, b.clone()).await);
    assert!(err.contains("not part of stage d"), "{err}");
    assert_eq!(b.missing(&private).expect("missing").chunks.len(), secret.len(), "nothing of A's");
    // What b is staging comes.
    let wanted = b.missing(&theirs).expect("missing");
    let got = fetch(&mut pb.control(), pa.id(), &as_theirs, &wanted.chunks, b.clone())
        .await
        .expect("its own image");
    assert_eq!(got.bytes, wanted.bytes);
    pa.shutdown().await;
    pb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_arrives_just_before_its_grant_is_served() {
    // In a cascade a receiver may ask its sender before the sender has checked its own
    // stage order (and granted the deployment): the sender waits for the grant, longer
    // than the receiver's own retries of a refused stream would.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(Store::open(&dir.path().join("a")).expect("store a"));
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    let img = dir.path().join("x.img");
    std::fs::write(&img, noise(1 << 20, 41)).expect("write");
    let manifest = a.manifest(&a.import(&img, None, &()).expect("import").manifest).expect("m");
    let grants = Arc::new(Grants::default());
    let sending = Sending { grants: grants.clone(), ..Default::default() };
    let (pa, pb) = pair(a.clone(), sending, b.clone()).await;
    let late = {
        let (grants, manifest, id) = (grants.clone(), manifest.clone(), pb.id());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            grant(&grants, &manifest, &[id]);
        })
    };
    let wanted = b.missing(&manifest).expect("missing");
    let t = std::time::Instant::now();
    let intake = Intake::start(b.clone(), None);
    let (got, result) = fetch_from_any(
        &mut pb.control(),
        &[pa.id()],
        &purpose(&manifest),
        &wanted.chunks,
        &intake,
        Floor::Fixed,
    )
    .await;
    result.expect("served once granted");
    intake.finish().await.expect("finish");
    assert!(t.elapsed() >= std::time::Duration::from_secs(1), "served after the grant");
    assert!(got.dropped.is_empty(), "never refused: {got:?}");
    assert_eq!(got.fetched.iter().map(|(_, f)| f.bytes).sum::<u64>(), wanted.bytes);
    late.await.expect("grant");
    pa.shutdown().await;
    pb.shutdown().await;
}

/// `N` fresh peer identities.
fn keypairs<const N: usize>() -> [identity::Keypair; N] {
    std::array::from_fn(|_| identity::Keypair::generate_ed25519())
}

/// Two stores in `dir`: `a` (the source, empty until an image is imported) and `c`.
fn source_and_receiver(dir: &std::path::Path) -> (Arc<Store>, Arc<Store>) {
    let open = |n: &str| Arc::new(Store::open(&dir.join(n)).expect("store"));
    (open("a"), open("c"))
}

/// An image of `mib` MiB of noise imported into `a`: its manifest and bytes.
fn imported(a: &Store, dir: &std::path::Path, mib: usize, seed: u64) -> (Manifest, Vec<u8>) {
    let img = dir.join(format!("noise-{seed}.img"));
    let data = noise(mib << 20, seed);
    std::fs::write(&img, &data).expect("write");
    let id = a.import(&img, None, &()).expect("import").manifest;
    (a.manifest(&id).expect("manifest"), data)
}

/// A slow sender `a` (capped at 1 MiB/s where the plan expects 4 MiB/s), a second
/// holder `b` sending as `b_sends`, and a receiver `c`: what `c` pulls of `mib` MiB
/// from `[a, b]` with `a` planned, and the image's bytes.
async fn slow_then_other(
    dir: &std::path::Path,
    mib: usize,
    b_sends: Sending,
) -> (PullReport, Manifest, Vec<u8>, Arc<Store>) {
    let keys: Vec<identity::Keypair> =
        (0..3).map(|_| identity::Keypair::generate_ed25519()).collect();
    let [ka, kb, kc] = [&keys[0], &keys[1], &keys[2]];
    let stores: Vec<Arc<Store>> = ["a", "b", "c"]
        .iter()
        .map(|n| Arc::new(Store::open(&dir.join(n)).expect("store")))
        .collect();
    let (a, b, c) = (stores[0].clone(), stores[1].clone(), stores[2].clone());
    let (manifest, data) = imported(&a, dir, mib, 77);
    imported(&b, dir, mib, 77);
    let grants = Arc::new(Grants::default());
    let slow = Sending {
        grants: grants.clone(),
        upload: Some(Arc::new(RateLimit::new(1.0 * 1048576.0))),
        ..Default::default()
    };
    let pa = start((config(ka, &[kc], &grants).0, slow), a.clone()).await.expect("peer a");
    let pb =
        start((config(kb, &[kc], &grants).0, Sending { grants: grants.clone(), ..b_sends }), b)
            .await
            .expect("peer b");
    let pc = start(config(kc, &[ka, kb], &grants), c.clone()).await.expect("peer c");
    let missing = c.missing(&manifest).expect("missing");
    let pulled = pull_from(&pc, &c, &grants, &manifest, &[&pa, &pb], Floor::planned(4 << 20))
        .await
        .expect("every chunk comes");
    let total: u64 = pulled.fetched.iter().map(|(_, f)| f.bytes).sum();
    assert_eq!(total, missing.bytes, "every chunk came once: {pulled:?}");
    for p in [pa, pb, pc] {
        p.shutdown().await;
    }
    (pulled, manifest, data, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_planned_sender_hands_the_rest_to_a_holder_with_upload_to_spare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pulled, manifest, data, c) = slow_then_other(dir.path(), 16, Sending::default()).await;
    assert_eq!(pulled.relieved.len(), 1, "{pulled:?}");
    assert!(pulled.relieved[0].1.contains("slow ("), "{pulled:?}");
    let by = |i: usize| pulled.fetched.get(i).map(|(_, f)| f.bytes).unwrap_or(0);
    assert_eq!(pulled.fetched.len(), 2, "the slow sender and its relief: {pulled:?}");
    assert!(by(0) > 0 && by(1) > 0, "both sent part of it: {pulled:?}");
    assert!(pulled.dropped.is_empty(), "nobody was dropped: {pulled:?}");
    rebuilds_exactly(&c, &manifest, None, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_upload_is_busy_refuses_relief_and_the_slow_sender_keeps_its_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    // b's upload is kept busy (its meter says it sends far more than its link).
    let meter = Arc::new(UploadMeter::new(1e6));
    let busy = {
        let meter = meter.clone();
        tokio::spawn(async move {
            loop {
                meter.sent(1 << 20);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let sends = Sending { spare: Some(meter), ..Default::default() };
    let (pulled, manifest, data, c) = slow_then_other(dir.path(), 5, sends).await;
    busy.abort();
    assert!(pulled.relieved.is_empty(), "{pulled:?}");
    assert_eq!(pulled.fetched.len(), 1, "the slow sender sent it all: {pulled:?}");
    rebuilds_exactly(&c, &manifest, None, &data);
}

/// A lazy disk of `manifest` in `dir` on peer `pc` (store `c`), fetching what `c` lacks
/// from `holders` in that order, and its stage's demand and intake, open.
async fn lazy_disk(
    pc: &Peer,
    manifest: &Manifest,
    holders: Vec<libp2p::PeerId>,
    c: &Arc<Store>,
    dir: &std::path::Path,
) -> (Demand, Arc<LazyDisk>, Arc<Intake>) {
    lazy_disk_planned(pc, manifest, holders, None, c, dir).await
}

/// [`lazy_disk`], with `planned` the planned sender of every chunk (asked first, to
/// pass on what it is still fetching).
async fn lazy_disk_planned(
    pc: &Peer,
    manifest: &Manifest,
    holders: Vec<libp2p::PeerId>,
    planned: Option<libp2p::PeerId>,
    c: &Arc<Store>,
    dir: &std::path::Path,
) -> (Demand, Arc<LazyDisk>, Arc<Intake>) {
    let chunks = manifest.distinct();
    let demand = Demand::new(
        pc.control(),
        vec![DemandImage {
            purpose: purpose(manifest),
            peers: holders,
            planned: planned.iter().flat_map(|p| chunks.iter().map(|c| (c.id, *p))).collect(),
            chunks,
        }],
    );
    let supply: Arc<dyn Supply> = Arc::new(demand.clone());
    let disk = Arc::new(
        LazyDisk::create(
            "vm/xvda1",
            manifest,
            &dir.join(format!("vm-{}.img", pc.id())),
            c.clone(),
            supply,
        )
        .expect("lazy disk"),
    );
    let intake = Arc::new(Intake::start(c.clone(), None).with_lazy(vec![disk.clone()]));
    demand.open(&intake).await;
    (demand, disk, intake)
}

/// A lazy disk (issue 19) on host c boots while its source s is gone: a guest's read of
/// a chunk c lacks asks s (gone), then b (which sends a bad chunk: dropped, nothing
/// unverified reaches the guest), then a, which serves it; every byte the guest reads
/// is the image's. Once no holder is left, a read of a chunk c still lacks fails with
/// an I/O error naming the chunk and what each holder said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_guest_reads_from_other_holders_when_its_source_is_lost() {
    use vw_node::lazy::nbd::{errno, BlockDevice, Errno};

    let dir = tempfile::tempdir().expect("tempdir");
    let [ka, kb, ks, kc] = &keypairs();
    let (a, c) = source_and_receiver(dir.path());
    let (manifest, data) = imported(&a, dir.path(), 4, 21);

    let grants = Arc::new(Grants::default());
    let pa = start(config(ka, &[kc], &grants), a.clone()).await.expect("peer a");
    let pb =
        start(config(kb, &[kc], &grants), Arc::new(Corrupting(a.clone()))).await.expect("peer b");
    let ps = start(config(ks, &[kc], &grants), a.clone()).await.expect("peer s");
    let pc = start(config(kc, &[ka, kb, ks], &grants), c.clone()).await.expect("peer c");
    grant(&grants, &manifest, &[pc.id()]);
    for p in [&pa, &pb, &ps] {
        pc.dial(address(p).await).await.expect("dial");
    }
    let (demand, disk, intake) =
        lazy_disk(&pc, &manifest, vec![ps.id(), pb.id(), pa.id()], &c, dir.path()).await;
    let gone = [ps.id(), pa.id()];
    ps.shutdown().await; // the source is lost before the guest boots

    let mut buf = vec![0u8; 1 << 20];
    disk.read(1 << 20, &mut buf).await.expect("read from another holder");
    assert!(buf == data[1 << 20..2 << 20], "the image's bytes, verified");
    assert!(intake.is_dropped(&pb.id()), "the corrupting holder is dropped");
    let counts = disk.counts();
    assert!(counts.fetched > 0 && counts.failed == 0, "{counts:?}");

    // No holder left: the guest's read fails, and says which chunk and why.
    pa.shutdown().await;
    let mut tail = vec![0u8; 4096];
    let at = data.len() as u64 - 4096;
    assert_eq!(disk.read(at, &mut tail).await, Err(Errno(errno::EIO)));
    let failures = disk.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let layout = manifest.layout();
    let first = layout.chunks()[layout.covering(at, 4096).start].id;
    assert_eq!(failures[0].chunk, format!("{first:#}"), "the first chunk of the read");
    // The corrupting holder is not asked again; the two others are gone.
    let why = &failures[0].why;
    assert!(why.contains("asked 2 holders"), "{why}");
    for p in gone {
        assert!(why.contains(&p.to_string()), "names {p}: {why}");
    }
    demand.close().await;
    drop(disk);
    Arc::try_unwrap(intake).expect("the stage's intake").finish().await.expect("durable");
    for p in [pb, pc] {
        p.shutdown().await;
    }
}

/// A lazy disk on host c whose one holder s serves a 2 MiB image (made from `seed`)
/// through `source` (given the store that holds it).
struct OneHolder {
    _dir: tempfile::TempDir,
    ps: Peer,
    pc: Peer,
    demand: Demand,
    disk: Arc<LazyDisk>,
    intake: Arc<Intake>,
    manifest: Manifest,
    data: Vec<u8>,
    /// What the holder lets the receiver fetch.
    grants: Arc<Grants>,
}

impl OneHolder {
    async fn start(seed: u64, source: impl FnOnce(Arc<Store>) -> Arc<dyn ChunkSource>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let [ks, kc] = &keypairs();
        let (a, c) = source_and_receiver(dir.path());
        let (manifest, data) = imported(&a, dir.path(), 2, seed);
        let grants = Arc::new(Grants::default());
        let ps = start(config(ks, &[kc], &grants), source(a)).await.expect("peer s");
        let pc = start(config(kc, &[ks], &grants), c.clone()).await.expect("peer c");
        grant(&grants, &manifest, &[pc.id()]);
        pc.dial(address(&ps).await).await.expect("dial");
        let (demand, disk, intake) = lazy_disk(&pc, &manifest, vec![ps.id()], &c, dir.path()).await;
        OneHolder { _dir: dir, ps, pc, demand, disk, intake, manifest, data, grants }
    }

    /// Ends the stage (every chunk taken durable) and both peers.
    async fn end(self) {
        self.demand.close().await;
        drop(self.disk);
        Arc::try_unwrap(self.intake).expect("the stage's intake").finish().await.expect("durable");
        for p in [self.ps, self.pc] {
            p.shutdown().await;
        }
    }
}

/// A store that counts the chunks it hands out.
struct Counting(Arc<Store>, std::sync::Mutex<Vec<vw_node::chunkstore::ChunkId>>);

impl ChunkSource for Counting {
    fn chunk(&self, id: &vw_node::chunkstore::ChunkId) -> Option<Vec<u8>> {
        let data = self.0.read_chunk(id).ok()?;
        self.1.lock().expect("lock").push(*id);
        Some(data)
    }
}

/// A [`Counting`] store that holds the first request for chunk `gate`, once set, until
/// `open`, as a busy disk would: its thread blocks, handing the runtime's other tasks
/// to another (`block_in_place`), so the peers it serves go on meanwhile.
struct Gated {
    counting: Counting,
    gate: std::sync::OnceLock<vw_node::chunkstore::ChunkId>,
    hit: std::sync::atomic::AtomicBool,
    open: std::sync::atomic::AtomicBool,
}

impl ChunkSource for Gated {
    fn chunk(&self, id: &vw_node::chunkstore::ChunkId) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering;
        if self.gate.get() == Some(id) && !self.hit.swap(true, Ordering::SeqCst) {
            tokio::task::block_in_place(|| {
                while !self.open.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        }
        self.counting.chunk(id)
    }
}

/// A guest reads a chunk the stage's stream has asked for but not received yet (its
/// sender is held up on an earlier one): the read fetches it at once on an urgent
/// stream, and the sender answers it `Sent` in the stage's stream rather than send it
/// twice. Every chunk crosses once, the stage ends whole, and its report counts what
/// the urgent stream brought.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_sent_urgently_is_not_sent_again_on_the_stage_stream() {
    use std::sync::atomic::Ordering;
    use vw_node::lazy::nbd::BlockDevice;

    let gated = std::sync::OnceLock::<Arc<Gated>>::new();
    let t = OneHolder::start(24, |store| {
        let g = Arc::new(Gated {
            counting: Counting(store, Default::default()),
            gate: Default::default(),
            hit: false.into(),
            open: false.into(),
        });
        gated.set(Arc::clone(&g)).ok();
        g
    })
    .await;
    let gated = gated.get().expect("the source");
    let wanted = t.manifest.distinct();
    gated.gate.set(wanted[0].id).expect("set once");
    t.demand.follow([wanted.iter().map(|c| c.id).collect()]);
    let stage = tokio::spawn({
        let (mut control, peer, intake) = (t.pc.control(), t.ps.id(), t.intake.clone());
        let (purpose, wanted) = (purpose(&t.manifest), wanted.clone());
        async move {
            let (report, result) =
                fetch_from_any(&mut control, &[peer], &purpose, &wanted, &intake, Floor::Fixed)
                    .await;
            result.map(|()| report)
        }
    });
    // The stage's stream has asked for every chunk and waits on the first.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !gated.hit.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stage asked for the first chunk");

    let later = wanted[5].id;
    let at: u64 =
        t.manifest.chunks().iter().take_while(|c| c.id != later).map(|c| u64::from(c.len)).sum();
    let mut byte = [0u8; 1];
    tokio::time::timeout(std::time::Duration::from_secs(60), t.disk.read(at, &mut byte))
        .await
        .expect("the read is answered while the stage's stream waits")
        .expect("read ahead of the stage");
    assert_eq!(byte[0], t.data[at as usize], "the image's byte");
    gated.open.store(true, Ordering::SeqCst);
    let report = stage.await.expect("stage task").expect("the stage brings the rest");

    let served = gated.counting.1.lock().expect("lock").clone();
    let mut once = served.clone();
    once.sort();
    once.dedup();
    assert_eq!(
        once.len(),
        served.len(),
        "every chunk sent once: {} of {}",
        once.len(),
        served.len()
    );
    assert_eq!(once.len(), wanted.len(), "and every chunk sent");
    let missing: u64 = report.fetched.iter().map(|(_, f)| f.missing).sum();
    assert_eq!(missing, 0, "a chunk answered `Sent` is not missing: {report:?}");
    let urgent = t.demand.pulled();
    let brought: u64 = urgent.fetched.iter().map(|(_, f)| f.chunks).sum();
    assert_eq!(brought, 1, "the urgent stream's chunk is in the demand's report: {urgent:?}");
    t.end().await;
}

/// A chunk a guest read urgently in one stage (noted by the sender) is sent again in
/// a later stage to the same peer, which may have dropped it since: the note is for the
/// stage it was sent in. (Before, the later stage's stream was answered `Sent`, took it
/// as missing, and the stage's final passes fetched it again; the lab's full deploys
/// after a lazy one did so for 5–9 chunks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_sent_urgently_in_one_stage_is_sent_in_the_next() {
    use vw_node::lazy::nbd::BlockDevice;

    let t = OneHolder::start(25, |store| store).await;
    let wanted = t.manifest.distinct();
    let later = wanted[5].id;
    let at: u64 =
        t.manifest.chunks().iter().take_while(|c| c.id != later).map(|c| u64::from(c.len)).sum();
    let mut byte = [0u8; 1];
    t.disk.read(at, &mut byte).await.expect("read at once");
    assert_eq!(byte[0], t.data[at as usize], "the image's byte");

    // The next stage, into a store that holds none of it.
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = Arc::new(Store::open(&dir.path().join("fresh")).expect("store"));
    t.grants.allow("d2", "vo", &[(&t.manifest, &[t.pc.id()][..])], u64::MAX);
    let intake = Intake::start(Arc::clone(&fresh), None);
    let next = Purpose { deployment: "d2".into(), manifest: t.manifest.id() };
    let (report, result) =
        fetch_from_any(&mut t.pc.control(), &[t.ps.id()], &next, &wanted, &intake, Floor::Fixed)
            .await;
    intake.finish().await.expect("durable");
    result.expect("the next stage gets every chunk from the one holder");
    let missing: u64 = report.fetched.iter().map(|(_, f)| f.missing).sum();
    assert_eq!(missing, 0, "nothing answered `Sent` or `Missing`: {report:?}");
    assert!(fresh.read_chunk(&later).is_ok(), "the chunk read earlier came again");
    t.end().await;
}

/// A pull that ends with chunks no peer sent fails naming them, and still reports
/// what each peer delivered and why it was dropped: a stage's report counts every byte
/// received, whatever became of the stream that brought it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_ends_short_reports_what_it_brought() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, c) = source_and_receiver(dir.path());
    let (manifest, _) = imported(&a, dir.path(), 2, 26);
    let lacks = manifest.distinct()[3].id;
    let grants = Arc::new(Grants::default());
    let sending = Sending { grants: grants.clone(), ..Default::default() };
    let (pa, pc) = pair(Arc::new(Lacking(Arc::clone(&a), lacks)), sending, c.clone()).await;
    grant(&grants, &manifest, &[pc.id()]);
    let missing = c.missing(&manifest).expect("missing");
    let intake = Intake::start(c.clone(), None);
    let (report, result) = fetch_from_any(
        &mut pc.control(),
        &[pa.id()],
        &purpose(&manifest),
        &missing.chunks,
        &intake,
        Floor::Fixed,
    )
    .await;
    intake.finish().await.expect("durable");
    let err = result.expect_err("one chunk was never sent");
    assert!(err.to_string().contains(&format!("{lacks:#}")), "names the chunk: {err}");
    let lacked = missing.chunks.iter().find(|r| r.id == lacks).map(|r| u64::from(r.len));
    let brought: u64 = report.fetched.iter().map(|(_, f)| f.bytes).sum();
    assert_eq!(brought, missing.bytes - lacked.expect("a wanted chunk"), "{report:?}");
    assert_eq!(report.fetched.iter().map(|(_, f)| f.missing).sum::<u64>(), 1);
    assert!(
        report.dropped.iter().any(|(p, why)| *p == pa.id().to_string() && why.contains("lacked 1")),
        "says why: {report:?}"
    );
    pa.shutdown().await;
    pc.shutdown().await;
}

/// A store that lacks one chunk.
struct Lacking(Arc<Store>, vw_node::chunkstore::ChunkId);

impl ChunkSource for Lacking {
    fn chunk(&self, id: &vw_node::chunkstore::ChunkId) -> Option<Vec<u8>> {
        (*id != self.1).then(|| self.0.read_chunk(id).ok()).flatten()
    }
}

/// A chain s → b → c, both b and c staging lazily: a guest on c reads chunks neither
/// holds. c asks b, its planned sender, to pass them on; b fetches each from s at once
/// and passes it on as it arrives, so s sends each chunk once (to b) and b holds it too,
/// where b would otherwise answer `Missing` and s send it to every host. When b cannot
/// fetch a chunk (its only holder lacks it), it answers `Missing` and c asks s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_sender_passes_on_a_chunk_it_is_still_fetching() {
    use vw_node::lazy::nbd::BlockDevice;

    let dir = tempfile::tempdir().expect("tempdir");
    let [ks, kb, kc, kx] = &keypairs();
    let (a, c) = source_and_receiver(dir.path());
    let b = Arc::new(Store::open(&dir.path().join("b")).expect("store b"));
    let x = Arc::new(Store::open(&dir.path().join("x")).expect("store x"));
    let (manifest, data) = imported(&a, dir.path(), 4, 23);
    let grants = Arc::new(Grants::default());
    let counting = Arc::new(Counting(a.clone(), Default::default()));
    let ps = start(config(ks, &[kb, kc], &grants), counting.clone()).await.expect("peer s");
    let relay = Relay::new(b.clone());
    let pb = start(config(kb, &[ks, kc, kx], &grants), relay.clone()).await.expect("peer b");
    let pc = start(config(kc, &[ks, kb], &grants), c.clone()).await.expect("peer c");
    // x holds nothing of the image.
    let px = start(config(kx, &[kb], &grants), x).await.expect("peer x");
    grant(&grants, &manifest, &[pb.id(), pc.id()]);
    for p in [&ps, &px] {
        pb.dial(address(p).await).await.expect("dial");
    }
    for p in [&ps, &pb] {
        pc.dial(address(p).await).await.expect("dial");
    }
    // b stages lazily with no disk of its own: its chunks of the first half come from
    // s, those of the second from x, which lacks them.
    let chunks = manifest.distinct();
    let half = chunks.len() / 2;
    let image = |part: &[vw_node::chunkstore::ChunkRef], from: libp2p::PeerId| DemandImage {
        purpose: purpose(&manifest),
        peers: vec![from],
        planned: part.iter().map(|c| (c.id, from)).collect(),
        chunks: part.to_vec(),
    };
    let db = Demand::new(
        pb.control(),
        vec![image(&chunks[..half], ps.id()), image(&chunks[half..], px.id())],
    );
    let ib = Arc::new(Intake::start(b.clone(), None));
    db.open(&ib).await;
    relay.lazy_stage("d", &db);
    let (dc, disk_c, ic) =
        lazy_disk_planned(&pc, &manifest, vec![pb.id(), ps.id()], Some(pb.id()), &c, dir.path())
            .await;

    let mut buf = vec![0u8; 4096];
    disk_c.read(0, &mut buf).await.expect("read through b");
    assert!(buf == data[..4096], "the image's bytes");
    let served = counting.1.lock().expect("lock").clone();
    assert!(!served.is_empty(), "s sent the chunk");
    for id in &served {
        assert!(ib.has(id).expect("has"), "b fetched chunk {id:#} too, and passed it on");
    }
    let mut once = served.clone();
    once.dedup();
    assert_eq!(once, served, "s sent each chunk once");

    // A chunk of the second half: b's only holder for it lacks it, so b answers
    // `Missing` and c asks s.
    let other = chunks[half + 1].id;
    let at: u64 =
        manifest.chunks().iter().take_while(|c| c.id != other).map(|c| u64::from(c.len)).sum();
    let mut byte = [0u8; 1];
    disk_c.read(at, &mut byte).await.expect("read from s after b has none");
    assert_eq!(byte[0], data[at as usize], "the image's byte");
    assert!(!ib.has(&other).expect("has"), "b could not fetch it");
    assert!(counting.1.lock().expect("lock").contains(&other), "s sent it to c");
    assert!(disk_c.counts().failed == 0, "{:?}", disk_c.counts());

    for d in [&db, &dc] {
        d.close().await;
    }
    drop(disk_c);
    for i in [ib, ic] {
        Arc::try_unwrap(i).expect("the stage's intake").finish().await.expect("durable");
    }
    for p in [ps, pb, pc, px] {
        p.shutdown().await;
    }
}

/// Answers its first `stalls` chunk requests only after `for_`, blocking the thread
/// that serves them, as a holder too busy to answer would.
struct Stalling {
    store: Arc<Store>,
    stalls: std::sync::atomic::AtomicUsize,
    for_: std::time::Duration,
}

impl ChunkSource for Stalling {
    fn chunk(&self, id: &vw_node::chunkstore::ChunkId) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering;
        if self
            .stalls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::thread::sleep(self.for_);
        }
        self.store.read_chunk(id).ok()
    }
}

/// A lazy guest's one holder stalls (answers nothing for longer than an urgent stream
/// waits) on its first request: the read asks it again rather than failing the guest,
/// and gets the image's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_read_waits_out_a_stalled_holder() {
    use vw_node::chunks::fetch::URGENT_QUIET;
    use vw_node::lazy::nbd::BlockDevice;

    let t = OneHolder::start(22, |store| {
        let for_ = URGENT_QUIET + std::time::Duration::from_secs(1);
        Arc::new(Stalling { store, stalls: 1.into(), for_ })
    })
    .await;

    let mut buf = vec![0u8; 4096];
    t.disk.read(1 << 20, &mut buf).await.expect("read once the holder answers");
    assert!(buf == t.data[1 << 20..(1 << 20) + 4096], "the image's bytes");
    let counts = t.disk.counts();
    assert!(counts.fetched > 0 && counts.failed == 0, "{counts:?}");
    t.end().await;
}

/// After a lazy guest's first read of a missing chunk, its holder has streams opened
/// ahead for the reads to come; a read takes one (and more are opened), spares nobody
/// takes are closed once old, and none is left once the stage ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_read_has_streams_opened_ahead_and_unused_ones_are_closed() {
    use std::time::Duration;
    use vw_node::chunks::spare::{SPARES, SPARE_AGE};
    use vw_node::lazy::nbd::BlockDevice;

    let t = OneHolder::start(23, |store| store).await;
    let (disk, data) = (&t.disk, &t.data);
    let spares = || t.demand.spares(&t.ps.id());
    let until = |want: usize, within: Duration| async move {
        let end = std::time::Instant::now() + within;
        while spares() != want && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        spares()
    };
    assert_eq!(spares(), 0, "none before a read asks the holder");

    let mut buf = vec![0u8; 4096];
    disk.read(0, &mut buf).await.expect("first read");
    assert_eq!(until(SPARES, Duration::from_secs(3)).await, SPARES, "opened ahead");
    disk.read(1 << 20, &mut buf).await.expect("a read on a spare stream");
    assert!(buf == data[1 << 20..(1 << 20) + 4096], "the image's bytes");
    assert_eq!(until(SPARES, Duration::from_secs(3)).await, SPARES, "opened again");
    let counts = disk.counts();
    assert!(counts.fetched >= 2 && counts.failed == 0, "{counts:?}");

    assert_eq!(until(0, SPARE_AGE + Duration::from_secs(2)).await, 0, "closed once old");
    disk.read(3 << 19, &mut buf).await.expect("a read after they were closed");
    assert!(buf == data[3 << 19..(3 << 19) + 4096], "the image's bytes");
    assert_eq!(until(SPARES, Duration::from_secs(3)).await, SPARES, "opened again");
    t.demand.close().await;
    assert_eq!(spares(), 0, "none once the stage ends");
    t.end().await;
}
