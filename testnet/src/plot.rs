//! The testnet's figures, drawn like the paper's Fig. 2 as 900×600 PNGs.
//!
//! - [`staging_vs_n`] (Fig. 2(a)): staging transfer seconds against the number of hosts, one
//!   line per method and case, with a dashed grey line per case for the physical limit.
//! - [`operations`] (Fig. 2(b)): one bar per lifecycle operation, one series per N,
//!   each bar labelled with its seconds.
//! - [`links`]: the download rate of a disturbed host and the hosts below it over
//!   time, from the links' interface counters.
//!
//! Text goes through plotters' `ab_glyph` backend, which has no system fonts: a TTF is
//! registered once as `sans-serif` from `VW_FONT` or the usual Debian paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use vw_node::names::HostName;

use crate::disturb::Samples;
use crate::results::{OpRow, RunRow};
use crate::TestnetError;

/// Fonts tried after `VW_FONT`, in order.
const SYSTEM_FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The size of every figure, pixels.
const SIZE: (u32, u32) = (900, 600);

/// Registers the `sans-serif` font once per process (the outcome is remembered).
fn font() -> Result<(), TestnetError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(register).clone().map_err(TestnetError::Output)
}

fn register() -> Result<(), String> {
    let env = std::env::var_os("VW_FONT").map(PathBuf::from);
    let mut tried = Vec::new();
    for path in env.into_iter().chain(SYSTEM_FONTS.iter().map(PathBuf::from)) {
        match std::fs::read(&path) {
            Ok(bytes) => {
                // plotters keeps fonts for the whole process: leaking one file is fine.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{}: not a TrueType/OpenType font", path.display()));
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    Err(format!(
        "no font for the plots, tried {}; install fonts-dejavu-core (scripts/install-deps.sh does) \
         or set VW_FONT to a .ttf file",
        tried.join(", ")
    ))
}

/// A linear f64 axis with ticks exactly where the caller puts them (plotters'
/// `with_key_points` loses the f64 axis's label formatter).
struct Ticked {
    axis: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: impl IntoIterator<Item = f64>) -> Self {
        Ticked { axis: range.into(), ticks: ticks.into_iter().collect() }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.axis.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.axis.range()
    }
}

/// Means of the values pushed per key.
fn means<K: Ord>(pairs: impl IntoIterator<Item = (K, f64)>) -> BTreeMap<K, f64> {
    let mut sums: BTreeMap<K, (f64, u32)> = BTreeMap::new();
    for (k, v) in pairs {
        let e = sums.entry(k).or_default();
        e.0 += v;
        e.1 += 1;
    }
    sums.into_iter().map(|(k, (s, c))| (k, s / f64::from(c))).collect()
}

/// The top of a y axis from zero that fits `max` with room for labels.
fn y_top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.15
    } else {
        1.0
    }
}

/// Staging time against the number of hosts (Fig. 2(a)), written to `out` as PNG.
///
/// One line with points per (method, case), e.g. "star cold", at the mean transfer
/// seconds (`fetch_s`) for
/// each N, and a dashed grey line per case at the mean `limit_s`. The x axis is log2
/// with a tick at every N present.
pub fn staging_vs_n(runs: &[RunRow], title: &str, out: &Path) -> Result<(), TestnetError> {
    font()?;
    let err = |e: &dyn std::fmt::Display| TestnetError::Output(format!("{}: {e}", out.display()));
    let log2 = |n: usize| (n.max(1) as f64).log2();

    let series = means(runs.iter().map(|r| ((r.method.clone(), r.case.clone(), r.n), r.fetch_s)));
    let mut lines: BTreeMap<(&str, &str), Vec<(f64, f64)>> = BTreeMap::new();
    for ((method, case, n), s) in &series {
        lines.entry((method, case)).or_default().push((log2(*n), *s));
    }
    let limits = means(runs.iter().map(|r| ((r.case.clone(), r.n), r.limit_s)));
    let mut limit_lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for ((case, n), s) in &limits {
        limit_lines.entry(case).or_default().push((log2(*n), *s));
    }

    let mut ns: Vec<usize> = runs.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let lo = ns.first().map_or(0.0, |&n| log2(n));
    let hi = ns.last().map_or(0.0, |&n| log2(n));
    let pad = ((hi - lo) * 0.05).max(0.25);
    let max = series.values().chain(limits.values()).fold(0.0_f64, |m, &v| m.max(v));

    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            Ticked::new((lo - pad)..(hi + pad), ns.iter().map(|&n| log2(n))),
            0.0..y_top(max),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("hosts (N)")
        .y_desc("staging transfer (s)")
        .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
        .draw()
        .map_err(|e| err(&e))?;

    for (i, ((method, case), points)) in lines.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(4))
            .map_err(|e| err(&e))?
            .label(format!("{method} {case}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    for (i, (case, points)) in limit_lines.into_iter().enumerate() {
        // Darker greys for later cases, so limits of different cases stay apart.
        let g = 150 - 40 * (i % 3) as u8;
        let style = RGBColor(g, g, g).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
            .map_err(|e| err(&e))?
            .label(format!("limit {case}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        // A short bar at each N: the limit stays visible when there is only one N.
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| EmptyElement::at(p) + PathElement::new([(-9, 0), (9, 0)], style)),
            )
            .map_err(|e| err(&e))?;
    }
    finish(&mut chart, &root, (!series.is_empty()).then_some(SeriesLabelPosition::UpperLeft), out)
}

