//! Times plan + simulate for N hosts per strategy, cold or with a third of the image
//! cached: `cargo run --profile dev -p vw-planner --example scale -- 10000 [cached]`.
//! The source's link is as fast as the others' (12.5 MB/s), so a chain's closed form
//! S/B + (N-1)c/B applies.

use std::time::Instant;

use vw_planner::testdata::scenario;
use vw_planner::{plan, simulate, Strategy};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let cached = std::env::args().nth(2).as_deref() == Some("cached");
    let s = scenario(n, 12.5e6, cached);
    for strategy in Strategy::CANDIDATES.into_iter().chain([Strategy::Auto]) {
        let t = Instant::now();
        let p = plan(&s.cluster, &s.images, &s.inventory, &s.needs, strategy).expect("plan");
        let planned = t.elapsed();
        let sim = simulate(&s.cluster, &s.images, &s.inventory, &p).expect("sim");
        println!(
            "{strategy:<12} plan {:>8.3} s  plan+sim {:>8.3} s  predicted {:>10.1} s  ratio {:>8.2}  steps {}",
            planned.as_secs_f64(),
            t.elapsed().as_secs_f64(),
            sim.finish,
            sim.ratio(),
            sim.steps
        );
    }
}
