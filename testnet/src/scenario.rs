//! Scenario files (TOML, unknown keys refused): the topology, the images, and the runs.
//!
//! ```toml
//! name = "paper-fig2a"
//! description = "Staging time against cluster size"
//!
//! [network]
//! link = "100Mbit"        # every host's link, shaped both ways
//! head_link = "100Mbit"   # the head's link (default: link)
//! racks = 1               # switches the hosts are spread over (default 1)
//! rack_uplink = "1Gbit"   # each rack switch's link to the core switch (default: unshaped)
//! mdns = false            # peers find each other's addresses by mDNS
//! ack_priority = false    # pure TCP ACKs ahead of data on every link
//!
//! [images]
//! source = "debian"       # or "synthetic"
//! dir = "/var/cache/vw-xenlab/images"   # debian: scripts/xenlab/build.sh's (guest-base, worker, vo2worker)
//! size_mib = 64           # synthetic: each image's size
//!
//! [vwd]
//! compress = "never"      # vwd's wire compression: auto, always, never
//!
//! [[run]]
//! case = "cold"           # a label for the rows
//! methods = ["star", "chain"]   # planner strategies, or baselines: tcp-chain, tcp-star, bittorrent
//! hosts = [1, 2, 4, 8]    # receiving hosts N (the head holds the images)
//! cached = false          # the base OS already on every receiving host
//! image = "worker"        # the workers' image: worker, or vo2 (the second VO's)
//! then_vo2 = false        # then deploy the second VO's cluster on the same hosts
//! isolated = ["vo1"]      # VOs isolated in this run's cluster config (base, vo1, vo2)
//! ops = false             # then time pause, unpause, stop, unstage across the cluster
//! kill_at = 0.33          # kill a mid-cascade host when it has this share of its bytes
//! compress = "auto"       # this run's vwd compression, if not [vwd]'s
//! slow = { at = 0.25, share = 0.3, seconds = 20 }  # a mid-cascade host's link slowed
//! background = true       # a TCP flow into a mid-cascade host's link, the whole stage
//! cap = "50%"             # the deployment's cap on each link (vw deploy --cap)
//! lazy = true             # vw deploy --lazy: guests boot while their images arrive
//! traced = true           # lazy: then a fresh cluster deploys again with the first
//!                         # boot's trace (a second row, staging "lazy-traced")
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vw_node::control::deployment::StageCap;
use vw_node::planner::Strategy;

use crate::TestnetError;

/// The testnet's VOs (`images::BASE`, `WORKER`, `VO2` belong to them in turn).
pub const VOS: [&str; 3] = ["base", "vo1", "vo2"];

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (in rows, plots and the summary).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// The topology.
    pub network: Network,
    /// The images.
    pub images: Images,
    /// Settings for every `vwd`.
    #[serde(default)]
    pub vwd: VwdSettings,
    /// The runs, in order.
    pub run: Vec<Run>,
}

/// The topology.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Every host's link rate (`100Mbit`), shaped in both directions.
    pub link: String,
    /// The head's link rate; `link` if absent.
    pub head_link: Option<String>,
    /// Switches the hosts are spread over (the head on the first).
    #[serde(default = "one")]
    pub racks: usize,
    /// Each rack switch's link to the core switch; unshaped if absent.
    pub rack_uplink: Option<String>,
    /// Whether peers are listed without addresses and found by mDNS.
    #[serde(default)]
    pub mdns: bool,
    /// Whether pure TCP ACKs go ahead of data on every link (a host's fq_codel would
    /// keep them from waiting behind its own uploads; this kernel has no fq_codel).
    #[serde(default)]
    pub ack_priority: bool,
}

fn one() -> usize {
    1
}

/// Where the images come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// `debian` (the project's images from `scripts/xenlab/build.sh`) or `synthetic` (generated).
    pub source: ImageSource,
    /// For `debian`: the directory with `guest-base.img`, `worker.img`, `vo2worker.img`
    /// (`VW_IMAGES` overrides it).
    pub dir: Option<PathBuf>,
    /// For `synthetic`: each image's size in MiB.
    pub size_mib: Option<u64>,
}

/// Image sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// Debian images built by `scripts/xenlab/build.sh` (bootable: the Xen lab's).
    Debian,
    /// Generated images sharing a base (`vw_localnet::DemoImages`).
    Synthetic,
}

/// Settings for every `vwd`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VwdSettings {
    /// Wire compression (`auto`, `always`, `never`); vwd's default if absent.
    pub compress: Option<String>,
}

