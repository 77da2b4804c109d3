//! The head's handling of inventory replies, end to end: each host's reply stream read
//! with `wire::read::<Reply>` (which runs the inventory checks), mapped to an answer as
//! `Head::deploy` does, turned into the planner's view by `control::view::cluster_view`,
//! then placement, addresses, the distribution plan and its simulation for a small
//! fixed workspace (a head and two pinned workers).
//!
//! The first byte picks how the replies are made (raw bytes, or reports built from the
//! input, encoded, with a byte changed) and the policy and strategy; the next bytes the
//! number of hosts and each image's chunks. Never a panic; the view refuses only
//! answers of the wrong shape (or a live host the planner finds empty); and what the
//! planner makes respects the inventories: VMs only on live hosts within what is
//! free, pinned cores that exist and nobody else holds, addresses nobody holds,
//! streams only between live hosts.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use arbitrary::{Result, Unstructured};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use vw_node::chunkstore::ImageRef;
use vw_node::control::protocol::{
    bitmap, Answer, Failure, FailureKind, InventoryReport, Phase, Progress, Reply,
};
use vw_node::control::view::{cluster_view, ClusterView, ViewError};
use vw_node::planner::address::{assign, Mac, Network, NicAddress, Pool, VmNics};
use vw_node::planner::{
    place, plan, simulate, HostIx, Image, Inventory, Need, PlanError, Policy, Strategy, VmDemand,
};
use vw_node::config::DriverKind;
use vw_node::machine::{LinkRate, Source};
use vw_node::report::{HostCapacity, VmTake};
use vw_node::wire;

const STRATEGIES: [Strategy; 5] = [
    Strategy::Star,
    Strategy::Chain,
    Strategy::Tree { k: 2 },
    Strategy::Striped { stripes: 2, k: 1 },
    Strategy::Auto,
];

/// One host's answer as `Head::deploy` sees it: the first `Done` on its stream, after
/// any progress.
fn answer(stream: &mut futures::io::Cursor<&[u8]>) -> std::result::Result<InventoryReport, String> {
    loop {
        match block_on(wire::read::<Reply, _>(stream)) {
            Ok(Some(Reply::Progress(_))) => {}
            Ok(Some(Reply::Done(Answer::Inventory(r)))) => return Ok(r),
            Ok(Some(Reply::Done(Answer::Failed(f)))) => return Err(f.to_string()),
            Ok(Some(Reply::Done(other))) => return Err(format!("unexpected answer {other:?}")),
            Ok(None) => return Err("it closed the stream without answering".into()),
            Err(e) => return Err(format!("it broke the protocol or went away: {e}")),
        }
    }
}

/// A number mostly small (so reports make sense), sometimes anything.
fn small<T>(u: &mut Unstructured<'_>, max: u32) -> Result<T>
where
    T: TryFrom<u32> + for<'a> arbitrary::Arbitrary<'a>,
{
    if u.ratio(1, 8)? {
        u.arbitrary()
    } else {
        let n = u.int_in_range(0..=max)?;
        Ok(T::try_from(n).ok().expect("small fits"))
    }
}

/// A report, usually of the shape asked for.
fn report(u: &mut Unstructured<'_>, chunks: &[usize]) -> Result<InventoryReport> {
    let cpus: u32 = small(u, 8)?;
    let cap = |u: &mut Unstructured<'_>| -> Result<Option<f64>> {
        Ok(match u.int_in_range(0..=3)? {
            0 => None,
            1 => Some(f64::from(u.int_in_range(1..=1000u32)?) * 1e6),
            2 => Some(f64::from_bits(u.arbitrary()?)),
            _ => Some(1e-300),
        })
    };
    let mut committed = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let cores = (0..u.int_in_range(0..=2)?).map(|_| small(u, 9)).collect::<Result<_>>()?;
        committed.push(VmTake { memory_mib: small(u, 4096)?, vcpus: small(u, 8)?, cores });
    }
    let mut addresses = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let network = if u.arbitrary()? { Network::Public } else { Network::Private };
        let ip = Ipv4Addr::new(10, 0, 0, u.int_in_range(0..=15)?);
        let mac = Mac([0x00, 0x16, 0x3e, 0, 0, u.arbitrary()?]);
        addresses.push(NicAddress { network, ip, mac });
    }
    let mut held = Vec::new();
    for &n in chunks {
        let bytes = if u.ratio(1, 32)? { u.int_in_range(0..=8)? } else { n.div_ceil(8) };
        let seed: u64 = u.arbitrary()?;
        let mut map = bitmap(bytes * 8, |c| seed >> (c % 64) & 1 == 1);
        map.truncate(bytes);
        held.push(map);
    }
    if u.ratio(1, 32)? {
        held.pop();
    }
    let sources = [Source::Configured, Source::Nic("eth0".into()), Source::Xen, Source::Assumed];
    let source = |u: &mut Unstructured<'_>| -> Result<Source> {
        Ok(sources[u.int_in_range(0..=3)?].clone())
    };
    Ok(InventoryReport {
        driver: if u.ratio(1, 8)? { DriverKind::Simulated } else { DriverKind::Xl },
        capacity: HostCapacity {
            memory_mib: small(u, 16384)?,
            cpus,
            vcpus_per_cpu: small(u, 17)?,
            memory_from: source(u)?,
            cpus_from: source(u)?,
        },
        link: LinkRate { bytes_per_s: cap(u)?.unwrap_or(125e6), source: source(u)? },
        caps: (cap(u)?, cap(u)?),
        rack: if u.arbitrary()? {
            Some(["r1", "r2"][usize::from(u.arbitrary::<bool>()?)].into())
        } else {
            None
        },
        committed,
        addresses,
        held,
    })
}

