//! Distribution plans and their simulation: the invariants every plan keeps (by
//! property), golden plans of small clusters, and the simulator against closed forms.

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use vw_planner::{
    plan, simulate, simulate_reshaped, Cluster, Host, HostIx, Image, Inventory, Need, PlanError,
    Ranges, Reshape, Strategy,
};

const MB: f64 = 1e6;

fn host(name: &str, up: f64, down: f64, rack: Option<&str>) -> Host {
    Host {
        name: name.into(),
        memory_mib: 4096,
        vcpus: 4,
        cpus: 2,
        up,
        down,
        rack: rack.map(Into::into),
        alive: true,
    }
}

/// `n` receivers and a source (host 0) holding every image, all links `rate`.
fn uniform(n: usize, rate: f64, images: &[Image]) -> (Cluster, Inventory, Vec<Need>) {
    let hosts = (0..=n).map(|i| host(&format!("h{i}"), rate, rate, None)).collect();
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(n + 1, images.len());
    for (i, img) in images.iter().enumerate() {
        inv.add(HostIx(0), i, &img.all());
    }
    let needs = (1..=n as u32)
        .flat_map(|h| (0..images.len()).map(move |i| Need { host: HostIx(h), image: i }))
        .collect();
    (cluster, inv, needs)
}

/// Checks the invariants of a plan; panics with what broke.
fn check_invariants(
    images: &[Image],
    inv: &Inventory,
    needs: &[Need],
    p: &vw_planner::DistributionPlan,
) {
    use std::collections::HashMap;
    let mut got: HashMap<(u32, usize), Ranges> = HashMap::new();
    for s in &p.streams {
        assert_ne!(s.from, s.to, "a host sends to itself");
        assert!(!s.ranges.is_empty(), "an empty stream");
        let held = inv.held(s.to, s.image);
        assert!(s.ranges.intersect(held).is_empty(), "{:?} is sent chunks it holds", s.to);
        let cell = got.entry((s.to.0, s.image)).or_default();
        assert!(cell.intersect(&s.ranges).is_empty(), "{:?} receives a chunk twice", s.to);
        *cell = cell.union(&s.ranges);
    }
    for n in needs {
        let lacks = images[n.image].all().minus(inv.held(n.host, n.image));
        let received = got.get(&(n.host.0, n.image)).cloned().unwrap_or_default();
        assert_eq!(
            received, lacks,
            "{:?} does not receive exactly what it lacks of image {}",
            n.host, n.image
        );
    }
    // Every sender holds a chunk before it sends it: in plan order, each stream's
    // chunks are held by its sender or were received by it in an earlier stream.
    let mut have: HashMap<(u32, usize), Ranges> = HashMap::new();
    for s in &p.streams {
        let had = inv
            .held(s.from, s.image)
            .union(have.get(&(s.from.0, s.image)).unwrap_or(&Ranges::empty()));
        assert!(s.ranges.minus(&had).is_empty(), "{:?} sends chunks it does not have yet", s.from);
        let cell = have.entry((s.to.0, s.image)).or_default();
        *cell = cell.union(&s.ranges);
    }
}

