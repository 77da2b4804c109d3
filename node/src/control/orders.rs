//! The one pure step of a deploy: from the workspace, its images and the hosts'
//! inventories (as [`view`](super::view) made them) to every host's stage order.
//!
//! [`prepare`] places the VMs (or keeps the placement of an earlier deploy of the same
//! document), assigns their addresses, plans the distribution, works out which peers
//! stage each image (the only ones its chunks are granted to), and writes each host's
//! [`StageOrder`]: its VMs and the rest of the virtual cluster, and per image its
//! planned pulls with the rate the plan expects of each and the hosts to fall back on.
//! No I/O and no clock (beyond the planner timing its own parts): the head runs it
//! between collecting the inventories and sending the orders, and the tests here run
//! it on made-up clusters.

use std::collections::BTreeSet;

use libp2p::PeerId;
use vw_planner::{DistributionPlan, HostIx, Policy, Strategy, VmDemand};

use super::protocol::{ImageOrder, Pull, StageOrder};
use crate::integrate::MungeKey;
use crate::names::HostName;
use crate::plan::{expected_rates, plan_with, PlanReport, Planning, PlanningError, Taken};
use crate::report::{ClusterShare, Member, PlacedVm};

/// What the head made of the submission before planning, and sends with every order:
/// the attempt's id, the document and the VO's ticket for it (as encoded), per image
/// (in `WorkspaceImages` order) its seal (encoded), and the cluster's MUNGE key when it
/// runs Slurm.
#[derive(Clone, Copy, Debug)]
pub struct Sealed<'a> {
    /// This deploy attempt (`access::new_stage`): grants and chunk requests are keyed
    /// by it.
    pub stage: &'a str,
    /// The workspace document.
    pub workspace: &'a str,
    /// The VO's ticket, encoded.
    pub ticket: &'a [u8],
    /// Per image, the seal that lets the VO deploy it, encoded.
    pub seals: &'a [Vec<u8>],
    /// The cluster's MUNGE key, when it runs Slurm.
    pub munge_key: Option<&'a MungeKey>,
    /// Stage lazily: each host with VMs boots them on lazy disks while it fetches.
    pub lazy: bool,
    /// Per image, its boot trace (encoded), if the head keeps one.
    pub traces: &'a [Option<Vec<u8>>],
}

/// Everything [`prepare`] works from.
#[derive(Clone, Copy, Debug)]
pub struct Deploying<'a> {
    /// The cluster, the images, what each host holds of them, the workspace, the pools.
    pub on: Planning<'a>,
    /// Every host asked (name, peer id), in the cluster's order.
    pub hosts: &'a [(HostName, PeerId)],
    /// Per host, whether its link rate was configured or measured (else the rates the
    /// plan expects of its streams mean nothing and are sent as 0).
    pub links_known: &'a [bool],
    /// Per host, the deployment's cap on its link (bytes per second each way), if any.
    pub caps: &'a [Option<u64>],
    /// The head's own host (its index in `hosts`), if it is one of them: it holds every
    /// image and grants them to all their stagers, so it is every receiver's last
    /// fallback.
    pub head: Option<usize>,
    /// What goes with every order.
    pub sealed: Sealed<'a>,
}

/// The outcome of planning a deploy: the plan, and every host's order.
#[derive(Clone, Debug)]
pub struct Orders {
    /// Placement, addresses, the distribution plan and its prediction.
    pub planned: PlanReport,
    /// Per image (in `WorkspaceImages` order), the peers of the hosts with a VM that
    /// uses it: its chunks are granted to them alone.
    pub stagers: Vec<Vec<PeerId>>,
    /// The distinct (sender, receiver) host pairs of the plan, sorted.
    pub edges: Vec<(HostName, HostName)>,
    /// Per host with VMs (its index in `hosts`), its stage order.
    pub orders: Vec<(usize, StageOrder)>,
}

