//! What a scenario measured: one [`RunRow`] per staging run and one [`OpRow`] per
//! cluster-wide lifecycle operation, written as CSV (`runs.csv`, `ops.csv`) and read
//! back by the plots and the summary; the summary's checks against the targets.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TestnetError;

/// One staging run: a deployment of `n` worker hosts by one method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// The scenario.
    pub scenario: String,
    /// The run's label within the scenario (`cold`, `cached`, `fault`, `vo2`, …).
    pub case: String,
    /// The distribution method (`star`, `chain`, `auto`, …).
    pub method: String,
    /// Receiving hosts (the head, which holds the images, is not counted).
    pub n: usize,
    /// Bytes the receiving hosts lacked, summed.
    pub bytes_lacked: u64,
    /// Bytes sent to them on the wire, summed (chunk payload, compressed if it was).
    pub bytes_sent: u64,
    /// Seconds of the stage phase: every host fetching, then rebuilding its images
    /// (all hosts at once; here they share one disk).
    pub seconds: f64,
    /// Seconds until the last host had every chunk it lacked: the transfer, which is
    /// what the paper's staging (copying image files) measured.
    pub fetch_s: f64,
    /// The physical limit: the most any host lacks over the slower of its downlink
    /// and the head's uplink (every lacked byte starts at the head), seconds.
    pub limit_s: f64,
    /// `fetch_s / limit_s`.
    pub ratio: f64,
    /// The raw image over the same links (the limit a plain copy of the image has),
    /// seconds.
    pub raw_limit_s: f64,
    /// CPU seconds used by every `vwd` during the run.
    pub cpu_s: f64,
    /// `cpu_s` over the run's wall time and the machine's cores (1.0: every core busy).
    pub cpu_share: f64,
    /// Hosts (the head included) whose images were verified byte-exact after the run
    /// (every host that ran a VM, but any killed).
    pub verified: usize,
    /// The median receiving host's transfer time, seconds.
    #[serde(default)]
    pub median_s: f64,
    /// The host the run killed, slowed or loaded with a flow ("" if none).
    #[serde(default)]
    pub disturbed: String,
    /// Its transfer time, seconds (0: it has none, killed or none disturbed).
    #[serde(default)]
    pub disturbed_s: f64,
    /// The limit its own link allowed it, as disturbed (slowed for a while, or shared
    /// with one TCP flow), seconds.
    #[serde(default)]
    pub disturbed_limit_s: f64,
    /// The slowest other receiving host's transfer time, seconds.
    #[serde(default)]
    pub others_s: f64,
    /// The planner's prediction: the last host's finish (its own plan's, or the flow
    /// simulator's for the same disturbance), seconds.
    #[serde(default)]
    pub predicted_s: f64,
    /// The simulator's prediction for the disturbed host, seconds (0: not simulated).
    #[serde(default)]
    pub predicted_disturbed_s: f64,
    /// The simulator's prediction for the slowest other host, seconds.
    #[serde(default)]
    pub predicted_others_s: f64,
    /// With a cap: the most any link carried either way over 2 s of the stage, over
    /// its cap, from the interface counters (0: no cap).
    #[serde(default)]
    pub cap_peak: f64,
    /// How the images were staged: `full` (before any guest starts), `lazy` (guests
    /// boot while they arrive; its first boot), `lazy-traced` (with the first boot's
    /// trace, its chunks fetched first).
    #[serde(default)]
    pub staging: String,
    /// Seconds from the deploy until every guest reported ready (every phase but a lazy
    /// deploy's settle).
    #[serde(default)]
    pub ready_s: f64,
    /// Lazy: the most any guest read before it was ready, as a share of its image.
    #[serde(default)]
    pub boot_read_share: f64,
    /// Lazy: bytes fetched at once because a guest read them before the stage brought
    /// them, over every guest.
    #[serde(default)]
    pub boot_fetched: u64,
    /// Lazy: the mean wait of a guest's read for a chunk fetched at once, ms (0: none).
    #[serde(default)]
    pub fetch_wait_ms: f64,
    /// Lazy: the mean wait of a guest's read for a held chunk read from the store, ms.
    #[serde(default)]
    pub held_wait_ms: f64,
}