fn strategies() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::Star),
        Just(Strategy::Chain),
        (1u32..4).prop_map(|k| Strategy::Tree { k }),
        (1u32..4, 1u32..3).prop_map(|(stripes, k)| Strategy::Striped { stripes, k }),
        Just(Strategy::Auto),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// Whatever the cluster, holdings and strategy: each host receives each chunk it
    /// lacks exactly once, never one it holds, every sender has what it sends, the
    /// same input gives the same plan, and the simulation ends no sooner than the
    /// physical limit.
    #[test]
    fn every_plan_keeps_the_invariants(
        hosts in proptest::collection::vec((1u32..20, 1u32..20, 0u8..3), 2..10),
        sizes in proptest::collection::vec(1u32..5000, 1..40),
        holdings in proptest::collection::vec(proptest::collection::vec(0u32..40, 0..20), 10),
        strategy in strategies(),
    ) {
        let cluster = Cluster::new(hosts.iter().enumerate().map(|(i, &(u, d, r))| {
            host(&format!("h{i}"), f64::from(u) * MB, f64::from(d) * MB, Some(["a", "b", "c"][r as usize]))
        }).collect()).expect("cluster");
        let images = vec![Image::new("w", sizes.clone())];
        let mut inv = Inventory::empty(cluster.len(), 1);
        inv.add(HostIx(0), 0, &images[0].all());
        for (h, chunks) in holdings.iter().enumerate().take(cluster.len()).skip(1) {
            let held = Ranges::from_indices(chunks.iter().copied().filter(|&c| c < sizes.len() as u32));
            inv.add(HostIx(h as u32), 0, &held);
        }
        let needs: Vec<Need> = (1..cluster.len() as u32).map(|h| Need { host: HostIx(h), image: 0 }).collect();
        let p = plan(&cluster, &images, &inv, &needs, strategy).expect("plans");
        check_invariants(&images, &inv, &needs, &p);
        prop_assert_eq!(&p, &plan(&cluster, &images, &inv, &needs, strategy).expect("again"));
        let sim = simulate(&cluster, &images, &inv, &p).expect("simulates");
        prop_assert!(sim.finish >= sim.limit * 0.999, "{} < limit {}", sim.finish, sim.limit);
        if !p.streams.is_empty() {
            prop_assert!(sim.finish > 0.0);
        }
    }
}

#[test]
fn star_takes_n_times_s_over_the_source_uplink() {
    let images = [Image::new("w", vec![65536; 256])]; // 16 MiB
    let s = images[0].bytes() as f64;
    for n in [1, 2, 8, 32] {
        let (cluster, inv, needs) = uniform(n, 10.0 * MB, &images);
        let p = plan(&cluster, &images, &inv, &needs, Strategy::Star).expect("plan");
        let sim = simulate(&cluster, &images, &inv, &p).expect("sim");
        let closed = n as f64 * s / (10.0 * MB);
        let err = (sim.finish - closed).abs() / closed;
        assert!(err < 0.01, "star n={n}: {} vs {closed}", sim.finish);
    }
}

#[test]
fn chain_takes_s_over_b_plus_one_chunk_per_hop() {
    let images = [Image::new("w", vec![65536; 256])];
    let (s, c, b) = (images[0].bytes() as f64, 65536.0, 10.0 * MB);
    for n in [1, 2, 8, 64, 500] {
        let (cluster, inv, needs) = uniform(n, b, &images);
        let p = plan(&cluster, &images, &inv, &needs, Strategy::Chain).expect("plan");
        let sim = simulate(&cluster, &images, &inv, &p).expect("sim");
        let closed = s / b + (n as f64 - 1.0) * c / b;
        let err = (sim.finish - closed).abs() / closed;
        assert!(err < 0.02, "chain n={n}: {} vs {closed}", sim.finish);
        // Each host finishes one chunk after its parent.
        assert!(sim.host_finish.windows(2).skip(1).all(|w| w[1] >= w[0]), "{:?}", sim.host_finish);
    }
}

