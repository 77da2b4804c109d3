//! The wire format of `/vw/control`: one [`Request`] from the head per stream, then
//! from the host any number of [`Reply::Progress`] and one [`Reply::Done`]. Framed by
//! [`crate::wire`] (length, version byte, postcard), each message at most
//! [`MAX_MESSAGE`] bytes and checked against its own limits after decoding.
//!
//! Untrusted parts are carried in their own formats and parsed by the receiver with
//! their own limits: the workspace as its XML text, each manifest as its encoding.
//! A manifest crosses once, before the inventory that names it, in pieces of at most
//! [`MAX_PIECE`] bytes ([`Request::Manifest`]); inventories and stage orders then name
//! it by id, so no message grows with an image's size.

use serde::{Deserialize, Serialize};
use vw_chunkstore::ManifestId;
use vw_planner::address::NicAddress;

use crate::config::{DriverKind, MAX_VCPUS_PER_CPU};
use crate::integrate::MungeKey;
use crate::lifecycle::{Op, VmState};
use crate::machine::{LinkRate, Source};
use crate::report::{ClusterShare, HostCapacity, Timing, VmReady, VmRecord, VmReport, VmTake};
use crate::wire::{FrameError, Message};
use crate::workspace::VmRole;
use crate::xen::DomainState;

/// The protocol's name, negotiated by libp2p: the same in every version (the version is
/// each frame's first byte), so a head and a host of different releases meet at the
/// first frame and the one that cannot read it says which versions both speak.
pub const PROTOCOL_NAME: &str = "/vw/control";
/// The message format version this build speaks (2: VO tickets, seals, stagers; 3:
/// each host's Xen driver in its inventory and status; 4: each planned stream as index
/// ranges with the rate the plan expects of it, a Slurm cluster's MUNGE key; 5:
/// manifests sent once, in pieces, and named by id in inventories and stage orders; 6:
/// a failure says its kind, and a refusal is one kind of failure; 7: a stage order's
/// per-deployment rate cap, a stage report's relieved senders; 8: lazy stages, their
/// settling, and a ready VM's lazy disk counts; 9: how long a lazy VM's reads waited
/// for fetched and held chunks).
pub const VERSION: u8 = 9;
/// Largest message after its length field. Nothing in a message grows with an image's
/// size but an inventory's bitmaps, one bit per chunk: 64 MiB holds the bits of 500
/// million chunks.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest piece of a manifest one [`Request::Manifest`] carries.
pub const MAX_PIECE: usize = 8 << 20;
/// Most images one request may name.
pub const MAX_IMAGES: usize = 64;
/// Most VMs one cluster share may name.
pub const MAX_VMS: usize = 65_536;
/// Most peers one pull list may name.
pub const MAX_PEERS: usize = 1024;
/// Longest name, peer id or message.
pub const MAX_TEXT: usize = 4096;
/// Longest stage name (`NAME@NONCE`: a deployment name, a DNS label of at most 32,
/// `@`, 16 hex digits).
pub const MAX_STAGE: usize = 64;
/// Largest workspace document (as the XML parser's own limit).
pub const MAX_WORKSPACE: usize = 1 << 20;
/// Longest a host is asked to wait for its guests, in seconds.
pub const MAX_READY_WAIT_S: u64 = 6 * 3600;
/// Most physical CPUs a host may report.
pub const MAX_HOST_CPUS: u32 = 4096;
/// Fastest link or cap a host may report, bytes per second (8 Tbit/s).
pub const MAX_LINK_RATE: f64 = 1e12;
/// Most guest memory a host may report, in MiB (1 PiB).
pub const MAX_HOST_MEMORY_MIB: u64 = 1 << 30;