/// One run: a deployment per method and host count.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// A label for its rows.
    pub case: String,
    /// Planner strategies (`star`, `chain`, `tree2`, `striped4x2`, `auto`) or
    /// baselines (`tcp-chain`, `tcp-star`).
    pub methods: Vec<String>,
    /// Receiving host counts.
    pub hosts: Vec<usize>,
    /// Whether the base OS is already on every receiving host.
    #[serde(default)]
    pub cached: bool,
    /// The workers' image.
    #[serde(default)]
    pub image: WorkerImage,
    /// Then deploy the second VO's cluster on the same hosts.
    #[serde(default)]
    pub then_vo2: bool,
    /// VOs isolated in this run's cluster config (`base`, `vo1`, `vo2`).
    #[serde(default)]
    pub isolated: Vec<String>,
    /// Then time the lifecycle operations across the cluster.
    #[serde(default)]
    pub ops: bool,
    /// Kill a mid-cascade host when it has received this share of what it lacks.
    pub kill_at: Option<f64>,
    /// vwd's wire compression for this run, if not the scenario's.
    pub compress: Option<String>,
    /// Slow a mid-cascade host's link (both ways) for a while.
    pub slow: Option<Slow>,
    /// Run a TCP flow into a mid-cascade host's link for the whole stage.
    #[serde(default)]
    pub background: bool,
    /// The deployment's cap on what staging uses of each link (`50%`, `40Mbit`).
    pub cap: Option<String>,
    /// Stage lazily (`vw deploy --lazy`): guests boot while their images arrive.
    #[serde(default)]
    pub lazy: bool,
    /// With `lazy`: keep the first boot's trace, then deploy again on a fresh cluster
    /// with it (each image's traced chunks fetched first).
    #[serde(default)]
    pub traced: bool,
}

/// A link slowed for a while.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slow {
    /// From when the host has this share of the bytes it lacks.
    pub at: f64,
    /// To this share of its rate.
    pub share: f64,
    /// For this long.
    pub seconds: f64,
}

impl Run {
    /// Whether the run does something to a mid-cascade host (kills it, slows its link,
    /// or runs a flow through it).
    pub fn disturbs(&self) -> bool {
        self.kill_at.is_some() || self.slow.is_some() || self.background
    }
}

/// Which worker image a cluster runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerImage {
    /// The first VO's worker.
    #[default]
    Worker,
    /// The second VO's worker (on the same base).
    Vo2,
}

/// A scenario checked and with its rates in bytes per second.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The file.
    pub scenario: Scenario,
    /// Every host's link, bytes per second.
    pub link: f64,
    /// The head's link, bytes per second.
    pub head_link: f64,
    /// The rack uplinks, bytes per second.
    pub rack_uplink: Option<f64>,
    /// Each run's methods, parsed.
    pub methods: Vec<Vec<Method>>,
}

/// How a run moves the images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `vw deploy` with this planner strategy.
    Vw(Strategy),
    /// Baseline: the raw image down a pipelined chain of plain TCP copies (like `nc`).
    TcpChain,
    /// Baseline: the raw image from the head to every host at once (like an HTTP star).
    TcpStar,
    /// Baseline: the raw image through a BitTorrent swarm seeded by the head (aria2c,
    /// opentracker).
    BitTorrent,
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp-chain" => Ok(Method::TcpChain),
            "tcp-star" => Ok(Method::TcpStar),
            "bittorrent" => Ok(Method::BitTorrent),
            other => other
                .parse::<Strategy>()
                .map(Method::Vw)
                .map_err(|e| format!("{e}; or a baseline: tcp-chain, tcp-star, bittorrent")),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Vw(s) => write!(f, "{s}"),
            Method::TcpChain => f.write_str("tcp-chain"),
            Method::TcpStar => f.write_str("tcp-star"),
            Method::BitTorrent => f.write_str("bittorrent"),
        }
    }
}

impl Checked {
    /// The most hosts any run needs, the head included.
    pub fn max_hosts(&self) -> usize {
        self.scenario.run.iter().flat_map(|r| r.hosts.iter()).max().copied().unwrap_or(0) + 1
    }
}

/// At most this many receiving hosts (addresses, interface names, and these cores).
pub const MAX_HOSTS: usize = 64;

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Checked, TestnetError> {
    let text = std::fs::read_to_string(path).map_err(|error| TestnetError::Io {
        op: "read",
        path: path.to_owned(),
        error,
    })?;
    parse(&text, path)
}

