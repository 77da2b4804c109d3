//! Plan + simulate for 1,000 and 10,000 hosts (the target: 10,000 in at most
//! 2 s). A 550 MB image of 64 KiB chunks, a source on a 10 MB/s link, hosts at
//! 100 Mbit/s in racks of 40, cold, and at 10,000 also with a third of the image
//! cached everywhere. `cargo bench --profile dev -p vw-planner`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vw_planner::testdata::scenario;
use vw_planner::{plan, simulate, Strategy};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan+simulate");
    g.sample_size(10);
    for (n, cached) in [(1000, false), (10000, false), (10000, true)] {
        let sc = scenario(n, 10e6, cached);
        let (cluster, images, inv, needs) = (&sc.cluster, &sc.images, &sc.inventory, &sc.needs);
        let label = |s: Strategy| format!("{s}{}", if cached { "/cached" } else { "" });
        for s in [
            Strategy::Chain,
            Strategy::Tree { k: 2 },
            Strategy::Striped { stripes: 4, k: 2 },
            Strategy::Auto,
        ] {
            g.bench_with_input(BenchmarkId::new(label(s), n), &s, |b, &s| {
                b.iter(|| {
                    let p = plan(cluster, images, inv, needs, s).expect("plan");
                    simulate(cluster, images, inv, &p).expect("simulate").finish
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