impl RunRow {
    /// Whether its guests booted while their images arrived (`lazy`, `lazy-traced`).
    pub fn lazy(&self) -> bool {
        self.staging.starts_with("lazy")
    }
}

/// One lifecycle operation across the cluster (the paper's Fig. 2(b)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpRow {
    /// The scenario.
    pub scenario: String,
    /// Hosts running VMs.
    pub n: usize,
    /// The operation (`stage`, `load`, `create`, `pause`, `unpause`, `stop`, `unstage`).
    pub op: String,
    /// Seconds, as the head measured it.
    pub seconds: f64,
}

/// `cpu_s` over `wall` seconds and the machine's cores (1.0: every core busy).
pub fn cpu_share(cpu_s: f64, wall: f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    cpu_s / (wall * cores)
}

/// Writes `rows` as CSV with a header line.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), TestnetError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in rows {
        w.serialize(row).map_err(|e| TestnetError::Output(format!("{}: {e}", path.display())))?;
    }
    let bytes = w.into_inner().map_err(|e| TestnetError::Output(e.to_string()))?;
    crate::write_file(path, &bytes)
}

/// Reads rows written by [`write_csv`].
pub fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, TestnetError> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| TestnetError::Output(format!("{}: {e}", path.display())))?;
    r.deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| TestnetError::Output(format!("{}: {e}", path.display())))
}

