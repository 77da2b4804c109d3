//! What this machine has, as the kernel and the hypervisor say: its network link's
//! speed (`/sys/class/net/NIC/speed` of the NIC on the default route), its memory
//! (`/proc/meminfo`, or `xl info` where Xen runs) and its CPUs. Each figure says where
//! it came from, and the inventory carries that to the head, so a plan made on a guess
//! can be told from one made on the machine's word.
//!
//! The parsers are pure and tested on captured text; the readers around them only read
//! files.

use serde::{Deserialize, Serialize};

/// A link planned with when neither the operator nor the kernel gives a speed
/// (1 Gbit/s, in bytes per second).
pub const ASSUMED_LINK_RATE: f64 = 125e6;

/// Where a figure came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The operator set it (vwd or cluster config).
    Configured,
    /// The kernel: `/sys/class/net/NIC/speed` of this NIC.
    Nic(String),
    /// Xen's `xl info`.
    Xen,
    /// The machine's own count (`/proc/meminfo`, the CPUs the kernel offers).
    Machine,
    /// Nobody said: a default was taken.
    Assumed,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Configured => f.write_str("configured"),
            Source::Nic(nic) => write!(f, "NIC {nic}"),
            Source::Xen => f.write_str("xl info"),
            Source::Machine => f.write_str("machine"),
            Source::Assumed => f.write_str("assumed"),
        }
    }
}

/// A host's link: its speed each way and where that came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkRate {
    /// Bytes per second, each way (full duplex).
    pub bytes_per_s: f64,
    /// Where the figure came from.
    pub source: Source,
}

/// This host's link: `configured` (bytes per second) if given, else the speed the
/// kernel reports for `nic` (or, without one, the NIC on the default route), else
/// [`ASSUMED_LINK_RATE`].
pub fn link_rate(configured: Option<f64>, nic: Option<&str>) -> LinkRate {
    if let Some(bytes_per_s) = configured {
        return LinkRate { bytes_per_s, source: Source::Configured };
    }
    let nic = nic
        .map(str::to_owned)
        .or_else(|| default_route_nic(&std::fs::read_to_string("/proc/net/route").ok()?));
    let speed = nic.as_ref().and_then(|n| {
        nic_speed(&std::fs::read_to_string(format!("/sys/class/net/{n}/speed")).ok()?)
    });
    match (nic, speed) {
        (Some(nic), Some(bytes_per_s)) => LinkRate { bytes_per_s, source: Source::Nic(nic) },
        _ => LinkRate { bytes_per_s: ASSUMED_LINK_RATE, source: Source::Assumed },
    }
}

/// The NIC of the IPv4 default route in `/proc/net/route` text (the first, if several).
pub fn default_route_nic(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let (nic, destination, _gateway, _flags, _, _, _, mask) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        (destination == "00000000" && mask == "00000000").then(|| nic.to_owned())
    })
}

/// Bytes per second from `/sys/class/net/NIC/speed` (Mbit/s); `None` where the kernel
/// does not know (`-1` for virtual NICs and links that are down, or nothing).
pub fn nic_speed(text: &str) -> Option<f64> {
    let mbit: i64 = text.trim().parse().ok()?;
    (mbit > 0).then(|| mbit as f64 * 1e6 / 8.0)
}

/// `MemTotal` of `/proc/meminfo` text, in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

/// What the machine itself counts (without a hypervisor's word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// `MemTotal`, MiB (`None`: unreadable).
    pub memory_mib: Option<u64>,
    /// CPUs the kernel offers this process.
    pub cpus: u32,
}

impl Counted {
    /// Counts this machine.
    pub fn here() -> Self {
        Counted {
            memory_mib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total_mib(&m)),
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        }
    }
}

/// What `xl info` says about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XlInfo {
    /// `total_memory`, MiB.
    pub total_mib: u64,
    /// `free_memory`, MiB: what no domain (dom0 included) holds.
    pub free_mib: u64,
    /// `nr_cpus`: physical CPUs.
    pub cpus: u32,
}

/// Parses `xl info`'s `key : value` lines; `None` if a figure is missing.
pub fn parse_xl_info(text: &str) -> Option<XlInfo> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    Some(XlInfo {
        total_mib: value("total_memory")?,
        free_mib: value("free_memory")?,
        cpus: u32::try_from(value("nr_cpus")?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_names_its_nic() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     enp3s0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_nic(route).as_deref(), Some("enp3s0"));
        assert_eq!(default_route_nic("Iface\tDestination\n"), None);
        assert_eq!(default_route_nic(""), None);
    }

    #[test]
    fn nic_speeds_are_read_as_the_kernel_writes_them() {
        assert_eq!(nic_speed("10000\n"), Some(1.25e9));
        assert_eq!(nic_speed("25000"), Some(3.125e9));
        assert_eq!(nic_speed("-1\n"), None);
        assert_eq!(nic_speed(""), None);
        assert_eq!(nic_speed("fast"), None);
    }

    #[test]
    fn a_configured_rate_wins_and_an_unknown_nic_is_assumed() {
        let r = link_rate(Some(1.25e9), Some("no-such-nic0"));
        assert_eq!(r, LinkRate { bytes_per_s: 1.25e9, source: Source::Configured });
        let r = link_rate(None, Some("no-such-nic0"));
        assert_eq!(r, LinkRate { bytes_per_s: ASSUMED_LINK_RATE, source: Source::Assumed });
    }

    #[test]
    fn xl_info_gives_memory_and_cpus() {
        // As Xen 4.17's `xl info` prints it (the lab's dom0, shortened).
        let text = "host                   : host1\n\
                    release                : 6.1.0-28-amd64\n\
                    nr_cpus                : 4\n\
                    max_cpu_id             : 3\n\
                    total_memory           : 3071\n\
                    free_memory            : 1893\n\
                    sharing_freed_memory   : 0\n\
                    xen_major              : 4\n";
        assert_eq!(parse_xl_info(text), Some(XlInfo { total_mib: 3071, free_mib: 1893, cpus: 4 }));
        assert_eq!(parse_xl_info("nr_cpus : 4\ntotal_memory : 1\n"), None);
        assert_eq!(mem_total_mib("MemTotal:       24555556 kB\nMemFree: 1 kB\n"), Some(23980));
    }
}
