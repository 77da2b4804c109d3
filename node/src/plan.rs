//! `vw plan`: the planner fed from a workspace, a hosts file and this host's store.
//!
//! Each image of the workspace becomes a planner [`Image`]: its distinct non-zero
//! chunks in first-appearance order (zero chunks are never sent, a repeated chunk is
//! sent once). A host holds, of each image, the chunks that appear in the images the
//! hosts file says it holds, so a host with the base OS cached lacks only what the
//! worker image adds. Then placement, addresses, the distribution plan and its
//! simulation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use vw_chunkstore::{ChunkId, ImageRef, Manifest, ManifestId, Store};
use vw_planner::address::NicAddress;
use vw_planner::{
    place, plan, simulate, Cluster, Committed, DistributionPlan, HostIx, Image, Inventory, Need,
    PlanError, Policy, Ranges, Simulation, Strategy, VmDemand,
};

use crate::config::{ClusterConfig, Pools};
use crate::hosts::HostsFile;
use crate::names::VmName;
pub use crate::report::PlacedVm;
use crate::workspace::WorkspaceSpec;

/// Why `vw plan` could not plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    /// The store failed, or lacks an image the workspace or hosts file names.
    #[error("image {image}: {error}; planning reads manifests from this host's store (the head's, for `vw deploy`): import it there")]
    Image {
        /// The image.
        image: ImageRef,
        /// The store's answer.
        error: Box<vw_chunkstore::Error>,
    },
    /// The planner refused.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Address assignment failed.
    #[error("addresses: {0}")]
    Addresses(vw_planner::address::AddressError),
    /// A placement made before names a host that is not in the cluster now.
    #[error("host {0} holds VMs of this deployment but is not in the cluster now")]
    UnknownHost(String),
}

/// One image's share of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct ImagePlan {
    /// The image.
    pub image: String,
    /// Its distinct non-zero bytes.
    pub bytes: u64,
    /// The host it comes from.
    pub source: Option<String>,
    /// Hosts that lack some of it.
    pub receivers: usize,
    /// Bytes they lack in all.
    pub lacking: u64,
}

/// What `vw plan` reports for one workspace.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    /// The workspace.
    pub workspace: String,
    /// Placement, with reasons and addresses.
    pub placement: Vec<PlacedVm>,
    /// The strategy used (auto resolved).
    pub strategy: Strategy,
    /// Per image.
    pub images: Vec<ImagePlan>,
    /// Streams in the plan.
    pub streams: usize,
    /// The most any host sends, and which.
    pub busiest_sender: Option<(String, u64)>,
    /// The prediction.
    pub simulation: Simulation,
    /// The plan itself (for `--json`).
    pub plan: DistributionPlan,
    /// How long each part of planning took.
    pub micros: PlanTimes,
}

impl PlanReport {
    /// The VMs placed on `host`.
    pub fn vms_on(&self, host: &str) -> Vec<VmName> {
        self.placement.iter().filter(|p| p.host == host).map(|p| p.vm.clone()).collect()
    }
}

/// Microseconds spent in each part of planning.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PlanTimes {
    /// Placing the VMs.
    pub place: u64,
    /// Assigning addresses.
    pub addresses: u64,
    /// Planning the distribution and simulating it.
    pub plan: u64,
}

/// What workspaces planned earlier take: capacity, pinned cores, addresses. Several
/// virtual clusters (of different VOs) share one physical cluster this way.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Taken {
    /// Their VMs' capacity and cores.
    pub vms: Vec<Committed>,
    /// Their addresses and MACs.
    pub nics: Vec<NicAddress>,
}

/// A workspace's images as the planner sees them: each image's distinct non-zero
/// chunks in first-appearance order (zero chunks are never sent, a repeated chunk is
/// sent once).
#[derive(Clone, Debug)]
pub struct WorkspaceImages {
    /// The references, in order of first use.
    pub refs: Vec<ImageRef>,
    /// Their manifests, read once.
    pub manifests: Vec<Arc<Manifest>>,
    /// The planner's view.
    pub images: Vec<Image>,
    /// Per image, its distinct non-zero chunk ids (planner index order).
    pub chunks: Vec<Vec<ChunkId>>,
}