/// Parses and checks `text` (from `path`, for errors).
pub fn parse(text: &str, path: &Path) -> Result<Checked, TestnetError> {
    let bad = |message: String| TestnetError::Scenario { path: path.to_owned(), message };
    let scenario: Scenario =
        toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
    let rate = |key: &str, t: &str| {
        vw_node::hosts::parse_rate(t)
            .and_then(|r| if r > 0.0 { Ok(r) } else { Err(format!("`{t}` must be more than 0")) })
            .map_err(|m| bad(format!("{key}: {m}")))
    };
    let link = rate("network.link", &scenario.network.link)?;
    let head_link = match &scenario.network.head_link {
        Some(t) => rate("network.head_link", t)?,
        None => link,
    };
    let rack_uplink = scenario
        .network
        .rack_uplink
        .as_deref()
        .map(|t| rate("network.rack_uplink", t))
        .transpose()?;
    if scenario.network.racks == 0 {
        return Err(bad("network.racks: must be at least 1".into()));
    }
    match scenario.images.source {
        ImageSource::Synthetic if scenario.images.size_mib.is_none_or(|s| s < 16) => {
            return Err(bad("images.size_mib: synthetic images need a size of at least 16".into()))
        }
        _ => {}
    }
    if scenario.run.is_empty() {
        return Err(bad("no [[run]]".into()));
    }
    let compress_ok = |key: String, c: &Option<String>| match c.as_deref() {
        None | Some("auto" | "always" | "never") => Ok(()),
        Some(other) => Err(bad(format!("{key}: `{other}` is not auto, always or never"))),
    };
    compress_ok("vwd.compress".into(), &scenario.vwd.compress)?;
    let mut methods = Vec::new();
    for (i, run) in scenario.run.iter().enumerate() {
        let key = |k: &str| format!("run[{i}] ({}).{k}", run.case);
        if run.methods.is_empty() || run.hosts.is_empty() {
            return Err(bad(format!(
                "{}: needs at least one method and one host count",
                key("methods")
            )));
        }
        if let Some(&n) = run.hosts.iter().find(|&&n| n == 0 || n > MAX_HOSTS) {
            return Err(bad(format!("{}: {n} is not within 1..={MAX_HOSTS}", key("hosts"))));
        }
        compress_ok(key("compress"), &run.compress)?;
        if let Some(vo) = run.isolated.iter().find(|v| !VOS.contains(&v.as_str())) {
            return Err(bad(format!("{}: `{vo}` is not one of {VOS:?}", key("isolated"))));
        }
        if let Some(k) = run.kill_at {
            if !(0.0..1.0).contains(&k) {
                return Err(bad(format!("{}: {k} is not a share in [0, 1)", key("kill_at"))));
            }
        }
        if let Some(slow) = run.slow {
            if !(0.0..1.0).contains(&slow.at) {
                return Err(bad(format!(
                    "{}: {} is not a share in [0, 1)",
                    key("slow.at"),
                    slow.at
                )));
            }
            if !(slow.share > 0.0 && slow.share <= 1.0) {
                let share = slow.share;
                return Err(bad(format!(
                    "{}: {share} is not a share in (0, 1]",
                    key("slow.share")
                )));
            }
            if !(slow.seconds > 0.0 && slow.seconds.is_finite()) {
                let secs = slow.seconds;
                return Err(bad(format!(
                    "{}: {secs} is not a time in seconds",
                    key("slow.seconds")
                )));
            }
        }
        if [run.kill_at.is_some(), run.slow.is_some(), run.background]
            .iter()
            .filter(|&&d| d)
            .count()
            > 1
        {
            return Err(bad(format!(
                "{}: one disturbance per run (kill_at, slow or background)",
                key("slow")
            )));
        }
        if run.disturbs() && run.hosts.iter().any(|&n| n < 3) {
            return Err(bad(format!(
                "{}: a mid-cascade host needs at least 3 receiving hosts",
                key("hosts")
            )));
        }
        if run.traced && !run.lazy {
            return Err(bad(format!("{}: a trace is of a lazy boot (lazy = true)", key("traced"))));
        }
        if run.lazy && (run.then_vo2 || run.ops || run.disturbs()) {
            return Err(bad(format!(
                "{}: a lazy run deploys one cluster, undisturbed (no then_vo2, ops, kill_at, slow or background)",
                key("lazy")
            )));
        }
        if let Some(cap) = &run.cap {
            cap.parse::<StageCap>().map_err(|e| bad(format!("{}: {e}", key("cap"))))?;
        }
        let parsed = run
            .methods
            .iter()
            .map(|m| m.parse::<Method>().map_err(|e| bad(format!("{}: {e}", key("methods")))))
            .collect::<Result<Vec<_>, _>>()?;
        let baseline = parsed.iter().any(|m| !matches!(m, Method::Vw(_)));
        if baseline
            && (run.cached
                || run.then_vo2
                || run.ops
                || run.kill_at.is_some()
                || run.cap.is_some()
                || run.lazy)
        {
            return Err(bad(format!(
                "{}: the baselines copy the raw image only (no cached, then_vo2, ops, kill_at, cap or lazy)",
                key("methods")
            )));
        }
        let tcp = parsed.iter().any(|m| matches!(m, Method::TcpChain | Method::TcpStar));
        if tcp && (run.slow.is_some() || run.background) {
            return Err(bad(format!(
                "{}: the TCP baselines run on steady links only (no slow or background)",
                key("methods")
            )));
        }
        methods.push(parsed);
    }
    Ok(Checked { scenario, link, head_link, rack_uplink, methods })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "t"
[network]
link = "100Mbit"
[images]
source = "synthetic"
size_mib = 32
[[run]]
case = "cold"
methods = ["star", "chain"]
hosts = [1, 2]
"#;

    #[test]
    fn a_good_scenario_parses() {
        let c = parse(GOOD, Path::new("t.toml")).expect("parses");
        assert_eq!(c.link, 12.5e6);
        assert_eq!(c.head_link, 12.5e6);
        assert_eq!(c.max_hosts(), 3);
        assert_eq!(c.methods[0], vec![Method::Vw(Strategy::Star), Method::Vw(Strategy::Chain)]);
        let c = parse(
            &GOOD.replace("\"star\", \"chain\"", "\"tcp-chain\", \"tcp-star\""),
            Path::new("t.toml"),
        )
        .expect("baselines");
        assert_eq!(c.methods[0], vec![Method::TcpChain, Method::TcpStar]);
    }

    #[test]
    fn bad_scenarios_say_what_and_where() {
        let check = |text: String, want: &str| {
            let err = parse(&text, Path::new("t.toml")).expect_err(want).to_string();
            assert!(err.contains("t.toml") && err.contains(want), "{err} (wanted {want})");
        };
        check(GOOD.replace("link =", "lnk ="), "unknown field `lnk`");
        check(GOOD.replace("100Mbit", "fast"), "network.link");
        check(GOOD.replace("\"chain\"", "\"ring\""), "run[0] (cold).methods");
        check(GOOD.replace("[1, 2]", "[0]"), "run[0] (cold).hosts: 0 is not within");
        check(format!("{GOOD}kill_at = 0.3\n"), "needs at least 3 receiving hosts");
        check(GOOD.replace("size_mib = 32", "size_mib = 1"), "images.size_mib");
        check(format!("{GOOD}compress = \"zip\"\n"), "run[0] (cold).compress: `zip`");
        check(format!("{GOOD}isolated = [\"vo3\"]\n"), "run[0] (cold).isolated: `vo3`");
        check(format!("{GOOD}cap = \"lots\"\n"), "run[0] (cold).cap");
        let slow = GOOD.replace("[1, 2]", "[4]");
        check(format!("{slow}slow = {{ at = 0.2, share = 1.5, seconds = 5 }}\n"), "slow.share");
        check(
            format!("{slow}slow = {{ at = 0.2, share = 0.3, seconds = 5 }}\nbackground = true\n"),
            "one disturbance per run",
        );
        check(format!("{GOOD}background = true\n"), "needs at least 3 receiving hosts");
        let tcp = slow.replace("\"star\", \"chain\"", "\"tcp-chain\"");
        check(format!("{tcp}background = true\n"), "steady links only");
        let swarm = slow.replace("\"star\", \"chain\"", "\"bittorrent\", \"chain\"");
        parse(&format!("{swarm}background = true\n"), Path::new("t.toml")).expect("a loaded swarm");
        check(GOOD.replace("hosts = [1, 2]", "hosts = \"two\""), "line 10, column 9");
        check(format!("{GOOD}traced = true\n"), "run[0] (cold).traced: a trace is of a lazy");
        check(format!("{GOOD}lazy = true\nops = true\n"), "run[0] (cold).lazy: a lazy run");
        parse(&format!("{GOOD}lazy = true\ntraced = true\n"), Path::new("t.toml")).expect("lazy");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 6, "{n} scenarios");
    }
}
