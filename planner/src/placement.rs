//! Placement: which host runs each VM.
//!
//! VMs are placed in order (head first). A host fits a VM if it is alive and has the
//! memory and vCPUs free, and, for a pinned VM, as many physical cores not pinned by
//! anyone else (two virtual clusters of different VOs can share hosts without sharing a
//! pinned core). Among the hosts that fit:
//! - **spread** takes the host with the fewest VMs, then the one lacking the fewest
//!   bytes of the VM's images (cache affinity), then the first in the hosts file;
//! - **pack** takes the host lacking the fewest bytes, then the one with the least
//!   memory left, then the first.
//!
//! A host counts as holding an image once a VM that uses it is placed there (it will
//! be staged there). Every decision carries a one-line reason.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Cluster, HostIx, Image, Inventory, PlanError};

/// What one VM needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDemand {
    /// Its name (`grid3-worker1`).
    pub name: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Whether its vCPUs get dedicated physical cores.
    pub pinned: bool,
    /// The images it runs from (indices into the image list).
    pub images: Vec<usize>,
}

/// What is already running on a host (another workspace): it takes capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Where.
    pub host: HostIx,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Cores pinned to it.
    pub cores: Vec<u32>,
}

/// Spread or pack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// One VM per host while possible.
    #[default]
    Spread,
    /// As few hosts as possible.
    Pack,
}

/// One VM's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The VM.
    pub vm: String,
    /// Its host.
    pub host: HostIx,
    /// The cores it is pinned to, if pinned.
    pub cores: Option<Vec<u32>>,
    /// Why this host, in one line.
    pub reason: String,
}

/// Free capacity of one host while placing.
#[derive(Clone, Debug)]
struct Free {
    memory_mib: u64,
    vcpus: u32,
    pinned: BTreeSet<u32>,
    vms: u32,
}

/// Places `vms` on `cluster`, after what `committed` already takes.
pub fn place(
    cluster: &Cluster,
    images: &[Image],
    inventory: &Inventory,
    vms: &[VmDemand],
    committed: &[Committed],
    policy: Policy,
) -> Result<Vec<Placed>, PlanError> {
    let mut free: Vec<Free> = cluster
        .hosts()
        .iter()
        .map(|h| Free { memory_mib: h.memory_mib, vcpus: h.vcpus, pinned: BTreeSet::new(), vms: 0 })
        .collect();
    for c in committed {
        let f = &mut free[c.host.ix()];
        f.memory_mib = f.memory_mib.saturating_sub(c.memory_mib);
        f.vcpus = f.vcpus.saturating_sub(c.vcpus);
        f.pinned.extend(&c.cores);
        f.vms += 1;
    }
    check_totals(cluster, vms, &free)?;
    // Bytes each host lacks of each image; zero once a VM using it is placed there
    // (it will be staged there).
    let mut lacks: Vec<Vec<u64>> = cluster
        .ixs()
        .map(|h| {
            images
                .iter()
                .enumerate()
                .map(|(i, img)| img.bytes() - img.bytes_of(inventory.held(h, i)))
                .collect()
        })
        .collect();
    let lacking = |h: HostIx, vm: &VmDemand, lacks: &[Vec<u64>]| -> u64 {
        vm.images.iter().map(|&i| lacks[h.ix()][i]).sum()
    };

    let mut out = Vec::with_capacity(vms.len());
    for vm in vms {
        let fits = |h: HostIx| {
            let (host, f) = (cluster.host(h), &free[h.ix()]);
            host.alive
                && f.memory_mib >= vm.memory_mib
                && f.vcpus >= vm.vcpus
                && (!vm.pinned || unpinned(host.cpus, f) >= vm.vcpus)
        };
        // One pass: how many hosts fit, and the best of them.
        let mut fitting = 0usize;
        let mut best: Option<((u64, u64, u32), HostIx)> = None;
        for h in cluster.ixs().filter(|&h| fits(h)) {
            fitting += 1;
            let l = lacking(h, vm, &lacks);
            let key = match policy {
                Policy::Spread => (u64::from(free[h.ix()].vms), l, h.0),
                Policy::Pack => (l, free[h.ix()].memory_mib, h.0),
            };
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, h));
            }
        }
        let Some((_, best)) = best else {
            return Err(PlanError::DoesNotFit(why_not(cluster, vm, &free)));
        };
        let lacked = lacking(best, vm, &lacks);
        let host = cluster.host(best);
        let f = &mut free[best.ix()];
        let cores = vm.pinned.then(|| {
            let cores: Vec<u32> =
                (0..host.cpus).filter(|c| !f.pinned.contains(c)).take(vm.vcpus as usize).collect();
            f.pinned.extend(&cores);
            cores
        });
        let reason = format!(
            "{}: {} VM{} there before, lacks {} of its images{}, {} MiB and {} vCPUs free before",
            match policy {
                Policy::Spread => "spread",
                Policy::Pack => "pack",
            },
            f.vms,
            if f.vms == 1 { "" } else { "s" },
            crate::human_bytes(lacked),
            if fitting > 1 {
                format!(" (of {fitting} hosts that fit)")
            } else {
                " (the only host that fits)".to_owned()
            },
            f.memory_mib,
            f.vcpus,
        );
        f.memory_mib -= vm.memory_mib;
        f.vcpus -= vm.vcpus;
        f.vms += 1;
        for &i in &vm.images {
            lacks[best.ix()][i] = 0;
        }
        out.push(Placed { vm: vm.name.clone(), host: best, cores, reason });
    }
    Ok(out)
}

