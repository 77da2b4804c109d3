//! The topology: one network namespace per host, one Linux bridge per switch, veth
//! links shaped with `tc` (HTB) in both directions; optionally with pure TCP ACKs in a
//! class of their own ahead of data, as a host's fq_codel would keep them.
//!
//! Host `i` lives in namespace `<tag>-h<i>` with address `10.77.x.y/16` on its `eth0`;
//! the other end of its veth, `<tag>h<i>`, is a port of its rack's bridge `<tag>r<k>`.
//! Egress of that port is the host's download, egress of `eth0` its upload. With more
//! than one rack, each rack bridge joins the core bridge `<tag>c` through a veth pair
//! `<tag>u<k>`/`<tag>d<k>`, shaped both ways if the scenario gives a rack uplink.
//!
//! Everything made is recorded in a process-wide registry as it is made, and
//! [`teardown_all`] removes it (processes first, then namespaces, then links and
//! bridges, then scratch directories). [`Testnet`]'s `Drop` calls it, so a failure or a panic tears down too;
//! `vw-testnet` calls it on SIGINT and SIGTERM. `vw-testnet clean` removes leftovers of a
//! killed harness by name prefix.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use crate::TestnetError;

/// Every name the harness makes starts with this.
pub const PREFIX: &str = "vwt";

/// Something to remove on teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resource {
    Process(u32),
    Netns(String),
    Link(String),
    /// Scratch: a run's data directories, template stores, generated images.
    Dir(std::path::PathBuf),
}

static LIVE: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

fn register(r: Resource) {
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(r);
}

/// Records a process to kill on teardown (a `vwd` in a namespace).
pub fn register_process(pid: u32) {
    register(Resource::Process(pid));
}

/// Child processes of a run, registered for teardown as they are added and killed
/// (and reaped) when dropped.
#[derive(Debug, Default)]
pub struct Children(Vec<std::process::Child>);

impl Children {
    /// Keeps `child` until this is dropped.
    pub fn add(&mut self, child: std::process::Child) {
        register_process(child.id());
        self.0.push(child);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
            forget_process(c.id());
        }
    }
}

/// Records a scratch directory to remove on teardown.
pub fn register_dir(path: &std::path::Path) {
    register(Resource::Dir(path.to_owned()));
}

/// Creates a scratch directory, removed on teardown.
pub fn scratch_dir(path: &std::path::Path) -> Result<(), TestnetError> {
    std::fs::create_dir_all(path).map_err(|error| TestnetError::Io {
        op: "create",
        path: path.to_owned(),
        error,
    })?;
    register_dir(path);
    Ok(())
}

/// Removes a scratch directory now and forgets it.
pub fn remove_dir(path: &std::path::Path) -> Result<(), TestnetError> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|r| *r != Resource::Dir(path.to_owned()));
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(TestnetError::Io { op: "remove", path: path.to_owned(), error: e })
        }
        _ => Ok(()),
    }
}

/// Forgets a process that has exited.
pub fn forget_process(pid: u32) {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|r| *r != Resource::Process(pid));
}

/// Removes everything made so far: kills registered processes, deletes namespaces,
/// links and bridges, then scratch directories. Idempotent; errors are logged, not
/// returned (it runs on the way out).
pub fn teardown_all() {
    let live: Vec<Resource> =
        std::mem::take(&mut *LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for r in live.iter() {
        if let Resource::Process(pid) = r {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    for r in live.iter().rev() {
        let result = match r {
            Resource::Process(_) | Resource::Dir(_) => continue,
            Resource::Netns(name) => ip(&["netns", "delete", name]),
            Resource::Link(name) => ip(&["link", "delete", name]),
        };
        if let Err(e) = result {
            // A veth's other end goes with its namespace: already gone is fine.
            if !e.to_string().contains("Cannot find device") {
                tracing::warn!(error = %e, "teardown");
            }
        }
    }
    for r in &live {
        if let Resource::Dir(path) = r {
            match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), error = %e, "teardown");
                }
                _ => {}
            }
        }
    }
}

/// Removes every namespace and link whose name starts with [`PREFIX`] (what a killed
/// harness left). Returns what it removed.
pub fn clean_leftovers() -> Result<Vec<String>, TestnetError> {
    let mut removed = Vec::new();
    let namespaces = run("ip", &["netns", "list"])?;
    for ns in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(PREFIX) {
            ip(&["netns", "delete", ns])?;
            removed.push(ns.to_owned());
        }
    }
    let links = run("ip", &["-o", "link", "show"])?;
    for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(PREFIX) {
            // A veth whose peer was just deleted is gone already.
            if ip(&["link", "delete", name]).is_ok() {
                removed.push(name.to_owned());
            }
        }
    }
    Ok(removed)
}