/// Head → host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// What can you give guests, and which of these chunks do you hold?
    Inventory {
        /// The VO deploying: a host counts a chunk as held only if it may share it with
        /// this VO (an isolated VO's chunks count for that VO alone).
        vo: String,
        /// Per image, its manifest (sent before, [`Request::Manifest`]): the host
        /// answers over its distinct non-zero chunks, in the planner's order.
        images: Vec<ImageManifest>,
    },
    /// A piece of a manifest this head will name in an inventory or a stage order; the
    /// host answers with how many of its bytes it now holds ([`Answer::Manifest`]),
    /// all of them once it has checked the whole against its id. An empty piece asks
    /// only that.
    Manifest(ManifestPiece),
    /// Fetch what you lack as planned, then stage your VMs.
    Stage(Box<StageOrder>),
    /// A lifecycle operation on your VMs of a deployment (not `stage`: that is
    /// [`Request::Stage`]).
    Run {
        /// The deployment.
        deployment: String,
        /// The operation.
        op: Op,
    },
    /// Your VMs (of one deployment, or all).
    Status {
        /// The deployment.
        deployment: Option<String>,
    },
    /// Wait until the guest of each of your running VMs of a deployment says it is up,
    /// or until the timeout.
    AwaitReady {
        /// The deployment.
        deployment: String,
        /// How long to wait, in seconds.
        timeout_s: u64,
    },
    /// The end of your lazy stage: answered ([`Answer::Staged`]) once every chunk is
    /// here, the images whole and your VMs' configs pointing at their local copies.
    Settle {
        /// The stage (`NAME@NONCE`, as its stage order named it).
        stage: String,
    },
    /// The stage is over on every host (staged or failed): withdraw its chunk grants.
    StageOver {
        /// The stage (`NAME@NONCE`, as its stage order named it).
        stage: String,
    },
}

/// An image by its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Its name, for messages.
    pub image: String,
    /// Its manifest.
    pub manifest: ManifestId,
}

/// Bytes `offset..offset + bytes.len()` of the encoding of manifest `id`, which is
/// `len` bytes long.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPiece {
    /// The manifest: BLAKE3 of its whole encoding, checked once every piece is in.
    pub id: ManifestId,
    /// Length of the whole encoding.
    pub len: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// Its bytes (none: a question).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for ManifestPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestPiece")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("offset", &self.offset)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Everything a host needs to stage its share of a deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageOrder {
    /// This deploy attempt, made by the head: `NAME@NONCE`, NAME the deployment's. Chunk
    /// grants, and chunk requests, are keyed by it.
    pub stage: String,
    /// The workspace document (XML), parsed and validated by the host.
    pub workspace: String,
    /// The deploying VO's signed ticket for this document (encoded; the host checks it
    /// against the VO's key in its own cluster config).
    pub ticket: Vec<u8>,
    /// Which VMs are here (with the addresses the head assigned) and which elsewhere.
    pub share: ClusterShare,
    /// The images its VMs use.
    pub images: Vec<ImageOrder>,
    /// Images the plan has this host send chunks of without staging them (it holds
    /// those chunks for other images): checked like `images` and granted to their
    /// stagers, but not fetched (no pulls, no fallback).
    pub serves: Vec<ImageOrder>,
    /// The virtual cluster's MUNGE key, exactly when its workspace runs Slurm (the host
    /// writes it into each Slurm node; it is never stored on the host).
    pub munge_key: Option<MungeKey>,
    /// Bytes per second this deployment's chunks may use of this host's link, each way
    /// (the operator's cap on the deployment, `vw deploy --cap`; the host's own caps
    /// hold as well). `None`: no cap of the deployment's own.
    pub cap: Option<u64>,
    /// Stage lazily (`vw deploy --lazy`): stage the VMs on lazy disks and answer at
    /// once; fetch the rest meanwhile, until the head asks for its end
    /// ([`Request::Settle`]).
    pub lazy: bool,
}

/// One image of a stage order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOrder {
    /// The image reference as the workspace names it.
    pub image: String,
    /// Its manifest, sent before ([`Request::Manifest`]) and checked by the host.
    pub manifest: ManifestId,
    /// The seal of the VO that published it, encoded: the host checks it names this
    /// manifest, verifies with that VO's key, and lets the deploying VO use it.
    pub seal: Vec<u8>,
    /// The peers staging this image in the deployment: the only ones this host serves
    /// its chunks to, for this deployment.
    pub stagers: Vec<String>,
    /// The planned streams into this host, each from one peer: in plan order.
    pub pulls: Vec<Pull>,
    /// Peers to pull from, in order, whatever a planned stream did not bring (its
    /// sender died, was slow, or sent a bad chunk): the sender's own parents first,
    /// then the source.
    pub fallback: Vec<String>,
    /// The image's boot trace, encoded (version 8; a VO-signed `BootTrace`): the host
    /// checks it and fetches its chunks first.
    pub trace: Option<Vec<u8>>,
}

