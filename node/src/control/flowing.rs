//! The stages under way on this head, so that a deployment planned while another
//! stages the same images attaches where their chunks already flow.
//!
//! While deployment A stages, every host staging an image for A will hold all of it,
//! and a host that sends A's streams has that much less upload to give. A deployment B
//! planned meanwhile ([`attach`]) counts each of A's stagers as a holder of the images
//! it stages for A (the same manifests only: B's VO was sealed those), with the share
//! of its upload A's plan leaves it (one share in `k + 1` for a host sending `k` of A's
//! streams); it counts A's VMs and addresses as taken on their hosts. B's planner then takes the flowing stage, typically A's tail
//! (its upload idle), as B's source instead of opening a second stream from the head;
//! that host's relay serves B's requests as A's chunks arrive. A host B only pulls
//! from gets an order that grants B's stagers and stages nothing, and B's receivers
//! fall back on the head if it fails.

use std::collections::BTreeMap;
use std::sync::Mutex;

use vw_chunkstore::ManifestId;
use vw_planner::address::NicAddress;
use vw_planner::{Cluster, Committed, Image, PlanError};

use super::view::ClusterView;
use crate::names::HostName;

/// One host's part in a stage under way.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowHost {
    /// The host.
    pub host: HostName,
    /// The manifests it is staging: it will hold all of each.
    pub manifests: Vec<ManifestId>,
    /// How many hosts the stage's plan has it send to.
    pub sends: usize,
    /// The stage's VMs placed on it (`host` unused: set when attached).
    pub vms: Vec<Committed>,
}

/// One stage under way: its hosts and the addresses it assigned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flow {
    /// The deployment staging.
    pub deployment: String,
    /// Each host that stages, sends or runs a VM in it.
    pub hosts: Vec<FlowHost>,
    /// The addresses its VMs were given.
    pub nics: Vec<NicAddress>,
}

/// The stages under way on this head, by stage.
#[derive(Debug, Default)]
pub struct Flowing {
    flows: Mutex<BTreeMap<String, Flow>>,
}

/// A stage under way, forgotten when dropped (its stage ended, or the deploy failed).
#[must_use = "the flow is forgotten when this is dropped"]
#[derive(Debug)]
pub struct FlowGuard<'a> {
    flowing: &'a Flowing,
    stage: String,
}

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.flowing.lock().remove(&self.stage);
    }
}