/// A frame as a host would write it, but without the writer's checks: the reader's
/// checks must refuse what breaks them.
fn frame(reply: &Reply) -> Vec<u8> {
    let body = postcard::to_allocvec(reply).expect("encode");
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(vw_node::control::protocol::VERSION);
    out.extend(body);
    out
}

/// Each host's reply stream, built from the input.
fn streams(u: &mut Unstructured<'_>, hosts: usize, chunks: &[usize]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for _ in 0..hosts {
        let mut s = Vec::new();
        for _ in 0..u.int_in_range(0..=1)? {
            s.extend(frame(&Reply::Progress(Progress::started(Phase::Fetch))));
        }
        let done = match u.int_in_range(0..=7)? {
            0 => Answer::Failed(Failure::new(FailureKind::DiskFull, "no disk")),
            1 => Answer::Failed(Failure::new(FailureKind::Refused, "not the head")),
            2 => Answer::Ran(vec![]),
            _ => Answer::Inventory(report(u, chunks)?),
        };
        s.extend(frame(&Reply::Done(done)));
        if u.ratio(1, 4)? && !s.is_empty() {
            let at = u.choose_index(s.len())?;
            s[at] ^= u.int_in_range(1..=255)?;
        }
        if u.ratio(1, 16)? {
            s.truncate(u.choose_index(s.len())?);
        }
        out.push(s);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let [flags, hosts, n_images, rest @ ..] = data else { return };
    let flags = *flags;
    let hosts = usize::from(hosts % 6) + 1;
    let n_images = usize::from(n_images % 4);
    let Some((counts, rest)) = rest.split_at_checked(n_images) else { return };
    let chunks: Vec<usize> = counts.iter().map(|c| usize::from(c % 41)).collect();
    let names: Vec<String> = (0..hosts).map(|h| format!("host{h}")).collect();

    let answers: Vec<_> = if flags & 1 == 0 {
        // Raw bytes: the hosts' streams back to back, each host reading where the
        // previous one stopped.
        let mut stream = futures::io::Cursor::new(rest);
        (0..hosts).map(|_| answer(&mut stream)).collect()
    } else {
        let Ok(streams) = streams(&mut Unstructured::new(rest), hosts, &chunks) else { return };
        streams.iter().map(|s| answer(&mut futures::io::Cursor::new(&s[..]))).collect()
    };
    for r in answers.iter().flatten() {
        // What the reader ran (`check_inventory`), passed.
        assert!(wire::Message::check(&Reply::Done(Answer::Inventory(r.clone()))).is_ok());
    }

    let refs: Vec<(ImageRef, usize)> = chunks
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("vo/img{i}:1").parse().expect("image ref"), n))
        .collect();
    let view = match cluster_view(&names, &answers, &refs, None) {
        Ok(view) => view,
        Err(ViewError::Images { .. } | ViewError::Bitmap { .. }) => return,
        // A live host reporting no memory: see docs/results/fuzz/counts.md.
        Err(ViewError::Cluster(PlanError::ZeroCapacity { .. })) => return,
        Err(e) => panic!("a checked inventory refused: {e}"),
    };
    check_view(&view, &answers, &chunks);
    run_planner(&view, &chunks, flags);
});

fn check_view(
    view: &ClusterView,
    answers: &[std::result::Result<InventoryReport, String>],
    chunks: &[usize],
) {
    let hosts = view.cluster.hosts();
    assert_eq!(hosts.len(), answers.len());
    for (h, (host, a)) in hosts.iter().zip(answers).enumerate() {
        assert_eq!(host.alive, a.is_ok());
        for (i, &n) in chunks.iter().enumerate() {
            let held = view.inventory.held(HostIx(h as u32), i);
            assert!(held.ranges().iter().all(|&(_, end)| end as usize <= n), "{held:?} of {n}");
        }
    }
    assert_eq!(view.dead.len(), answers.iter().filter(|a| a.is_err()).count());
    assert!(view.committed.iter().all(|c| hosts[c.host.ix()].alive));
}

