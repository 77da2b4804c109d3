//! A deployment as the head reports it: its phases, the events it sends while it runs
//! (to `vw deploy`, `vw status --watch` and the tests), the options it is run with, and
//! the report at its end, per host and per VM. Plain data: the head (`head`) fills it
//! in, the CLI prints it.

use serde::{Deserialize, Serialize};
use vw_planner::{Policy, Strategy};

pub use super::cap::StageCap;
use super::protocol::{Failure, Progress, StageReport};
use crate::config::DriverKind;
use crate::names::{DeploymentName, HostName, VmName};
use crate::report::{PlacedVm, VmReady, VmReport};

/// The phases of a deployment (the paper's Fig. 2(b), with staging split open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployPhase {
    /// Parse and check the workspace.
    Validate,
    /// Ask every host what it can take and holds.
    Inventory,
    /// Place the VMs.
    Place,
    /// Assign addresses.
    Addresses,
    /// Plan the distribution.
    Plan,
    /// Fetch and stage on every host.
    Stage,
    /// Load the domains.
    Load,
    /// Start them.
    Create,
    /// Wait for their guests to say they are up.
    Ready,
    /// A lazy deployment: the rest of the stage, after the guests are up, until every
    /// host has every chunk and every image is whole and verified.
    Settle,
}

impl std::fmt::Display for DeployPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// What a deployment reports as it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "event")]
pub enum DeployEvent {
    /// A phase starts.
    Phase {
        /// Which.
        phase: DeployPhase,
    },
    /// The distribution plan: who sends to whom.
    Planned {
        /// The strategy (auto resolved).
        strategy: Strategy,
        /// Distinct (sender, receiver) host pairs.
        edges: Vec<(HostName, HostName)>,
    },
    /// A host's progress.
    Progress {
        /// The host.
        host: HostName,
        /// Where it is.
        progress: Progress,
    },
    /// A host failed; its VMs are lost for this deployment.
    Lost {
        /// The host.
        host: HostName,
        /// Why.
        reason: String,
    },
}

/// How to deploy.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DeployOptions {
    /// The distribution strategy.
    pub strategy: Strategy,
    /// Spread or pack.
    pub policy: Policy,
    /// Deploy across hosts whose Xen drivers differ (else refused).
    #[serde(default)]
    pub mixed_drivers: bool,
    /// Stop after the stage phase: the cluster is staged on every host, and `vw create
    /// NAME` starts it later.
    #[serde(default)]
    pub stage_only: bool,
    /// What staging this deployment may use of each host's link, each way: planned
    /// with, and kept by every sender and receiver (`vw deploy --cap`).
    #[serde(default)]
    pub cap: Option<StageCap>,
    /// Boot the VMs on lazy disks while their chunks arrive (`vw deploy --lazy`, or
    /// the workspace's `staging="lazy"`).
    #[serde(default)]
    pub lazy: bool,
}

impl DeployOptions {
    /// `strategy` and `policy`, every host's driver alike, to the end, uncapped.
    pub fn new(strategy: Strategy, policy: Policy) -> Self {
        DeployOptions {
            strategy,
            policy,
            mixed_drivers: false,
            stage_only: false,
            cap: None,
            lazy: false,
        }
    }
}

/// One phase's duration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// The phase.
    pub phase: DeployPhase,
    /// Microseconds.
    pub micros: u64,
}

/// What one host did in a deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostOutcome {
    /// The host.
    pub host: HostName,
    /// The Xen driver it runs its VMs with (`simulated`: no guest exists), as its
    /// inventory said.
    pub driver: Option<DriverKind>,
    /// Its VMs.
    pub vms: Vec<VmName>,
    /// Its stage (bytes lacked and received, from whom, how long).
    pub stage: Option<StageReport>,
    /// Why it failed, if it did (its VMs are lost).
    pub error: Option<Failure>,
}

/// What `vw deploy` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The deployment.
    pub deployment: DeploymentName,
    /// Whether it resumed an earlier deploy of the same document.
    pub resumed: bool,
    /// The strategy used (`None`: nothing was staged, as by `vw create` of a staged
    /// cluster).
    pub strategy: Option<Strategy>,
    /// Phase timings, in order.
    pub phases: Vec<PhaseTime>,
    /// Where each VM went.
    pub placement: Vec<PlacedVm>,
    /// Per host with VMs.
    pub hosts: Vec<HostOutcome>,
    /// VMs lost with their hosts.
    pub lost: Vec<VmName>,
    /// The planner's predicted staging time, seconds.
    pub predicted_s: f64,
    /// The physical limit: the most any host lacks over its downlink, seconds.
    pub limit_s: f64,
    /// The VMs at the end.
    pub vms: Vec<VmReport>,
    /// Per running VM: whether its guest said it is up, and after how long.
    pub ready: Vec<VmReady>,
    /// A lazy deploy of images with no boot trace yet: what their first boot read, per
    /// image, for the VO to sign and keep (`vw deploy --vo` does).
    #[serde(default)]
    pub traces: Vec<RecordedTrace>,
}

/// What the first lazy boot of an image read, in order: a boot trace to be signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTrace {
    /// The image as the workspace names it.
    pub image: String,
    /// Its manifest.
    pub manifest: vw_chunkstore::ManifestId,
    /// The chunks, in the order first read.
    pub chunks: Vec<vw_chunkstore::ChunkId>,
}

/// One host's answer to a cluster-wide operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostAnswer<T> {
    /// The host.
    pub host: HostName,
    /// What it said, or why not.
    pub result: Result<T, Failure>,
}