impl Flowing {
    /// `stage` has begun, as `flow` says.
    pub fn begin(&self, stage: &str, flow: Flow) -> FlowGuard<'_> {
        self.lock().insert(stage.to_owned(), flow);
        FlowGuard { flowing: self, stage: stage.to_owned() }
    }

    /// Every stage under way now but those of `deployment` (a second attempt at a
    /// deployment keeps its own placement).
    pub fn now(&self, deployment: &str) -> Vec<Flow> {
        self.lock().values().filter(|f| f.deployment != deployment).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Flow>> {
        self.flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The flow of a stage of `deployment` over `hosts`: per host, the manifests (of
/// `manifests`) whose `stagers` it is among, how many hosts `plan` has it send to, and
/// the VMs of `placed` there; with the addresses `nics` given.
pub fn flow_of(
    deployment: &str,
    hosts: &[(HostName, libp2p::PeerId)],
    manifests: &[ManifestId],
    stagers: &[Vec<libp2p::PeerId>],
    plan: &vw_planner::DistributionPlan,
    placed: &[Committed],
    nics: &[NicAddress],
) -> Flow {
    let hosts = hosts
        .iter()
        .enumerate()
        .filter_map(|(h, (name, peer))| {
            let ix = vw_planner::HostIx(h as u32);
            let manifests: Vec<ManifestId> = manifests
                .iter()
                .zip(stagers)
                .filter(|(_, s)| s.contains(peer))
                .map(|(m, _)| *m)
                .collect();
            let mut to: Vec<_> =
                plan.streams.iter().filter(|s| s.from == ix).map(|s| s.to).collect();
            to.sort();
            to.dedup();
            let vms: Vec<Committed> = placed.iter().filter(|c| c.host == ix).cloned().collect();
            (!manifests.is_empty() || !to.is_empty() || !vms.is_empty()).then(|| FlowHost {
                host: name.clone(),
                manifests,
                sends: to.len(),
                vms,
            })
        })
        .collect();
    Flow { deployment: deployment.to_owned(), hosts, nics: nics.to_vec() }
}

/// Plans around the stages `flows` under way: in `view` (of the hosts `names`, staging
/// images `images` with manifests `manifests`, in planner order), each live host of a
/// flow holds the images whose manifests it stages there, uploads at the share the
/// flow leaves it, and has the flow's VMs and addresses taken. Pure.
pub fn attach(
    view: &mut ClusterView,
    names: &[String],
    images: &[Image],
    manifests: &[ManifestId],
    flows: &[Flow],
) -> Result<(), PlanError> {
    if flows.is_empty() {
        return Ok(());
    }
    let mut hosts = view.cluster.hosts().to_vec();
    for flow in flows {
        for f in &flow.hosts {
            let Some(ix) = names.iter().position(|n| n.as_str() == f.host.as_str()) else {
                continue;
            };
            let host = &mut hosts[ix];
            if !host.alive {
                continue;
            }
            let hix = vw_planner::HostIx(ix as u32);
            for (i, (image, id)) in images.iter().zip(manifests).enumerate() {
                if f.manifests.contains(id) {
                    view.inventory.add(hix, i, &image.all());
                }
            }
            host.up /= (f.sends + 1) as f64;
            view.committed.extend(f.vms.iter().map(|vm| Committed { host: hix, ..vm.clone() }));
        }
        view.nics.extend(flow.nics.iter().copied());
    }
    view.cluster = Cluster::new(hosts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use vw_planner::{HostIx, Inventory, Ranges, Strategy};

    use super::*;

    /// `n` hosts at 100 MB/s, nothing held.
    fn view(n: usize) -> ClusterView {
        ClusterView {
            cluster: crate::control::orders::tests::cluster(n),
            inventory: Inventory::empty(n, 1),
            committed: Vec::new(),
            nics: Vec::new(),
            dead: Vec::new(),
            drivers: Vec::new(),
            links_known: vec![true; n],
            caps: vec![None; n],
        }
    }

    fn manifest(seed: u8) -> ManifestId {
        ManifestId::from_bytes([seed; 32])
    }

    /// A is staging the image down the chain h0 → h1 → h2 → h3; B, planned meanwhile
    /// for h4 and h5, takes A's tail h3 as its source: it will hold the image and its
    /// upload is idle, where the head's and h1's and h2's carry A's chain.
    #[test]
    fn a_second_deployment_takes_the_flowing_stages_tail_as_its_source() {
        let names: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
        let image = Image::new("vo/worker:1", vec![1 << 16; 64]);
        let mut v = view(6);
        v.inventory.add(HostIx(0), 0, &image.all());
        let vm = Committed { host: HostIx(0), memory_mib: 512, vcpus: 1, cores: vec![] };
        let flow = |h: usize, sends: usize| FlowHost {
            host: format!("h{h}").into(),
            manifests: if h == 0 { vec![] } else { vec![manifest(7)] },
            sends,
            vms: vec![vm.clone()],
        };
        let flows = [Flow {
            deployment: "a".into(),
            hosts: vec![flow(0, 1), flow(1, 1), flow(2, 1), flow(3, 0)],
            nics: Vec::new(),
        }];
        attach(&mut v, &names, std::slice::from_ref(&image), &[manifest(7)], &flows)
            .expect("attach");
        for h in 1..=3 {
            assert_eq!(v.inventory.held(HostIx(h), 0), &image.all(), "h{h} will hold it");
        }
        assert_eq!(v.inventory.held(HostIx(4), 0), &Ranges::empty());
        let ups: Vec<f64> = v.cluster.hosts().iter().map(|h| h.up).collect();
        assert_eq!(ups, [5e7, 5e7, 5e7, 1e8, 1e8, 1e8], "a share beside A's streams");
        assert_eq!(v.committed.len(), 4, "A's VMs are taken");
        assert_eq!(v.committed[3].host, HostIx(3));

        let needs = [4, 5].map(|h| vw_planner::Need { host: HostIx(h), image: 0 });
        let plan = vw_planner::plan(
            &v.cluster,
            std::slice::from_ref(&image),
            &v.inventory,
            &needs,
            Strategy::Chain,
        )
        .expect("plan");
        assert_eq!(plan.sources.get(&0), Some(&HostIx(3)), "{plan:?}");
        assert!(plan.streams.iter().all(|s| s.from != HostIx(0)), "nothing from the head");
    }

    /// A stage of another image changes no holdings, only the uploads it uses.
    #[test]
    fn another_images_flow_only_shares_upload() {
        let names: Vec<String> = (0..2).map(|i| format!("h{i}")).collect();
        let image = Image::new("vo/worker:1", vec![1 << 16; 4]);
        let mut v = view(2);
        let flows = [Flow {
            deployment: "a".into(),
            hosts: vec![FlowHost {
                host: "h1".into(),
                manifests: vec![manifest(8)],
                sends: 3,
                vms: vec![],
            }],
            nics: Vec::new(),
        }];
        attach(&mut v, &names, std::slice::from_ref(&image), &[manifest(7)], &flows)
            .expect("attach");
        assert_eq!(v.inventory.held(HostIx(1), 0), &Ranges::empty());
        assert_eq!(v.cluster.host(HostIx(1)).up, 2.5e7);
    }

    #[test]
    fn a_flow_is_forgotten_when_its_stage_ends() {
        let flowing = Flowing::default();
        let guard = flowing.begin("a@1", Flow { deployment: "a".into(), ..Flow::default() });
        assert_eq!(flowing.now("b").len(), 1);
        assert!(flowing.now("a").is_empty(), "a deployment does not plan around itself");
        drop(guard);
        assert!(flowing.now("b").is_empty());
    }
}