/// One planned stream into a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// The sender's peer id.
    pub from: String,
    /// The chunks, as half-open ranges of indices into the image's distinct non-zero
    /// chunks (`Manifest::distinct`, the planner's numbering), sent in that order: the
    /// host takes the ids from the manifest it checked, so an order costs a few bytes
    /// per stream, not 32 per chunk.
    pub ranges: Vec<(u32, u32)>,
    /// Bytes per second the plan expects of this stream on average (0: it cannot say,
    /// a link rate was assumed). The receiver drops a sender far below it.
    pub rate: u64,
}

/// What kind of failure a request met: what a caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Not allowed: the VO's ticket or an image's seal, a grant, a quota, a replay, an
    /// order that fails a host's checks, a peer that is not a head.
    Refused,
    /// A host could not be reached, went quiet, runs another release or broke the
    /// protocol: it is lost for the deployment.
    Unreachable,
    /// No space left on a host's disk.
    DiskFull,
    /// What the request names is not there: a deployment, a VM, an image, a manifest.
    NotFound,
    /// Anything else; the message says what.
    Failed,
}

/// A failure as it travels: between hosts in a control answer, and to the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind.
    pub kind: FailureKind,
    /// What failed, naming what (a deployment, a VM, a chunk, a peer).
    pub message: String,
}

impl Failure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            FailureKind::Refused => write!(f, "refused: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Failure {}

/// Host → head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// How far the request has got.
    Progress(Progress),
    /// The answer; the stream ends.
    Done(Answer),
}

/// Progress of a long request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What it is doing.
    pub phase: Phase,
    /// Bytes done.
    pub bytes: u64,
    /// Bytes in all.
    pub total: u64,
    /// Bytes per second since the previous progress of this phase (0 if none yet).
    pub rate: u64,
}

impl Progress {
    /// Progress of `phase` with no bytes to count.
    pub fn started(phase: Phase) -> Self {
        Progress { phase, bytes: 0, total: 0, rate: 0 }
    }
}

/// The parts of a host's stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Receiving the chunks it lacks.
    Fetch,
    /// Rebuilding, cloning and integrating images; writing configs.
    Stage,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// To [`Request::Inventory`].
    Inventory(InventoryReport),
    /// To [`Request::Stage`].
    Staged(StageReport),
    /// To [`Request::Run`].
    Ran(Vec<VmReport>),
    /// To [`Request::Status`]: the host's driver, each VM's record and what the
    /// hypervisor says.
    Status(HostStatus),
    /// To [`Request::AwaitReady`]: each running VM, ready or why not.
    Ready(Vec<VmReady>),
    /// The request failed or was refused: what kind, and why, naming what.
    Failed(Failure),
    /// To [`Request::StageOver`]: how many grants were withdrawn.
    Revoked(u32),
    /// To [`Request::Manifest`]: how many bytes of the manifest the host holds (its
    /// whole length once checked, or when it had it before); the head sends on from
    /// there.
    Manifest(u64),
}

/// A host's VMs as its records and its hypervisor see them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The driver it runs them with (`simulated`: no guest exists).
    pub driver: DriverKind,
    /// Each VM, as its record and the hypervisor say.
    pub vms: Vec<VmSeen>,
}

/// One VM as a host reports it (`Status`): what the head and `vw status` show, not the
/// host's record (the VM's files and its whole history stay on the host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSeen {
    /// The Xen domain name.
    pub name: String,
    /// Its deployment.
    pub deployment: String,
    /// Guest hostname.
    pub hostname: String,
    /// Head or which worker.
    pub role: VmRole,
    /// Where vw has it.
    pub state: VmState,
    /// What the hypervisor says now (`None`: no domain).
    pub domain: Option<DomainState>,
    /// Its NICs' addresses (none once unstaged).
    pub nics: Vec<NicAddress>,
    /// Its last steps (at most [`LAST_STEPS`]), oldest first.
    pub last_steps: Vec<Timing>,
    /// What reconciliation or a failure last noted.
    pub note: Option<String>,
}

/// How many of a VM's steps its status carries.
pub const LAST_STEPS: usize = 3;