/// The markdown summary: a table of runs and one of operations.
pub fn summary(title: &str, runs: &[RunRow], ops: &[OpRow], notes: &[String]) -> String {
    let mut s = format!("# {title}\n\n");
    if !runs.is_empty() {
        s.push_str(
            "| case | method | N | lacked MB | sent MB | transfer s | limit s | × limit | raw-image limit s | transfer × raw | stage s | CPU s | CPU share | hosts verified |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.1} | {:.2} | {} |",
                r.case,
                r.method,
                r.n,
                r.bytes_lacked as f64 / 1e6,
                r.bytes_sent as f64 / 1e6,
                r.fetch_s,
                r.limit_s,
                r.ratio,
                r.raw_limit_s,
                r.fetch_s / r.raw_limit_s,
                r.seconds,
                r.cpu_s,
                r.cpu_share,
                r.verified,
            );
        }
        s.push('\n');
    }
    if runs.iter().any(|r| r.median_s > 0.0) {
        s.push_str(
            "| case | method | N | median host s | slowest host s | slowest/median | disturbed host | its s | its link's limit s | others s | predicted others s | predicted disturbed s | cap peak |\n\
             |---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in runs.iter().filter(|r| r.median_s > 0.0) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:.3} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
                r.case,
                r.method,
                r.n,
                r.median_s,
                r.fetch_s,
                r.fetch_s / r.median_s,
                if r.disturbed.is_empty() { "-" } else { &r.disturbed },
                r.disturbed_s,
                r.disturbed_limit_s,
                r.others_s,
                r.predicted_others_s,
                r.predicted_disturbed_s,
                r.cap_peak,
            );
        }
        s.push('\n');
    }
    if runs.iter().any(RunRow::lazy) {
        s.push_str(SIMULATED_GUESTS);
        s.push_str("\n\n");
        s.push_str(
            "| case | method | N | staging | ready s | full staging's ready s | × full | most read before ready (share of image) | missing when read MB | wait per missing chunk ms | per held chunk ms |\n\
             |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in runs.iter().filter(|r| r.lazy()) {
            let full = full_of(runs, r);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {} | {} | {:.1}% | {:.1} | {:.2} | {:.3} |",
                r.case,
                r.method,
                r.n,
                r.staging,
                r.ready_s,
                full.map_or("-".to_owned(), |f| format!("{:.2}", f.ready_s)),
                full.map_or("-".to_owned(), |f| format!("{:.3}", r.ready_s / f.ready_s)),
                r.boot_read_share * 100.0,
                r.boot_fetched as f64 / 1e6,
                r.fetch_wait_ms,
                r.held_wait_ms,
            );
        }
        s.push('\n');
    }
    if !ops.is_empty() {
        s.push_str("| operation | N | seconds |\n|---|---:|---:|\n");
        for o in ops {
            let _ = writeln!(s, "| {} | {} | {:.3} |", o.op, o.n, o.seconds);
        }
        s.push('\n');
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// Whether rows of `method` are a baseline's (plain TCP or the swarm), not vw's.
fn baseline(method: &str) -> bool {
    method.starts_with("tcp-") || method == "bittorrent"
}

/// The targets the issue sets, checked where the runs allow.
pub fn checks(runs: &[RunRow]) -> Vec<String> {
    let mut notes = Vec::new();
    let find = |case: &str, method: &str| {
        runs.iter().filter(move |r| r.case == case && r.method == method).collect::<Vec<_>>()
    };
    let star = |m: &str| m == "star" || m == "tcp-star";
    let cascade = |m: &str| !star(m) && !baseline(m);
    for r in runs.iter().filter(|r| cascade(&r.method) && r.case != "fault") {
        let target = if r.n >= 32 { 1.15 } else { 1.10 };
        if r.n == 8 || r.n == 32 {
            notes.push(format!(
                "{} {} N={}: {:.3}× the limit (target ≤ {target}): {}",
                r.case,
                r.method,
                r.n,
                r.ratio,
                if r.ratio <= target { "met" } else { "NOT met" }
            ));
        }
    }
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.case.as_str(), r.method.as_str())) {
            keys.push((r.case.as_str(), r.method.as_str()));
        }
    }
    for (case, method) in keys {
        let series = find(case, method);
        if series.len() >= 2 && !star(method) {
            let t: Vec<f64> = series.iter().map(|r| r.fetch_s).collect();
            let (lo, hi) = t.iter().fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            notes.push(format!(
                "{case} {method}: the transfer from N={} to N={} spans {:.2}–{:.2} s, max/min {:.3} (flat within 10%: {})",
                series[0].n,
                series[series.len() - 1].n,
                lo,
                hi,
                hi / lo,
                if hi / lo <= 1.10 { "yes" } else { "no" }
            ));
        }
        if star(method) {
            let ratios: Vec<String> =
                series.iter().map(|r| format!("N={}: {:.2}×", r.n, r.ratio)).collect();
            notes.push(format!(
                "{case} {method}: {} the limit (the paper's method: about N)",
                ratios.join(", ")
            ));
        }
    }
    for r in runs.iter().filter(|r| r.case.ends_with("+vo2") || r.case.contains("cached")) {
        notes.push(format!(
            "{} {} N={}: sent {:.3}× the bytes lacked (target ≤ 1.05)",
            r.case,
            r.method,
            r.n,
            r.bytes_sent as f64 / r.bytes_lacked.max(1) as f64
        ));
    }
    for f in runs.iter().filter(|r| r.case == "fault") {
        if let Some(base) =
            runs.iter().find(|b| b.case != "fault" && b.method == f.method && b.n == f.n)
        {
            notes.push(format!(
                "fault {} N={}: {:.2} s against {:.2} s without the fault, {:.3}× (target ≤ 1.3); {} surviving hosts verified",
                f.method,
                f.n,
                f.fetch_s,
                base.fetch_s,
                f.fetch_s / base.fetch_s,
                f.verified,
            ));
        }
    }
    notes.extend(adaptive(runs));
    for r in runs.iter().filter(|r| r.lazy()) {
        let Some(full) = full_of(runs, r) else { continue };
        let ratio = r.ready_s / full.ready_s;
        notes.push(format!(
            "{} {} N={} ({}): every guest (simulated Xen) ready in {:.2} s against {:.2} s with full staging, {ratio:.3}× (target ≤ 0.25: {}); guests read at most {:.1}% of the image before ready (target ≤ 15%: {})",
            r.case,
            r.method,
            r.n,
            r.staging,
            r.ready_s,
            full.ready_s,
            if ratio <= 0.25 { "met" } else { "NOT met" },
            r.boot_read_share * 100.0,
            if r.boot_read_share <= 0.15 { "met" } else { "NOT met" },
        ));
    }
    notes
}

