//! A flow-level simulation of a plan on the cluster's links.
//!
//! Every stream is a flow from its sender's uplink to its receiver's downlink. Rates are
//! max-min fair over those links (progressive filling). Pipelining is at chunk
//! granularity: a stream can only send bytes its sender holds already or has received
//! completely, so a relayed stream runs at most one chunk behind the streams that feed
//! it (the fluid form of "forward a chunk only after receiving it").
//!
//! Time advances in steps of about 1/64 of a first estimate of the total. In each step
//! the rates are computed once for the streams that can move, each capped at what its
//! feeders can deliver in the step (feeders projected at their bottleneck fair share,
//! which max-min never goes below, so the caps err low), and streams move in plan
//! order, so a relay sees what its feeder received in the same step. A stream that ends inside a
//! step gets the exact time (its remaining bytes at its rate, and never before its last
//! chunk reached its sender). Check: a star gives N·S/B of the source, a chain
//! S/B + (N-1)·c/B (`tests/simulate.rs`).
//!
//! The cost is steps × streams × log(links): 10,000 hosts plan and simulate within the
//! issue's 2 s (`benches/planner.rs`, `docs/experiments.md`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::distribution::{lacks, DistributionPlan};
use crate::{Cluster, HostIx, Image, Inventory, Need, PlanError};

/// Steps aimed for.
const STEPS: f64 = 64.0;
/// Give up after this many times the aimed-for steps.
const MAX_STEPS_FACTOR: u64 = 64;

/// A prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    /// When each host has everything it lacked, in seconds (0 for hosts receiving nothing).
    pub host_finish: Vec<f64>,
    /// When the last host finishes.
    pub finish: f64,
    /// The physical limit: the largest (bytes a host lacks / its downlink).
    pub limit: f64,
    /// Steps simulated.
    pub steps: u64,
}

impl Simulation {
    /// Predicted time over the physical limit (1.0 is perfect).
    pub fn ratio(&self) -> f64 {
        if self.limit > 0.0 {
            self.finish / self.limit
        } else {
            1.0
        }
    }
}

/// One stream's state.
struct Flow {
    up: usize,
    down: usize,
    total: f64,
    done: f64,
    /// Bytes the sender holds from the start.
    held: f64,
    /// (feeder, bytes of this stream it delivers, that share of the feeder's bytes)
    feeders: Vec<(usize, f64, f64)>,
    /// Pipelining lag: one chunk.
    lag: f64,
    finished: Option<f64>,
}

impl Flow {
    /// Bytes available to send, given the feeders' progress.
    fn available(&self, flows: &[Flow], progress: impl Fn(usize) -> f64) -> f64 {
        let relayed: f64 = self
            .feeders
            .iter()
            .map(|&(f, bytes, share)| {
                let fd = &flows[f];
                let p = progress(f);
                if p >= fd.total {
                    bytes
                } else {
                    ((p - fd.lag).max(0.0) * share).min(bytes)
                }
            })
            .sum();
        (self.held + relayed).min(self.total)
    }
}

/// A change to one host's links while a plan runs (what the testnet does to a link):
/// its uplink carries `up` and its downlink `down` of their rates for `seconds`, from
/// when it has received `from` of the bytes it lacks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reshape {
    /// The host.
    pub host: HostIx,
    /// Share of its uplink's rate left (1.0: unchanged).
    pub up: f64,
    /// Share of its downlink's rate left.
    pub down: f64,
    /// Share of its bytes received when it starts (0.0: at once).
    pub from: f64,
    /// How long it lasts (infinite: to the end).
    pub seconds: f64,
}

/// Predicts how long `plan` takes on `cluster`.
pub fn simulate(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    plan: &DistributionPlan,
) -> Result<Simulation, PlanError> {
    simulate_in(cluster, images, inventory, plan, STEPS, &[])
}

/// [`simulate`] with hosts' links changed as `reshapes` say, while the plan runs as
/// planned (the streams do not adapt).
pub fn simulate_reshaped(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    plan: &DistributionPlan,
    reshapes: &[Reshape],
) -> Result<Simulation, PlanError> {
    simulate_in(cluster, images, inventory, plan, STEPS * 4.0, reshapes)
}

/// Where a [`Reshape`] is.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    On(f64),
    Over,
}

