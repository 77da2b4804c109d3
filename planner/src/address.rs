//! Address assignment: private addresses from the free segments of the cluster subnet,
//! public addresses from a reserved pool, and deterministic Xen MACs.
//!
//! Pure: the caller passes what is already taken (its persisted allocations) and records
//! what comes back. The same inputs always give the same plan, the lowest free
//! addresses are used first, and nothing already taken is handed out again.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The networks a VM's NICs join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The cluster's private segment: every VM has an address here.
    Private,
    /// The reserved public pool: the virtual head node's second NIC.
    Public,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Private => "private",
            Network::Public => "public",
        })
    }
}

/// An inclusive range of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Segment {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    pub last: Ipv4Addr,
}

impl Segment {
    /// How many addresses.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }

    /// Never empty (`first <= last` is checked on construction); for clippy.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Segment) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl FromStr for Segment {
    type Err = String;

    /// `10.0.1.10-10.0.1.99`, `10.0.1.0/25` (its host addresses) or one address.
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let addr = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("`{s}` in `{text}` is not an IPv4 address"))
        };
        let (first, last) = if let Some((a, b)) = t.split_once('-') {
            (addr(a)?, addr(b)?)
        } else if let Some((a, bits)) = t.split_once('/') {
            let base = u32::from(addr(a)?);
            let bits: u32 = bits
                .parse()
                .ok()
                .filter(|b| *b <= 32)
                .ok_or(format!("`{text}`: bad prefix length"))?;
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            if base & !mask != 0 {
                return Err(format!(
                    "`{text}` has host bits set; did you mean {}/{bits}?",
                    Ipv4Addr::from(base & mask)
                ));
            }
            let (lo, hi) = (base, base | !mask);
            // Network and broadcast addresses are not hosts (except in /31 and /32).
            if bits >= 31 {
                (lo.into(), hi.into())
            } else {
                ((lo + 1).into(), (hi - 1).into())
            }
        } else {
            let a = addr(t)?;
            (a, a)
        };
        if first > last {
            return Err(format!("`{text}` runs backwards"));
        }
        Ok(Segment { first, last })
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Addresses to hand out: segments in the order they are used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// The segments, in order of use; they do not overlap.
    pub segments: Vec<Segment>,
}

impl Pool {
    /// A pool of segments that must not overlap.
    pub fn new(segments: Vec<Segment>) -> Result<Self, String> {
        for (i, a) in segments.iter().enumerate() {
            if let Some(b) = segments[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(format!("segments {a} and {b} overlap"));
            }
        }
        Ok(Pool { segments })
    }

    /// How many addresses in all.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// Whether `ip` is in the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.segments.iter().any(|s| s.contains(ip))
    }

    /// The `n` lowest free addresses (in segment order) not in `taken`.
    pub fn allocate(
        &self,
        taken: &BTreeSet<Ipv4Addr>,
        n: usize,
    ) -> Result<Vec<Ipv4Addr>, Exhausted> {
        let mut out = Vec::with_capacity(n);
        'segments: for s in &self.segments {
            for ip in u32::from(s.first)..=u32::from(s.last) {
                if out.len() == n {
                    break 'segments;
                }
                let ip = Ipv4Addr::from(ip);
                if !taken.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        if out.len() < n {
            let free = out.len();
            return Err(Exhausted { wanted: n, free, size: self.size() });
        }
        Ok(out)
    }
}

/// A pool has fewer free addresses than asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// How many were asked for.
    pub wanted: usize,
    /// How many are free.
    pub free: usize,
    /// The pool's size.
    pub size: u64,
}