/// Lifecycle operations (Fig. 2(b)), written to `out` as PNG.
///
/// One group of bars per operation in the order the rows name them, one bar per N in
/// the group (a series per N, in its own colour), each labelled with its mean seconds.
pub fn operations(ops: &[OpRow], title: &str, out: &Path) -> Result<(), TestnetError> {
    font()?;
    let err = |e: &dyn std::fmt::Display| TestnetError::Output(format!("{}: {e}", out.display()));

    let mut names: Vec<&str> = Vec::new();
    for o in ops {
        if !names.contains(&o.op.as_str()) {
            names.push(&o.op);
        }
    }
    let index = |op: &str| names.iter().position(|n| *n == op).unwrap_or(0);
    let bars = means(ops.iter().map(|o| ((o.n, index(&o.op)), o.seconds)));
    let mut ns: Vec<usize> = ops.iter().map(|o| o.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let max = bars.values().fold(0.0_f64, |m, &v| m.max(v));
    let width = 0.8 / ns.len().max(1) as f64;

    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            Ticked::new(
                -0.5..(names.len().max(1) as f64 - 0.5),
                (0..names.len()).map(|i| i as f64),
            ),
            0.0..y_top(max * 1.1),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("operation")
        .y_desc("time (s)")
        .x_label_formatter(&|x| {
            names.get(x.round().max(0.0) as usize).map_or_else(String::new, |s| s.to_string())
        })
        .draw()
        .map_err(|e| err(&e))?;

    let label =
        ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (j, &n) in ns.iter().enumerate() {
        let colour = Palette99::pick(j).to_rgba();
        let mine: Vec<(f64, f64)> = bars
            .iter()
            .filter(|((bn, _), _)| *bn == n)
            .map(|((_, i), &s)| (*i as f64 - 0.4 + width * j as f64, s))
            .collect();
        chart
            .draw_series(mine.iter().map(|&(x, s)| {
                Rectangle::new([(x + width * 0.05, 0.0), (x + width * 0.95, s)], colour.filled())
            }))
            .map_err(|e| err(&e))?
            .label(format!("N = {n}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart
            .draw_series(mine.iter().map(|&(x, s)| {
                let text = if s < 10.0 { format!("{s:.2}") } else { format!("{s:.1}") };
                Text::new(text, (x + width / 2.0, s), label.clone())
            }))
            .map_err(|e| err(&e))?;
    }
    finish(&mut chart, &root, (!ns.is_empty()).then_some(SeriesLabelPosition::UpperRight), out)
}

/// Draws the legend at `legend` (none: no series to name) and writes the PNG.
/// The download rate of `victim` and of each of `below` over time (1 s means of the
/// interface counters' samples), in Mbit/s, written to `out` as PNG.
pub fn links(
    samples: &Samples,
    victim: &HostName,
    below: &[HostName],
    title: &str,
    out: &Path,
) -> Result<(), TestnetError> {
    font()?;
    let err = |e: &dyn std::fmt::Display| TestnetError::Output(format!("{}: {e}", out.display()));
    // Every tenth sample: 1 s apart.
    let coarse: Vec<&(f64, Vec<(u64, u64)>)> = samples.at.iter().step_by(10).collect();
    let series = |host: &HostName| -> Option<Vec<(f64, f64)>> {
        let h = samples.hosts.iter().position(|n| n == host.as_str())?;
        Some(
            coarse
                .windows(2)
                .map(|w| {
                    let dt = (w[1].0 - w[0].0).max(1e-6);
                    let bytes = w[1].1[h].0.saturating_sub(w[0].1[h].0) as f64;
                    (w[1].0, bytes * 8.0 / dt / 1e6)
                })
                .collect(),
        )
    };
    let hosts: Vec<&HostName> = std::iter::once(victim).chain(below).collect();
    let lines: Vec<(&HostName, Vec<(f64, f64)>)> =
        hosts.iter().filter_map(|h| Some((*h, series(h)?))).collect();
    let t_max = samples.at.last().map_or(1.0, |s| s.0.max(1.0));
    let y_max = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)).fold(0.0_f64, f64::max);

    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_top(y_max))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds from vw deploy")
        .y_desc("download, Mbit/s (interface counters)")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (host, points)) in lines.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let label = if i == 0 { format!("{host} (disturbed)") } else { host.to_string() };
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    finish(&mut chart, &root, Some(SeriesLabelPosition::UpperRight), out)
}

