//! What a host checks in a stage order before it fetches anything: pure, against its
//! own cluster config, the manifests it was sent (or records) and the time it is given
//! (no store, no network), so that the whole check is fuzzed (`node/fuzz` target
//! `check_order`).
//!
//! The order is untrusted even though it comes from a head: a compromised head can send
//! anything. [`check_order`] returns what the host may then do: the workspace with its
//! kernels resolved and every partition here bound to a checked manifest, the VO's
//! ticket, and the checked images. The host then admits the ticket (once, see
//! [`crate::access::replay`]) and grants the images' stagers their chunks.

use std::collections::HashMap;
use std::sync::Arc;

use vw_chunkstore::{ChunkRef, ImageRef, Manifest, ManifestId, Seal};

use super::protocol::{ImageOrder, StageOrder};
use crate::access::{check_manifest, check_seal, check_ticket, check_trace, deployment_of, Ticket};
use crate::config::ClusterConfig;
use crate::report::ClusterShare;
use crate::workspace::WorkspaceSpec;

/// One image of an order, checked: its manifest decoded, the VO's ticket allowing it,
/// its seal verified and letting the VO deploy it.
#[derive(Clone, Debug)]
pub struct CheckedImage {
    /// The image as the order carried it.
    pub order: ImageOrder,
    /// Its reference (name or id).
    pub reference: ImageRef,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// The manifest's distinct non-zero chunks (`Manifest::distinct`): what the pulls'
    /// ranges number.
    pub distinct: Vec<ChunkRef>,
    /// Its seal.
    pub seal: Seal,
    /// Its boot trace's chunks, checked ([`crate::access::check_trace`]): fetched
    /// first.
    pub trace: Vec<vw_chunkstore::ChunkId>,
}

/// A stage order that passed every check.
#[derive(Clone, Debug)]
pub struct CheckedOrder {
    /// The workspace: kernels resolved inside the allowed directories, every partition
    /// of a node with VMs here bound to the id of a checked manifest.
    pub spec: WorkspaceSpec,
    /// The VO's ticket (not yet admitted).
    pub ticket: Ticket,
    /// The images this host stages.
    pub images: Vec<CheckedImage>,
    /// The images it only serves (sends in the plan).
    pub serves: Vec<CheckedImage>,
}

impl CheckedOrder {
    /// The deploying VO.
    pub fn vo(&self) -> &str {
        self.ticket.vo()
    }
}

/// Checks `order` at `now_s` (seconds since the epoch) against `config`, with the
/// manifests this host holds (`manifests`: those the head sent, checked against their
/// ids, and those its store records): the workspace parses; the stage is one of its deployment; the VO's ticket verifies and is for this cluster, deployment and
/// document, and unexpired; the kernels of the nodes with VMs here lie in the allowed
/// directories; each image (staged or served) names a manifest held here that the
/// ticket allows and a seal that lets the VO deploy it; and every partition here names an image the order
/// carries. The error says which check failed, on what.
pub fn check_order(
    config: &ClusterConfig,
    order: &StageOrder,
    manifests: &HashMap<ManifestId, Arc<Manifest>>,
    now_s: u64,
) -> Result<CheckedOrder, String> {
    let spec = crate::workspace::parse(&order.workspace, "(the head's stage order)")
        .map_err(|e| e.to_string())?;
    let deployment = spec.name.as_str();
    if deployment_of(&order.stage) != Some(deployment) {
        return Err(format!(
            "stage `{}` is not a stage of deployment {deployment} (`{deployment}@` and 16 hex digits)",
            order.stage
        ));
    }
    match (spec.runs_slurm(), order.munge_key.is_some()) {
        (true, false) => {
            return Err(format!(
                "deployment {deployment} runs Slurm, and its stage order carries no MUNGE key"
            ))
        }
        (false, true) => {
            return Err(format!(
            "deployment {deployment} does not run Slurm, yet its stage order carries a MUNGE key"
        ))
        }
        _ => {}
    }
    let ticket = check_ticket(config, &order.ticket, deployment, &order.workspace, now_s)
        .map_err(|e| e.to_string())?;
    let vo = ticket.vo();
    let spec = crate::xen::boot::resolve_spec(
        &spec,
        &order.share.here_names(),
        config.kernel_dirs(Some(vo)),
    )
    .map_err(|e| format!("deployment {deployment}: {e}"))?;
    let check = |image: &ImageOrder| -> Result<CheckedImage, String> {
        let reference: ImageRef =
            image.image.parse().map_err(|e| format!("image `{}`: {e}", image.image))?;
        let manifest = manifests.get(&image.manifest).cloned().ok_or_else(|| {
            format!(
                "image {reference}: manifest {} was never sent to this host (a head sends \
                 each manifest before it names it)",
                image.manifest
            )
        })?;
        check_manifest(&ticket, deployment, &reference, manifest.id())
            .map_err(|e| e.to_string())?;
        let seal = check_seal(config, vo, &reference, manifest.id(), &image.seal)
            .map_err(|e| e.to_string())?;
        // Pulls number the manifest's distinct non-zero chunks: none past its end.
        let distinct = manifest.distinct();
        let n = distinct.len();
        for pull in &image.pulls {
            if let Some(&(a, b)) = pull.ranges.iter().find(|&&(_, b)| b as usize > n) {
                return Err(format!(
                    "image {reference}: the pull from {} names chunks {a}..{b}, and the image has {n}",
                    pull.from
                ));
            }
        }
        let trace = match &image.trace {
            Some(bytes) => check_trace(config, vo, &reference, &seal, &manifest, bytes)
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok(CheckedImage { order: image.clone(), reference, manifest, distinct, seal, trace })
    };
    let images = order.images.iter().map(check).collect::<Result<Vec<_>, _>>()?;
    let serves = order.serves.iter().map(check).collect::<Result<Vec<_>, _>>()?;
    // The VMs here stage exactly the manifests checked above, never a name looked up
    // in the host's store later.
    let spec = bind_partitions(&spec, &order.share, &images)?;
    Ok(CheckedOrder { spec, ticket, images, serves })
}

/// `spec` with every partition of the nodes that have VMs here bound to the manifest
/// id of the image `staged` carries for it: a stage order cannot list one image for
/// the checks and have the host stage another (another VO's private image it holds,
/// or an older manifest under the same name). Refused if `staged` carries none.
fn bind_partitions(
    spec: &WorkspaceSpec,
    share: &ClusterShare,
    staged: &[CheckedImage],
) -> Result<WorkspaceSpec, String> {
    let mut out = spec.clone();
    for node in out.nodes_of_mut(&share.here_names()) {
        for p in &mut node.partitions {
            let Some(c) = staged.iter().find(|c| c.reference == p.image) else {
                return Err(format!(
                    "node {}: partition {} names image {}, which this stage order does not carry",
                    node.name, p.device, p.image
                ));
            };
            p.image = ImageRef::Id(c.manifest.id());
        }
    }
    Ok(out)
}