/// A Xen MAC address, `00:16:3e:xx:xx:xx` (serialised as that text).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl From<Mac> for String {
    fn from(mac: Mac) -> String {
        mac.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// Xensource's OUI, the prefix of every MAC vw makes.
pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

impl Mac {
    /// The MAC for `seed` (deployment, VM, NIC): deterministic, with the Xen prefix, and
    /// not in `taken` (a collision moves to the next candidate of the same seed).
    pub fn for_seed(seed: &str, taken: &BTreeSet<Mac>) -> Mac {
        (0u32..)
            .map(|attempt| {
                let h = fnv1a(seed.as_bytes(), attempt);
                let [a, b, c, ..] = h.to_be_bytes();
                Mac([XEN_OUI[0], XEN_OUI[1], XEN_OUI[2], a, b, c])
            })
            .find(|mac| !taken.contains(mac))
            .expect("2^24 candidates cannot all be taken")
    }
}

/// FNV-1a (64 bit) of `bytes` and `attempt`: stable across builds and platforms.
fn fnv1a(bytes: &[u8], attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes.iter().chain(&attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let bytes: Option<Vec<u8>> = (parts.len() == 6)
            .then(|| {
                parts
                    .iter()
                    .map(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok()).flatten())
                    .collect()
            })
            .flatten();
        match bytes {
            Some(b) => Ok(Mac([b[0], b[1], b[2], b[3], b[4], b[5]])),
            None => Err(format!("`{text}` is not a MAC like 00:16:3e:12:34:56")),
        }
    }
}

/// One VM's request: its key (the seed of its MACs) and its NICs in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNics {
    /// A key unique across the cluster (`deployment/vm`).
    pub key: String,
    /// The networks of its NICs, in order.
    pub nics: Vec<Network>,
}

/// What a NIC gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicAddress {
    /// Its network.
    pub network: Network,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: Mac,
}

