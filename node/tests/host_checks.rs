//! A host checks every stage order itself, against its own cluster config, whoever
//! sends it. Here the test speaks as the host's head (with the head's own key, so the
//! host takes its control requests) and sends orders a head would never send: a
//! forged, mismatched or untrusted ticket, a tampered, substituted or unsent manifest, a
//! missing, forged or untrusted seal, an image the VO may not use (to stage or only to
//! serve), a VO-signed workspace that boots from a host file outside the kernel
//! directories, a workspace whose partition names an image the order does not carry
//! (another VO's, which the host holds), an expired or overlong ticket, a ticket for
//! another cluster or for other manifests (a tag sealed again since), and a replayed
//! ticket, and a VO's share over the quota this host can see (memory, cache). Each is
//! refused before anything is fetched or recorded, and audited; the honest order gets
//! past the checks. Also: a manifest sent with a flipped byte, a head or fetcher of
//! another release, and lifecycle requests for a deployment the host never staged.

use vw_localnet::{cluster_workspace, DemoImages, LocalNet, LocalNetOptions, LocalVos};
use vw_node::access::audit::Audit;
use vw_node::chunks::chunks_protocol;
use vw_node::chunks::Frame;
use vw_node::chunkstore::{ImageName, ImageRef, ManifestId, Seal, Store, Visibility};
use vw_node::control::head::control_protocol;
use vw_node::control::protocol::{ImageOrder, ManifestPiece, Pull, Reply, StageOrder, VERSION};
use vw_node::control::{Answer, Failure, FailureKind, Request};
use vw_node::daemon::load_or_create_key;
use vw_node::lifecycle::Op;
use vw_node::peer::{Peer, PeerConfig};
use vw_node::planner::address::{Network, NicAddress};
use vw_node::report::{ClusterShare, Member};
use vw_node::wire;

fn now_s() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("after 1970").as_secs()
}

/// Sends `order` to `host` as `head` and returns the host's final answer.
async fn send(head: &Peer, host: libp2p::PeerId, order: StageOrder) -> Answer {
    call(head, host, Request::Stage(Box::new(order))).await
}

/// Sends `request` to `host` as `head` and returns the host's final answer.
async fn call(head: &Peer, host: libp2p::PeerId, request: Request) -> Answer {
    let mut stream =
        head.control().open_stream(host, control_protocol()).await.expect("control stream");
    wire::write(&mut stream, &request).await.expect("send");
    loop {
        match wire::read::<Reply, _>(&mut stream).await.expect("reply") {
            Some(Reply::Progress(_)) => continue,
            Some(Reply::Done(answer)) => return answer,
            None => panic!("the host closed the stream without an answer"),
        }
    }
}

/// The order for `image` as the head's store holds it: its manifest and seal.
fn image_order(store: &Store, image: &str) -> ImageOrder {
    let name: ImageName = image.parse().expect("name");
    let id = store.resolve(&ImageRef::Name(name.clone())).expect("resolve");
    ImageOrder {
        image: image.to_owned(),
        manifest: id,
        seal: store.seal(&name).expect("seal").expect("sealed").encode(),
        stagers: vec![],
        pulls: vec![],
        fallback: vec![],
        trace: None,
    }
}

/// Sends `host` the encoding `bytes` as manifest `id`, in one piece, as a head does
/// before it names a manifest; returns the host's answer.
async fn send_manifest(
    head: &Peer,
    host: libp2p::PeerId,
    id: ManifestId,
    bytes: Vec<u8>,
) -> Answer {
    let piece = ManifestPiece { id, len: bytes.len() as u64, offset: 0, bytes };
    call(head, host, Request::Manifest(piece)).await
}

/// Sends `host` the manifest of `image` in `store`, as a head does before it names it.
async fn send_image_manifest(head: &Peer, host: libp2p::PeerId, store: &Store, image: &str) {
    let id = image_order(store, image).manifest;
    let bytes = store.manifest(&id).expect("manifest").encode();
    let len = bytes.len() as u64;
    assert_eq!(send_manifest(head, host, id, bytes).await, Answer::Manifest(len));
}