/// [`simulate`] aiming at `target_steps` steps (fewer: faster, coarser), with links
/// reshaped.
pub(crate) fn simulate_in(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    plan: &DistributionPlan,
    target_steps: f64,
    reshapes: &[Reshape],
) -> Result<Simulation, PlanError> {
    let n = cluster.len();
    let mut flows = build_flows(images, inventory, plan, n);
    let capacity: Vec<f64> = cluster
        .hosts()
        .iter()
        .map(|h| h.up)
        .chain(cluster.hosts().iter().map(|h| h.down))
        .collect();
    let normal = capacity.clone();
    let mut phases = vec![Phase::Waiting; reshapes.len()];
    // Per reshaped host, the streams into it and their bytes.
    let into = |h: HostIx| -> Vec<usize> {
        plan.streams.iter().enumerate().filter(|(_, s)| s.to == h).map(|(i, _)| i).collect()
    };
    let watched: Vec<Vec<usize>> = reshapes.iter().map(|r| into(r.host)).collect();

    // Physical limit: what each receiving host lacks over its downlink.
    let needs: Vec<Need> =
        plan.streams.iter().map(|s| Need { host: s.to, image: s.image }).collect();
    let mut lacking = vec![0u64; n];
    for (need, r) in lacks(images, inventory, &needs) {
        lacking[need.host.ix()] += images[need.image].bytes_of(&r);
    }
    let limit = (0..n).map(|h| lacking[h] as f64 / cluster.hosts()[h].down).fold(0.0, f64::max);

    // First estimate: the most loaded link, plus one chunk per hop of the deepest relay.
    let mut load = vec![0.0; 2 * n];
    for f in &flows {
        load[f.up] += f.total;
        load[f.down] += f.total;
    }
    let busiest = load.iter().zip(&capacity).map(|(l, c)| l / c).fold(0.0, f64::max);
    let mut depth = vec![0u32; flows.len()];
    for i in 0..flows.len() {
        depth[i] = flows[i].feeders.iter().map(|&(f, _, _)| depth[f] + 1).max().unwrap_or(0);
    }
    let slowest = capacity.iter().copied().fold(f64::INFINITY, f64::min);
    let lag =
        depth.iter().zip(&flows).map(|(&d, f)| f64::from(d) * f.lag / slowest).fold(0.0, f64::max);
    let estimate = (busiest + lag).max(1e-9);
    let dt = estimate / target_steps;

    let mut t = 0.0;
    let mut steps = 0u64;
    let mut remaining = flows.iter().filter(|f| f.total > 0.0).count();
    for f in flows.iter_mut().filter(|f| f.total <= 0.0) {
        f.finished = Some(0.0);
    }
    let mut rates = vec![0.0; flows.len()];
    let mut caps = vec![f64::INFINITY; flows.len()];
    let mut projected: Vec<f64> = vec![0.0; flows.len()];
    let mut filler = Filler::new(&flows, capacity);
    let mut active = Vec::with_capacity(flows.len());
    while remaining > 0 {
        for ((r, phase), streams) in reshapes.iter().zip(&mut phases).zip(&watched) {
            let h = r.host.ix();
            let (up, down) = (h, n + h);
            match *phase {
                Phase::Waiting => {
                    let total: f64 = streams.iter().map(|&i| flows[i].total).sum();
                    let done: f64 = streams.iter().map(|&i| flows[i].done).sum();
                    if done >= r.from * total {
                        *phase = Phase::On(t);
                        filler.capacity[up] = normal[up] * r.up;
                        filler.capacity[down] = normal[down] * r.down;
                    }
                }
                Phase::On(since) if t >= since + r.seconds => {
                    *phase = Phase::Over;
                    filler.capacity[up] = normal[up];
                    filler.capacity[down] = normal[down];
                }
                _ => {}
            }
        }
        steps += 1;
        if steps > target_steps as u64 * MAX_STEPS_FACTOR {
            return Err(PlanError::Stuck {
                steps,
                reason: format!("{remaining} streams unfinished at {t:.1} s"),
            });
        }
        // Streams that can move this step: bytes in hand, or a feeder still moving.
        active.clear();
        active.extend((0..flows.len()).filter(|&i| {
            let f = &flows[i];
            f.finished.is_none()
                && (f.feeders.iter().any(|&(j, _, _)| flows[j].finished.is_none())
                    || f.available(&flows, |j| flows[j].done) > f.done + 1e-9)
        }));
        for (p, f) in projected.iter_mut().zip(&flows) {
            *p = f.done;
        }
        if active.is_empty() {
            return Err(PlanError::Stuck {
                steps,
                reason: "streams wait on data nobody sends".into(),
            });
        }
        // Cap each stream at what its feeders can deliver this step, projecting each
        // feeder at its bottleneck fair share (a lower bound of its max-min rate), in
        // plan order; then the max-min rates under those caps.
        let shares = filler.bottleneck_shares(&flows, &active);
        for &i in &active {
            let f = &flows[i];
            let avail = f.available(&flows, |j| projected[j]);
            caps[i] = ((avail - f.done) / dt).max(0.0);
            projected[i] = (f.done + shares[i].min(caps[i]) * dt).min(f.total);
        }
        rates.copy_from_slice(filler.fill(&flows, &active, &caps));
        // Move, feeders first (plan order).
        for &i in &active {
            let f = &flows[i];
            let (before, rate, total, lag) = (f.done, rates[i], f.total, f.lag);
            let after = (before + rate * dt).min(f.available(&flows, |j| flows[j].done)).min(total);
            // Feeders that finished: this stream's last chunk left them then.
            let fed_until =
                f.feeders.iter().filter_map(|&(j, _, _)| flows[j].finished).fold(0.0, f64::max);
            let f = &mut flows[i];
            f.done = after;
            if after >= total - 1e-6 {
                f.done = total;
                let own = if rate > 0.0 { (total - before) / rate } else { dt };
                let relay = if rate > 0.0 && !f.feeders.is_empty() {
                    fed_until + lag.min(total) / rate
                } else {
                    0.0
                };
                f.finished = Some((t + own).max(relay).clamp(t, t + dt));
                remaining -= 1;
            }
        }
        t += dt;
    }

    let mut host_finish = vec![0.0f64; n];
    for (f, s) in flows.iter().zip(&plan.streams) {
        let end = f.finished.unwrap_or(t);
        host_finish[s.to.ix()] = host_finish[s.to.ix()].max(end);
    }
    let finish = host_finish.iter().copied().fold(0.0, f64::max);
    Ok(Simulation { host_finish, finish, limit, steps })
}

