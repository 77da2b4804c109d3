//! The head's view of the physical cluster, made from the hosts' inventory answers.
//!
//! Each host answers [`Request::Inventory`](super::Request::Inventory) with an
//! [`InventoryReport`] (checked when it was read: `Reply::check`); [`cluster_view`]
//! turns the answers into what the planner takes: its [`Cluster`] of hosts (a host that
//! did not answer is dead: it gets no VMs and sends nothing), the chunks each host
//! holds ([`Inventory`]), and what VMs already on the hosts take (capacity, pinned
//! cores, addresses). Pure: no I/O, no clock, so the head, the tests and the
//! `inventory` fuzz target run the same code.

use vw_chunkstore::ImageRef;
use vw_planner::address::NicAddress;
use vw_planner::{Cluster, Committed, Host, HostIx, Inventory, PlanError, Ranges};

use super::cap::StageCap;
use super::protocol::{bit, InventoryReport};
use crate::config::DriverKind;
use crate::machine::{Source, ASSUMED_LINK_RATE};

/// What the inventories say about the physical cluster.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Every host asked, in the order asked; those without an inventory are dead.
    pub cluster: Cluster,
    /// Which chunks of each image each host holds.
    pub inventory: Inventory,
    /// What the VMs already on the hosts take (capacity and pinned cores), per host.
    pub committed: Vec<Committed>,
    /// The addresses and MACs held on the hosts.
    pub nics: Vec<NicAddress>,
    /// The hosts without an inventory, each with why (the caller reports them lost).
    pub dead: Vec<(String, String)>,
    /// The Xen driver of each host with an inventory.
    pub drivers: Vec<(String, DriverKind)>,
    /// Per host: whether the rates it is planned at were configured or measured (its
    /// link's speed from the operator or the NIC, or a lower cap), so that what the
    /// plan expects of its streams means something. False for an assumed link and for
    /// a dead host.
    pub links_known: Vec<bool>,
    /// Per host: the deployment's cap on its link, bytes per second each way (`None`
    /// when the deployment has no cap, or the host is dead). Its rates are planned at
    /// most at this.
    pub caps: Vec<Option<u64>>,
}

impl ClusterView {
    /// Refuses a cluster whose live hosts run different Xen drivers (a simulated host
    /// among real ones would report VMs that do not exist), unless `mixed` allows it.
    pub fn check_drivers(&self, mixed: bool) -> Result<(), ViewError> {
        let mut kinds: Vec<DriverKind> = self.drivers.iter().map(|(_, d)| *d).collect();
        kinds.sort_by_key(|d| d.name());
        kinds.dedup();
        if kinds.len() <= 1 || mixed {
            return Ok(());
        }
        let by_driver = kinds
            .iter()
            .map(|k| {
                let hosts: Vec<&str> =
                    self.drivers.iter().filter(|(_, d)| d == k).map(|(h, _)| h.as_str()).collect();
                format!("{k} on {}", hosts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(ViewError::MixedDrivers { by_driver })
    }
}

/// Why the inventories cannot be planned with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    /// Not one answer per host (a bug in the caller).
    #[error("{answers} inventory answers for {hosts} hosts")]
    Answers {
        /// Hosts asked.
        hosts: usize,
        /// Answers given.
        answers: usize,
    },
    /// A host answered for another number of images than it was asked about.
    #[error(
        "host {host} answered for {answered} images of {asked}; is it running another \
         version of vwd?"
    )]
    Images {
        /// The host.
        host: String,
        /// Images it answered for.
        answered: usize,
        /// Images it was asked about.
        asked: usize,
    },
    /// A held-chunks bitmap of the wrong length.
    #[error(
        "host {host} answered a bitmap of {bytes} bytes for image {image} of {chunks} \
         chunks; is it running another version of vwd?"
    )]
    Bitmap {
        /// The host.
        host: String,
        /// The image.
        image: ImageRef,
        /// The bitmap's length.
        bytes: usize,
        /// The image's chunks.
        chunks: usize,
    },
    /// A host reports more CPUs than vCPUs can be counted for (an unchecked report).
    #[error("host {host} reports {cpus} CPUs, more than can be planned with")]
    Cpus {
        /// The host.
        host: String,
        /// What it reports.
        cpus: u32,
    },
    /// The live hosts run different Xen drivers.
    #[error(
        "the hosts run different Xen drivers ({by_driver}): a simulated host runs no guest; \
         set [xen] driver in each host's cluster config, or deploy with --mixed-drivers"
    )]
    MixedDrivers {
        /// Each driver with its hosts.
        by_driver: String,
    },
    /// The planner refuses the hosts.
    #[error(transparent)]
    Cluster(#[from] PlanError),
}