fn refused(answer: &Answer, want: &str) {
    match answer {
        Answer::Failed(Failure { kind: FailureKind::Refused, message }) => {
            assert!(message.contains(want), "refused, but why? {message}")
        }
        other => panic!("a forged order must be refused ({want}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refuses_forged_stage_orders_even_from_its_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vos = LocalVos::create(
        &dir.path().join("cluster.toml"),
        &[
            ("demo", false, ""),
            ("vo2", false, "[vo.quota]\nmemory_mib = 1000\ncache_bytes = 1048576\n"),
        ],
    )
    .expect("VOs");
    let options =
        LocalNetOptions { cluster_config: Some(vos.cluster_config.clone()), ..Default::default() };
    let net = LocalNet::create(dir.path(), 2, &options).expect("net");
    let images = DemoImages::write(dir.path(), 16).expect("images");
    // The head's store (its vwd never starts: the test is the head).
    let store = Store::open(&net.data_dirs[0]).expect("head store");
    for (path, name, visibility) in [
        (&images.base, "demo/base:1", Visibility::Public),
        (&images.worker, "demo/worker:1", Visibility::Private),
    ] {
        vos.import(&store, path, name, visibility).expect("import");
    }
    // Another VO's private image, already in the host's store from an earlier deploy.
    {
        let hosted = Store::open(&net.data_dirs[1]).expect("host store");
        vos.import(&hosted, &images.other, "vo2/secret:1", Visibility::Private).expect("import");
    }

    let host = net.start_one(1).await.expect("host");
    let head = Peer::start(
        PeerConfig {
            listen: vec![],
            keypair: load_or_create_key(&net.data_dirs[0].join("node.key")).expect("head key"),
            allowed: vec![host.id()],
            mdns: false,
            known: vec![],
        },
        vec![],
    )
    .await
    .expect("peer");
    head.dial(host.addresses().await.expect("addresses")[0].clone()).await.expect("dial");

    let workspace = cluster_workspace("forged", "demo/base:1", "demo/worker:1", 1);
    let honest = StageOrder {
        stage: vw_node::access::new_stage("forged"),
        ticket: vos.ticket("demo", &workspace).expect("ticket"),
        workspace: workspace.clone(),
        share: ClusterShare { here: vec![], elsewhere: vec![] },
        images: vec![image_order(&store, "demo/base:1"), image_order(&store, "demo/worker:1")],
        serves: vec![],
        munge_key: None,
        cap: None,
        lazy: false,
    };
    // A share that places the VM `vm` (its Xen domain name) on this host.
    let here = |vm: &str| ClusterShare {
        here: vec![Member {
            name: vm.into(),
            nics: vec![NicAddress {
                network: Network::Private,
                ip: "10.77.1.20".parse().expect("ip"),
                mac: "00:16:3e:00:00:20".parse().expect("mac"),
            }],
            cores: None,
        }],
        elsewhere: vec![],
    };
    // The honest order, for another document the VO `vo` signed.
    let signed = |vo: &str, workspace: String| StageOrder {
        stage: vw_node::access::new_stage(
            &vw_node::workspace::parse(&workspace, "test").expect("workspace").name,
        ),
        ticket: vos.ticket(vo, &workspace).expect("ticket"),
        workspace,
        ..honest.clone()
    };
    let with_worker = |f: &dyn Fn(&mut ImageOrder)| {
        let mut order = honest.clone();
        f(&mut order.images[1]);
        order
    };
    let impostor = LocalVos::create(
        &dir.path().join("impostor.toml"),
        &[("demo", false, ""), ("vo9", false, "")],
    )
    .expect("another key named demo, and a VO the host does not trust");
    let base_manifest = honest.images[0].manifest;
    let worker_name: ImageName = "demo/worker:1".parse().expect("name");

    let forged: Vec<(&str, StageOrder, &str)> = vec![
        (
            "a ticket signed by a key the host does not trust",
            StageOrder {
                ticket: impostor.ticket("demo", &workspace).expect("ticket"),
                ..honest.clone()
            },
            "does not verify with VO demo's key",
        ),
        ("no ticket", StageOrder { ticket: vec![], ..honest.clone() }, "carries no VO ticket"),
        (
            "a MUNGE key for a cluster that does not run Slurm",
            StageOrder {
                munge_key: Some(vw_node::integrate::MungeKey::derive(&[7; 32], "forged", 1)),
                ..honest.clone()
            },
            "does not run Slurm, yet its stage order carries a MUNGE key",
        ),
        (
            "a stage named for another deployment (grants are keyed by the stage)",
            StageOrder { stage: vw_node::access::new_stage("other"), ..honest.clone() },
            "is not a stage of deployment forged",
        ),
        (
            "a ticket for another document of the same name",
            StageOrder {
                workspace: workspace.replace("<memory>128</memory>", "<memory>64</memory>"),
                ..honest.clone()
            },
            "another workspace document",
        ),
        (
            "another VO's ticket for an image private to demo",
            StageOrder { ticket: vos.ticket("vo2", &workspace).expect("ticket"), ..honest.clone() },
            "image demo/worker:1 is private to VO demo; VO vo2 may not",
        ),
        (
            "another VO's image to serve, private to demo",
            {
                let w = cluster_workspace("forged", "demo/base:1", "demo/base:1", 1);
                // vo2's ticket allows both manifests: the seal is what refuses it.
                let both = [&honest.images[0], &honest.images[1]]
                    .iter()
                    .map(|i| i.manifest)
                    .collect();
                StageOrder {
                    images: vec![honest.images[0].clone()],
                    serves: vec![honest.images[1].clone()],
                    ticket: vos.ticket_with("vo2", &w, |t| t.manifests = both).expect("ticket"),
                    ..signed("vo2", w)
                }
            },
            "image demo/worker:1 is private to VO demo; VO vo2 may not",
        ),
        (
            "an expired ticket",
            StageOrder {
                ticket: vos
                    .ticket_with("demo", &workspace, |t| t.expires_s = now_s() - 10)
                    .expect("ticket"),
                ..honest.clone()
            },
            "the VO ticket expired",
        ),
        (
            "a ticket valid for longer than the cluster allows",
            StageOrder {
                ticket: vos
                    .ticket_with("demo", &workspace, |t| t.expires_s = now_s() + 30 * 86_400)
                    .expect("ticket"),
                ..honest.clone()
            },
            "ticket_lifetime_max_s",
        ),
        (
            "a ticket for another cluster",
            StageOrder {
                ticket: vos
                    .ticket_with("demo", &workspace, |t| t.cluster = "elsewhere".into())
                    .expect("ticket"),
                ..honest.clone()
            },
            "the VO ticket is for cluster elsewhere, this is cluster demo",
        ),
        (
            "a ticket that allows the base image only",
            {
                let base = [base_manifest].into_iter().collect();
                StageOrder {
                    ticket: vos
                        .ticket_with("demo", &workspace, |t| t.manifests = base)
                        .expect("ticket"),
                    ..honest.clone()
                }
            },
            "image demo/worker:1 is manifest",
        ),
        (
            "the worker's seal on the base's manifest",
            with_worker(&|i| i.manifest = base_manifest),
            "image demo/worker:1: its seal is for manifest",
        ),
        (
            "a manifest the host was never sent",
            with_worker(&|i| i.manifest = ManifestId::from_bytes([9; 32])),
            "image demo/worker:1: manifest 0909",
        ),
        ("no seal", with_worker(&|i| i.seal = vec![]), "image demo/worker:1 is not sealed"),
        (
            "a pull numbering chunks past the image's end",
            with_worker(&|i| {
                i.pulls = vec![Pull { from: "somebody".into(), ranges: vec![(0, 1 << 30)], rate: 0 }]
            }),
            "image demo/worker:1: the pull from somebody names chunks 0..1073741824, and the image has",
        ),
        (
            "a seal made with an untrusted key",
            with_worker(&|i| {
                let seal =
                    Seal::sign(impostor.key("demo"), &worker_name, i.manifest, Visibility::Public)
                        .expect("seal");
                i.seal = seal.encode();
            }),
            "does not verify with VO demo's key",
        ),
        (
            "a ticket of a VO the host does not trust",
            StageOrder {
                ticket: impostor.ticket("vo9", &workspace).expect("ticket"),
                ..honest.clone()
            },
            "VO vo9 is not trusted by this cluster",
        ),
        (
            "an image sealed by a VO the host does not trust",
            with_worker(&|i| {
                let name: ImageName = "vo9/worker:1".parse().expect("name");
                let seal = Seal::sign(impostor.key("vo9"), &name, i.manifest, Visibility::Public)
                    .expect("seal");
                i.image = name.to_string();
                i.seal = seal.encode();
            }),
            "image vo9/worker:1: VO vo9 is not trusted by this cluster",
        ),
        (
            "a signed workspace whose ramdisk is the host's own key",
            {
                let key = net.data_dirs[1].join("node.key");
                let stolen = workspace.replacen(
                    "<bootloader path=\"pygrub\"/>",
                    &format!("<kernel path=\"vmlinuz-6.1.0-vw\" ramdisk=\"{}\"/>", key.display()),
                    1,
                );
                StageOrder { share: here("forged-head"), ..signed("demo", stolen) }
            },
            "node head: ramdisk",
        ),
        (
            "no image to check, and a workspace that stages another VO's image the host holds",
            {
                let secret = cluster_workspace("forged", "demo/base:1", "vo2/secret:1", 1);
                StageOrder {
                    share: here("forged-worker1"),
                    images: vec![],
                    ..signed("demo", secret)
                }
            },
            "partition xvda1 names image vo2/secret:1, which this stage order does not carry",
        ),
    ];
    // What a host sees of a VO's quota, whatever the head decided: vo2 may take 1000
    // MiB and 1 MiB of this host's cache.
    let workers = |n: usize| ClusterShare {
        here: (1..=n)
            .map(|i| Member {
                name: format!("q-worker{i}").into(),
                nics: vec![NicAddress {
                    network: Network::Private,
                    ip: format!("10.77.1.{}", 20 + i).parse().expect("ip"),
                    mac: format!("00:16:3e:00:01:{i:02x}").parse().expect("mac"),
                }],
                cores: None,
            })
            .collect(),
        elsewhere: vec![],
    };
    let quota_order = |n: usize| {
        let w = cluster_workspace("q", "demo/base:1", "demo/base:1", n);
        StageOrder {
            share: workers(n),
            images: vec![honest.images[0].clone()],
            serves: vec![],
            ..signed("vo2", w)
        }
    };
    let mut forged = forged;
    forged.push((
        "eight 128 MiB workers of a VO allowed 1000 MiB, all on this host",
        quota_order(8),
        "VO vo2 is over its memory_mib quota: its VMs on this host alone would take 1024 MiB",
    ));
    forged.push((
        "a 16 MiB image for a VO allowed 1 MiB of this host's cache",
        quota_order(1),
        "VO vo2 is over its cache_bytes quota",
    ));
    // The head sends each manifest before it names one; a manifest sent with a byte
    // flipped is refused whole, naming it, and never used.
    let worker_id = honest.images[1].manifest;
    let mut tampered = store.manifest(&worker_id).expect("manifest").encode();
    let at = tampered.len() - 7;
    tampered[at] ^= 1;
    let answer = send_manifest(&head, host.id(), worker_id, tampered).await;
    refused(&answer, &format!("sent as manifest {worker_id} hash to"));
    for image in ["demo/base:1", "demo/worker:1"] {
        send_image_manifest(&head, host.id(), &store, image).await;
    }
    let mut count = forged.len();
    for (what, order, want) in forged {
        let answer = send(&head, host.id(), order).await;
        refused(&answer, want);
        eprintln!("{what}: {answer:?}");
    }
    // Signed now, before the VO seals its tag again below.
    let before_reseal = vos.ticket("demo", &workspace).expect("ticket");
    // The honest order gets past every check (and then fails: this test's head sends no
    // share of the cluster to stage).
    let answer = send(&head, host.id(), honest.clone()).await;
    let refusal = matches!(&answer, Answer::Failed(f) if f.kind == FailureKind::Refused);
    assert!(!refusal, "the honest order is not refused: {answer:?}");
    // A ticket deploys once: the same order again is a replay.
    refused(&send(&head, host.id(), honest.clone()).await, "was used already");
    // The head ends the stage: its grants (one per image) go, and only once.
    let over = || Request::StageOver { stage: honest.stage.clone() };
    assert_eq!(call(&head, host.id(), over()).await, Answer::Revoked(2));
    assert_eq!(call(&head, host.id(), over()).await, Answer::Revoked(0));
    // The VO seals demo/worker:1 again, on other contents: the ticket signed before
    // does not deploy the new manifest (a re-sealed tag cannot change what a ticket
    // deploys).
    let newer = dir.path().join("worker-2.img");
    let mut bytes = std::fs::read(&images.worker).expect("read");
    bytes.iter_mut().step_by(4096).for_each(|b| *b ^= 0x5a);
    std::fs::write(&newer, bytes).expect("write");
    vos.import(&store, &newer, "demo/worker:1", Visibility::Private).expect("re-seal");
    send_image_manifest(&head, host.id(), &store, "demo/worker:1").await;
    let resealed = StageOrder {
        ticket: before_reseal,
        images: vec![image_order(&store, "demo/base:1"), image_order(&store, "demo/worker:1")],
        ..honest.clone()
    };
    refused(&send(&head, host.id(), resealed).await, "does not allow");
    count += 2;

    // A deployment this host never staged (its stage was refused or failed) has nothing
    // to stop or release here; anything else asked of it is an error naming it.
    for op in [Op::Stop, Op::Unstage] {
        let answer = call(&head, host.id(), Request::Run { deployment: "nowhere".into(), op });
        assert_eq!(answer.await, Answer::Ran(vec![]), "{op}");
    }
    let pause = Request::Run { deployment: "nowhere".into(), op: Op::Pause };
    match call(&head, host.id(), pause).await {
        Answer::Failed(f) => {
            assert_eq!(f.kind, FailureKind::NotFound, "{f:?}");
            assert!(f.message.contains("nowhere"), "{f:?}");
        }
        other => panic!("pausing a deployment the host lacks fails, got {other:?}"),
    }

    // A head of another release (control version one lower) is refused at its first
    // frame, both versions named, in an answer this release's head reads; so is a
    // fetcher of another chunk protocol version.
    let older = |version: u8| vec![0, 0, 0, 2, version, 0];
    let mut stream = head.control().open_stream(host.id(), control_protocol()).await.expect("s");
    futures::AsyncWriteExt::write_all(&mut stream, &older(VERSION - 1)).await.expect("send");
    match wire::read::<Reply, _>(&mut stream).await.expect("reply") {
        Some(Reply::Done(Answer::Failed(Failure { kind: FailureKind::Refused, message }))) => {
            assert!(
                message.contains(&format!("/vw/control version {}", VERSION - 1))
                    && message.contains(&format!("speaks version {VERSION}")),
                "{message}"
            )
        }
        other => panic!("a head of another release must be refused, got {other:?}"),
    }
    let mut stream = head.control().open_stream(host.id(), chunks_protocol()).await.expect("s");
    futures::AsyncWriteExt::write_all(&mut stream, &older(1)).await.expect("send");
    match wire::read::<Frame, _>(&mut stream).await.expect("reply") {
        Some(Frame::Refused { reason }) => {
            assert!(reason.contains("/vw/chunks version 1"), "{reason}")
        }
        other => panic!("a fetcher of another release must be refused, got {other:?}"),
    }

    host.shutdown().await;
    head.shutdown().await;
    // Nothing was fetched or recorded for the forged orders (the host holds only what it
    // held before), and no deployment; each refusal is audited with the head's peer id.
    let hosted = Store::open(&net.data_dirs[1]).expect("host store");
    let names: Vec<Vec<String>> =
        hosted.images().expect("images").into_iter().map(|i| i.names).collect();
    assert_eq!(names, [["vo2/secret:1"]], "no image was staged, none recorded");
    let head_id = net.ids[0].to_string();
    let refusals = Audit::read(&net.data_dirs[1])
        .expect("audit log")
        .into_iter()
        .filter(|e| e.op == "stage" && e.outcome == "refused" && e.peer == head_id)
        .count();
    assert_eq!(refusals, count, "every forged order is in the audit log");
    let manifests = Audit::read(&net.data_dirs[1])
        .expect("audit log")
        .into_iter()
        .filter(|e| e.op == "manifest" && e.outcome == "refused" && e.peer == head_id)
        .count();
    assert_eq!(manifests, 1, "the tampered manifest is in the audit log");
}
