//! Distribution plans: which host sends which chunk ranges of which image to which.
//!
//! For each image, the *receivers* are the hosts that need it and lack some of it; the
//! *source* is the live host holding all of it with the fastest uplink. Receivers are
//! ordered rack by rack (the source's rack first, then racks as they appear; within a
//! rack the fastest first, then file order), so consecutive hosts of a chain or
//! siblings of a tree share a switch, and a slow host is a chain's tail or a leaf.
//!
//! | strategy | topology |
//! |---|---|
//! | star | every receiver pulls from the source (the paper's method) |
//! | chain | source → r1 → r2 → … , pipelined |
//! | tree k | a k-ary tree rooted at the source (below its first receiver when the source's uplink is slower than k receivers' together) |
//! | striped s×k | the image in `s` interleaved stripes of blocks, each over its own tree (k=1: chain) on a rotated order, so every uplink carries part of the load |
//! | auto | each of the above (tree 2 and 4, striped 4×1 and 4×2); those whose lower bound could win simulated coarsely; the fastest |
//!
//! Cache-aware, both ways: a receiver is sent only the chunks it lacks, and a sender
//! serves what it already holds at once. A receiver takes each chunk from its parent
//! if the parent will have it (holds it, or receives it in the same stripe), else from
//! the nearest ancestor that will, the source last. In a star, chunks that other hosts
//! hold are served by the least-loaded of them rather than the source.
//!
//! A plan is plain data: streams, each `from → to` with the chunk ranges it carries, in
//! an order where every stream comes after the streams that feed its sender.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Cluster, HostIx, Image, Inventory, PlanError, Ranges};

/// How to distribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Strategy {
    /// Every receiver pulls from the source.
    Star,
    /// One pipelined chain.
    Chain,
    /// A k-ary tree.
    Tree {
        /// Children per node.
        k: u32,
    },
    /// Interleaved stripes, each over a k-ary tree on a rotated host order.
    Striped {
        /// Stripes.
        stripes: u32,
        /// Children per node in each stripe (1: chains).
        k: u32,
    },
    /// The candidate with the best predicted time.
    Auto,
}

impl Strategy {
    /// The strategies `Auto` chooses from, the usually fastest first (so the others'
    /// lower bounds can rule them out without simulating them).
    pub const CANDIDATES: [Strategy; 6] = [
        Strategy::Striped { stripes: 4, k: 2 },
        Strategy::Chain,
        Strategy::Tree { k: 2 },
        Strategy::Striped { stripes: 4, k: 1 },
        Strategy::Tree { k: 4 },
        Strategy::Star,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Star => write!(f, "star"),
            Strategy::Chain => write!(f, "chain"),
            Strategy::Tree { k } => write!(f, "tree{k}"),
            Strategy::Striped { stripes, k } => write!(f, "striped{stripes}x{k}"),
            Strategy::Auto => write!(f, "auto"),
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = PlanError;

    /// `star`, `chain`, `tree`, `tree4`, `striped`, `striped4x2`, `auto`.
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let bad =
            || PlanError::BadStrategy(format!("`{s}`: use star, chain, treeK, stripedSxK or auto"));
        let num = |t: &str, default: u32| -> Result<u32, PlanError> {
            if t.is_empty() {
                return Ok(default);
            }
            t.parse::<u32>().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(bad)
        };
        Ok(match s {
            "star" => Strategy::Star,
            "chain" => Strategy::Chain,
            "auto" => Strategy::Auto,
            _ if s.starts_with("tree") => Strategy::Tree { k: num(&s[4..], 2)? },
            _ if s.starts_with("striped") => {
                let rest = &s[7..];
                let (a, b) = rest.split_once('x').unwrap_or((rest, ""));
                Strategy::Striped { stripes: num(a, 4)?, k: num(b, 1)? }
            }
            _ => return Err(bad()),
        })
    }
}

/// A host needs all of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Need {
    /// The host.
    pub host: HostIx,
    /// The image.
    pub image: usize,
}

/// One sender-receiver pair for one image and stripe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// The image.
    pub image: usize,
    /// The sender.
    pub from: HostIx,
    /// The receiver.
    pub to: HostIx,
    /// The chunks it carries, sent in index order.
    pub ranges: Ranges,
    /// The stripe (0 unless striped).
    pub stripe: u32,
}

/// A whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistributionPlan {
    /// The strategy it follows (never `Auto`: auto resolves to one).
    pub strategy: Strategy,
    /// The source of each image that has receivers.
    pub sources: BTreeMap<usize, HostIx>,
    /// The streams, feeders before the streams they feed.
    pub streams: Vec<Stream>,
}