impl WorkspaceImages {
    /// Each image's manifest id, in order.
    pub fn ids(&self) -> Vec<ManifestId> {
        self.manifests.iter().map(|m| m.id()).collect()
    }

    /// Reads the manifests of `spec`'s images from `store`.
    pub fn load(store: &Store, spec: &WorkspaceSpec) -> Result<Self, PlanningError> {
        let mut refs: Vec<ImageRef> = Vec::new();
        for vm in spec.vms() {
            for p in &vm.node.partitions {
                if !refs.contains(&p.image) {
                    refs.push(p.image.clone());
                }
            }
        }
        let mut out = WorkspaceImages {
            refs: Vec::new(),
            manifests: Vec::new(),
            images: Vec::new(),
            chunks: Vec::new(),
        };
        for r in refs {
            let manifest = manifest_of(store, &r)?;
            let distinct = manifest.distinct();
            out.images.push(Image::new(r.to_string(), distinct.iter().map(|c| c.len).collect()));
            out.chunks.push(distinct.iter().map(|c| c.id).collect());
            out.manifests.push(Arc::new(manifest));
            out.refs.push(r);
        }
        Ok(out)
    }

    /// Chunk id → index, per image.
    pub fn index(&self) -> Vec<HashMap<ChunkId, u32>> {
        self.chunks
            .iter()
            .map(|ids| ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect())
            .collect()
    }

    /// What each VM of `spec` asks of a host.
    pub fn demands(&self, spec: &WorkspaceSpec) -> Vec<VmDemand> {
        spec.vms()
            .iter()
            .map(|vm| VmDemand {
                name: spec.vm_name(vm),
                memory_mib: vm.node.memory_mib,
                vcpus: vm.node.vcpus,
                pinned: vm.node.cpus.is_some(),
                images: vm
                    .node
                    .partitions
                    .iter()
                    .map(|p| self.refs.iter().position(|r| *r == p.image).expect("collected"))
                    .collect(),
            })
            .collect()
    }
}

/// `image`'s manifest.
fn manifest_of(store: &Store, image: &ImageRef) -> Result<Manifest, PlanningError> {
    let wrap = |error| PlanningError::Image { image: image.clone(), error: Box::new(error) };
    let id = store.resolve(image).map_err(wrap)?;
    store.manifest(&id).map_err(wrap)
}

/// Plans `spec` on the hosts of `hosts`, with images and chunk lists from `store`,
/// after what `taken` holds; adds what this workspace takes to `taken`.
pub fn plan_workspace(
    store: &Store,
    spec: &WorkspaceSpec,
    hosts: &HostsFile,
    config: &ClusterConfig,
    policy: Policy,
    strategy: Strategy,
    taken: &mut Taken,
) -> Result<PlanReport, PlanningError> {
    let wi = WorkspaceImages::load(store, spec)?;
    let index_of = wi.index();
    // Holdings: per distinct list of held images, the chunk ids they contain.
    let cluster = &hosts.cluster;
    let mut inventory = Inventory::empty(cluster.len(), wi.images.len());
    let mut cache: BTreeMap<Vec<String>, Vec<Ranges>> = BTreeMap::new();
    for (h, held) in hosts.images.iter().enumerate() {
        let key: Vec<String> = held.iter().map(ToString::to_string).collect();
        if !cache.contains_key(&key) {
            let mut have: HashSet<ChunkId> = HashSet::new();
            for image in held {
                have.extend(manifest_of(store, image)?.chunks().iter().map(|c| c.id));
            }
            let ranges = index_of
                .iter()
                .map(|ix| {
                    Ranges::from_indices(
                        ix.iter().filter(|(id, _)| have.contains(id)).map(|(_, &i)| i),
                    )
                })
                .collect();
            cache.insert(key.clone(), ranges);
        }
        for (i, r) in cache[&key].iter().enumerate() {
            inventory.add(HostIx(h as u32), i, r);
        }
    }
    let on = Planning { cluster, images: &wi, inventory: &inventory, spec, pools: &config.pools() };
    plan_with(&on, (policy, strategy), taken, None)
}