impl VmSeen {
    /// `record` as its host reports it, with the hypervisor's `domain` state.
    pub fn of(record: &VmRecord, domain: Option<DomainState>) -> Self {
        let skip = record.timings.len().saturating_sub(LAST_STEPS);
        VmSeen {
            name: record.name.clone(),
            deployment: record.deployment.clone(),
            hostname: record.hostname.clone(),
            role: record.role,
            state: record.state,
            domain,
            nics: record.nics.clone(),
            last_steps: record.timings[skip..].to_vec(),
            note: record.note.clone(),
        }
    }
}

/// What a host can take, and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryReport {
    /// The driver its VMs run with (`simulated`: they do not run).
    pub driver: DriverKind,
    /// Memory and CPUs for guests.
    pub capacity: HostCapacity,
    /// Its link's speed each way, and where that came from.
    pub link: LinkRate,
    /// Upload and download caps, bytes per second (none: uncapped).
    pub caps: (Option<f64>, Option<f64>),
    /// Its rack (switch), if configured: the planner keeps cascades within racks.
    pub rack: Option<String>,
    /// What VMs already here take: memory, vCPUs, pinned cores.
    pub committed: Vec<VmTake>,
    /// Addresses held here.
    pub addresses: Vec<NicAddress>,
    /// Per requested image, a bitmap over its chunks (bit i of byte i/8): held.
    pub held: Vec<Vec<u8>>,
}

/// What a host's stage did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    /// Bytes of the images' chunks it lacked when the order came.
    pub lacked: u64,
    /// Bytes received (of chunks, uncompressed).
    pub received: u64,
    /// Bytes on the wire (less than `received` when senders compressed).
    pub wire: u64,
    /// Chunks received.
    pub chunks: u64,
    /// Bytes per sender (peer id), in the order first used.
    pub from: Vec<(String, u64)>,
    /// Senders dropped, and why.
    pub dropped: Vec<(String, String)>,
    /// Planned senders that ran slow, and what other holders sent in their place.
    pub relieved: Vec<(String, String)>,
    /// Microseconds fetching, then staging.
    pub fetch_micros: u64,
    /// Microseconds rebuilding, cloning, integrating.
    pub stage_micros: u64,
    /// The VMs staged.
    pub vms: Vec<VmReport>,
    /// A lazy stage (version 8): per image whose guests booted here on lazy disks, the
    /// chunks the first of them read until it was up, in order (what the head offers
    /// the VO to sign as the image's boot trace).
    pub traces: Vec<(ManifestId, Vec<vw_chunkstore::ChunkId>)>,
}

fn text(what: &str, s: &str) -> Result<(), FrameError> {
    if s.len() > MAX_TEXT {
        return Err(FrameError::Invalid(format!(
            "{what} of {} bytes (at most {MAX_TEXT})",
            s.len()
        )));
    }
    Ok(())
}

fn count(what: &str, n: usize, max: usize) -> Result<(), FrameError> {
    if n > max {
        return Err(FrameError::Invalid(format!("{n} {what} (at most {max})")));
    }
    Ok(())
}

/// One image of a stage order, staged or only served: the same bounds either way.
fn check_image_order(i: &ImageOrder) -> Result<(), FrameError> {
    text("image name", &i.image)?;
    count("pulls", i.pulls.len(), MAX_PEERS)?;
    count("fallback peers", i.fallback.len(), MAX_PEERS)?;
    count("stagers", i.stagers.len(), MAX_PEERS)?;
    count("seal bytes", i.seal.len(), vw_chunkstore::vo::MAX_SEAL)?;
    if let Some(t) = &i.trace {
        count("boot trace bytes", t.len(), vw_chunkstore::trace::MAX_TRACE)?;
    }
    i.stagers.iter().try_for_each(|p| text("peer id", p))?;
    for p in &i.pulls {
        text("peer id", &p.from)?;
        if let Some(&(a, b)) = p.ranges.iter().find(|(a, b)| a >= b) {
            return Err(FrameError::Invalid(format!("an empty chunk range {a}..{b}")));
        }
    }
    i.fallback.iter().try_for_each(|p| text("peer id", p))
}