/// What the testnet's guests are, wherever their results show: vwd runs the simulated
/// Xen driver there (no hypervisor in a network namespace).
pub const SIMULATED_GUESTS: &str = "Guests: the simulated Xen driver's (each reads a fixed \
    pattern through its lazy disk, then is \"up\"); no hypervisor runs on the testnet.";

/// The full-staging row a lazy row compares with: the same method and N, its case
/// without the `-traced` and `-lazy` suffixes (`cold-lazy-traced` → `cold`).
fn full_of<'a>(runs: &'a [RunRow], lazy: &RunRow) -> Option<&'a RunRow> {
    let case = lazy.case.strip_suffix("-traced").unwrap_or(&lazy.case);
    let case = case.strip_suffix("-lazy").unwrap_or(case);
    runs.iter()
        .find(|f| f.staging == "full" && f.case == case && f.method == lazy.method && f.n == lazy.n)
}

/// The adaptive cascade's targets (issue 18), where the runs have them: staging against
/// the last chunk; a disturbed host's neighbours against the steady run of the same
/// method and N, the disturbed host against what its own link allowed; the slowest
/// host over the median; a capped run's busiest link against its cap; vw against the
/// BitTorrent swarm on the same links and disturbance.
fn adaptive(runs: &[RunRow]) -> Vec<String> {
    let mut notes = Vec::new();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let vw = |r: &&RunRow| !baseline(&r.method);
    for r in runs.iter().filter(vw).filter(|r| r.case == "steady") {
        let over = r.seconds / r.fetch_s;
        notes.push(format!(
            "steady {} N={}: staging ended at {:.2} s, the last chunk at {:.2} s: {over:.3}× (target ≤ 1.02: {})",
            r.method,
            r.n,
            r.seconds,
            r.fetch_s,
            met(over <= 1.02)
        ));
    }
    for r in runs.iter().filter(vw).filter(|r| r.median_s > 0.0 && r.fetch_s > 0.0) {
        let spread = r.fetch_s / r.median_s;
        let target = if r.disturbed.is_empty() { 1.10 } else { 1.25 };
        notes.push(format!(
            "{} {} N={}: slowest host over the median {spread:.3} (target ≤ {target}, Kraken's published p99/p50 about 1.8: {})",
            r.case,
            r.method,
            r.n,
            met(spread <= target)
        ));
    }
    for r in runs.iter().filter(vw).filter(|r| !r.disturbed.is_empty() && r.case != "fault") {
        let steady = runs.iter().find(|b| b.case == "steady" && b.method == r.method && b.n == r.n);
        if let Some(steady) = steady {
            let others = r.others_s / steady.fetch_s;
            notes.push(format!(
                "{} {} N={}: the other hosts {:.2} s against {:.2} s steady, {others:.3}× (target ≤ 1.15: {}); predicted {:.2} s",
                r.case,
                r.method,
                r.n,
                r.others_s,
                steady.fetch_s,
                met(others <= 1.15),
                r.predicted_others_s,
            ));
        }
        if r.disturbed_s > 0.0 {
            notes.push(format!(
                "{} {} N={}: the disturbed host {} took {:.2} s, {:.3}× the {:.2} s its own link allowed; predicted {:.2} s",
                r.case,
                r.method,
                r.n,
                r.disturbed,
                r.disturbed_s,
                r.disturbed_s / r.disturbed_limit_s,
                r.disturbed_limit_s,
                r.predicted_disturbed_s,
            ));
        }
    }
    for swarm in runs.iter().filter(|r| r.method == "bittorrent") {
        let spread = swarm.fetch_s / swarm.median_s;
        notes.push(format!(
            "{} bittorrent N={}: {:.2} s, slowest host over the median {spread:.3}",
            swarm.case, swarm.n, swarm.fetch_s
        ));
        for r in runs.iter().filter(vw).filter(|r| r.case == swarm.case && r.n == swarm.n) {
            let against = r.fetch_s / swarm.fetch_s;
            let (target, ok) = if r.n >= 16 {
                ("≤ 0.5 at N = 16", against <= 0.5)
            } else {
                ("< 1, ahead of it", against < 1.0)
            };
            notes.push(format!(
                "{} {} N={}: {:.2} s against the BitTorrent swarm's {:.2} s, {against:.3}× (target {target}: {})",
                r.case,
                r.method,
                r.n,
                r.fetch_s,
                swarm.fetch_s,
                met(ok)
            ));
        }
    }
    for r in runs.iter().filter(|r| r.cap_peak > 0.0) {
        notes.push(format!(
            "{} {} N={}: the busiest link carried {:.3}× its cap over 2 s, by its interface counters (target ≤ 1.05: {})",
            r.case,
            r.method,
            r.n,
            r.cap_peak,
            met(r.cap_peak <= 1.05)
        ));
    }
    notes
}