/// The planner's view of `names` (the hosts asked, in order) from their `answers` (one
/// per host: its inventory, or why there is none). `images` are the workspace's
/// images in planner order, each with its count of distinct non-zero chunks: every
/// inventory must hold one bitmap of that many bits per image. A host without an
/// inventory is planned dead, with no capacity; a live one at the lowest of its link's
/// speed, its caps and the deployment's `cap` on its link, with the vCPUs per CPU it
/// allows.
pub fn cluster_view(
    names: &[String],
    answers: &[Result<InventoryReport, String>],
    images: &[(ImageRef, usize)],
    cap: Option<StageCap>,
) -> Result<ClusterView, ViewError> {
    if names.len() != answers.len() {
        return Err(ViewError::Answers { hosts: names.len(), answers: answers.len() });
    }
    let mut hosts = Vec::with_capacity(names.len());
    let mut inventory = Inventory::empty(names.len(), images.len());
    let (mut committed, mut nics, mut dead) = (Vec::new(), Vec::new(), Vec::new());
    let (mut drivers, mut links_known, mut caps) = (Vec::new(), Vec::new(), Vec::new());
    for (h, (name, answer)) in names.iter().zip(answers).enumerate() {
        let ix = HostIx(h as u32);
        let r = match answer {
            Ok(r) => r,
            Err(e) => {
                dead.push((name.clone(), e.clone()));
                links_known.push(false);
                caps.push(None);
                hosts.push(Host {
                    name: name.clone(),
                    memory_mib: 0,
                    vcpus: 0,
                    cpus: 0,
                    up: ASSUMED_LINK_RATE,
                    down: ASSUMED_LINK_RATE,
                    rack: None,
                    alive: false,
                });
                continue;
            }
        };
        let cpus = r.capacity.cpus;
        let vcpus = cpus
            .checked_mul(r.capacity.vcpus_per_cpu)
            .ok_or_else(|| ViewError::Cpus { host: name.clone(), cpus })?;
        let link = r.link.bytes_per_s;
        // The deployment's cap, on the link as this host lets staging use it (its own
        // caps are what an operator set for its link): a share of an assumed link is a
        // guess.
        let own = [r.caps.0, r.caps.1].into_iter().flatten().fold(link, f64::min);
        let staging = cap.map(|c| c.on(own).max(1.0));
        let below = |c: Option<f64>| c.is_some_and(|c| c < link);
        let known = |own: Option<f64>| {
            r.link.source != Source::Assumed
                || below(own)
                || matches!(cap, Some(StageCap::Rate(rate)) if rate < link)
        };
        links_known.push(known(r.caps.0) && known(r.caps.1));
        caps.push(staging.map(|c| c as u64));
        drivers.push((name.clone(), r.driver));
        let rate = |own: Option<f64>| [own, staging].into_iter().flatten().fold(link, f64::min);
        hosts.push(Host {
            name: name.clone(),
            memory_mib: r.capacity.memory_mib,
            vcpus,
            cpus,
            up: rate(r.caps.0),
            down: rate(r.caps.1),
            rack: r.rack.clone(),
            alive: true,
        });
        if r.held.len() != images.len() {
            return Err(ViewError::Images {
                host: name.clone(),
                answered: r.held.len(),
                asked: images.len(),
            });
        }
        for (i, (map, (image, n))) in r.held.iter().zip(images).enumerate() {
            if map.len() != n.div_ceil(8) {
                return Err(ViewError::Bitmap {
                    host: name.clone(),
                    image: image.clone(),
                    bytes: map.len(),
                    chunks: *n,
                });
            }
            let held = (0..*n).filter(|&c| bit(map, c)).map(|c| c as u32);
            inventory.add(ix, i, &Ranges::from_indices(held));
        }
        committed.extend(r.committed.iter().map(|vm| Committed {
            host: ix,
            memory_mib: vm.memory_mib,
            vcpus: vm.vcpus,
            cores: vm.cores.clone(),
        }));
        nics.extend(r.addresses.iter().copied());
    }
    let cluster = Cluster::new(hosts)?;
    Ok(ClusterView { cluster, inventory, committed, nics, dead, drivers, links_known, caps })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use vw_planner::address::{Mac, Network};

    use super::*;
    use crate::control::protocol::bitmap;
    use crate::machine::{LinkRate, Source};
    use crate::report::HostCapacity;

    fn capacity(memory_mib: u64, cpus: u32, vcpus_per_cpu: u32) -> HostCapacity {
        HostCapacity {
            memory_mib,
            cpus,
            vcpus_per_cpu,
            memory_from: Source::Configured,
            cpus_from: Source::Machine,
        }
    }

    fn link(bytes_per_s: f64, source: Source) -> LinkRate {
        LinkRate { bytes_per_s, source }
    }

    fn image(name: &str) -> ImageRef {
        name.parse().expect("image ref")
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }

    fn report(held: Vec<Vec<u8>>) -> InventoryReport {
        InventoryReport {
            driver: DriverKind::Simulated,
            capacity: capacity(4096, 2, 1),
            link: link(ASSUMED_LINK_RATE, Source::Assumed),
            caps: (None, None),
            rack: None,
            committed: vec![],
            addresses: vec![],
            held,
        }
    }

    #[test]
    fn answers_become_hosts_holdings_and_what_is_taken() {
        let images = [(image("vo/base:1"), 10), (image("vo/worker:1"), 3)];
        let nic = NicAddress {
            network: Network::Private,
            ip: "10.0.0.7".parse().expect("ip"),
            mac: Mac([0x00, 0x16, 0x3e, 1, 2, 3]),
        };
        let first = InventoryReport {
            driver: DriverKind::Simulated,
            capacity: capacity(8192, 4, 3),
            link: link(1.5e6, Source::Nic("eth0".into())),
            caps: (Some(1e6), Some(2e6)),
            rack: Some("r1".into()),
            committed: vec![crate::report::VmTake { memory_mib: 512, vcpus: 2, cores: vec![1, 3] }],
            addresses: vec![nic],
            held: vec![bitmap(10, |c| c == 0 || c == 9), vec![0b111]],
        };
        let answers =
            vec![Ok(first), Err("cannot reach it".into()), Ok(report(vec![vec![0, 0], vec![0]]))];
        let view = cluster_view(&names(3), &answers, &images, None).expect("view");

        let hosts = view.cluster.hosts();
        assert_eq!(hosts.len(), 3);
        assert_eq!(
            hosts[0],
            Host {
                name: "h0".into(),
                memory_mib: 8192,
                vcpus: 4 * 3,
                cpus: 4,
                up: 1e6,
                down: 1.5e6,
                rack: Some("r1".into()),
                alive: true,
            }
        );
        assert!(!hosts[1].alive);
        assert_eq!((hosts[1].memory_mib, hosts[1].vcpus, hosts[1].cpus), (0, 0, 0));
        assert_eq!(
            (hosts[2].up, hosts[2].down, hosts[2].vcpus, hosts[2].alive),
            (ASSUMED_LINK_RATE, ASSUMED_LINK_RATE, 2, true)
        );

        assert_eq!(view.inventory.held(HostIx(0), 0), &Ranges::from_indices([0, 9]));
        assert_eq!(view.inventory.held(HostIx(0), 1), &Ranges::span(0, 3));
        for (h, i) in [(1, 0), (1, 1), (2, 0), (2, 1)] {
            assert!(view.inventory.held(HostIx(h), i).is_empty(), "host {h} image {i}");
        }
        assert_eq!(
            view.committed,
            vec![Committed { host: HostIx(0), memory_mib: 512, vcpus: 2, cores: vec![1, 3] }]
        );
        assert_eq!(view.nics, vec![nic]);
        assert_eq!(view.dead, vec![("h1".to_owned(), "cannot reach it".to_owned())]);
        // The NIC's speed is known; an assumed one is not, nor a dead host's.
        assert_eq!(view.links_known, vec![true, false, false]);
    }

    /// An assumed link capped below its assumed speed both ways is planned at the
    /// operator's caps: known. One way uncapped: not.
    #[test]
    fn caps_below_an_assumed_link_make_its_rates_known() {
        let images = [(image("vo/base:1"), 1)];
        let capped = |caps| InventoryReport { caps, ..report(vec![vec![0]]) };
        let answers = vec![
            Ok(capped((Some(1e7), Some(1e7)))),
            Ok(capped((Some(1e7), None))),
            Ok(capped((Some(1e7), Some(ASSUMED_LINK_RATE * 2.0)))),
        ];
        let view = cluster_view(&names(3), &answers, &images, None).expect("view");
        assert_eq!(view.links_known, vec![true, false, false]);
    }

    /// A deployment's cap lowers every live host's rates both ways (a share: of the
    /// link as the host's own caps leave it), and each host is told its cap; a rate cap below an
    /// assumed link makes it known, a share of one does not.
    #[test]
    fn a_deployment_cap_is_planned_on_every_link() {
        let images = [(image("vo/base:1"), 1)];
        let nic = InventoryReport {
            link: link(12.5e6, Source::Nic("eth0".into())),
            caps: (Some(5e6), None),
            ..report(vec![vec![0]])
        };
        let answers = vec![Ok(nic), Err("gone".into()), Ok(report(vec![vec![0]]))];
        let view =
            cluster_view(&names(3), &answers, &images, Some(StageCap::Share(0.5))).expect("view");
        // Half of what the host lets staging use of its link (its own upload cap).
        let h = view.cluster.hosts();
        assert_eq!((h[0].up, h[0].down), (2.5e6, 2.5e6));
        assert_eq!((h[2].up, h[2].down), (ASSUMED_LINK_RATE / 2.0, ASSUMED_LINK_RATE / 2.0));
        assert_eq!(view.caps, vec![Some(2_500_000), None, Some((ASSUMED_LINK_RATE / 2.0) as u64)]);
        assert_eq!(view.links_known, vec![true, false, false]);

        let rate = Some(StageCap::Rate(1e6));
        let view = cluster_view(&names(3), &answers, &images, rate).expect("view");
        assert_eq!(view.caps, vec![Some(1_000_000), None, Some(1_000_000)]);
        assert_eq!(view.links_known, vec![true, false, true]);
        assert_eq!((view.cluster.hosts()[0].up, view.cluster.hosts()[0].down), (1e6, 1e6));
    }

    #[test]
    fn caps_parse_as_shares_or_rates() {
        assert_eq!("50%".parse::<StageCap>(), Ok(StageCap::Share(0.5)));
        assert_eq!("40Mbit".parse::<StageCap>(), Ok(StageCap::Rate(5e6)));
        for bad in ["0%", "150%", "half", "0Mbit"] {
            let err = bad.parse::<StageCap>().expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn answers_of_the_wrong_shape_are_refused_naming_the_host() {
        let images = [(image("vo/base:1"), 9)];
        let view = |answers: Vec<Result<InventoryReport, String>>| {
            cluster_view(&names(answers.len()), &answers, &images, None).map(|_| ())
        };
        assert_eq!(
            view(vec![Ok(report(vec![vec![0, 0]])), Ok(report(vec![]))]),
            Err(ViewError::Images { host: "h1".into(), answered: 0, asked: 1 })
        );
        let err = view(vec![Ok(report(vec![vec![0]]))]).expect_err("one byte for 9 chunks");
        assert_eq!(
            err,
            ViewError::Bitmap { host: "h0".into(), image: image("vo/base:1"), bytes: 1, chunks: 9 }
        );
        assert!(err.to_string().contains("image vo/base:1 of 9 chunks"), "{err}");
        assert_eq!(
            cluster_view(&names(2), &[Ok(report(vec![vec![0, 0]]))], &images, None).map(|_| ()),
            Err(ViewError::Answers { hosts: 2, answers: 1 })
        );
        let mut huge = report(vec![vec![0, 0]]);
        huge.capacity.cpus = u32::MAX;
        huge.capacity.vcpus_per_cpu = 2;
        assert!(matches!(view(vec![Ok(huge)]), Err(ViewError::Cpus { .. })));
        // The planner's own rules: hosts exist, and a live one has room.
        assert_eq!(view(vec![]), Err(ViewError::Cluster(PlanError::NoHosts)));
        let mut empty = report(vec![vec![0, 0]]);
        empty.capacity.memory_mib = 0;
        assert!(matches!(
            view(vec![Ok(empty)]),
            Err(ViewError::Cluster(PlanError::ZeroCapacity { .. }))
        ));
    }

    #[test]
    fn hosts_with_different_drivers_are_refused_unless_allowed() {
        let images = [(image("vo/base:1"), 1)];
        let mut xl = report(vec![vec![0]]);
        xl.driver = DriverKind::Xl;
        let answers = vec![Ok(xl.clone()), Ok(report(vec![vec![0]])), Ok(xl), Err("gone".into())];
        let view = cluster_view(&names(4), &answers, &images, None).expect("view");
        let err = view.check_drivers(false).expect_err("mixed");
        let text = err.to_string();
        assert!(text.contains("(simulated on h1; xl on h0, h2)"), "{text}");
        assert!(text.contains("--mixed-drivers"), "{text}");
        view.check_drivers(true).expect("allowed");
        // One driver (the dead host has none) is fine.
        let answers = vec![Ok(report(vec![vec![0]])), Err("gone".into())];
        let view = cluster_view(&names(2), &answers, &images, None).expect("view");
        view.check_drivers(false).expect("one driver");
    }

    #[test]
    fn a_cluster_of_dead_hosts_is_still_a_cluster() {
        let answers = vec![Err("gone".into()), Err("refused".into())];
        let view = cluster_view(&names(2), &answers, &[], None).expect("view");
        assert!(view.cluster.hosts().iter().all(|h| !h.alive));
        assert_eq!(view.dead.len(), 2);
    }

    proptest! {
        /// A host holds exactly the chunks whose bits are set; bits past the image's
        /// last chunk are ignored.
        #[test]
        fn holdings_are_the_set_bits(n in 0usize..200, seed in any::<u64>(), spill in any::<u8>()) {
            let held = |c: usize| (seed >> (c % 64)) & 1 == 1;
            let mut map = bitmap(n, held);
            if n % 8 != 0 {
                // Bits past chunk n - 1 in the last byte.
                let last = map.len() - 1;
                map[last] |= spill & !((1u8 << (n % 8)) - 1);
            }
            let images = [(image("vo/x:1"), n)];
            let view = cluster_view(&names(1), &[Ok(report(vec![map]))], &images, None).expect("view");
            let want = Ranges::from_indices((0..n).filter(|&c| held(c)).map(|c| c as u32));
            prop_assert_eq!(view.inventory.held(HostIx(0), 0), &want);
        }
    }
}