/// A manifest piece lies within a manifest no longer than a host will take.
fn check_piece(p: &ManifestPiece) -> Result<(), FrameError> {
    let max = vw_chunkstore::MAX_MANIFEST_LEN as u64;
    count("manifest piece bytes", p.bytes.len(), MAX_PIECE)?;
    let end = p.offset.checked_add(p.bytes.len() as u64);
    if p.len == 0 || p.len > max || end.is_none_or(|end| end > p.len) {
        return Err(FrameError::Invalid(format!(
            "manifest {}: a piece at {} of {} bytes, of a manifest of {} bytes (1..={max})",
            p.id,
            p.offset,
            p.bytes.len(),
            p.len
        )));
    }
    Ok(())
}

impl Message for Request {
    const PROTOCOL: &'static str = PROTOCOL_NAME;
    const VERSION: u8 = VERSION;
    const MAX: usize = MAX_MESSAGE;

    fn check(&self) -> Result<(), FrameError> {
        match self {
            Request::Inventory { vo, images } => {
                text("VO name", vo)?;
                count("images", images.len(), MAX_IMAGES)?;
                images.iter().try_for_each(|i| text("image name", &i.image))
            }
            Request::Manifest(piece) => check_piece(piece),
            Request::Stage(order) => {
                count("stage name bytes", order.stage.len(), MAX_STAGE)?;
                if order.workspace.len() > MAX_WORKSPACE {
                    return Err(FrameError::Invalid(format!(
                        "workspace of {} bytes (at most {MAX_WORKSPACE})",
                        order.workspace.len()
                    )));
                }
                let vms = order.share.here.len() + order.share.elsewhere.len();
                count("VMs", vms, MAX_VMS)?;
                count("ticket bytes", order.ticket.len(), crate::access::MAX_TICKET)?;
                for m in order.share.here.iter().chain(&order.share.elsewhere) {
                    text("VM name", m.name.as_str())?;
                }
                count("images", order.images.len(), MAX_IMAGES)?;
                count("served images", order.serves.len(), MAX_IMAGES)?;
                if order.cap == Some(0) {
                    return Err(FrameError::Invalid("a rate cap of 0 bytes/s".into()));
                }
                order.images.iter().chain(&order.serves).try_for_each(check_image_order)
            }
            Request::Run { deployment, op } => {
                text("deployment name", deployment)?;
                if *op == Op::Stage {
                    return Err(FrameError::Invalid(
                        "stage comes as a stage order, with the plan".into(),
                    ));
                }
                Ok(())
            }
            Request::Status { deployment } => {
                deployment.as_deref().map_or(Ok(()), |d| text("deployment name", d))
            }
            Request::AwaitReady { deployment, timeout_s } => {
                text("deployment name", deployment)?;
                if *timeout_s > MAX_READY_WAIT_S {
                    return Err(FrameError::Invalid(format!(
                        "a ready timeout of {timeout_s} s (at most {MAX_READY_WAIT_S})"
                    )));
                }
                Ok(())
            }
            Request::StageOver { stage } | Request::Settle { stage } => {
                count("stage name bytes", stage.len(), MAX_STAGE)
            }
        }
    }
}

impl Message for Reply {
    const PROTOCOL: &'static str = PROTOCOL_NAME;
    const VERSION: u8 = VERSION;
    const MAX: usize = MAX_MESSAGE;