/// Runs a command, returning its standard output or an error naming it.
pub fn run(program: &str, args: &[&str]) -> Result<String, TestnetError> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| TestnetError::Command { command: line.clone(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(TestnetError::Command {
            command: line,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<(), TestnetError> {
    run("ip", args).map(drop)
}

/// Shapes egress of `dev` (in namespace `ns`, if given) to `rate` bytes per second. With
/// `ack_priority`, pure TCP ACKs go ahead of data (as a host's fq_codel would let them),
/// so a host that uploads at full rate does not delay the ACKs of its download.
fn shape(ns: Option<&str>, dev: &str, rate: f64, ack_priority: bool) -> Result<(), TestnetError> {
    classes(ns, dev, rate, ack_priority, "add")
}

/// Makes (`op` "add", after a new root qdisc) or changes (`op` "change", in place: no
/// packet in the queues is lost) the HTB classes of `dev` for `rate`.
fn classes(
    ns: Option<&str>,
    dev: &str,
    rate: f64,
    ack_priority: bool,
    op: &str,
) -> Result<(), TestnetError> {
    let bits = |share: f64| format!("{}bit", (rate * 8.0 * share).round() as u64);
    // A burst of a few milliseconds at the rate, at least 32 KiB (GSO packets).
    let burst = format!("{}b", ((rate * 0.004) as u64).max(32 * 1024));
    let prefix: Vec<&str> = ns.map_or_else(Vec::new, |n| vec!["-n", n]);
    let tc = |rest: &[&str]| {
        let args: Vec<&str> = prefix.iter().copied().chain(rest.iter().copied()).collect();
        run("tc", &args).map(drop)
    };
    let class = |parent: &str, id: &str, share: f64, prio: &str| {
        tc(&[
            "class",
            op,
            "dev",
            dev,
            "parent",
            parent,
            "classid",
            id,
            "htb",
            "rate",
            &bits(share),
            "ceil",
            &bits(1.0),
            "burst",
            &burst,
            "cburst",
            &burst,
            "prio",
            prio,
        ])
    };
    let add = op == "add";
    if !ack_priority {
        if add {
            tc(&["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])?;
        }
        return class("1:", "1:1", 1.0, "0");
    }
    if add {
        tc(&["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "20"])?;
    }
    class("1:", "1:1", 1.0, "0")?;
    class("1:1", "1:10", 0.05, "0")?;
    class("1:1", "1:20", 0.95, "1")?;
    if !add {
        return Ok(());
    }
    // IPv4, TCP, total length under 64, flags exactly ACK: a pure ACK.
    tc(&[
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "10", "u32",
        "match", "ip", "protocol", "6", "0xff", "match", "u8", "0x05", "0x0f", "at", "0", "match",
        "u16", "0x0000", "0xffc0", "at", "2", "match", "u8", "0x10", "0xff", "at", "33", "flowid",
        "1:10",
    ])
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Hosts, the head (host 0) included.
    pub hosts: usize,
    /// Every host's link, bytes per second.
    pub link: f64,
    /// The head's link, bytes per second.
    pub head_link: f64,
    /// Switches; hosts are dealt to them in turn, the head to the first.
    pub racks: usize,
    /// Each rack's link to the core switch, bytes per second (unshaped if none).
    pub rack_uplink: Option<f64>,
    /// Pure TCP ACKs ahead of data on every shaped link.
    pub ack_priority: bool,
    /// A namespace of its own for background traffic, on the first rack's switch with
    /// an unshaped link.
    pub background: bool,
}

/// One host's place in the testnet.
#[derive(Clone, Debug)]
pub struct HostNet {
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its rack.
    pub rack: usize,
    /// Its link rate, bytes per second.
    pub rate: f64,
    /// Its link's port on the switch (in the root namespace): what leaves it is the
    /// host's download, what enters it the host's upload.
    pub port: String,
    /// Whether its link is shaped both ways.
    pub shaped: bool,
    ack_priority: bool,
}

impl HostNet {
    /// Shapes the host's link, both ways, to `rate` bytes per second (its own rate
    /// again to restore it).
    pub fn reshape(&self, rate: f64) -> Result<(), TestnetError> {
        classes(None, &self.port, rate, self.ack_priority, "change")?;
        classes(Some(&self.netns), "eth0", rate, self.ack_priority, "change")
    }

    /// Bytes the host's link has carried so far: (download, upload), as its switch
    /// port's interface counters say (frames with their headers).
    pub fn counters(&self) -> Result<(u64, u64), TestnetError> {
        let read = |what: &str| {
            let path = format!("/sys/class/net/{}/statistics/{what}", self.port);
            let text = std::fs::read_to_string(&path).map_err(|error| TestnetError::Io {
                op: "read",
                path: path.clone().into(),
                error,
            })?;
            text.trim()
                .parse::<u64>()
                .map_err(|e| TestnetError::Run(format!("{path}: `{}`: {e}", text.trim())))
        };
        Ok((read("tx_bytes")?, read("rx_bytes")?))
    }
}

/// A built topology; torn down when dropped.
#[derive(Debug)]
pub struct Testnet {
    /// The hosts, the head first.
    pub hosts: Vec<HostNet>,
    /// The namespace background flows come from, if the topology has one.
    pub background: Option<HostNet>,
}

impl Testnet {
    /// Builds `topology` (needs root). On error, what was made is torn down.
    pub fn build(topology: &Topology) -> Result<Testnet, TestnetError> {
        if !crate::is_root() {
            return Err(TestnetError::NotRoot);
        }
        // Dropping `net` on an error below tears down what was registered.
        let mut net = Testnet { hosts: Vec::new(), background: None };
        // Four digits, so that no tag is a prefix of another.
        let tag = format!("{PREFIX}{:04}", std::process::id() % 10_000);
        let racks = topology.racks.min(topology.hosts).max(1);
        let bridge = |k: usize| format!("{tag}r{k}");
        for k in 0..racks {
            add_bridge(&bridge(k))?;
        }
        if racks > 1 {
            let core = format!("{tag}c");
            add_bridge(&core)?;
            for k in 0..racks {
                let (up, down) = (format!("{tag}u{k}"), format!("{tag}d{k}"));
                ip(&["link", "add", &up, "type", "veth", "peer", "name", &down])?;
                register(Resource::Link(up.clone()));
                ip(&["link", "set", &up, "master", &core, "up"])?;
                ip(&["link", "set", &down, "master", &bridge(k), "up"])?;
                if let Some(rate) = topology.rack_uplink {
                    shape(None, &up, rate, topology.ack_priority)?; // core → rack
                    shape(None, &down, rate, topology.ack_priority)?; // rack → core
                }
            }
        }
        let background = topology.background.then_some(topology.hosts);
        for i in (0..topology.hosts).chain(background) {
            let bg = Some(i) == background;
            let port = if bg { format!("{tag}bg") } else { format!("{tag}h{i}") };
            let host = HostNet {
                netns: if bg { format!("{tag}-bg") } else { format!("{tag}-h{i}") },
                addr: address(i),
                rack: if bg { 0 } else { i % racks },
                rate: if i == 0 { topology.head_link } else { topology.link },
                port: port.clone(),
                shaped: !bg,
                ack_priority: topology.ack_priority,
            };
            ip(&["netns", "add", &host.netns])?;
            register(Resource::Netns(host.netns.clone()));
            ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            register(Resource::Link(port.clone()));
            ip(&["link", "set", &port, "master", &bridge(host.rack), "up"])?;
            let ns = host.netns.as_str();
            ip(&["-n", ns, "addr", "add", &format!("{}/16", host.addr), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            if bg {
                net.background = Some(host);
                continue;
            }
            shape(None, &port, host.rate, topology.ack_priority)?; // download
            shape(Some(ns), "eth0", host.rate, topology.ack_priority)?; // upload
            net.hosts.push(host);
        }
        Ok(net)
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        teardown_all();
    }
}

fn add_bridge(name: &str) -> Result<(), TestnetError> {
    ip(&["link", "add", name, "type", "bridge"])?;
    register(Resource::Link(name.to_owned()));
    // Forward at once (no STP listening delay); let multicast (mDNS) through.
    ip(&["link", "set", name, "type", "bridge", "forward_delay", "0", "mcast_snooping", "0"])?;
    ip(&["link", "set", name, "up"])
}

/// Host `i`'s address: 10.77.0.1 onwards.
pub fn address(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
    Ipv4Addr::new(10, 77, (n >> 8) as u8, (n & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_private_and_distinct() {
        assert_eq!(address(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(address(300), Ipv4Addr::new(10, 77, 1, 45));
        assert!((0..1000).map(address).all(|a| a.is_private()));
    }
}