/// Why addresses could not be assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// A pool has too few free addresses.
    Exhausted {
        /// Which pool.
        network: Network,
        /// The shortfall.
        detail: Exhausted,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Exhausted { network, detail: Exhausted { wanted, free, size } } => write!(
                f,
                "the {network} address pool is exhausted: {wanted} needed, {free} free of {size}; add a segment to the cluster config or unstage a deployment"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

/// Assigns every NIC of `vms` an address from its network's pool and a MAC, avoiding
/// `taken_ips` and `taken_macs`. All or nothing: on error nothing is assigned.
pub fn assign(
    vms: &[VmNics],
    private: &Pool,
    public: &Pool,
    taken_ips: &BTreeSet<Ipv4Addr>,
    taken_macs: &BTreeSet<Mac>,
) -> Result<Vec<Vec<NicAddress>>, AddressError> {
    let want = |net| vms.iter().flat_map(|v| &v.nics).filter(|n| **n == net).count();
    let take = |net, pool: &Pool| {
        pool.allocate(taken_ips, want(net))
            .map_err(|detail| AddressError::Exhausted { network: net, detail })
    };
    let mut private_ips = take(Network::Private, private)?.into_iter();
    let mut public_ips = take(Network::Public, public)?.into_iter();
    let mut macs = taken_macs.clone();
    Ok(vms
        .iter()
        .map(|vm| {
            vm.nics
                .iter()
                .enumerate()
                .map(|(i, &network)| {
                    let ips = match network {
                        Network::Private => &mut private_ips,
                        Network::Public => &mut public_ips,
                    };
                    let ip = ips.next().expect("allocated one per NIC of this network");
                    let mac = Mac::for_seed(&format!("{}/{i}", vm.key), &macs);
                    macs.insert(mac);
                    NicAddress { network, ip, mac }
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(s: &[&str]) -> Pool {
        Pool::new(s.iter().map(|s| s.parse().expect("segment")).collect()).expect("pool")
    }

    #[test]
    fn segments_parse_ranges_cidrs_and_single_addresses() {
        let s: Segment = "10.0.1.0/30".parse().expect("cidr");
        assert_eq!((s.first, s.last), (Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!("10.0.0.5".parse::<Segment>().map(|s| s.len()), Ok(1));
        assert_eq!("10.0.0.5-10.0.0.9".parse::<Segment>().map(|s| s.len()), Ok(5));
        assert!("10.0.0.9-10.0.0.5"
            .parse::<Segment>()
            .expect_err("must fail")
            .contains("backwards"));
        assert!("10.0.1.1/24".parse::<Segment>().expect_err("must fail").contains("host bits"));
        assert!("10.0.1.300".parse::<Segment>().is_err());
        assert!(Pool::new(vec![
            "10.0.0.1-10.0.0.9".parse().expect("a"),
            "10.0.0.9".parse().expect("b")
        ])
        .is_err());
    }

    #[test]
    fn head_gets_a_public_address_and_workers_do_not() {
        let vms = vec![
            VmNics { key: "d/head".into(), nics: vec![Network::Private, Network::Public] },
            VmNics { key: "d/w1".into(), nics: vec![Network::Private] },
        ];
        let private = pool(&["10.0.0.10-10.0.0.11"]);
        let public = pool(&["192.0.2.5"]);
        let plan =
            assign(&vms, &private, &public, &BTreeSet::new(), &BTreeSet::new()).expect("fits");
        assert_eq!(plan[0][0].ip, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(plan[0][1].ip, Ipv4Addr::new(192, 0, 2, 5));
        assert_eq!(plan[1][0].ip, Ipv4Addr::new(10, 0, 0, 11));
        assert!(plan.iter().flatten().all(|n| n.mac.0[..3] == XEN_OUI));
        // Deterministic.
        assert_eq!(
            plan,
            assign(&vms, &private, &public, &BTreeSet::new(), &BTreeSet::new()).expect("fits")
        );
        // One more worker does not fit.
        let mut more = vms.clone();
        more.push(VmNics { key: "d/w2".into(), nics: vec![Network::Private] });
        let err = assign(&more, &private, &public, &BTreeSet::new(), &BTreeSet::new())
            .expect_err("must fail");
        assert!(
            err.to_string().contains("private address pool is exhausted: 3 needed, 2 free of 2"),
            "{err}"
        );
    }

    #[test]
    fn mac_text_round_trips() {
        let mac = Mac::for_seed("x", &BTreeSet::new());
        assert_eq!(mac.to_string().parse::<Mac>(), Ok(mac));
        assert!("00:16:3e:zz:00:00".parse::<Mac>().is_err());
        assert!("00:16:3e:00:00".parse::<Mac>().is_err());
    }

    #[test]
    fn a_taken_mac_moves_to_the_next_candidate() {
        let first = Mac::for_seed("d/vm/0", &BTreeSet::new());
        let second = Mac::for_seed("d/vm/0", &BTreeSet::from([first]));
        assert_ne!(first, second);
        assert_eq!(second.0[..3], XEN_OUI);
    }

    proptest! {
        /// Whatever is taken, an assignment never reuses a taken address or MAC, never
        /// gives two NICs the same one, and stays inside its pools.
        #[test]
        fn never_hands_out_twice(
            taken in proptest::collection::btree_set(0u32..64, 0..40),
            workers in 0usize..30,
        ) {
            let private = pool(&["10.1.0.0-10.1.0.31", "10.1.1.0-10.1.1.31"]);
            let public = pool(&["192.0.2.0-192.0.2.3"]);
            let taken_ips: BTreeSet<Ipv4Addr> = taken.iter().map(|&i| {
                if i < 32 { Ipv4Addr::new(10, 1, 0, i as u8) } else { Ipv4Addr::new(10, 1, 1, (i - 32) as u8) }
            }).collect();
            let mut vms = vec![VmNics { key: "d/head".into(), nics: vec![Network::Private, Network::Public] }];
            vms.extend((1..=workers).map(|i| VmNics { key: format!("d/w{i}"), nics: vec![Network::Private] }));
            match assign(&vms, &private, &public, &taken_ips, &BTreeSet::new()) {
                Ok(plan) => {
                    let nics: Vec<&NicAddress> = plan.iter().flatten().collect();
                    let ips: BTreeSet<Ipv4Addr> = nics.iter().map(|n| n.ip).collect();
                    let macs: BTreeSet<Mac> = nics.iter().map(|n| n.mac).collect();
                    prop_assert_eq!(ips.len(), nics.len());
                    prop_assert_eq!(macs.len(), nics.len());
                    prop_assert!(ips.is_disjoint(&taken_ips));
                    for n in nics {
                        let pool = if n.network == Network::Private { &private } else { &public };
                        prop_assert!(pool.contains(n.ip));
                    }
                }
                Err(AddressError::Exhausted { network, detail }) => {
                    prop_assert_eq!(network, Network::Private);
                    prop_assert!(detail.free < detail.wanted);
                    prop_assert_eq!(64 - taken.len(), detail.free);
                }
            }
        }
    }
}
