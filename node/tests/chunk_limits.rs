//! What a peer can make a chunk server hold, on loopback: a stream that sends no request
//! (or half of one) is dropped and holds up no one else; a fetcher that stops reading is
//! dropped; and a peer opening streams past its share has the excess refused while
//! another peer is served. The servers' timeouts are shortened through
//! [`ServeLimits`]; the tests wait on events, never on how fast something happened.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{identity, Multiaddr};
use vw_node::access::grants::Grants;
use vw_node::chunks::protocol::Frame;
use vw_node::chunks::{self, chunks_protocol};
use vw_node::chunks::{fetch, Purpose, Sending, ServeLimits};
use vw_node::chunkstore::{testdata::noise, Manifest, Store};
use vw_node::peer::{Peer, PeerConfig, PeerError};
use vw_node::wire;

/// How long a test waits for something that must happen before it fails: a bound on a
/// hang, never a measure of speed.
const LIVENESS: Duration = Duration::from_secs(60);

/// A sender holding one image, and fetchers it lets fetch it for deployment `d`.
struct Setup {
    sender: Peer,
    /// Each fetcher, with a store of its own.
    fetchers: Vec<(Peer, Arc<Store>)>,
    manifest: Manifest,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(limits: ServeLimits, image_bytes: usize, fetchers: usize) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("sender")).expect("store"));
        let img = dir.path().join("x.img");
        std::fs::write(&img, noise(image_bytes, 7)).expect("write");
        let report = store.import(&img, None, &()).expect("import");
        let manifest = store.manifest(&report.manifest).expect("manifest");

        let key = identity::Keypair::generate_ed25519();
        let keys: Vec<_> = (0..fetchers).map(|_| identity::Keypair::generate_ed25519()).collect();
        let ids: Vec<_> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        let grants = Arc::new(Grants::default());
        grants.allow("d", "vo", &[(&manifest, &ids)], u64::MAX);
        let sender = Peer::start(
            PeerConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
                keypair: key.clone(),
                allowed: ids.clone(),
                mdns: false,
                known: vec![],
            },
            vec![chunks::server(store, Sending { grants, limits, ..Default::default() })],
        )
        .await
        .expect("sender");
        let addr: Multiaddr = sender.addresses().await.expect("addresses")[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(sender.id()));
        let mut started = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let config = PeerConfig {
                listen: vec![],
                keypair: k.clone(),
                allowed: vec![sender.id()],
                mdns: false,
                known: vec![],
            };
            let own = Arc::new(Store::open(&dir.path().join(format!("f{i}"))).expect("store"));
            let peer = Peer::start(config, vec![]).await.expect("fetcher");
            peer.dial(addr.clone()).await.expect("dial");
            started.push((peer, own));
        }
        Setup { sender, fetchers: started, manifest, _dir: dir }
    }

    fn purpose(&self) -> Purpose {
        Purpose { deployment: "d".into(), manifest: self.manifest.id() }
    }

    /// Fetcher `i` fetches the whole image; the bytes it was sent. A stream that failed
    /// without being refused is opened again: libp2p-stream hands the sender one stream
    /// at a time and drops (resets) one that arrives before the sender took the last, so
    /// a fetcher opening streams back to back meets that (`fetch_from_any` retries too).
    async fn fetch_all(&self, i: usize) -> Result<u64, PeerError> {
        let (peer, store) = &self.fetchers[i];
        let wanted = store.missing(&self.manifest).expect("missing");
        let deadline = tokio::time::Instant::now() + LIVENESS;
        loop {
            let got = fetch(
                &mut peer.control(),
                self.sender.id(),
                &self.purpose(),
                &wanted.chunks,
                store.clone(),
            )
            .await;
            match got {
                Err(PeerError::Stream { reason, .. })
                    if !reason.starts_with("refused:")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
                Ok(got) => {
                    assert_eq!(got.bytes, wanted.bytes, "everything wanted came");
                    return Ok(got.bytes);
                }
            }
        }
    }

    /// Fetcher `i` opens a stream and asks for the image's first chunk with a credit of
    /// one: the first frame back (`None`: the stream ended first).
    async fn ask_one(&self, i: usize) -> (libp2p::Stream, Option<Frame>) {
        let mut stream = self.open(i).await;
        let first = self.manifest.chunks().iter().find(|c| !c.is_zero()).expect("a chunk");
        let want = Frame::Want {
            deployment: "d".into(),
            manifest: self.manifest.id(),
            ids: vec![first.id],
        };
        // A stream libp2p-stream dropped fails here or on the read: it ended.
        if wire::write(&mut stream, &want).await.is_err()
            || wire::write(&mut stream, &Frame::Credit { chunks: 1 }).await.is_err()
        {
            return (stream, None);
        }
        let reply = tokio::time::timeout(LIVENESS, wire::read::<Frame, _>(&mut stream))
            .await
            .expect("the sender neither answered nor ended the stream");
        (stream, reply.ok().flatten())
    }

    /// A raw chunk stream from fetcher `i` to the sender.
    async fn open(&self, i: usize) -> libp2p::Stream {
        self.fetchers[i]
            .0
            .control()
            .open_stream(self.sender.id(), chunks_protocol())
            .await
            .expect("open a chunk stream")
    }

    async fn shutdown(self) {
        self.sender.shutdown().await;
        for (peer, _) in self.fetchers {
            peer.shutdown().await;
        }
    }
}

/// Reads what is left of `stream`; whether it ended (cleanly or reset) within
/// [`LIVENESS`], and the bytes that came first.
async fn ends(mut stream: libp2p::Stream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIVENESS, stream.read_to_end(&mut got)).await;
    read.is_ok().then_some(got)
}