/// Streams as flows, with their feeders: the streams into the sender that carry the
/// chunks it relays.
fn build_flows(
    images: &[Image],
    inventory: &Inventory,
    plan: &DistributionPlan,
    n: usize,
) -> Vec<Flow> {
    // Streams into each (host, image), by index.
    let mut into: std::collections::HashMap<(usize, usize), Vec<usize>> =
        std::collections::HashMap::new();
    for (i, s) in plan.streams.iter().enumerate() {
        into.entry((s.to.ix(), s.image)).or_default().push(i);
    }
    plan.streams
        .iter()
        .map(|s| {
            let img = &images[s.image];
            let total = img.bytes_of(&s.ranges) as f64;
            let held_ranges = s.ranges.intersect(inventory.held(s.from, s.image));
            let relayed = s.ranges.minus(&held_ranges);
            let mut feeders = Vec::new();
            if !relayed.is_empty() {
                for &j in into.get(&(s.from.ix(), s.image)).map(Vec::as_slice).unwrap_or(&[]) {
                    let part = plan.streams[j].ranges.intersect(&relayed);
                    if !part.is_empty() {
                        let bytes = img.bytes_of(&part) as f64;
                        let of = img.bytes_of(&plan.streams[j].ranges) as f64;
                        feeders.push((j, bytes, bytes / of));
                    }
                }
            }
            Flow {
                up: s.from.ix(),
                down: n + s.to.ix(),
                total,
                done: 0.0,
                held: img.bytes_of(&held_ranges) as f64,
                feeders,
                lag: img.mean_chunk() as f64,
                finished: None,
            }
        })
        .collect()
}

/// A water level at which a link saturates or a flow reaches its cap.
#[derive(PartialEq)]
struct Level(f64, usize, u32);

