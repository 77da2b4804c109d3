//! A guest's own word that it is up: one line of `key=value` pairs that the guest
//! writes to `data/vw-ready` in its xenstore directory once it has booted with its
//! configuration applied (the images' `vw-ready` unit, `scripts/xenlab/guest/`). Only
//! the guest and dom0 can write there, so the word comes from the guest itself; the
//! text is still untrusted and read with limits.
//!
//! ```text
//! v=1 host=worker1 uptime=21.4 nics=eth0=00:16:3e:..=10.77.1.11/16 swap_kib=204796 nfs=/home failed=none
//! ```

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use vw_planner::address::Mac;

/// The xenstore key, relative to the guest's directory.
pub const KEY: &str = "data/vw-ready";
/// Longest report read (xenstore's own value limit).
pub const MAX_LEN: usize = 4096;
/// Most pairs kept.
const MAX_PAIRS: usize = 32;

/// What a guest said when it became ready.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReport {
    /// Its `key=value` pairs, in the order given.
    pub pairs: Vec<(String, String)>,
    /// No guest exists: the simulated driver reports in its place.
    pub simulated: bool,
}

/// Why a report cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Longer than [`MAX_LEN`].
    #[error("the guest's report is {0} bytes, more than {MAX_LEN}")]
    TooLong(usize),
    /// A byte that is not printable ASCII.
    #[error("the guest's report has a byte that is not printable ASCII at offset {0}")]
    Unprintable(usize),
    /// A word without `=`, or with an empty key.
    #[error("the guest's report has {0:?}, which is not key=value")]
    NotAPair(String),
    /// More than [`MAX_PAIRS`] pairs.
    #[error("the guest's report has more than {MAX_PAIRS} pairs")]
    TooMany,
}

impl GuestReport {
    /// Reads a report as the guest wrote it (a trailing newline is allowed).
    pub fn parse(text: &str) -> Result<Self, ReportError> {
        if text.len() > MAX_LEN {
            return Err(ReportError::TooLong(text.len()));
        }
        let text = text.trim_end_matches('\n');
        if let Some(at) = text.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
            return Err(ReportError::Unprintable(at));
        }
        let mut pairs = Vec::new();
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            let (key, value) = word.split_once('=').unwrap_or(("", word));
            if key.is_empty() {
                return Err(ReportError::NotAPair(word.chars().take(64).collect()));
            }
            if pairs.len() == MAX_PAIRS {
                return Err(ReportError::TooMany);
            }
            pairs.push((key.to_owned(), value.to_owned()));
        }
        Ok(GuestReport { pairs, simulated: false })
    }

    /// The value of `key`, if the guest gave it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The report as one line (as the guest wrote it, or a note for the simulated driver).
    pub fn line(&self) -> String {
        if self.simulated {
            return "simulated driver: no guest ran".to_owned();
        }
        self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// What vw gave a VM, to hold its guest's report against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Each NIC in order (`eth0`, `eth1`): its MAC and address.
    pub nics: Vec<(Mac, Ipv4Addr)>,
    /// The swap partition's size in bytes, if it has one.
    pub swap_bytes: Option<u64>,
    /// NFS mount points.
    pub nfs_mounts: Vec<String>,
}

/// Where the guest's report disagrees with what vw gave it, one line each; empty when
/// the guest runs with its configuration applied. A simulated report is not checked.
pub fn disagreements(report: &GuestReport, expected: &Expected) -> Vec<String> {
    if report.simulated {
        return Vec::new();
    }
    let mut out = Vec::new();
    // nics=eth0=MAC=ADDR/LEN,eth1=...
    let nics: Vec<(&str, &str, &str)> = report
        .get("nics")
        .unwrap_or("none")
        .split(',')
        .filter_map(|n| {
            let mut it = n.splitn(3, '=');
            Some((it.next()?, it.next()?, it.next()?))
        })
        .collect();
    for (i, (mac, ip)) in expected.nics.iter().enumerate() {
        let name = format!("eth{i}");
        match nics.iter().find(|(n, _, _)| *n == name) {
            None => out.push(format!("{name} is missing in the guest (vw gave it {mac}, {ip})")),
            Some((_, got_mac, got_addr)) => {
                if !got_mac.eq_ignore_ascii_case(&mac.to_string()) {
                    out.push(format!("{name} has MAC {got_mac}; vw gave it {mac}"));
                }
                let got_ip = got_addr.split('/').next().unwrap_or_default();
                if got_ip != ip.to_string() {
                    out.push(format!("{name} has address {got_addr}; vw gave it {ip}"));
                }
            }
        }
    }
    if let Some(bytes) = expected.swap_bytes {
        let kib: u64 = report.get("swap_kib").and_then(|v| v.parse().ok()).unwrap_or(0);
        // The kernel counts the swap area less its header page.
        if kib * 1024 + 64 * 1024 < bytes {
            out.push(format!("swap is {kib} KiB; vw made {} KiB", bytes / 1024));
        }
    }
    let mounted: Vec<&str> = report.get("nfs").unwrap_or("none").split(',').collect();
    for m in &expected.nfs_mounts {
        if !mounted.contains(&m.as_str()) {
            out.push(format!("NFS {m} is not mounted"));
        }
    }
    out
}