/// Plans the workspace of `d` with `policy` and `strategy` after what `taken` holds
/// (keeping `fixed`, the placement of an earlier deploy of the same document, when
/// given), and writes every host's order.
pub fn prepare(
    d: &Deploying<'_>,
    (policy, strategy): (Policy, Strategy),
    taken: &mut Taken,
    fixed: Option<Vec<PlacedVm>>,
) -> Result<Orders, PlanningError> {
    let planned = plan_with(&d.on, (policy, strategy), taken, fixed)?;
    let demands = d.on.images.demands(d.on.spec);
    let stagers = stagers(d, &demands, &planned.placement);
    let mut edges: Vec<(HostName, HostName)> = planned
        .plan
        .streams
        .iter()
        .map(|s| (d.hosts[s.from.ix()].0.clone(), d.hosts[s.to.ix()].0.clone()))
        .collect();
    edges.sort();
    edges.dedup();
    let rates =
        expected_rates(&d.on.images.images, &planned.plan, &planned.simulation, d.links_known);
    let orders = d
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(h, _)| order(d, &planned, &demands, &stagers, &rates, h).map(|o| (h, o)))
        .collect();
    Ok(Orders { planned, stagers, edges, orders })
}

/// Per image, the peers of the hosts with a VM that uses it (`demands`: each VM's).
fn stagers(d: &Deploying<'_>, demands: &[VmDemand], placement: &[PlacedVm]) -> Vec<Vec<PeerId>> {
    let mut out: Vec<Vec<PeerId>> = vec![Vec::new(); d.on.images.manifests.len()];
    for demand in demands {
        let Some(p) = placement.iter().find(|p| p.vm == demand.name) else { continue };
        let Some((_, id)) = d.hosts.iter().find(|(h, _)| *h == p.host) else { continue };
        for &i in &demand.images {
            if !out[i].contains(id) {
                out[i].push(*id);
            }
        }
    }
    out
}

/// Host `h`'s order, if VMs were placed on it or the plan has it send (a holder with no
/// VM of the deployment, such as a host still receiving the image for another
/// deployment: its order grants, stages nothing); `demands`: what each VM uses;
/// `rates`: what the plan expects of each of its streams.
fn order(
    d: &Deploying<'_>,
    planned: &PlanReport,
    demands: &[VmDemand],
    stagers: &[Vec<PeerId>],
    rates: &[u64],
    h: usize,
) -> Option<StageOrder> {
    let wi = d.on.images;
    let name = &d.hosts[h].0;
    let here: Vec<&PlacedVm> = planned.placement.iter().filter(|p| p.host == *name).collect();
    let ix = HostIx(h as u32);
    let plan = &planned.plan;
    if here.is_empty() && !plan.streams.iter().any(|s| s.from == ix) {
        return None;
    }
    let used: BTreeSet<usize> = here
        .iter()
        .flat_map(|p| demands.iter().filter(|d| d.name == p.vm).flat_map(|d| d.images.clone()))
        .collect();
    let image_order = |i: usize, pulls: Vec<Pull>, fallback: Vec<PeerId>| ImageOrder {
        image: wi.refs[i].to_string(),
        manifest: wi.manifests[i].id(),
        seal: d.sealed.seals[i].clone(),
        stagers: stagers[i].iter().map(PeerId::to_string).collect(),
        pulls,
        fallback: fallback.iter().map(PeerId::to_string).collect(),
        trace: d.sealed.traces.get(i).cloned().flatten(),
    };
    let images = used
        .iter()
        .map(|&i| {
            let pulls = plan
                .streams
                .iter()
                .zip(rates)
                .filter(|(s, _)| s.to == ix && s.image == i)
                .map(|(s, &rate)| Pull {
                    from: d.hosts[s.from.ix()].1.to_string(),
                    ranges: s.ranges.ranges().to_vec(),
                    rate,
                })
                .collect();
            let fallback = fallback(d, plan, &stagers[i], ix, i);
            image_order(i, pulls, fallback.iter().map(|f| d.hosts[f.ix()].1).collect())
        })
        .collect();
    // Images it sends in the plan but does not stage: it grants them too.
    let serves = (0..wi.images.len())
        .filter(|i| !used.contains(i))
        .filter(|&i| plan.streams.iter().any(|s| s.from == ix && s.image == i))
        .map(|i| image_order(i, vec![], vec![]))
        .collect();
    let member =
        |p: &PlacedVm| Member { name: p.vm.clone(), nics: p.nics.clone(), cores: p.cores.clone() };
    let share = ClusterShare {
        here: here.iter().map(|p| member(p)).collect(),
        elsewhere: planned.placement.iter().filter(|p| p.host != *name).map(member).collect(),
    };
    Some(StageOrder {
        stage: d.sealed.stage.to_owned(),
        workspace: d.sealed.workspace.to_owned(),
        ticket: d.sealed.ticket.to_vec(),
        share,
        images,
        serves,
        munge_key: d.sealed.munge_key.cloned(),
        cap: d.caps[h],
        lazy: d.sealed.lazy && !here.is_empty(),
    })
}