/// What a workspace is planned on: the cluster, what its hosts hold of the workspace's
/// images, and the address pools.
#[derive(Clone, Copy, Debug)]
pub struct Planning<'a> {
    /// The hosts, and which are alive.
    pub cluster: &'a Cluster,
    /// The workspace's images.
    pub images: &'a WorkspaceImages,
    /// What each host holds of them.
    pub inventory: &'a Inventory,
    /// The workspace.
    pub spec: &'a WorkspaceSpec,
    /// The address pools.
    pub pools: &'a Pools,
}

/// Places the workspace of `on` (or keeps `fixed`, a placement made before), assigns its
/// addresses, plans the distribution and predicts its time.
pub fn plan_with(
    on: &Planning<'_>,
    (policy, strategy): (Policy, Strategy),
    taken: &mut Taken,
    fixed: Option<Vec<PlacedVm>>,
) -> Result<PlanReport, PlanningError> {
    let Planning { cluster, images: wi, inventory, spec, pools } = *on;
    let images = &wi.images;
    let demands = wi.demands(spec);
    let mut micros = PlanTimes::default();
    let clock = std::time::Instant::now();
    let (hosts_of, placement) = match fixed {
        Some(placement) => {
            let hosts = placement
                .iter()
                .map(|p| {
                    cluster
                        .find(p.host.as_str())
                        .ok_or_else(|| PlanningError::UnknownHost(p.host.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (hosts, placement)
        }
        None => {
            let placed = place(cluster, images, inventory, &demands, &taken.vms, policy)?;
            micros.place = clock.elapsed().as_micros() as u64;
            let nics = crate::manager::preview_addresses(spec, pools, &taken.nics)
                .map_err(PlanningError::Addresses)?;
            micros.addresses = clock.elapsed().as_micros() as u64 - micros.place;
            let hosts = placed.iter().map(|p| p.host).collect();
            let placement = placed
                .into_iter()
                .zip(nics)
                .map(|(p, nics)| PlacedVm {
                    vm: p.vm.into(),
                    host: cluster.host(p.host).name.as_str().into(),
                    cores: p.cores,
                    reason: p.reason,
                    nics,
                })
                .collect();
            (hosts, placement)
        }
    };
    for ((&host, p), d) in hosts_of.iter().zip(&placement).zip(&demands) {
        let cores = p.cores.clone().unwrap_or_default();
        taken.vms.push(Committed { host, memory_mib: d.memory_mib, vcpus: d.vcpus, cores });
        taken.nics.extend(p.nics.iter().copied());
    }

    let planning = std::time::Instant::now();
    let mut needs: Vec<Need> = hosts_of
        .iter()
        .zip(&demands)
        .flat_map(|(&host, d)| d.images.iter().map(move |&image| Need { host, image }))
        .collect();
    needs.sort();
    needs.dedup();
    // Any live holder may send: a host with no VM of the deployment gets an order that
    // only grants what it sends (decision 79).
    let distribution = plan(cluster, images, inventory, &needs, strategy)?;
    let simulation = simulate(cluster, images, inventory, &distribution)?;
    micros.plan = planning.elapsed().as_micros() as u64;

    let (sent, _) = distribution.traffic(images, cluster.len());
    // The first of the busiest, in cluster order.
    let busiest_sender = sent
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, u64)>, (h, &b)| match best {
            Some((_, bb)) if bb >= b => best,
            _ if b > 0 => Some((h, b)),
            _ => best,
        })
        .map(|(h, b)| (cluster.hosts()[h].name.clone(), b));
    let image_plans = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let lacking: Vec<u64> = needs
                .iter()
                .filter(|n| n.image == i)
                .map(|n| img.bytes_of(&img.all().minus(inventory.held(n.host, i))))
                .filter(|b| *b > 0)
                .collect();
            ImagePlan {
                image: img.name.clone(),
                bytes: img.bytes(),
                source: distribution.sources.get(&i).map(|h| cluster.host(*h).name.clone()),
                receivers: lacking.len(),
                lacking: lacking.iter().sum(),
            }
        })
        .collect();
    Ok(PlanReport {
        workspace: spec.name.clone(),
        placement,
        strategy: distribution.strategy,
        images: image_plans,
        streams: distribution.streams.len(),
        busiest_sender,
        simulation,
        plan: distribution,
        micros,
    })
}

