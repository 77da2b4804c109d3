//! Plan + simulate for 1,000 and 10,000 hosts (the target: 10,000 in at most
//! 2 s). A 550 MB image of 64 KiB chunks, a source on a 10 MB/s link, hosts at
//! 100 Mbit/s in racks of 40, cold, and at 10,000 also with a third of the image
//! cached everywhere. `cargo bench --profile dev -p vw-planner`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vw_planner::{plan, simulate, Cluster, Host, HostIx, Image, Inventory, Need, Strategy};

fn setup(n: usize, cached: bool) -> (Cluster, Vec<Image>, Inventory, Vec<Need>) {
    let images = vec![Image::new("worker", vec![65536; 8400])];
    let mut hosts = vec![Host {
        name: "head".into(),
        memory_mib: 4096,
        vcpus: 4,
        cpus: 2,
        up: 10e6,
        down: 10e6,
        rack: Some("r0".into()),
        alive: true,
    }];
    hosts.extend((1..=n).map(|i| Host {
        name: format!("h{i}"),
        memory_mib: 4096,
        vcpus: 4,
        cpus: 2,
        up: 12.5e6,
        down: 12.5e6,
        rack: Some(format!("r{}", i / 40)),
        alive: true,
    }));
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(n + 1, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    if cached {
        // A third of the chunks, in runs of eight (about 350 ranges): a base OS held.
        let base = vw_planner::Ranges::from_indices((0..8400).filter(|i| (i / 8) % 3 == 0));
        for h in 1..=n as u32 {
            inv.add(HostIx(h), 0, &base);
        }
    }
    let needs = (1..=n as u32).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    (cluster, images, inv, needs)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan+simulate");
    g.sample_size(10);
    for (n, cached) in [(1000, false), (10000, false), (10000, true)] {
        let (cluster, images, inv, needs) = setup(n, cached);
        let label = |s: Strategy| format!("{s}{}", if cached { "/cached" } else { "" });
        for s in [
            Strategy::Chain,
            Strategy::Tree { k: 2 },
            Strategy::Striped { stripes: 4, k: 2 },
            Strategy::Auto,
        ] {
            g.bench_with_input(BenchmarkId::new(label(s), n), &s, |b, &s| {
                b.iter(|| {
                    let p = plan(&cluster, &images, &inv, &needs, s).expect("plan");
                    simulate(&cluster, &images, &inv, &p).expect("simulate").finish
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
