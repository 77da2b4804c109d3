//! Golden bytes of every format vw-node sends or stores (`vw_testkit::golden`; the
//! files are in `node/tests/golden/`, named by format and version): each control
//! message, the manager's record families, the node key file. The ticket's is in
//! `access/ticket.rs`, the chunk frames' in `chunks/protocol.rs`.

use std::path::PathBuf;

use vw_chunkstore::ManifestId;
use vw_planner::address::{Network, NicAddress};

use crate::config::DriverKind;
use crate::control::protocol::{
    Answer, Failure, FailureKind, HostStatus, ImageManifest, ImageOrder, InventoryReport,
    ManifestPiece, Phase, Progress, Pull, Reply, Request, StageOrder, StageReport, VmSeen, VERSION,
};
use crate::integrate::MungeKey;
use crate::lifecycle::{Op, Step, VmState};
use crate::machine::{LinkRate, Source};
use crate::manager::records::{
    encode, AddressOwner, ClusterDeployment, ClusterShare, DeploymentRecord, Family, Member,
    StagePhases, StagedFiles, Timing, VmRecord,
};
use crate::report::{HostCapacity, LazyCounts, PlacedVm, VmReady, VmReport};
use crate::workspace::{Access, VmRole};
use crate::xen::config::Disk;
use crate::xen::{DomainState, GuestReport};

