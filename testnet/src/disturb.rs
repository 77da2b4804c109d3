//! What a run does to the links while it stages, and what it watches on them.
//!
//! - [`Background`]: a TCP flow from the testnet's background namespace into a host,
//!   through that host's shaped link, for the whole stage (this binary's `flood` and
//!   `sink` commands in the two namespaces).
//! - [`Slowdown`]: a host's link shaped down to a share of its rate for a while, then
//!   back, from a thread of its own.
//! - [`LinkSampler`]: every host's link, both ways, from its switch port's interface
//!   counters (frames with their headers, as a switch would count them), sampled every
//!   100 ms: the timelines of the slowed host and its children, and the check that a
//!   capped deployment kept its cap, are measured here and not by vw.
//! - [`predict`]: what the planner's flow simulator makes of the same reshaping.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vw_node::planner::testdata::{cold, Scenario};
use vw_node::planner::{plan, simulate, simulate_reshaped, HostIx, Image, Reshape, Strategy};

use crate::net::HostNet;
use crate::TestnetError;

/// The port background flows use.
pub const PORT: u16 = 7600;

/// Accepts connections on `listen` and discards what they send, until killed. Says
/// `ready` on stdout once listening.
pub fn sink(listen: SocketAddr) -> Result<(), TestnetError> {
    let here = Path::new("<socket>");
    let io = |op| move |error| TestnetError::Io { op, path: here.to_owned(), error };
    let listener = TcpListener::bind(listen).map_err(io("listen"))?;
    println!("ready");
    std::io::stdout().flush().map_err(io("write"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let (mut from, _) = listener.accept().map_err(io("accept"))?;
        while from.read(&mut buf).map_err(io("receive"))? > 0 {}
    }
}

/// Sends zeros to `to` as fast as the path takes them, until killed.
pub fn flood(to: SocketAddr) -> Result<(), TestnetError> {
    let here = Path::new("<socket>");
    let io = |op| move |error| TestnetError::Io { op, path: here.to_owned(), error };
    let mut stream = TcpStream::connect(to).map_err(io("connect"))?;
    let buf = vec![0u8; 1 << 20];
    loop {
        stream.write_all(&buf).map_err(io("send"))?;
    }
}

/// A background flow into a host, stopped (both ends killed) when dropped.
#[derive(Debug)]
pub struct Background {
    children: crate::net::Children,
}

impl Background {
    /// Starts a flow from `from` (the background namespace) into `to`, with this
    /// binary (`testnet`) at both ends.
    pub fn start(testnet: &Path, from: &HostNet, to: &HostNet) -> Result<Self, TestnetError> {
        use std::io::BufRead as _;
        let command = |ns: &str| {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(testnet);
            c
        };
        let mut flow = Background { children: crate::net::Children::default() };
        let mut sink = command(&to.netns)
            .args(["sink", "--listen", &format!("0.0.0.0:{PORT}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| TestnetError::Run(format!("starting a sink: {e}")))?;
        let stdout = sink.stdout.take();
        flow.children.add(sink);
        let mut line = String::new();
        if let Some(out) = stdout {
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| TestnetError::Run(format!("sink on {}: {e}", to.netns)))?;
        }
        if line.trim() != "ready" {
            return Err(TestnetError::Run(format!("the sink on {} did not start", to.netns)));
        }
        let flood = command(&from.netns)
            .args(["flood", "--to", &format!("{}:{PORT}", to.addr)])
            .spawn()
            .map_err(|e| TestnetError::Run(format!("starting a flood: {e}")))?;
        flow.children.add(flood);
        Ok(flow)
    }
}

/// A host's link slowed to `share` of its rate for `seconds`, restored by its thread
/// (at once if dropped first).
#[derive(Debug)]
pub struct Slowdown {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), TestnetError>>>,
    /// When it started, from the run's start.
    pub started_s: f64,
}

impl Slowdown {
    /// Slows `host`'s link now; `started_s`: the run's clock.
    pub fn start(
        host: &HostNet,
        share: f64,
        seconds: f64,
        started_s: f64,
    ) -> Result<Self, TestnetError> {
        host.reshape(host.rate * share)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let host = host.clone();
        let thread = std::thread::spawn(move || {
            let _ = stopped.recv_timeout(Duration::from_secs_f64(seconds));
            host.reshape(host.rate)
        });
        Ok(Slowdown { stop: Some(stop), thread: Some(thread), started_s })
    }

    /// Waits for the link to be restored (at once), and says whether that worked.
    pub fn finish(mut self) -> Result<(), TestnetError> {
        self.stop.take();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(TestnetError::Run("the slowdown thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Slowdown {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every host's link counters, sampled every [`LinkSampler::EVERY`] on a thread.
#[derive(Debug)]
pub struct LinkSampler {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Result<Samples, TestnetError>>,
}

/// What a [`LinkSampler`] saw: per sample, the time since the run's start and every
/// host's (download, upload) bytes so far.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// The hosts' names, in sample order.
    pub hosts: Vec<String>,
    /// (seconds, per host (download, upload)).
    pub at: Vec<(f64, Vec<(u64, u64)>)>,
}

impl LinkSampler {
    /// How often the counters are read.
    pub const EVERY: Duration = Duration::from_millis(100);

    /// Starts sampling `hosts` (named `names`), timed from `t0`.
    pub fn start(hosts: &[HostNet], names: Vec<String>, t0: Instant) -> Self {
        let hosts = hosts.to_vec();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut samples = Samples { hosts: names, at: Vec::new() };
            loop {
                let counters =
                    hosts.iter().map(HostNet::counters).collect::<Result<Vec<_>, _>>()?;
                samples.at.push((t0.elapsed().as_secs_f64(), counters));
                match stopped.recv_timeout(Self::EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return Ok(samples),
                }
            }
        });
        LinkSampler { stop, thread }
    }

    /// Stops and returns what it saw.
    pub fn finish(self) -> Result<Samples, TestnetError> {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| TestnetError::Run("the link sampler panicked".into()))?
    }
}

impl Samples {
    /// The timeline as CSV: seconds, host, download and upload bytes per second over
    /// each sampling interval.
    pub fn csv(&self) -> String {
        let mut out = String::from("seconds,host,down_bytes_per_s,up_bytes_per_s\n");
        for w in self.at.windows(2) {
            let ((t0, a), (t1, b)) = (&w[0], &w[1]);
            let dt = (t1 - t0).max(1e-6);
            for (h, name) in self.hosts.iter().enumerate() {
                let down = b[h].0.saturating_sub(a[h].0) as f64 / dt;
                let up = b[h].1.saturating_sub(a[h].1) as f64 / dt;
                out.push_str(&format!("{t1:.2},{name},{down:.0},{up:.0}\n"));
            }
        }
        out
    }

    /// Per host, the highest rate its link carried either way over any `window`
    /// (between `from` and `to` seconds), bytes per second.
    pub fn peaks(&self, window: f64, from: f64, to: f64) -> Vec<f64> {
        let within: Vec<&(f64, Vec<(u64, u64)>)> =
            self.at.iter().filter(|(t, _)| *t >= from && *t <= to).collect();
        (0..self.hosts.len())
            .map(|h| {
                let mut peak = 0.0f64;
                let mut j = 0;
                for i in 0..within.len() {
                    while within[i].0 - within[j].0 > window {
                        j += 1;
                    }
                    let dt = within[i].0 - within[j].0;
                    if dt >= window * 0.9 {
                        let (a, b) = (&within[j].1[h], &within[i].1[h]);
                        let down = b.0.saturating_sub(a.0) as f64 / dt;
                        let up = b.1.saturating_sub(a.1) as f64 / dt;
                        peak = peak.max(down).max(up);
                    }
                }
                peak
            })
            .collect()
    }
}

/// What the planner's flow simulator predicts for a chain of `n` receivers on links of
/// `link` bytes per second (the source's `head_link`), moving an image of chunks
/// `lens`, with the receiver at chain position `victim` (1: the first) reshaped:
/// per chain position (the source first), the steady and the reshaped finish times.
pub fn predict(
    n: usize,
    link: f64,
    head_link: f64,
    lens: &[u32],
    victim: usize,
    reshape: impl Fn(HostIx) -> Reshape,
) -> Result<(Vec<f64>, Vec<f64>), TestnetError> {
    let fail = |e: vw_node::planner::PlanError| TestnetError::Run(format!("prediction: {e}"));
    let image = Image::new("worker", lens.to_vec());
    let Scenario { cluster, images, inventory, needs } = cold(image, n, head_link, link, None);
    let p = plan(&cluster, &images, &inventory, &needs, Strategy::Chain).map_err(fail)?;
    // The chain's order: from the source, each host's receiver.
    let mut order = vec![HostIx(0)];
    while let Some(next) =
        p.streams.iter().find(|s| Some(&s.from) == order.last() && !order.contains(&s.to))
    {
        order.push(next.to);
    }
    let at = order.get(victim).copied().ok_or_else(|| {
        TestnetError::Run(format!("prediction: no chain position {victim} of {}", order.len()))
    })?;
    let steady = simulate(&cluster, &images, &inventory, &p).map_err(fail)?;
    let shaped =
        simulate_reshaped(&cluster, &images, &inventory, &p, &[reshape(at)]).map_err(fail)?;
    let by_position = |finish: &[f64]| order.iter().map(|h| finish[h.ix()]).collect();
    Ok((by_position(&steady.host_finish), by_position(&shaped.host_finish)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_the_busiest_window_either_way() {
        let s = Samples {
            hosts: vec!["a".into()],
            at: (0..=40)
                .map(|i| {
                    (i as f64 * 0.1, vec![(i * 1000, if i > 20 { (i - 20) * 3000 } else { 0 })])
                })
                .collect(),
        };
        let peaks = s.peaks(1.0, 0.0, 10.0);
        assert!((peaks[0] - 30_000.0).abs() < 1.0, "{peaks:?}");
        assert!(s.csv().lines().count() == 41, "a line per interval and the header");
    }

    #[test]
    fn a_slowed_mid_chain_host_is_predicted_to_hold_back_those_below() {
        let lens = vec![65536u32; 1000];
        let (steady, slowed) = predict(6, 12.5e6, 12.5e6, &lens, 3, |host| Reshape {
            host,
            up: 0.3,
            down: 0.3,
            from: 0.25,
            seconds: 2.0,
        })
        .expect("predict");
        assert_eq!(steady.len(), 7);
        assert!(slowed[2] < steady[2] * 1.02, "above the victim: unchanged");
        assert!(slowed[4] > steady[4] + 1.0, "below it: held back by about 1.4 s");
    }
}