/// The cores of a host of `cpus` that no VM is pinned to (what others committed comes
/// from their inventories, so it is counted, not subtracted).
fn unpinned(cpus: u32, f: &Free) -> u32 {
    (0..cpus).filter(|c| !f.pinned.contains(c)).count() as u32
}

/// The whole workspace against the whole (live) cluster, before placing anything.
fn check_totals(cluster: &Cluster, vms: &[VmDemand], free: &[Free]) -> Result<(), PlanError> {
    let live = || cluster.ixs().filter(|h| cluster.host(*h).alive);
    // Saturating: the hosts' figures come from their inventories.
    let sum = |it: &mut dyn Iterator<Item = u64>| it.fold(0u64, u64::saturating_add);
    let want_mem = sum(&mut vms.iter().map(|v| v.memory_mib));
    let have_mem = sum(&mut live().map(|h| free[h.ix()].memory_mib));
    let want_cpu = sum(&mut vms.iter().map(|v| u64::from(v.vcpus)));
    let have_cpu = sum(&mut live().map(|h| u64::from(free[h.ix()].vcpus)));
    if want_mem > have_mem || want_cpu > have_cpu {
        return Err(PlanError::DoesNotFit(format!(
            "the workspace needs {want_mem} MiB and {want_cpu} vCPUs for {} VMs; the {} live hosts have {have_mem} MiB and {have_cpu} vCPUs free",
            vms.len(),
            live().count()
        )));
    }
    Ok(())
}