fn dir() -> PathBuf {
    vw_testkit::source_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden(name: &str, bytes: &[u8]) {
    vw_testkit::golden(&dir(), name, bytes);
}

const MS: u64 = 1_800_000_000_123;
const PEER: &str = "12D3KooWJzRTWvt9WK1PtJ1fFtzLA2GiNvFLsTizNp9boz9wmNZn";

fn nic(i: u8) -> NicAddress {
    NicAddress {
        network: Network::Private,
        ip: format!("10.77.1.{i}").parse().expect("ip"),
        mac: format!("00:16:3e:00:00:{i:02x}").parse().expect("mac"),
    }
}

fn member(name: &str, i: u8) -> Member {
    Member { name: name.into(), nics: vec![nic(i)], cores: i.is_multiple_of(2).then(|| vec![2, 3]) }
}

fn share() -> ClusterShare {
    ClusterShare { here: vec![member("g-head", 10)], elsewhere: vec![member("g-worker1", 11)] }
}

fn timing(step: Step) -> Timing {
    Timing { step, micros: 1_234, at_ms: MS }
}

fn vm_record() -> VmRecord {
    VmRecord {
        name: "g-worker1".into(),
        deployment: "g".into(),
        hostname: "worker1".into(),
        role: VmRole::Worker(1),
        state: VmState::Running,
        nics: vec![nic(11)],
        staged: Some(StagedFiles {
            config: "/var/lib/vw/xen/g-worker1.cfg".into(),
            disks: vec![Disk::new("xvda1", Access::Rw, "/var/lib/vw/vms/g-worker1/xvda1.img")],
            phases: StagePhases {
                rebuilt: 1,
                cloned: 0,
                taken: 1,
                rebuild: 10,
                clone: 0,
                swap: 20,
                integrate: 30,
                config: 40,
            },
        }),
        timings: vec![timing(Step::Stage), timing(Step::Load), timing(Step::Start)],
        note: Some("reconciled".into()),
    }
}

fn vm_report() -> VmReport {
    VmReport { vm: "g-worker1".into(), state: VmState::Staged, steps: vec![timing(Step::Stage)] }
}

fn workspace() -> String {
    vw_localnet::cluster_workspace("g", "grid3/base:1", "grid3/worker:1", 1)
}

/// Checks family `F`'s record `value` against its golden file at the current version,
/// and that the golden file of the version before (what the previous release wrote)
/// still reads as the same value.
fn family<F: Family + PartialEq + std::fmt::Debug>(name: &str, value: &F) {
    golden(&format!("{name}-v{}", F::VERSION), &encode(value));
    let old = vw_testkit::golden_bytes(&dir(), &format!("{name}-v{}", F::POSTCARD));
    let read: F = crate::manager::records::decode("golden", &old).expect("the old version reads");
    assert_eq!(&read, value, "{name} version {} reads as written", F::POSTCARD);
}

/// The manager's record families, as `manager/records.rs` stores them.
#[test]
fn manager_records() {
    let spec = crate::workspace::parse(&workspace(), "golden").expect("workspace");
    let deployment = DeploymentRecord {
        name: "g".into(),
        spec,
        created_ms: MS,
        vo: Some("grid3".into()),
        vms: vec!["g-head".into()],
        share: Some(share()),
    };
    family("deployment_record", &deployment);
    family("vm_record", &vm_record());
    family("address_owner", &AddressOwner { deployment: "g".into(), vm: "g-head".into() });
    let cluster = ClusterDeployment {
        name: "g".into(),
        workspace: workspace(),
        vo: "grid3".into(),
        placement: vec![PlacedVm {
            vm: "g-head".into(),
            host: "head".into(),
            cores: Some(vec![2, 3]),
            reason: "spread".into(),
            nics: vec![nic(10)],
        }],
        created_ms: MS,
    };
    family("cluster_deployment", &cluster);
}

/// One of each control request and answer, framed as they cross the network.
#[test]
fn control_messages() {
    let id = ManifestId::from_bytes([9; 32]);
    let order = StageOrder {
        stage: "g@0123456789abcdef".into(),
        workspace: workspace(),
        ticket: vec![1, 2, 3],
        share: share(),
        images: vec![ImageOrder {
            image: "grid3/worker:1".into(),
            manifest: id,
            seal: vec![4, 5, 6],
            stagers: vec![PEER.into()],
            pulls: vec![Pull {
                from: PEER.into(),
                ranges: vec![(0, 10), (20, 30)],
                rate: 12_500_000,
            }],
            fallback: vec![PEER.into()],
            trace: Some(vec![7; 8]),
        }],
        serves: vec![],
        munge_key: Some(MungeKey::derive(&[1; 32], "g", MS)),
        cap: Some(6_250_000),
        lazy: true,
    };
    let requests = [
        (
            "inventory",
            Request::Inventory {
                vo: "grid3".into(),
                images: vec![ImageManifest { image: "grid3/worker:1".into(), manifest: id }],
            },
        ),
        (
            "manifest",
            Request::Manifest(ManifestPiece { id, len: 100, offset: 96, bytes: vec![7; 4] }),
        ),
        ("stage", Request::Stage(Box::new(order))),
        ("run", Request::Run { deployment: "g".into(), op: Op::Pause }),
        ("status", Request::Status { deployment: Some("g".into()) }),
        ("await_ready", Request::AwaitReady { deployment: "g".into(), timeout_s: 600 }),
        ("stage_over", Request::StageOver { stage: "g@0123456789abcdef".into() }),
        ("settle", Request::Settle { stage: "g@0123456789abcdef".into() }),
    ];
    for (name, request) in requests {
        let bytes = crate::wire::encode(&request).expect("encode");
        golden(&format!("control-v{VERSION}-request-{name}"), &bytes);
    }
    let inventory = InventoryReport {
        driver: DriverKind::Xl,
        capacity: HostCapacity {
            memory_mib: 6656,
            cpus: 8,
            vcpus_per_cpu: 1,
            memory_from: Source::Xen,
            cpus_from: Source::Xen,
        },
        link: LinkRate { bytes_per_s: 1.25e9, source: Source::Nic("eth0".into()) },
        caps: (Some(6.25e7), None),
        rack: Some("r1".into()),
        committed: vec![crate::report::VmTake { memory_mib: 512, vcpus: 1, cores: vec![2] }],
        addresses: vec![nic(10)],
        held: vec![vec![0b1010_0101, 0b0000_0011]],
    };
    let staged = StageReport {
        lacked: 1 << 30,
        received: 1 << 30,
        wire: 900 << 20,
        chunks: 16_384,
        from: vec![(PEER.into(), 1 << 30)],
        dropped: vec![(PEER.into(), "too slow".into())],
        relieved: vec![(PEER.into(), "slow (31% of the planned rate over 3 s)".into())],
        fetch_micros: 9_000_000,
        stage_micros: 2_000_000,
        vms: vec![vm_report()],
        traces: vec![(id, vec![vw_chunkstore::ChunkId::from_bytes([3; 32])])],
    };
    let ready = VmReady {
        vm: "g-worker1".into(),
        ready_ms: Some(41_000),
        report: Some(GuestReport {
            pairs: vec![("hostname".into(), "worker1".into())],
            simulated: false,
        }),
        problem: None,
        disagreements: vec![],
        console: vec!["login:".into()],
        lazy: Some(LazyCounts {
            read: 40 << 20,
            written: 1 << 20,
            fetched_chunks: 300,
            fetched: 20 << 20,
            local: 20 << 20,
            failed: 0,
            local_chunks: 320,
            local_micros: 96_000,
            fetch_micros: 2_400_000,
        }),
    };
    let replies = [
        (
            "progress",
            Reply::Progress(Progress {
                phase: Phase::Fetch,
                bytes: 1 << 20,
                total: 1 << 30,
                rate: 12_500_000,
            }),
        ),
        ("inventory", Reply::Done(Answer::Inventory(inventory))),
        ("staged", Reply::Done(Answer::Staged(staged))),
        ("ran", Reply::Done(Answer::Ran(vec![vm_report()]))),
        (
            "status",
            Reply::Done(Answer::Status(HostStatus {
                driver: DriverKind::Simulated,
                vms: vec![
                    VmSeen::of(&vm_record(), Some(DomainState::Running)),
                    VmSeen::of(&vm_record(), None),
                ],
            })),
        ),
        ("ready", Reply::Done(Answer::Ready(vec![ready]))),
        ("failed", Reply::Done(Answer::Failed(Failure::new(FailureKind::DiskFull, "why")))),
        ("refused", Reply::Done(Answer::Failed(Failure::new(FailureKind::Refused, "why not")))),
        ("revoked", Reply::Done(Answer::Revoked(2))),
        ("manifest", Reply::Done(Answer::Manifest(100))),
    ];
    for (name, reply) in replies {
        let bytes = crate::wire::encode(&reply).expect("encode");
        golden(&format!("control-v{VERSION}-reply-{name}"), &bytes);
    }
}

/// The node key file: libp2p's protobuf encoding of an ed25519 keypair.
#[test]
fn node_key_file() {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([5; 32]).expect("key");
    golden("node_key-v1", &key.to_protobuf_encoding().expect("encodes"));
}
