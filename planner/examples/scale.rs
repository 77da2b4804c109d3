//! Times plan + simulate for N hosts per strategy: `cargo run --profile dev -p vw-planner --example scale -- 10000`.
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
    let needs: Vec<Need> = (1..=n as u32).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    for s in Strategy::CANDIDATES.into_iter().chain([Strategy::Auto]) {
        let t = Instant::now();
        let p = plan(&cluster, &images, &inv, &needs, s).expect("plan");
        let planned = t.elapsed();
        let sim = simulate(&cluster, &images, &inv, &p).expect("sim");
        println!("{s:<12} plan {:>8.3} s  plan+sim {:>8.3} s  predicted {:>10.1} s  ratio {:>8.2}  steps {}", planned.as_secs_f64(), t.elapsed().as_secs_f64(), sim.finish, sim.ratio(), sim.steps);
    }
}
