//! A synthetic deployment for benchmarks and examples: one 550 MB image of 8,400 chunks
//! of 64 KiB on a source host (`h0`), `n` receivers at 100 Mbit/s in racks of 40, cold
//! or with a third of the image (in runs of eight chunks, about 350 ranges) cached on
//! every receiver.

use crate::{Cluster, Host, HostIx, Image, Inventory, Need, Ranges};

/// Everything `plan` and `simulate` take.
#[derive(Debug)]
pub struct Scenario {
    /// Source first, then the receivers.
    pub cluster: Cluster,
    /// The one image.
    pub images: Vec<Image>,
    /// What each host holds.
    pub inventory: Inventory,
    /// Every receiver needs the image.
    pub needs: Vec<Need>,
}

/// The scenario with `n` receivers and a source uplink of `source_rate` bytes/s.
pub fn scenario(n: usize, source_rate: f64, cached: bool) -> Scenario {
    const CHUNKS: u32 = 8400;
    let image = Image::new("worker", vec![65536; CHUNKS as usize]);
    let mut s = cold(image, n, source_rate, 12.5e6, Some(40));
    if cached {
        let base = Ranges::from_indices((0..CHUNKS).filter(|i| (i / 8) % 3 == 0));
        for h in 1..=n as u32 {
            s.inventory.add(HostIx(h), 0, &base);
        }
    }
    s
}

/// A source (`h0`, uplink and downlink `source_rate`) holding `image` and `n`
/// receivers at `rate` that each need it and hold none of it, in racks of
/// `rack_size` hosts (none: no racks).
pub fn cold(
    image: Image,
    n: usize,
    source_rate: f64,
    rate: f64,
    rack_size: Option<usize>,
) -> Scenario {
    let host = |i: usize, rate: f64| Host {
        name: format!("h{i}"),
        memory_mib: 4096,
        vcpus: 4,
        cpus: 2,
        up: rate,
        down: rate,
        rack: rack_size.map(|k| format!("r{}", i / k)),
        alive: true,
    };
    let hosts =
        std::iter::once(host(0, source_rate)).chain((1..=n).map(|i| host(i, rate))).collect();
    let cluster = Cluster::new(hosts).expect("the scenario's hosts are valid");
    let mut inventory = Inventory::empty(n + 1, 1);
    inventory.add(HostIx(0), 0, &image.all());
    let needs = (1..=n as u32).map(|h| Need { host: HostIx(h), image: 0 }).collect();
    Scenario { cluster, images: vec![image], inventory, needs }
}