/// A frame, named without its bytes.
fn kind(frame: &Frame) -> String {
    match frame {
        Frame::Chunk { id, .. } | Frame::Packed { id, .. } => format!("chunk {id}"),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_whole_request_is_dropped_and_others_are_served() {
    let limits = ServeLimits { request: Duration::from_millis(300), ..Default::default() };
    let t = Setup::start(limits, 1 << 20, 1).await;
    let silent = t.open(0).await;
    let mut half = t.open(0).await;
    // A length announcing a 256-byte frame, the version byte, and one byte of body. (If
    // libp2p-stream dropped the stream, the write fails and the stream has ended.)
    let _ = half.write_all(&[0, 0, 1, 0, 2, 0]).await;
    let _ = half.flush().await;

    // Meanwhile a request on another stream is served in full.
    t.fetch_all(0).await.expect("served while the others idle");

    for (what, stream) in [("silent", silent), ("half a frame", half)] {
        let Some(got) = ends(stream).await else {
            panic!("the sender never dropped the {what} stream")
        };
        assert!(got.is_empty(), "nothing is sent on the {what} stream: {got:?}");
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetcher_that_stops_reading_is_dropped() {
    // One stream per peer: the stalled stream holds the fetcher's only slot until the
    // sender gives it up, which is how the test knows it did.
    let limits = ServeLimits {
        stall: Duration::from_millis(300),
        streams_per_peer: 1,
        ..Default::default()
    };
    // Far more than a stream's flow-control window (256 KiB): the sender must block.
    let t = Setup::start(limits, 8 << 20, 1).await;
    let ids: Vec<_> = t.manifest.chunks().iter().filter(|c| !c.is_zero()).map(|c| c.id).collect();
    let total = ids.len();
    let mut stalled = t.open(0).await;
    let want = Frame::Want { deployment: "d".into(), manifest: t.manifest.id(), ids };
    wire::write(&mut stalled, &want).await.expect("want");
    let credit = u32::try_from(total).expect("fits");
    wire::write(&mut stalled, &Frame::Credit { chunks: credit }).await.expect("credit");
    // ... and the fetcher reads nothing.

    let deadline = tokio::time::Instant::now() + LIVENESS;
    let mut refusals = Vec::new();
    loop {
        match t.fetch_all(0).await {
            Ok(_) => break,
            Err(e) => refusals.push(e.to_string()),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream was never given up: {refusals:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for why in &refusals {
        assert!(why.contains("the most one peer may"), "{why}");
    }

    // The stalled stream then ends before everything it wanted was sent.
    let reading = async {
        let mut chunks = 0;
        loop {
            match wire::read::<Frame, _>(&mut stalled).await {
                Ok(Some(Frame::Chunk { .. } | Frame::Packed { .. } | Frame::Missing { .. })) => {
                    chunks += 1
                }
                Ok(Some(Frame::Done)) | Ok(None) | Err(_) => return chunks,
                Ok(Some(other)) => panic!("unexpected {}", kind(&other)),
            }
        }
    };
    let sent = tokio::time::timeout(LIVENESS, reading)
        .await
        .expect("the sender never dropped the stalled stream");
    assert!(sent < total, "all {total} chunks were sent to a fetcher that read nothing");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_opening_many_streams_has_the_excess_refused_and_another_is_served() {
    let per_peer = 4;
    let limits = ServeLimits {
        // The held streams stay held for the whole test.
        request: LIVENESS * 4,
        stall: LIVENESS * 4,
        streams: per_peer + 2,
        streams_per_peer: per_peer,
    };
    let t = Setup::start(limits, 2 << 20, 2).await;
    let (attacker, honest) = (0, 1);
    // The attacker takes its share: streams it knows are served (a chunk came back),
    // then held, the sender waiting for more credit. One at a time, so none is lost to
    // libp2p-stream's queue of one.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while held.len() < per_peer {
        match t.ask_one(attacker).await {
            (stream, Some(Frame::Chunk { .. } | Frame::Packed { .. })) => held.push(stream),
            (_, None) => assert!(tokio::time::Instant::now() < deadline, "streams keep failing"),
            (_, Some(other)) => panic!("a stream within the peer's share got {}", kind(&other)),
        }
    }
    // Every stream past its share is refused, with the reason.
    let mut refused = 0;
    while refused < 3 {
        match t.ask_one(attacker).await {
            (_, Some(Frame::Refused { reason })) => {
                assert!(reason.contains("the most one peer may"), "{reason}");
                refused += 1;
            }
            (_, None) => assert!(tokio::time::Instant::now() < deadline, "streams keep failing"),
            (_, Some(other)) => panic!("a stream past the peer's share got {}", kind(&other)),
        }
    }

    // A well-behaved peer is served meanwhile.
    t.fetch_all(honest).await.expect("the honest peer is served");

    drop(held);
    t.shutdown().await;
}

/// Streams opened ahead of their first request (a lazy stage's spares) wait apart from
/// the streams being served: a host whose served slots would all be taken by another
/// peer's idle streams still serves a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_for_a_request_do_not_take_the_served_streams_slots() {
    let limits = ServeLimits {
        request: LIVENESS * 4, // the idle streams stay open for the whole test
        streams: 2,
        streams_per_peer: 2,
        ..Default::default()
    };
    let t = Setup::start(limits, 1 << 20, 2).await;
    let idle = [t.open(0).await, t.open(0).await];
    // Let the sender take both before the request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.fetch_all(1).await.expect("served beside another peer's idle streams");
    drop(idle);
    t.shutdown().await;
}