/// Where host `ix` pulls what a planned stream of image `i` did not bring, in order:
/// its senders' own senders up to the source, the source, then any other live host of
/// the deployment (one of `stagers`: no other host was granted the chunks) that holds
/// the whole image, and the head last (the source may be a host that only promised
/// the image, still receiving it for another deployment).
fn fallback(
    d: &Deploying<'_>,
    plan: &DistributionPlan,
    stagers: &[PeerId],
    ix: HostIx,
    i: usize,
) -> Vec<HostIx> {
    let Planning { cluster, images: wi, inventory, .. } = d.on;
    let mut fallback: Vec<HostIx> = Vec::new();
    let mut frontier: Vec<HostIx> =
        plan.streams.iter().filter(|s| s.to == ix && s.image == i).map(|s| s.from).collect();
    while let Some(f) = frontier.pop() {
        for s in plan.streams.iter().filter(|s| s.to == f && s.image == i) {
            if s.from != ix && !fallback.contains(&s.from) {
                fallback.push(s.from);
                frontier.push(s.from);
            }
        }
    }
    if let Some(&src) = plan.sources.get(&i) {
        if src != ix && !fallback.contains(&src) {
            fallback.push(src);
        }
    }
    let whole = wi.images[i].all();
    for other in cluster.ixs() {
        if other != ix
            && stagers.contains(&d.hosts[other.ix()].1)
            && cluster.host(other).alive
            && !fallback.contains(&other)
            && whole.minus(inventory.held(other, i)).is_empty()
        {
            fallback.push(other);
        }
    }
    if let Some(head) = d.head.map(|h| HostIx(h as u32)) {
        if head != ix && cluster.host(head).alive && !fallback.contains(&head) {
            fallback.push(head);
        }
    }
    fallback
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use vw_chunkstore::chunker::ChunkerParams;
    use vw_chunkstore::{ChunkId, ChunkRef, ImageRef, Manifest};
    use vw_planner::{Cluster, Host, Image, Inventory};

    use super::*;
    use crate::config::ClusterConfig;
    use crate::plan::WorkspaceImages;

    const CHUNK: u32 = 1 << 16;

    /// `n` hosts h0..h(n-1) at 100 MB/s, 4 GiB and 4 CPUs each.
    pub(crate) fn cluster(n: usize) -> Cluster {
        let host = |i: usize| Host {
            name: format!("h{i}"),
            memory_mib: 4096,
            vcpus: 4,
            cpus: 4,
            up: 1e8,
            down: 1e8,
            rack: None,
            alive: true,
        };
        Cluster::new((0..n).map(host).collect()).expect("cluster")
    }

    /// An image named `name` of `chunks` distinct chunks (ids from `seed`).
    fn image(name: &str, seed: u8, chunks: u32) -> (ImageRef, Manifest) {
        let refs: Vec<ChunkRef> = (0..chunks)
            .map(|c| {
                let mut id = [seed; 32];
                id[..4].copy_from_slice(&c.to_le_bytes());
                ChunkRef { id: ChunkId::from_bytes(id), len: CHUNK }
            })
            .collect();
        let len = u64::from(CHUNK) * u64::from(chunks);
        let params = ChunkerParams::default();
        let manifest =
            Manifest::new(params, len, blake3::hash(name.as_bytes()), refs).expect("manifest");
        (name.parse().expect("ref"), manifest)
    }

    fn images(list: Vec<(ImageRef, Manifest)>) -> WorkspaceImages {
        let mut wi = WorkspaceImages {
            refs: Vec::new(),
            manifests: Vec::new(),
            images: Vec::new(),
            chunks: Vec::new(),
        };
        for (r, m) in list {
            let distinct = m.distinct();
            wi.images.push(Image::new(r.to_string(), distinct.iter().map(|c| c.len).collect()));
            wi.chunks.push(distinct.iter().map(|c| c.id).collect());
            wi.manifests.push(Arc::new(m));
            wi.refs.push(r);
        }
        wi
    }

    /// A head of image `vo/head:1` and `workers` workers of `vo/worker:1`.
    fn workspace(workers: u32) -> crate::workspace::WorkspaceSpec {
        let node = |kind: &str, name: &str, image: &str, count: &str| {
            format!(
                "<{kind} name=\"{name}\"{count}><memory>512</memory><vcpus>1</vcpus>\
                 <kernel type=\"pv\" path=\"vmlinuz\"/>\
                 <partition image=\"{image}\" device=\"xvda1\" role=\"root\"/>\
                 <nic network=\"private\"/></{kind}>"
            )
        };
        let xml = format!(
            "<virtualWorkspace type=\"cluster\" name=\"c\" nodeNumber=\"{}\">{}{}</virtualWorkspace>",
            workers + 1,
            node("headnode", "head", "vo/head:1", ""),
            node("workernode", "worker", "vo/worker:1", &format!(" count=\"{workers}\"")),
        );
        crate::workspace::parse(&xml, "test.xml").expect("workspace")
    }

    fn peers(n: usize) -> Vec<(HostName, PeerId)> {
        (0..n).map(|i| (format!("h{i}").into(), PeerId::random())).collect()
    }

    static SEALS: [Vec<u8>; 2] = [Vec::new(), Vec::new()];

    fn sealed() -> Sealed<'static> {
        Sealed {
            stage: "c@1",
            workspace: "<doc/>",
            ticket: b"ticket",
            seals: &SEALS,
            munge_key: None,
            lazy: false,
            traces: &[],
        }
    }

    /// Plans `spec` on `n` hosts where `held` hosts hold which images whole, with every
    /// VM on the host `fixed` says, or placed by the planner.
    fn prepared(
        n: usize,
        spec: &crate::workspace::WorkspaceSpec,
        held: &[(usize, usize)],
        fixed: Option<Vec<(&str, &str)>>,
    ) -> (Vec<(HostName, PeerId)>, Orders) {
        let cluster = cluster(n);
        let wi = images(vec![image("vo/head:1", 1, 8), image("vo/worker:1", 2, 16)]);
        let mut inventory = Inventory::empty(n, 2);
        for &(h, i) in held {
            inventory.add(HostIx(h as u32), i, &wi.images[i].all());
        }
        let pools = ClusterConfig::embedded().pools();
        let hosts = peers(n);
        let d = Deploying {
            on: Planning {
                cluster: &cluster,
                images: &wi,
                inventory: &inventory,
                spec,
                pools: &pools,
            },
            hosts: &hosts,
            links_known: &vec![true; n],
            caps: &vec![None; n],
            head: Some(0),
            sealed: sealed(),
        };
        let fixed = fixed.map(|f| {
            let planned =
                prepare(&d, (Policy::Spread, Strategy::Chain), &mut Taken::default(), None)
                    .expect("plan");
            f.iter()
                .map(|(vm, host)| {
                    let mut p =
                        planned.planned.placement.iter().find(|p| p.vm == *vm).expect("vm").clone();
                    p.host = (*host).into();
                    p
                })
                .collect()
        });
        let orders = prepare(&d, (Policy::Spread, Strategy::Chain), &mut Taken::default(), fixed)
            .expect("prepare");
        (hosts, orders)
    }

    /// Spread over four hosts with the head host h0 holding both images: every host with
    /// a VM gets an order that names its VMs, the others as elsewhere, and pulls only
    /// the images its VMs use; a host with no VM gets none.
    #[test]
    fn every_host_with_vms_gets_an_order_for_its_vms_and_their_images() {
        let spec = workspace(2);
        let (hosts, o) = prepared(4, &spec, &[(0, 0), (0, 1)], None);
        assert_eq!(o.planned.placement.len(), 3);
        let placed: BTreeSet<&str> = o.planned.placement.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(o.orders.len(), placed.len());
        for (h, order) in &o.orders {
            let here = o.planned.vms_on(hosts[*h].0.as_str());
            assert_eq!(order.share.here_names(), here);
            assert_eq!(order.share.here.len() + order.share.elsewhere.len(), 3);
            assert_eq!((order.stage.as_str(), order.ticket.as_slice()), ("c@1", &b"ticket"[..]));
            let wants: BTreeSet<String> = here
                .iter()
                .map(|vm| {
                    if vm.as_str().ends_with("head") { "vo/head:1" } else { "vo/worker:1" }.into()
                })
                .collect();
            let got: BTreeSet<String> = order.images.iter().map(|i| i.image.clone()).collect();
            assert_eq!(got, wants, "{}", hosts[*h].0);
        }
        // Each image's stagers are exactly the hosts with a VM that uses it.
        for (i, name) in ["vo/head:1", "vo/worker:1"].iter().enumerate() {
            let using: BTreeSet<PeerId> = o
                .orders
                .iter()
                .filter(|(_, ord)| ord.images.iter().any(|im| im.image == *name))
                .map(|(h, _)| hosts[*h].1)
                .collect();
            assert_eq!(o.stagers[i].iter().copied().collect::<BTreeSet<_>>(), using, "{name}");
        }
    }

    /// A chain h0 → h1 → h2 → h3 of the worker image: each receiver pulls its whole
    /// image from its parent at the plan's rate, and falls back on its ancestors, up to
    /// the source, before any other holder.
    #[test]
    fn a_receiver_falls_back_on_its_ancestors_then_the_source() {
        let spec = workspace(3);
        let fixed =
            vec![("c-head", "h0"), ("c-worker1", "h1"), ("c-worker2", "h2"), ("c-worker3", "h3")];
        let (hosts, o) = prepared(4, &spec, &[(0, 0), (0, 1)], Some(fixed));
        assert_eq!(
            o.edges,
            [("h0", "h1"), ("h1", "h2"), ("h2", "h3")].map(|(a, b)| (a.into(), b.into())).to_vec()
        );
        let order_of = |h: usize| &o.orders.iter().find(|(x, _)| *x == h).expect("order").1;
        let h3 = &order_of(3).images[0];
        assert_eq!(h3.pulls.len(), 1);
        assert_eq!(h3.pulls[0].from, hosts[2].1.to_string());
        assert_eq!(h3.pulls[0].ranges, vec![(0, 16)]);
        assert!(h3.pulls[0].rate > 0, "links known: a rate is expected");
        let ids = |hs: &[usize]| hs.iter().map(|&h| hosts[h].1.to_string()).collect::<Vec<_>>();
        assert_eq!(h3.fallback, ids(&[1, 0]));
        // h0 holds everything and stages the head: no pulls, and it serves the worker
        // image it does not stage.
        let h0 = order_of(0);
        assert!(h0.images.iter().all(|i| i.pulls.is_empty() && i.fallback.is_empty()));
        assert_eq!(h0.serves.iter().map(|s| s.image.as_str()).collect::<Vec<_>>(), ["vo/worker:1"]);
        assert!(order_of(1).serves.is_empty());
    }

    /// A host that holds the whole image is a fallback only if it stages it too (only
    /// those were granted its chunks) and is alive.
    #[test]
    fn only_stagers_that_hold_the_image_are_extra_fallbacks() {
        let spec = workspace(2);
        let fixed = vec![("c-head", "h0"), ("c-worker1", "h1"), ("c-worker2", "h2")];
        // h2 holds the worker image already and stages it; h3 holds it but has no VM.
        let (hosts, o) = prepared(4, &spec, &[(0, 0), (0, 1), (2, 1), (3, 1)], Some(fixed));
        let h1 = &o.orders.iter().find(|(x, _)| *x == 1).expect("h1").1.images[0];
        assert!(h1.fallback.contains(&hosts[2].1.to_string()), "{:?}", h1.fallback);
        assert!(!h1.fallback.contains(&hosts[3].1.to_string()), "h3 was granted nothing");
        assert!(!o.orders.iter().any(|(h, _)| *h == 3));
    }

    /// The only holder of the worker image has no VM of the deployment (it is still
    /// receiving the image for another one): it gets an order that stages nothing and
    /// grants the worker image to its stagers, and they fall back on the head last.
    #[test]
    fn a_source_without_vms_gets_an_order_that_only_serves() {
        let spec = workspace(2);
        let fixed = vec![("c-head", "h0"), ("c-worker1", "h1"), ("c-worker2", "h2")];
        let (hosts, o) = prepared(4, &spec, &[(0, 0), (3, 1)], Some(fixed));
        let h3 = &o.orders.iter().find(|(x, _)| *x == 3).expect("h3 has an order").1;
        assert!(h3.share.here.is_empty() && h3.images.is_empty());
        assert_eq!(h3.serves.iter().map(|s| s.image.as_str()).collect::<Vec<_>>(), ["vo/worker:1"]);
        assert_eq!(h3.serves[0].stagers.len(), 2, "granted to both workers' hosts");
        for h in [1, 2] {
            let image = &o.orders.iter().find(|(x, _)| *x == h).expect("order").1.images[0];
            assert_eq!(image.fallback.last(), Some(&hosts[0].1.to_string()), "h{h}: the head last");
        }
    }
}