/// What the plan expects of each of its streams, in plan order, in bytes per second:
/// the stream's bytes over the time the simulation gives its receiver to have
/// everything (a lower bound of the stream's own average rate). 0 where the plan
/// cannot say: a host at either end planned at an assumed link rate (`known`, per
/// host, is false), or a receiver done at once. A receiver holds each planned sender to
/// a fraction of it (`chunks::Floor`).
pub fn expected_rates(
    images: &[Image],
    plan: &DistributionPlan,
    simulation: &Simulation,
    known: &[bool],
) -> Vec<u64> {
    let known = |h: HostIx| known.get(h.ix()).copied().unwrap_or(false);
    plan.streams
        .iter()
        .map(|s| {
            let finish = simulation.host_finish.get(s.to.ix()).copied().unwrap_or(0.0);
            if !(known(s.from) && known(s.to)) || finish <= 0.0 {
                return 0;
            }
            (images[s.image].bytes_of(&s.ranges) as f64 / finish) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vw_planner::{Host, Strategy};

    use super::*;

    fn cluster(n: usize, rate: f64) -> Cluster {
        let host = |i: usize| Host {
            name: format!("h{i}"),
            memory_mib: 1024,
            vcpus: 1,
            cpus: 1,
            up: rate,
            down: rate,
            rack: None,
            alive: true,
        };
        Cluster::new((0..n).map(host).collect()).expect("cluster")
    }

    /// A chain of three hosts at 1 MB/s: each stream is expected at about the link's
    /// rate; a host whose rate was assumed makes the streams it is on unknown.
    #[test]
    fn a_stream_is_expected_at_its_bytes_over_its_receivers_finish() {
        let cluster = cluster(3, 1e6);
        let image = Image::new("vo/img:1", vec![1 << 16; 64]);
        let images = [image];
        let mut inventory = Inventory::empty(3, 1);
        inventory.add(HostIx(0), 0, &images[0].all());
        let needs: Vec<Need> = (1..3).map(|h| Need { host: HostIx(h), image: 0 }).collect();
        let plan = plan(&cluster, &images, &inventory, &needs, Strategy::Chain).expect("plan");
        let sim = simulate(&cluster, &images, &inventory, &plan).expect("simulate");
        let rates = expected_rates(&images, &plan, &sim, &[true; 3]);
        assert_eq!(rates.len(), plan.streams.len());
        for (s, rate) in plan.streams.iter().zip(&rates) {
            let bytes = images[0].bytes_of(&s.ranges) as f64;
            assert_eq!(*rate, (bytes / sim.host_finish[s.to.ix()]) as u64);
            assert!((0.8e6..=1e6).contains(&(*rate as f64)), "about the link: {rate}");
        }
        let unknown = expected_rates(&images, &plan, &sim, &[true, false, true]);
        for (s, rate) in plan.streams.iter().zip(&unknown) {
            let touches = s.from == HostIx(1) || s.to == HostIx(1);
            assert_eq!(*rate == 0, touches, "{s:?}");
        }
    }
}