/// The second VO's cluster, deployed on hosts that hold the first's: the bytes it sent
/// against `unique` (per receiving host: what of its image the hosts could not count,
/// described by `what`), and its transfer time against its cold case.
pub fn second_vo(row: &RunRow, unique: u64, what: &str, cold: Option<&RunRow>) -> String {
    let expected = unique * row.n as u64;
    let mut note = format!(
        "{} {} N={}: sent {:.1} MB, {:.3}× its unique bytes ({:.1} MB per host × {} hosts: {what})",
        row.case,
        row.method,
        row.n,
        row.bytes_sent as f64 / 1e6,
        row.bytes_sent as f64 / expected.max(1) as f64,
        unique as f64 / 1e6,
        row.n,
    );
    if let Some(cold) = cold {
        let _ = write!(
            note,
            "; transfer {:.2} s, {:.3}× the cold case ({} {:.2} s)",
            row.fetch_s,
            row.fetch_s / cold.fetch_s,
            cold.case,
            cold.fetch_s
        );
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_a_line_per_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let row = OpRow { scenario: "s".into(), n: 3, op: "load".into(), seconds: 0.25 };
        let path = dir.path().join("ops.csv");
        write_csv(&path, &[row.clone(), OpRow { op: "create".into(), ..row }]).expect("csv");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "scenario,n,op,seconds\ns,3,load,0.25\ns,3,create,0.25\n");
        let back: Vec<OpRow> = read_csv(&path).expect("read back");
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].op, "create");
    }

    #[test]
    fn vw_is_set_against_the_swarm_of_the_same_case_and_size() {
        let row = |method: &str, n, fetch_s| RunRow {
            case: "slowed".into(),
            method: method.into(),
            n,
            fetch_s,
            median_s: fetch_s,
            ..RunRow::default()
        };
        let runs = [
            row("chain", 16, 50.0),
            row("bittorrent", 16, 120.0),
            row("chain", 8, 50.0),
            row("bittorrent", 8, 45.0),
        ];
        let notes = adaptive(&runs);
        let against = |n: usize| {
            notes
                .iter()
                .find(|l| l.starts_with(&format!("slowed chain N={n}:")) && l.contains("swarm"))
                .cloned()
                .unwrap_or_default()
        };
        assert!(against(16).contains("0.417×") && against(16).contains(": met"), "{notes:?}");
        assert!(against(8).contains("1.111×") && against(8).contains("NOT met"), "{notes:?}");
    }

    /// A lazy run's guests are the simulated driver's: its summary and notes say so.
    #[test]
    fn lazy_results_say_their_guests_are_simulated() {
        let row = |case: &str, staging: &str, ready_s| RunRow {
            case: case.into(),
            method: "chain".into(),
            n: 1,
            staging: staging.into(),
            ready_s,
            ..RunRow::default()
        };
        let runs = [row("cold", "full", 40.0), row("cold-lazy", "lazy", 8.0)];
        let text = summary("lazy", &runs, &[], &[]);
        assert!(text.contains(SIMULATED_GUESTS), "{text}");
        let notes = checks(&runs);
        assert!(
            notes.iter().any(|n| n.contains("every guest (simulated Xen) ready in 8.00 s")),
            "{notes:?}"
        );
        let full_only = summary("cold", &runs[..1], &[], &[]);
        assert!(!full_only.contains(SIMULATED_GUESTS), "{full_only}");
    }
}