/// What each host lacks of each image it needs.
pub(crate) fn lacks(
    images: &[Image],
    inventory: &Inventory,
    needs: &[Need],
) -> BTreeMap<Need, Ranges> {
    needs
        .iter()
        .map(|n| (*n, images[n.image].all().minus(inventory.held(n.host, n.image))))
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// Plans how every needed chunk reaches every host that lacks it.
pub fn plan(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    needs: &[Need],
    strategy: Strategy,
) -> Result<DistributionPlan, PlanError> {
    let lacks = lacks(images, inventory, needs);
    if let Strategy::Auto = strategy {
        let mut best: Option<(f64, DistributionPlan)> = None;
        for candidate in Strategy::CANDIDATES {
            // Floors known before planning: what only the source holds over its
            // uplink (star); one chunk per hop through every receiver (chains).
            let floor = match candidate {
                Strategy::Star => star_floor(cluster, images, inventory, &lacks),
                Strategy::Chain | Strategy::Striped { k: 1, .. } => {
                    chain_floor(cluster, images, &lacks)
                }
                _ => 0.0,
            };
            if best.as_ref().is_some_and(|(bt, _)| floor >= *bt) {
                continue;
            }
            let p = plan_for(cluster, images, inventory, &lacks, candidate)?;
            // A plan whose lower bound is no better than the best so far is not
            // simulated; the rest are ranked on a coarse simulation (a quarter of the
            // steps): the ranking holds and auto stays within the 10,000-host budget.
            if best.as_ref().is_some_and(|(bt, _)| p.lower_bound(cluster, images) >= *bt) {
                continue;
            }
            let t = crate::simulate::simulate_in(cluster, images, inventory, &p, 16.0, &[])?.finish;
            if best.as_ref().is_none_or(|(bt, _)| t < *bt) {
                best = Some((t, p));
            }
        }
        return Ok(best.expect("the first candidate is always simulated").1);
    }
    plan_for(cluster, images, inventory, &lacks, strategy)
}

/// One strategy's plan, given what each host lacks.
fn plan_for(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    lacks: &BTreeMap<Need, Ranges>,
    strategy: Strategy,
) -> Result<DistributionPlan, PlanError> {
    if let Strategy::Striped { stripes: 0, .. }
    | Strategy::Tree { k: 0 }
    | Strategy::Striped { k: 0, .. } = strategy
    {
        return Err(PlanError::BadStrategy(format!("{strategy}: counts must be at least 1")));
    }
    let mut sources = BTreeMap::new();
    let mut streams = Vec::new();
    for (image, img) in images.iter().enumerate() {
        let receivers: Vec<HostIx> =
            lacks.keys().filter(|n| n.image == image).map(|n| n.host).collect();
        if receivers.is_empty() {
            continue;
        }
        let source = source_of(cluster, inventory, image, img)
            .ok_or_else(|| PlanError::NoSource { image: img.name.clone() })?;
        sources.insert(image, source);
        let order = rack_order(cluster, source, &receivers);
        let lack = |h: HostIx| lacks.get(&Need { host: h, image }).cloned().unwrap_or_default();
        let (stripes, k) = match strategy {
            Strategy::Star => (1, u32::MAX),
            Strategy::Chain => (1, 1),
            Strategy::Tree { k } => (1, k),
            Strategy::Striped { stripes, k } => (stripes, k),
            Strategy::Auto => unreachable!("plan resolves auto before plan_for"),
        };
        let stripe_sets = stripe_sets(img, stripes);
        // A source slower than k receivers' uplinks together cannot feed k children
        // at their speed: it feeds one, which fans out.
        let mean_up = order.iter().map(|&h| cluster.host(h).up).sum::<f64>() / order.len() as f64;
        let narrow_root =
            k > 1 && k != u32::MAX && cluster.host(source).up < f64::from(k) * mean_up;
        for (j, set) in stripe_sets.iter().enumerate() {
            let rotated: Vec<HostIx> = {
                let shift = order.len() * j / stripes as usize;
                order[shift..].iter().chain(&order[..shift]).copied().collect()
            };
            // Node 0 is the source; node i ≥ 1 is rotated[i - 1]; parent(i) = (i - 1) / k,
            // or, under a slow source, the source feeds node 1 alone and the tree hangs
            // below it (parent(i) = 1 + (i - 2) / k).
            let nodes: Vec<HostIx> =
                std::iter::once(source).chain(rotated.iter().copied()).collect();
            // Hosts holding the same chunks need and will have the same: computed once
            // per distinct holding (10,000 hosts with the same base OS are one).
            let mut per_holding: HashMap<&Ranges, (Ranges, Ranges)> = HashMap::new();
            let (needs_of, will_have): (Vec<Ranges>, Vec<Ranges>) = nodes
                .iter()
                .enumerate()
                .map(|(i, &h)| {
                    if i == 0 {
                        return (Ranges::empty(), img.all());
                    }
                    let held = inventory.held(h, image);
                    per_holding
                        .entry(held)
                        .or_insert_with(|| {
                            let need = lack(h).intersect(set);
                            (need.clone(), held.union(&need))
                        })
                        .clone()
                })
                .unzip();
            let mut holders = (strategy == Strategy::Star)
                .then(|| Holders::new(cluster, inventory, image, source));
            for i in 1..nodes.len() {
                let to = nodes[i];
                let mut need = needs_of[i].clone();
                if let Some(holders) = holders.as_mut() {
                    for (from, give) in holders.serve(img, to, &need) {
                        need = need.minus(&give);
                        streams.push(Stream { image, from, to, ranges: give, stripe: j as u32 });
                    }
                }
                let mut a = i;
                while !need.is_empty() {
                    a = match (k, a) {
                        (u32::MAX, _) | (_, 1) => 0,
                        _ if narrow_root => 1 + (a - 2) / k as usize,
                        _ => (a - 1) / k as usize,
                    };
                    let give = need.intersect(&will_have[a]);
                    if !give.is_empty() {
                        need = need.minus(&give);
                        streams.push(Stream {
                            image,
                            from: nodes[a],
                            to,
                            ranges: give,
                            stripe: j as u32,
                        });
                    }
                }
            }
        }
    }
    Ok(DistributionPlan { strategy, sources, streams })
}

/// The live host holding all of `img` with the fastest uplink (the first on ties).
fn source_of(
    cluster: &Cluster,
    inventory: &Inventory,
    image: usize,
    img: &Image,
) -> Option<HostIx> {
    cluster
        .ixs()
        .filter(|&h| {
            cluster.host(h).alive && inventory.held(h, image).count() == u64::from(img.chunks())
        })
        .max_by(|a, b| cluster.host(*a).up.total_cmp(&cluster.host(*b).up).then(b.cmp(a)))
}

/// A time no star can beat, without planning it: every byte no other host holds
/// leaves the source, over its uplink.
fn star_floor(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    lacks: &BTreeMap<Need, Ranges>,
) -> f64 {
    let mut floor: f64 = 0.0;
    for (image, img) in images.iter().enumerate() {
        let Some(source) = source_of(cluster, inventory, image, img) else { continue };
        // What any other live host holds, merged once per distinct holding.
        let mut distinct: Vec<&Ranges> = Vec::new();
        for h in cluster.ixs().filter(|&h| h != source && cluster.host(h).alive) {
            let held = inventory.held(h, image);
            if !held.is_empty() && !distinct.contains(&held) {
                distinct.push(held);
            }
        }
        let elsewhere = distinct.iter().fold(Ranges::empty(), |acc, r| acc.union(r));
        let only_source: u64 = lacks
            .iter()
            .filter(|(n, _)| n.image == image)
            .map(|(_, r)| img.bytes_of(&r.minus(&elsewhere)))
            .sum();
        floor = floor.max(only_source as f64 / cluster.host(source).up);
    }
    floor
}

/// A time no chain through every receiver can beat: the last one is a chunk per hop
/// behind the source, each hop at most at the fastest link.
fn chain_floor(cluster: &Cluster, images: &[Image], lacks: &BTreeMap<Need, Ranges>) -> f64 {
    let fastest = cluster.hosts().iter().map(|h| h.up.max(h.down)).fold(0.0, f64::max);
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let receivers = lacks.keys().filter(|n| n.image == i).count();
            receivers.saturating_sub(1) as f64 * img.mean_chunk() as f64 / fastest
        })
        .fold(0.0, f64::max)
}