/// The last `lines` lines of a console log's tail bytes, printable characters only.
pub fn tail_lines(bytes: &[u8], lines: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let skip = out.len().saturating_sub(lines);
    out.drain(..skip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_guest_script_writes() {
        let r = GuestReport::parse(
            "v=1 host=worker1 uptime=21.40 nics=eth0=00:16:3e:0a:00:01=10.77.1.11/16 swap_kib=204796 nfs=/home failed=none\n",
        )
        .expect("parses");
        assert_eq!(r.get("host"), Some("worker1"));
        assert_eq!(r.get("nics"), Some("eth0=00:16:3e:0a:00:01=10.77.1.11/16"));
        assert_eq!(r.get("swap_kib"), Some("204796"));
        assert!(!r.simulated);
        assert!(r.line().starts_with("v=1 host=worker1 "));
    }

    #[test]
    fn refuses_what_a_hostile_guest_could_write() {
        assert_eq!(GuestReport::parse(&"a".repeat(5000)), Err(ReportError::TooLong(5000)));
        assert_eq!(GuestReport::parse("v=1 host=\x1b[2J"), Err(ReportError::Unprintable(9)));
        assert!(matches!(GuestReport::parse("v=1 bare"), Err(ReportError::NotAPair(_))));
        assert!(matches!(GuestReport::parse("=x"), Err(ReportError::NotAPair(_))));
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert_eq!(GuestReport::parse(&many.join(" ")), Err(ReportError::TooMany));
    }

    fn expected() -> Expected {
        Expected {
            nics: vec![
                ("00:16:3e:0a:00:01".parse().expect("mac"), "10.77.1.10".parse().expect("ip")),
                ("00:16:3e:0a:00:02".parse().expect("mac"), "172.30.0.10".parse().expect("ip")),
            ],
            swap_bytes: Some(200_000_000),
            nfs_mounts: vec!["/home".into()],
        }
    }

    #[test]
    fn a_guest_with_its_configuration_applied_agrees() {
        let r = GuestReport::parse(
            "v=1 nics=eth0=00:16:3e:0a:00:01=10.77.1.10/16,eth1=00:16:3E:0A:00:02=172.30.0.10/24 swap_kib=195308 nfs=/home",
        )
        .expect("parses");
        assert_eq!(disagreements(&r, &expected()), Vec::<String>::new());
        let sim = GuestReport { pairs: Vec::new(), simulated: true };
        assert!(disagreements(&sim, &expected()).is_empty());
    }

    #[test]
    fn each_disagreement_is_named() {
        let r =
            GuestReport::parse("v=1 nics=eth0=00:16:3e:0a:00:09=10.77.1.99/16 swap_kib=0 nfs=none")
                .expect("parses");
        let d = disagreements(&r, &expected());
        assert_eq!(
            d,
            vec![
                "eth0 has MAC 00:16:3e:0a:00:09; vw gave it 00:16:3e:0a:00:01",
                "eth0 has address 10.77.1.99/16; vw gave it 10.77.1.10",
                "eth1 is missing in the guest (vw gave it 00:16:3e:0a:00:02, 172.30.0.10)",
                "swap is 0 KiB; vw made 195312 KiB",
                "NFS /home is not mounted",
            ]
        );
    }

    #[test]
    fn console_tail_keeps_the_last_printable_lines() {
        let log = b"one\r\ntwo\n\n\x1b[0mthree\nfour\n";
        assert_eq!(tail_lines(log, 2), vec!["[0mthree".to_owned(), "four".to_owned()]);
        assert_eq!(tail_lines(b"", 5), Vec::<String>::new());
    }
}