/// Why no host fits `vm`: what is short, and where.
fn why_not(cluster: &Cluster, vm: &VmDemand, free: &[Free]) -> String {
    let mut short = Vec::new();
    for h in cluster.ixs() {
        let (host, f) = (cluster.host(h), &free[h.ix()]);
        let why = if !host.alive {
            "down".to_owned()
        } else if f.memory_mib < vm.memory_mib {
            format!("{} MiB free", f.memory_mib)
        } else if f.vcpus < vm.vcpus {
            format!("{} vCPUs free", f.vcpus)
        } else {
            format!("{} unpinned cores", unpinned(host.cpus, f))
        };
        short.push(format!("{} {why}", host.name));
    }
    let shown = short.len().min(6);
    let more = if short.len() > shown {
        format!(", and {} more", short.len() - shown)
    } else {
        String::new()
    };
    format!(
        "VM {} needs {} MiB and {} vCPUs{}; no host has them: {}{more}",
        vm.name,
        vm.memory_mib,
        vm.vcpus,
        if vm.pinned { " on dedicated cores" } else { "" },
        short[..shown].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Host, Ranges};
    use proptest::prelude::*;

    fn host(name: &str, memory_mib: u64, cpus: u32) -> Host {
        Host {
            name: name.into(),
            memory_mib,
            vcpus: cpus * 2,
            cpus,
            up: 1e7,
            down: 1e7,
            rack: None,
            alive: true,
        }
    }

    fn vm(name: &str, memory_mib: u64, vcpus: u32, pinned: bool) -> VmDemand {
        VmDemand { name: name.into(), memory_mib, vcpus, pinned, images: vec![0] }
    }

    #[test]
    fn spread_puts_one_vm_per_host_and_prefers_cached_hosts() {
        let cluster = Cluster::new((0..4).map(|i| host(&format!("h{i}"), 2048, 2)).collect())
            .expect("cluster");
        let images = vec![Image::new("w", vec![1000; 10])];
        let mut inv = Inventory::empty(4, 1);
        inv.add(HostIx(2), 0, &Ranges::span(0, 10));
        let vms: Vec<VmDemand> = (0..4).map(|i| vm(&format!("vm{i}"), 512, 1, false)).collect();
        let placed = place(&cluster, &images, &inv, &vms, &[], Policy::Spread).expect("fits");
        let hosts: Vec<u32> = placed.iter().map(|p| p.host.0).collect();
        assert_eq!(hosts, [2, 0, 1, 3], "the cached host first, then one per host");
        assert!(placed[0].reason.contains("lacks 0 B"), "{}", placed[0].reason);
        let packed = place(&cluster, &images, &inv, &vms, &[], Policy::Pack).expect("fits");
        assert!(packed.iter().all(|p| p.host == HostIx(2)), "{packed:?}");
    }

    #[test]
    fn pinned_vms_of_two_clusters_never_share_cores() {
        let cluster = Cluster::new(vec![host("h0", 8192, 4)]).expect("cluster");
        let images = vec![Image::new("w", vec![10])];
        let inv = Inventory::empty(1, 1);
        let committed =
            [Committed { host: HostIx(0), memory_mib: 1024, vcpus: 2, cores: vec![0, 1] }];
        let vms = [vm("a", 512, 1, true), vm("b", 512, 1, true)];
        let placed = place(&cluster, &images, &inv, &vms, &committed, Policy::Pack).expect("fits");
        assert_eq!(placed[0].cores.as_deref(), Some(&[2][..]));
        assert_eq!(placed[1].cores.as_deref(), Some(&[3][..]));
        let err =
            place(&cluster, &images, &inv, &[vm("c", 512, 3, true)], &committed, Policy::Pack)
                .expect_err("no cores");
        assert!(err.to_string().contains("h0 2 unpinned cores"), "{err}");
    }

    /// What other hosts say they have committed is their word: an impossible claim
    /// (more pinned cores than CPUs, capacities that overflow a sum) makes a host
    /// full, never a panic.
    #[test]
    fn impossible_commitments_do_not_panic_the_planner() {
        let cluster =
            Cluster::new(vec![host("h0", u64::MAX, 2), host("h1", u64::MAX, 2)]).expect("cluster");
        let images = vec![Image::new("w", vec![10])];
        let inv = Inventory::empty(2, 1);
        let committed =
            [Committed { host: HostIx(0), memory_mib: 1, vcpus: 1, cores: (0..5).collect() }];
        let vms = [vm("a", 512, 2, true), vm("b", 512, 2, true)];
        let err = place(&cluster, &images, &inv, &vms, &committed, Policy::Pack)
            .expect_err("h0 has no free core");
        assert!(err.to_string().contains("h0 0 unpinned cores"), "{err}");
    }

    #[test]
    fn a_workspace_larger_than_the_cluster_says_what_is_short() {
        let cluster =
            Cluster::new(vec![host("h0", 1024, 1), host("h1", 1024, 1)]).expect("cluster");
        let images = vec![Image::new("w", vec![10])];
        let inv = Inventory::empty(2, 1);
        let vms: Vec<VmDemand> = (0..5).map(|i| vm(&format!("vm{i}"), 512, 1, false)).collect();
        let err = place(&cluster, &images, &inv, &vms, &[], Policy::Spread).expect_err("too big");
        assert!(err.to_string().contains("needs 2560 MiB and 5 vCPUs for 5 VMs; the 2 live hosts have 2048 MiB and 4 vCPUs free"), "{err}");
        let big = [vm("big", 1536, 1, false)];
        let err = place(&cluster, &images, &inv, &big, &[], Policy::Spread).expect_err("too big");
        assert!(err.to_string().contains("h0 1024 MiB free"), "{err}");
    }

    proptest! {
        /// Whatever the demands, placement never overcommits memory, vCPUs or pinned
        /// cores, never uses a dead host, and is deterministic.
        #[test]
        fn never_overcommits(
            hosts in proptest::collection::vec((256u64..4096, 1u32..8, any::<bool>()), 1..8),
            vms in proptest::collection::vec((64u64..2048, 1u32..4, any::<bool>()), 1..16),
            pack in any::<bool>(),
        ) {
            let cluster = Cluster::new(hosts.iter().enumerate().map(|(i, &(m, c, alive))| Host { alive, ..host(&format!("h{i}"), m, c) }).collect()).expect("cluster");
            let images = vec![Image::new("w", vec![100; 4])];
            let inv = Inventory::empty(cluster.len(), 1);
            let demands: Vec<VmDemand> = vms.iter().enumerate().map(|(i, &(m, c, p))| vm(&format!("v{i}"), m, c, p)).collect();
            let policy = if pack { Policy::Pack } else { Policy::Spread };
            let Ok(placed) = place(&cluster, &images, &inv, &demands, &[], policy) else { return Ok(()) };
            prop_assert_eq!(&placed, &place(&cluster, &images, &inv, &demands, &[], policy).expect("same again"));
            for h in cluster.ixs() {
                let host = cluster.host(h);
                let on: Vec<(&Placed, &VmDemand)> = placed.iter().zip(&demands).filter(|(p, _)| p.host == h).collect();
                prop_assert!(host.alive || on.is_empty());
                prop_assert!(on.iter().map(|(_, d)| d.memory_mib).sum::<u64>() <= host.memory_mib);
                prop_assert!(on.iter().map(|(_, d)| d.vcpus).sum::<u32>() <= host.vcpus);
                let cores: Vec<u32> = on.iter().filter_map(|(p, _)| p.cores.clone()).flatten().collect();
                let unique: BTreeSet<u32> = cores.iter().copied().collect();
                prop_assert_eq!(unique.len(), cores.len(), "a core pinned twice");
                prop_assert!(cores.iter().all(|&c| c < host.cpus));
            }
        }
    }
}