    fn check(&self) -> Result<(), FrameError> {
        match self {
            Reply::Done(Answer::Failed(f)) => text("message", &f.message),
            Reply::Done(Answer::Inventory(r)) => check_inventory(r),
            Reply::Done(Answer::Staged(r)) => {
                count("traces", r.traces.len(), MAX_IMAGES)?;
                for (_, chunks) in &r.traces {
                    count("traced chunks", chunks.len(), vw_chunkstore::trace::MAX_TRACE_CHUNKS)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// An inventory is one host's word about itself, and the head plans with it: its
/// numbers are bounded, and what its VMs take must be possible on the host it
/// describes (pinned cores exist and are each pinned once), so the planner never meets
/// an impossible host.
fn check_inventory(r: &InventoryReport) -> Result<(), FrameError> {
    let bad = |what: String| Err(FrameError::Invalid(format!("inventory: {what}")));
    count("images", r.held.len(), MAX_IMAGES)?;
    count("VMs", r.committed.len(), MAX_VMS)?;
    count("addresses", r.addresses.len(), MAX_VMS)?;
    if let Some(rack) = &r.rack {
        text("rack", rack)?;
    }
    for cap in [r.caps.0, r.caps.1, Some(r.link.bytes_per_s)].into_iter().flatten() {
        if !(cap.is_finite() && cap > 0.0 && cap <= MAX_LINK_RATE) {
            return bad(format!("a rate of {cap} bytes/s (more than 0, at most {MAX_LINK_RATE})"));
        }
    }
    if let Source::Nic(nic) = &r.link.source {
        if nic.len() > MAX_TEXT {
            return bad(format!("a NIC name of {} bytes (at most {MAX_TEXT})", nic.len()));
        }
    }
    let HostCapacity { memory_mib, cpus, vcpus_per_cpu, .. } = r.capacity;
    if !(1..=MAX_VCPUS_PER_CPU).contains(&vcpus_per_cpu) {
        return bad(format!("{vcpus_per_cpu} vCPUs per CPU (1..={MAX_VCPUS_PER_CPU})"));
    }
    if cpus == 0 || cpus > MAX_HOST_CPUS || memory_mib > MAX_HOST_MEMORY_MIB {
        return bad(format!(
            "{cpus} CPUs and {memory_mib} MiB (1..={MAX_HOST_CPUS} CPUs, at most \
             {MAX_HOST_MEMORY_MIB} MiB)"
        ));
    }
    let mut pinned = std::collections::BTreeSet::new();
    for (i, vm) in r.committed.iter().enumerate() {
        for &core in &vm.cores {
            if core >= cpus || !pinned.insert(core) {
                return bad(format!(
                    "VM {i} is pinned to core {core}, which a host of {cpus} CPUs does not \
                     have or another VM holds"
                ));
            }
        }
    }
    Ok(())
}

/// Bit `i` of a held-chunks bitmap.
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// A bitmap of `n` bits from a predicate.
pub fn bitmap(n: usize, mut f: impl FnMut(usize) -> bool) -> Vec<u8> {
    let mut map = vec![0u8; n.div_ceil(8)];
    for i in 0..n {
        if f(i) {
            map[i / 8] |= 1 << (i % 8);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_body, encode};

    fn take(memory_mib: u64, vcpus: u32, cores: &[u32]) -> VmTake {
        VmTake { memory_mib, vcpus, cores: cores.to_vec() }
    }

    /// A host's inventory is untrusted at the head: one that claims the impossible is
    /// refused when it is read, before the planner sees it.
    #[test]
    fn impossible_inventories_are_refused_when_read() {
        let capacity = |memory_mib, cpus| HostCapacity {
            memory_mib,
            cpus,
            vcpus_per_cpu: 1,
            memory_from: Source::Xen,
            cpus_from: Source::Xen,
        };
        let good = InventoryReport {
            driver: DriverKind::Xl,
            capacity: capacity(4096, 2),
            link: LinkRate { bytes_per_s: 1.25e9, source: Source::Nic("eth0".into()) },
            caps: (None, None),
            rack: None,
            committed: vec![take(512, 1, &[0]), take(512, 1, &[1])],
            addresses: vec![],
            held: vec![],
        };
        // What `wire::read` runs on every decoded reply (encoding runs it too).
        let check = |r: &InventoryReport| {
            Reply::Done(Answer::Inventory(r.clone())).check().map_err(|e| e.to_string())
        };
        assert_eq!(check(&good), Ok(()));
        for (r, why) in [
            (
                InventoryReport { committed: vec![take(512, 1, &[0, 1, 2])], ..good.clone() },
                "core 2",
            ),
            (
                InventoryReport {
                    committed: vec![take(1, 1, &[0]), take(1, 1, &[0])],
                    ..good.clone()
                },
                "core 0",
            ),
            (InventoryReport { capacity: capacity(1, 0), ..good.clone() }, "0 CPUs"),
            (InventoryReport { capacity: capacity(u64::MAX, 2), ..good.clone() }, "MiB"),
            (InventoryReport { capacity: capacity(1, u32::MAX), ..good.clone() }, "CPUs"),
            (
                InventoryReport {
                    capacity: HostCapacity { vcpus_per_cpu: 0, ..capacity(1, 2) },
                    ..good.clone()
                },
                "0 vCPUs per CPU",
            ),
            (
                InventoryReport {
                    link: LinkRate { bytes_per_s: f64::INFINITY, source: Source::Assumed },
                    ..good.clone()
                },
                "a rate of inf",
            ),
            (
                InventoryReport {
                    link: LinkRate { bytes_per_s: 1e9, source: Source::Nic("x".repeat(5000)) },
                    ..good.clone()
                },
                "NIC name",
            ),
        ] {
            let err = check(&r).expect_err(why);
            assert!(err.contains("inventory") && err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn requests_round_trip_and_limits_hold() {
        let manifest = ManifestId::from_bytes([7; 32]);
        let r = Request::Inventory {
            vo: "vo".into(),
            images: vec![ImageManifest { image: "vo/x:1".into(), manifest }],
        };
        let bytes = encode(&r).expect("encode");
        assert_eq!(decode_body::<Request>(&bytes[4..]).expect("decode"), r);
        let stage = Request::Run { deployment: "d".into(), op: Op::Stage };
        assert!(encode(&stage).is_err(), "stage goes by stage order");
        let long = Request::Status { deployment: Some("x".repeat(MAX_TEXT + 1)) };
        assert!(matches!(encode(&long), Err(FrameError::Invalid(_))));
    }

    /// A piece lies inside its manifest, and a manifest is no longer than a host takes.
    #[test]
    fn manifest_pieces_lie_within_their_manifest() {
        let max = vw_chunkstore::MAX_MANIFEST_LEN as u64;
        let piece = |len, offset, n| {
            Request::Manifest(ManifestPiece {
                id: ManifestId::from_bytes([1; 32]),
                len,
                offset,
                bytes: vec![0; n],
            })
        };
        for (request, ok) in [
            (piece(100, 0, 0), true),
            (piece(100, 60, 40), true),
            (piece(max, max - 10, 10), true),
            (piece(100, 61, 40), false),
            (piece(100, u64::MAX, 1), false),
            (piece(0, 0, 0), false),
            (piece(max + 1, 0, 0), false),
            (piece(u64::MAX, 0, MAX_PIECE + 1), false),
        ] {
            assert_eq!(request.check().is_ok(), ok, "{request:?}");
        }
    }

    #[test]
    fn a_stage_order_bounds_the_images_it_serves_as_those_it_stages() {
        let image = |stagers: usize| ImageOrder {
            image: "vo/x:1".into(),
            manifest: ManifestId::from_bytes([0; 32]),
            seal: Vec::new(),
            stagers: vec!["peer".into(); stagers],
            pulls: Vec::new(),
            fallback: Vec::new(),
            trace: None,
        };
        let order = |serves: Vec<ImageOrder>| {
            Request::Stage(Box::new(StageOrder {
                stage: "d@0000000000000000".into(),
                workspace: String::new(),
                ticket: Vec::new(),
                share: ClusterShare { here: Vec::new(), elsewhere: Vec::new() },
                images: vec![image(1)],
                serves,
                munge_key: None,
                cap: None,
                lazy: false,
            }))
        };
        assert!(order(vec![image(1)]).check().is_ok());
        let mut capped = order(vec![]);
        if let Request::Stage(o) = &mut capped {
            o.cap = Some(0);
        }
        let zero = capped.check().expect_err("a cap of nothing");
        assert!(zero.to_string().contains("a rate cap of 0"), "{zero}");
        let many = order(vec![image(1); MAX_IMAGES + 1]).check().expect_err("too many served");
        assert!(many.to_string().contains("served images"), "{many}");
        let wide = order(vec![image(MAX_PEERS + 1)]).check().expect_err("too many stagers");
        assert!(wide.to_string().contains("stagers"), "{wide}");
        let mut bad = image(1);
        bad.stagers[0] = "x".repeat(MAX_TEXT + 1);
        assert!(order(vec![bad]).check().is_err(), "a served image's peer ids are text");
    }

    #[test]
    fn bitmaps_hold_their_bits() {
        let map = bitmap(19, |i| i % 3 == 0);
        assert_eq!(map.len(), 3);
        assert!((0..19).all(|i| bit(&map, i) == (i % 3 == 0)));
        assert!(!bit(&map, 1000));
    }
}