/// Receivers rack by rack: the source's rack first, then racks in order of first
/// appearance; within a rack the fastest hosts first (by the slower of their two
/// links), in file order among equals. A slow host so sits at the tail of a chain, or
/// at the leaves of a tree, where it holds back nobody but itself.
fn rack_order(cluster: &Cluster, source: HostIx, receivers: &[HostIx]) -> Vec<HostIx> {
    let rack = |h: HostIx| cluster.host(h).rack.as_deref();
    let speed = |h: HostIx| cluster.host(h).up.min(cluster.host(h).down);
    let mut racks: Vec<Option<&str>> = vec![rack(source)];
    for &r in receivers {
        if !racks.contains(&rack(r)) {
            racks.push(rack(r));
        }
    }
    let mut order = Vec::with_capacity(receivers.len());
    for r in &racks {
        let start = order.len();
        order.extend(receivers.iter().copied().filter(|&h| rack(h) == *r));
        order[start..].sort_by(|&a, &b| speed(b).total_cmp(&speed(a)));
    }
    order
}

/// The chunks of each stripe: blocks of about 1/16 of a stripe's share (at least four
/// chunks), dealt out round robin.
fn stripe_sets(img: &Image, stripes: u32) -> Vec<Ranges> {
    if stripes <= 1 {
        return vec![img.all()];
    }
    let block = (img.bytes() / (16 * u64::from(stripes))).max(4 * img.mean_chunk());
    let mut sets = vec![Vec::new(); stripes as usize];
    for (i, b) in img.blocks(block).into_iter().enumerate() {
        sets[i % stripes as usize].push(b);
    }
    sets.into_iter().map(Ranges::from_ranges).collect()
}