#[test]
fn a_slow_host_goes_to_the_tail_and_holds_back_only_itself() {
    let images = [Image::new("w", vec![65536; 1000])];
    let s = images[0].bytes() as f64;
    let mut hosts = vec![host("src", 12.5 * MB, 12.5 * MB, None)];
    hosts.push(host("slow", 1.25 * MB, 1.25 * MB, None)); // listed first of the receivers
    hosts.extend((2..=6).map(|i| host(&format!("h{i}"), 12.5 * MB, 12.5 * MB, None)));
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(7, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    let needs: Vec<Need> = (1..=6).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    let p = plan(&cluster, &images, &inv, &needs, Strategy::Chain).expect("plan");
    assert!(p.streams.iter().all(|st| st.from != HostIx(1)), "the slow host relays to nobody");
    let sim = simulate(&cluster, &images, &inv, &p).expect("sim");
    for h in 2..=6 {
        assert!(sim.host_finish[h] < 1.1 * s / (12.5 * MB), "h{h}: {:?}", sim.host_finish);
    }
    assert!((sim.host_finish[1] - s / (1.25 * MB)).abs() < 0.02 * sim.host_finish[1]);
}

/// A chain's middle host slowed for a while holds back everyone below it by the time
/// its link lost, and nobody above it; the closed form: it moves `from` of the image at
/// full rate, then `share` of the rate for `seconds`, then the rest at full rate.
#[test]
fn a_reshaped_link_holds_back_the_chain_below_it_for_the_time_it_lost() {
    let images = [Image::new("w", vec![65536; 2000])];
    let (s, b) = (images[0].bytes() as f64, 12.5 * MB);
    let (cluster, inv, needs) = uniform(6, b, &images);
    let p = plan(&cluster, &images, &inv, &needs, Strategy::Chain).expect("plan");
    let steady = simulate(&cluster, &images, &inv, &p).expect("sim");
    // The third host of the chain (the plan orders the receivers by index here).
    let order: Vec<u32> = p.streams.iter().map(|st| st.to.0).collect();
    let victim = HostIx(order[2]);
    let slow = Reshape { host: victim, up: 0.3, down: 0.3, from: 0.25, seconds: 4.0 };
    let sim = simulate_reshaped(&cluster, &images, &inv, &p, &[slow]).expect("sim");
    let lost = 4.0 * 0.7;
    let closed = s / b + lost;
    let v = victim.ix();
    assert!(
        (sim.host_finish[v] - closed).abs() < 0.03 * closed,
        "{} vs {closed}",
        sim.host_finish[v]
    );
    for &h in &order[..2] {
        let h = h as usize;
        let d = (sim.host_finish[h] - steady.host_finish[h]).abs();
        assert!(d < 0.02 * steady.finish, "above it: h{h} {d}");
    }
    for &h in &order[3..] {
        let h = h as usize;
        assert!(sim.host_finish[h] > steady.host_finish[h] + 0.9 * lost, "below it: h{h}");
    }
    // A link unchanged (share 1.0) changes nothing.
    let none = Reshape { up: 1.0, down: 1.0, ..slow };
    let same = simulate_reshaped(&cluster, &images, &inv, &p, &[none]).expect("sim");
    assert!((same.finish - steady.finish).abs() < 0.02 * steady.finish);
}

#[test]
fn a_slow_head_link_makes_star_linear_and_chain_flat() {
    // The paper's testbed: 100 Mbit/s hosts, the head host's link about 10 MB/s.
    let images = [Image::new("worker", vec![65536; 8400])]; // ~550 MB
    let mut hosts = vec![host("head", 10.0 * MB, 10.0 * MB, None)];
    hosts.extend((1..=8).map(|i| host(&format!("w{i}"), 12.5 * MB, 12.5 * MB, None)));
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(9, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    let needs: Vec<Need> = (1..=8).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    let time = |s| {
        simulate(&cluster, &images, &inv, &plan(&cluster, &images, &inv, &needs, s).expect("plan"))
            .expect("sim")
            .finish
    };
    let (star, chain, auto) = (time(Strategy::Star), time(Strategy::Chain), time(Strategy::Auto));
    let s = images[0].bytes() as f64;
    assert!((star - 8.0 * s / (10.0 * MB)).abs() < 0.01 * star, "{star}");
    assert!(chain < 1.1 * s / (10.0 * MB), "{chain}");
    assert!(auto <= chain.min(star) * 1.0001, "auto {auto} vs {chain}, {star}");
}

#[test]
fn cached_chunks_are_not_sent_and_holders_serve_them() {
    let images = [Image::new("w", vec![1000; 8])];
    let (cluster, mut inv, needs) = uniform(3, MB, &images);
    // h1 holds the first half; h2 and h3 lack everything.
    inv.add(HostIx(1), 0, &Ranges::span(0, 4));
    let p = plan(&cluster, &images, &inv, &needs, Strategy::Star).expect("plan");
    check_invariants(&images, &inv, &needs, &p);
    let text = golden(&p);
    assert_eq!(
        text,
        "0:0 h0→h1 [4,8)\n0:0 h1→h2 [0,4)\n0:0 h0→h2 [4,8)\n0:0 h1→h3 [0,4)\n0:0 h0→h3 [4,8)\n"
    );
}

/// One line per stream: `image:stripe from→to ranges`.
fn golden(p: &vw_planner::DistributionPlan) -> String {
    p.streams
        .iter()
        .map(|s| {
            let r: Vec<String> =
                s.ranges.ranges().iter().map(|(a, b)| format!("[{a},{b})")).collect();
            format!("{}:{} h{}→h{} {}\n", s.image, s.stripe, s.from.0, s.to.0, r.join(""))
        })
        .collect()
}

#[test]
fn golden_plans_of_a_small_cluster() {
    let images = [Image::new("w", vec![1000; 8])];
    let (cluster, mut inv, needs) = uniform(4, MB, &images);
    inv.add(HostIx(2), 0, &Ranges::span(0, 2));
    let p = |s| golden(&plan(&cluster, &images, &inv, &needs, s).expect("plan"));
    assert_eq!(
        p(Strategy::Chain),
        "0:0 h0→h1 [0,8)\n0:0 h1→h2 [2,8)\n0:0 h2→h3 [0,8)\n0:0 h3→h4 [0,8)\n"
    );
    // The source is no faster than its receivers: it feeds one, the tree hangs below.
    assert_eq!(
        p(Strategy::Tree { k: 2 }),
        "0:0 h0→h1 [0,8)\n0:0 h1→h2 [2,8)\n0:0 h1→h3 [0,8)\n0:0 h2→h4 [0,8)\n"
    );
    assert_eq!(
        p(Strategy::Striped { stripes: 2, k: 1 }),
        "0:0 h0→h1 [0,4)\n0:0 h1→h2 [2,4)\n0:0 h2→h3 [0,4)\n0:0 h3→h4 [0,4)\n\
         0:1 h0→h3 [4,8)\n0:1 h3→h4 [4,8)\n0:1 h4→h1 [4,8)\n0:1 h1→h2 [4,8)\n"
    );
}

#[test]
fn a_fast_source_roots_the_tree_itself() {
    let images = [Image::new("w", vec![1000; 8])];
    let mut hosts = vec![host("h0", 4.0 * MB, 4.0 * MB, None)];
    hosts.extend((1..=4).map(|i| host(&format!("h{i}"), MB, MB, None)));
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(5, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    let needs: Vec<Need> = (1..5).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    let p = plan(&cluster, &images, &inv, &needs, Strategy::Tree { k: 2 }).expect("plan");
    assert_eq!(golden(&p), "0:0 h0→h1 [0,8)\n0:0 h0→h2 [0,8)\n0:0 h1→h3 [0,8)\n0:0 h1→h4 [0,8)\n");
}

#[test]
fn rack_aware_orders_keep_a_chain_inside_a_rack() {
    let images = [Image::new("w", vec![1000; 4])];
    let hosts = vec![
        host("src", MB, MB, Some("r1")),
        host("a", MB, MB, Some("r2")),
        host("b", MB, MB, Some("r1")),
        host("c", MB, MB, Some("r2")),
        host("d", MB, MB, Some("r1")),
    ];
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(5, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    let needs: Vec<Need> = (1..5).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    let p = plan(&cluster, &images, &inv, &needs, Strategy::Chain).expect("plan");
    let order: Vec<u32> = p.streams.iter().map(|s| s.to.0).collect();
    assert_eq!(order, [2, 4, 1, 3], "the source's rack first, one crossing between racks");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let err = Cluster::new(vec![host("a", MB, 0.0, None)]).expect_err("zero");
    assert_eq!(
        err.to_string(),
        "host a has a zero downlink rate; give it a positive rate in the hosts file"
    );
    let err =
        Cluster::new(vec![host("a", MB, MB, None), host("a", MB, MB, None)]).expect_err("dup");
    assert_eq!(err, PlanError::DuplicateHost { name: "a".into() });
    let images = [Image::new("grid3/worker:1.0", vec![1000; 4])];
    let cluster =
        Cluster::new(vec![host("a", MB, MB, None), host("b", MB, MB, None)]).expect("cluster");
    let inv = Inventory::empty(2, 1);
    let err = plan(&cluster, &images, &inv, &[Need { host: HostIx(1), image: 0 }], Strategy::Star)
        .expect_err("no source");
    assert!(err.to_string().contains("no live host holds all of image grid3/worker:1.0"), "{err}");
}