fn run_planner(view: &ClusterView, chunks: &[usize], flags: u8) {
    let cluster = &view.cluster;
    let images: Vec<Image> = chunks
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            Image::new(format!("img{i}"), (0..n as u32).map(|c| 4096 + c % 7 * 512).collect())
        })
        .collect();
    let last = images.len().checked_sub(1);
    let vm = |name: &str, memory_mib, vcpus, pinned, image: Option<usize>| VmDemand {
        name: name.into(),
        memory_mib,
        vcpus,
        pinned,
        images: image.into_iter().collect(),
    };
    let demands = [
        vm("fz-head", 1024, 1, false, images.first().map(|_| 0)),
        vm("fz-worker1", 512, 2, true, last),
        vm("fz-worker2", 512, 2, true, last),
    ];
    let policy = if flags & 2 == 0 { Policy::Spread } else { Policy::Pack };
    let Ok(placed) = place(cluster, &images, &view.inventory, &demands, &view.committed, policy)
    else {
        return;
    };

    // Placement: live hosts, within what is free, pinned cores that exist and are free.
    assert_eq!(placed.len(), demands.len());
    let mut used: BTreeMap<HostIx, (u64, u32)> = BTreeMap::new();
    let mut pinned: BTreeSet<(HostIx, u32)> = BTreeSet::new();
    for c in &view.committed {
        let u = used.entry(c.host).or_default();
        *u = (u.0.saturating_add(c.memory_mib), u.1.saturating_add(c.vcpus));
        pinned.extend(c.cores.iter().map(|&core| (c.host, core)));
    }
    for (p, d) in placed.iter().zip(&demands) {
        let host = cluster.host(p.host);
        assert!(host.alive, "{} placed on dead {}", d.name, host.name);
        // Room is what the host has less what its VMs (committed, and placed before)
        // take; committed VMs may overcommit a host, and then nothing more goes there.
        let u = used.entry(p.host).or_default();
        let room = (host.memory_mib.saturating_sub(u.0), host.vcpus.saturating_sub(u.1));
        assert!(room.0 >= d.memory_mib && room.1 >= d.vcpus, "{} on a full {}", d.name, host.name);
        *u = (u.0.saturating_add(d.memory_mib), u.1.saturating_add(d.vcpus));
        if d.pinned {
            let cores = p.cores.as_ref().expect("a pinned VM has cores");
            assert_eq!(cores.len(), d.vcpus as usize);
            for &core in cores {
                assert!(core < host.cpus, "core {core} of {} CPUs", host.cpus);
                assert!(pinned.insert((p.host, core)), "core {core} of {} twice", host.name);
            }
        }
    }

    // Addresses: none that a host already holds, no two alike.
    let segment = |s: &str| Pool::new(vec![s.parse().expect("segment")]).expect("pool");
    let (private, public) = (segment("10.0.0.0/28"), segment("10.0.0.16/30"));
    let taken_ips: BTreeSet<Ipv4Addr> = view.nics.iter().map(|n| n.ip).collect();
    let taken_macs: BTreeSet<Mac> = view.nics.iter().map(|n| n.mac).collect();
    let nics: Vec<VmNics> = demands
        .iter()
        .enumerate()
        .map(|(i, d)| VmNics {
            key: format!("fz/{}", d.name),
            nics: if i == 0 {
                vec![Network::Private, Network::Public]
            } else {
                vec![Network::Private]
            },
        })
        .collect();
    if let Ok(assigned) = assign(&nics, &private, &public, &taken_ips, &taken_macs) {
        let mut ips = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for n in assigned.iter().flatten() {
            assert!(!taken_ips.contains(&n.ip) && ips.insert(n.ip), "{} twice", n.ip);
            assert!(!taken_macs.contains(&n.mac) && macs.insert(n.mac), "{} twice", n.mac);
        }
    }

    // The distribution, as `plan::plan_with` asks for it: only host 0 and the hosts of
    // the deployment send.
    let hosts_of: Vec<HostIx> = placed.iter().map(|p| p.host).collect();
    let mut needs: Vec<Need> = hosts_of
        .iter()
        .zip(&demands)
        .flat_map(|(&host, d)| d.images.iter().map(move |&image| Need { host, image }))
        .collect();
    needs.sort();
    needs.dedup();
    let mut sending = Inventory::empty(cluster.len(), images.len());
    for h in cluster.ixs().filter(|h| h.ix() == 0 || hosts_of.contains(h)) {
        for i in 0..images.len() {
            sending.add(h, i, view.inventory.held(h, i));
        }
    }
    let strategy = STRATEGIES[usize::from(flags >> 2) % STRATEGIES.len()];
    let Ok(p) = plan(cluster, &images, &sending, &needs, strategy) else { return };
    for s in &p.streams {
        assert!(cluster.host(s.from).alive && cluster.host(s.to).alive, "{s:?}");
        assert!(s.ranges.ranges().iter().all(|&(_, end)| end <= images[s.image].chunks()));
    }
    let _ = simulate(cluster, &images, &sending, &p);
}