/// Hosts other than the source that hold parts of an image, grouped by what they hold,
/// each group a queue by bytes served so far (star's cache-aware serving).
struct Holders {
    groups: Vec<(Ranges, LoadQueue)>,
}

/// Hosts by bytes served so far, least first.
type LoadQueue = BinaryHeap<Reverse<(u64, HostIx)>>;

impl Holders {
    fn new(cluster: &Cluster, inventory: &Inventory, image: usize, source: HostIx) -> Self {
        let mut by_held: BTreeMap<Ranges, LoadQueue> = BTreeMap::new();
        for h in cluster.ixs() {
            let held = inventory.held(h, image);
            if h != source && cluster.host(h).alive && !held.is_empty() {
                by_held.entry(held.clone()).or_default().push(Reverse((0, h)));
            }
        }
        Holders { groups: by_held.into_iter().collect() }
    }

    /// Streams serving what `to` needs from holders, least-loaded first.
    fn serve(&mut self, img: &Image, to: HostIx, need: &Ranges) -> Vec<(HostIx, Ranges)> {
        let mut out = Vec::new();
        let mut need = need.clone();
        for (held, queue) in &mut self.groups {
            let give = need.intersect(held);
            if give.is_empty() {
                continue;
            }
            // The least-loaded holder that is not the receiver itself.
            let mut skipped = Vec::new();
            while let Some(Reverse((load, h))) = queue.pop() {
                if h == to {
                    skipped.push(Reverse((load, h)));
                    continue;
                }
                queue.push(Reverse((load + img.bytes_of(&give), h)));
                need = need.minus(&give);
                out.push((h, give));
                break;
            }
            queue.extend(skipped);
        }
        out
    }
}

impl DistributionPlan {
    /// A time the simulation cannot beat: the busiest link's bytes over its rate, or
    /// the deepest relay's one chunk per hop at the fastest link.
    pub fn lower_bound(&self, cluster: &Cluster, images: &[Image]) -> f64 {
        let (sent, received) = self.traffic(images, cluster.len());
        let load = cluster
            .hosts()
            .iter()
            .enumerate()
            .map(|(h, host)| (sent[h] as f64 / host.up).max(received[h] as f64 / host.down))
            .fold(0.0, f64::max);
        // Relay depth per (host, image, stripe): one more than its sender's.
        let mut depth: HashMap<(HostIx, usize, u32), u32> = HashMap::new();
        let mut lag: f64 = 0.0;
        let fastest = cluster.hosts().iter().map(|h| h.up.max(h.down)).fold(0.0, f64::max);
        for s in &self.streams {
            let d = depth.get(&(s.from, s.image, s.stripe)).copied().unwrap_or(0) + 1;
            let e = depth.entry((s.to, s.image, s.stripe)).or_insert(0);
            *e = (*e).max(d);
            lag = lag.max(f64::from(d - 1) * images[s.image].mean_chunk() as f64 / fastest);
        }
        load.max(lag)
    }

    /// Bytes each host sends and receives.
    pub fn traffic(&self, images: &[Image], hosts: usize) -> (Vec<u64>, Vec<u64>) {
        let (mut sent, mut received) = (vec![0; hosts], vec![0; hosts]);
        for s in &self.streams {
            let b = images[s.image].bytes_of(&s.ranges);
            sent[s.from.ix()] += b;
            received[s.to.ix()] += b;
        }
        (sent, received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_print() {
        for s in ["star", "chain", "tree2", "tree4", "striped4x1", "striped2x3", "auto"] {
            assert_eq!(s.parse::<Strategy>().map(|x| x.to_string()).as_deref(), Ok(s));
        }
        assert_eq!("tree".parse::<Strategy>(), Ok(Strategy::Tree { k: 2 }));
        assert!("tree0".parse::<Strategy>().is_err());
        assert!("ring".parse::<Strategy>().is_err());
    }
}
