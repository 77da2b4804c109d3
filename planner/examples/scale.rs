//! Times plan + simulate for N hosts per strategy, cold or with a third of the image
//! cached: `cargo run --profile dev -p vw-planner --example scale -- 10000 [cached]`.
use std::time::Instant;
use vw_planner::{plan, simulate, Cluster, Host, HostIx, Image, Inventory, Need, Strategy};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let images = [Image::new("worker", vec![65536; 8400])];
    let hosts = (0..=n)
        .map(|i| Host {
            name: format!("h{i}"),
            memory_mib: 4096,
            vcpus: 4,
            cpus: 2,
            up: 12.5e6,
            down: 12.5e6,
            rack: Some(format!("r{}", i / 40)),
            alive: true,
        })
        .collect();
    let cluster = Cluster::new(hosts).expect("cluster");
    let mut inv = Inventory::empty(n + 1, 1);
    inv.add(HostIx(0), 0, &images[0].all());
    if std::env::args().nth(2).as_deref() == Some("cached") {
        let base = vw_planner::Ranges::from_indices((0..8400).filter(|i| (i / 8) % 3 == 0));
        for h in 1..=n as u32 {
            inv.add(HostIx(h), 0, &base);
        }
    }
    let needs: Vec<Need> = (1..=n as u32).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    for s in Strategy::CANDIDATES.into_iter().chain([Strategy::Auto]) {
        let t = Instant::now();
        let p = plan(&cluster, &images, &inv, &needs, s).expect("plan");
        let planned = t.elapsed();
        let sim = simulate(&cluster, &images, &inv, &p).expect("sim");
        println!("{s:<12} plan {:>8.3} s  plan+sim {:>8.3} s  predicted {:>10.1} s  ratio {:>8.2}  steps {}", planned.as_secs_f64(), t.elapsed().as_secs_f64(), sim.finish, sim.ratio(), sim.steps);
    }
}