impl Eq for Level {}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Level {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on the level.
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

/// Max-min fair rates over the links, by progressive filling: every unfrozen flow's
/// rate rises together; a link that fills freezes its flows, a flow that reaches its
/// cap freezes alone. Buffers are kept between steps.
struct Filler {
    /// Flows on each link (CSR: `flows_of[start[l]..start[l + 1]]`).
    start: Vec<usize>,
    flows_of: Vec<usize>,
    capacity: Vec<f64>,
    left: Vec<f64>,
    count: Vec<u32>,
    /// The share each link's live heap entry carries.
    share: Vec<f64>,
    version: Vec<u32>,
    rate: Vec<f64>,
    sorted: Vec<Level>,
    heap: BinaryHeap<Level>,
}

impl Filler {
    fn new(flows: &[Flow], capacity: Vec<f64>) -> Self {
        let links = capacity.len();
        let mut start = vec![0usize; links + 1];
        for f in flows {
            start[f.up + 1] += 1;
            start[f.down + 1] += 1;
        }
        for l in 0..links {
            start[l + 1] += start[l];
        }
        let mut fill = start.clone();
        let mut flows_of = vec![0; start[links]];
        for (i, f) in flows.iter().enumerate() {
            for l in [f.up, f.down] {
                flows_of[fill[l]] = i;
                fill[l] += 1;
            }
        }
        Filler {
            start,
            flows_of,
            left: capacity.clone(),
            count: vec![0; links],
            share: vec![0.0; links],
            version: vec![0; links],
            rate: vec![0.0; flows.len()],
            sorted: Vec::new(),
            capacity,
            heap: BinaryHeap::new(),
        }
    }

    /// Rates for the `active` flows (others get 0), each at most `cap[i]`.
    fn fill(&mut self, flows: &[Flow], active: &[usize], cap: &[f64]) -> &[f64] {
        const UNSET: f64 = -1.0;
        let links = self.capacity.len();
        self.rate.iter_mut().for_each(|r| *r = 0.0);
        self.count.iter_mut().for_each(|c| *c = 0);
        for &i in active {
            self.rate[i] = UNSET;
            self.count[flows[i].up] += 1;
            self.count[flows[i].down] += 1;
        }
        // Initial levels sorted once; levels raised while filling go to a small heap,
        // and the two are merged in order.
        let mut sorted = std::mem::take(&mut self.sorted);
        sorted.clear();
        for l in 0..links {
            self.left[l] = self.capacity[l];
            self.version[l] = 0;
            if self.count[l] > 0 {
                self.share[l] = self.left[l] / f64::from(self.count[l]);
                sorted.push(Level(self.share[l], l, 0));
            }
        }
        for &i in active {
            if cap[i].is_finite() {
                sorted.push(Level(cap[i], links + i, 0));
            }
        }
        sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.heap.clear();
        let mut next = 0;
        let mut unfrozen = active.len();
        while unfrozen > 0 {
            let from_heap = match (sorted.get(next), self.heap.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b.0 < a.0,
            };
            let (level, id, v) = if from_heap {
                let Level(level, id, v) = self.heap.pop().expect("peeked");
                (level, id, v)
            } else {
                next += 1;
                let e = &sorted[next - 1];
                (e.0, e.1, e.2)
            };
            if id >= links {
                let i = id - links;
                if self.rate[i] == UNSET {
                    self.freeze(flows, i, level);
                    unfrozen -= 1;
                }
                continue;
            }
            if v != self.version[id] || self.count[id] == 0 {
                continue;
            }
            for k in self.start[id]..self.start[id + 1] {
                let i = self.flows_of[k];
                if self.rate[i] == UNSET {
                    self.freeze(flows, i, level);
                    unfrozen -= 1;
                }
            }
        }
        self.sorted = sorted;
        for r in &mut self.rate {
            *r = r.max(0.0);
        }
        &self.rate
    }

    /// Each active flow's bottleneck fair share, min over its links of capacity over
    /// active flows: max-min fairness never gives a flow less.
    fn bottleneck_shares(&mut self, flows: &[Flow], active: &[usize]) -> &[f64] {
        self.count.iter_mut().for_each(|c| *c = 0);
        for &i in active {
            self.count[flows[i].up] += 1;
            self.count[flows[i].down] += 1;
        }
        for &i in active {
            let (u, d) = (flows[i].up, flows[i].down);
            self.rate[i] = (self.capacity[u] / f64::from(self.count[u]))
                .min(self.capacity[d] / f64::from(self.count[d]));
        }
        &self.rate
    }

    fn freeze(&mut self, flows: &[Flow], i: usize, level: f64) {
        self.rate[i] = level;
        for l in [flows[i].up, flows[i].down] {
            self.left[l] -= level;
            self.count[l] -= 1;
            if self.count[l] > 0 {
                // Shares only rise as flows freeze; an unchanged share keeps its entry
                // (common when hosts are alike), saving most heap traffic.
                let share = (self.left[l] / f64::from(self.count[l])).max(level);
                if share > self.share[l] * (1.0 + 1e-12) {
                    self.share[l] = share;
                    self.version[l] += 1;
                    self.heap.push(Level(share, l, self.version[l]));
                }
            }
        }
    }
}