fn finish<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    legend: Option<SeriesLabelPosition>,
    out: &Path,
) -> Result<(), TestnetError> {
    let err = |e: &dyn std::fmt::Display| TestnetError::Output(format!("{}: {e}", out.display()));
    if let Some(position) = legend {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(case: &str, method: &str, n: usize, seconds: f64) -> RunRow {
        RunRow {
            scenario: "s".into(),
            case: case.into(),
            method: method.into(),
            n,
            bytes_lacked: 1 << 30,
            bytes_sent: 1 << 29,
            seconds: seconds + 1.0,
            fetch_s: seconds,
            limit_s: 2.0 * n as f64,
            ratio: seconds / (2.0 * n as f64),
            raw_limit_s: 10.0,
            cpu_s: 1.0,
            cpu_share: 0.1,
            verified: n,
            ..RunRow::default()
        }
    }

    /// Passes if `out` is a PNG, or if no font is installed and the error says which.
    fn check(result: Result<(), TestnetError>, out: &Path) {
        if Path::new(SYSTEM_FONTS[0]).exists() {
            result.expect("plot");
            let bytes = std::fs::read(out).expect("read plot");
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", out.display());
        } else if let Err(e) = result {
            assert!(e.to_string().contains("fonts-dejavu"), "{e}");
        }
    }

    #[test]
    fn staging_plot_is_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut runs = Vec::new();
        for n in [1, 2, 4, 8] {
            runs.push(run("cold", "star", n, 2.5 * n as f64));
            runs.push(run("cold", "chain", n, 2.2 * n as f64 + 1.0));
            runs.push(run("cached", "chain", n, 0.3));
        }
        let out = dir.path().join("staging.png");
        check(staging_vs_n(&runs, "staging", &out), &out);
        // A single N must not make a zero-width axis.
        let out = dir.path().join("single.png");
        check(staging_vs_n(&runs[..3], "one N", &out), &out);
    }

    #[test]
    fn operations_plot_is_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ops = ["stage", "load", "create", "pause", "unpause", "stop", "unstage"];
        let rows: Vec<OpRow> = [2, 8]
            .iter()
            .flat_map(|&n| {
                ops.iter().enumerate().map(move |(i, op)| OpRow {
                    scenario: "s".into(),
                    n,
                    op: op.to_string(),
                    seconds: 0.1 * (i + 1) as f64 * n as f64,
                })
            })
            .collect();
        let out = dir.path().join("ops.png");
        check(operations(&rows, "operations", &out), &out);
        let out = dir.path().join("ops1.png");
        check(operations(&rows[..7], "one N", &out), &out);
    }
}
