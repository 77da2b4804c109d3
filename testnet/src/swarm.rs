//! Baseline: a BitTorrent swarm over the same links, the way swarming image
//! distributors (Twitter's Murder, Kraken, Dragonfly) move images.
//!
//! Debian's `mktorrent` makes a torrent of the raw worker image (1 MiB pieces, each
//! hashed with SHA-1), `opentracker` tracks it on the head (its whitelist holds the one
//! info hash), the head seeds the image with `aria2c`, and every receiving host runs
//! `aria2c` on the torrent at once. A host that finishes keeps seeding until every host
//! has finished, as a swarm's members do, so the last hosts are not starved by the
//! first ones leaving. aria2c checks every piece's hash as it arrives; its completion
//! hook writes the time, and the harness compares every host's file with the original
//! afterwards. No DHT, local peer discovery or encryption: the tracker and peer
//! exchange are the only ways peers meet, as on a cluster's own network.
//!
//! The swarm moves every byte of the image, zeros included: its limit is the raw-image
//! limit, as for the TCP baselines. A run may slow or load one host's link as it does
//! for vw ([`crate::disturb`]); the host is the one in the middle of the numbering,
//! which is the one vw's chain puts mid-cascade.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::disturb::{Background, LinkSampler, Slowdown};
use crate::images;
use crate::results::RunRow;
use crate::runner::{RunContext, Victim};
use crate::TestnetError;

/// The tracker's port on the head.
const TRACKER_PORT: u16 = 6969;
/// Every peer's listening port (each in its own namespace).
const PEER_PORT: u16 = 6881;
/// The piece size, as a power of two: 1 MiB, what common clients choose for an image
/// of hundreds of megabytes.
const PIECE_LOG2: u32 = 20;
/// How often the harness looks for finished hosts and the victim's progress.
const POLL: Duration = Duration::from_millis(50);

/// aria2c's options shared by the seed and the peers.
const ARIA2: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=true",
    // Seed until killed: the harness stops the swarm once every host has finished.
    "--seed-ratio=0.0",
    "--file-allocation=falloc",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--log-level=notice",
];

/// The processes of one swarm (the tracker and every aria2c), killed when dropped.
#[derive(Default)]
struct Swarm {
    children: crate::net::Children,
}

impl Swarm {
    fn spawn(&mut self, mut command: Command, what: &str) -> Result<(), TestnetError> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestnetError::Run(format!("starting {what}: {e}")))?;
        self.children.add(child);
        Ok(())
    }
}

impl RunContext<'_> {
    /// The BitTorrent baseline: the raw worker image from the head's seed to every host
    /// through a swarm, with the run's disturbance; every host's copy compared with the
    /// original.
    pub(crate) fn swarm(&self) -> Result<RunRow, TestnetError> {
        let n = self.hosts.len() - 1;
        let worker = self.images.worker(self.run.image);
        let (original, image_len) = (worker.path, worker.len);
        let file_name = original
            .file_name()
            .ok_or_else(|| TestnetError::Run(format!("{}: no file name", original.display())))?;
        let head = &self.hosts[0];
        let torrent = self.dir.join("image.torrent");
        let announce = format!("http://{}:{TRACKER_PORT}/announce", head.addr);
        crate::net::run(
            "mktorrent",
            &[
                "-a",
                &announce,
                "-l",
                &PIECE_LOG2.to_string(),
                "-o",
                path_str(&torrent)?,
                path_str(original)?,
            ],
        )?;
        let whitelist = self.dir.join("whitelist");
        crate::write_file(&whitelist, format!("{}\n", info_hash(&torrent)?).as_bytes())?;
        let hook = self.dir.join("done.sh");
        // aria2c runs it with (gid, files, path) when a download completes, before
        // seeding; it leaves the time beside the file as `NAME.done`.
        write_executable(&hook, "#!/bin/sh\ndate +%s.%N > \"$3.done\"\n")?;
        let in_ns = |i: usize, program: &str| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.hosts[i].netns, program]);
            c
        };
        let aria2 = |i: usize, dir: &Path, log: &Path| -> Result<Command, TestnetError> {
            let mut c = in_ns(i, "aria2c");
            c.args(ARIA2)
                .arg(format!("--listen-port={PEER_PORT}"))
                .arg(format!("--dir={}", path_str(dir)?))
                .arg(format!("--log={}", path_str(log)?));
            Ok(c)
        };
        let mut swarm = Swarm::default();
        let mut tracker = in_ns(0, "opentracker");
        tracker.args(["-i", &head.addr.to_string(), "-p", &TRACKER_PORT.to_string()]).args([
            "-P",
            &TRACKER_PORT.to_string(),
            "-d",
            path_str(self.dir)?,
            "-w",
            "whitelist",
        ]);
        swarm.spawn(tracker, "opentracker")?;
        wait_listening(&head.netns, TRACKER_PORT)?;
        // The seed: a copy of the image (aria2c opens its files for writing).
        let seed = self.dir.join("seed");
        crate::net::scratch_dir(&seed)?;
        let copy = seed.join(file_name);
        std::fs::copy(original, &copy).map_err(|error| TestnetError::Io {
            op: "copy",
            path: copy.clone(),
            error,
        })?;
        let mut seeder = aria2(0, &seed, &self.dir.join("seed.log"))?;
        seeder.arg("--bt-seed-unverified=true").arg(&torrent);
        swarm.spawn(seeder, "the seeding aria2c")?;

        let victim = self.run.disturbs().then(|| {
            let index = n.div_ceil(2);
            Victim { host: format!("node{index}").as_str().into(), index, position: None }
        });
        let outs: Vec<PathBuf> = (1..=n).map(|i| self.dir.join(format!("h{i}"))).collect();
        let cpu0 = crate::baseline::children_cpu();
        let (t0, epoch0) = (Instant::now(), SystemTime::now());
        let sampler = LinkSampler::start(self.hosts, names(n), t0);
        for (i, out) in (1..=n).zip(&outs) {
            crate::net::scratch_dir(out)?;
            let mut peer = aria2(i, out, &self.dir.join(format!("h{i}.log")))?;
            peer.arg(format!("--on-bt-download-complete={}", path_str(&hook)?)).arg(&torrent);
            swarm.spawn(peer, &format!("aria2c on node{i}"))?;
        }
        let mut background = None;
        if let (Some(v), true, Some(from)) = (&victim, self.run.background, self.background) {
            background = Some(Background::start(self.testnet, from, &self.hosts[v.index])?);
        }
        let start_rx = match &victim {
            Some(v) => self.hosts[v.index].counters()?.0,
            None => 0,
        };
        let mut slowdown = None;
        let deadline = Duration::from_secs_f64(60.0 + 20.0 * image_len as f64 / head.rate);
        let marker = format!("{}.done", path_str(Path::new(file_name))?);
        let mut finished: Vec<Option<f64>> = vec![None; n];
        while finished.iter().any(Option::is_none) {
            if t0.elapsed() > deadline {
                let late: Vec<String> = finished
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.is_none())
                    .map(|(i, _)| format!("node{}", i + 1))
                    .collect();
                return Err(TestnetError::Run(format!(
                    "bittorrent N={n}: {} not done after {:.0} s (logs in {})",
                    late.join(", "),
                    deadline.as_secs_f64(),
                    self.dir.display()
                )));
            }
            for (slot, out) in finished.iter_mut().zip(&outs) {
                if slot.is_none() {
                    *slot = finished_at(&out.join(&marker), epoch0)?;
                }
            }
            if let (Some(v), Some(slow), None) = (&victim, self.run.slow, &slowdown) {
                let got = self.hosts[v.index].counters()?.0.saturating_sub(start_rx);
                if got as f64 >= slow.at * image_len as f64 {
                    let h = &self.hosts[v.index];
                    let at = t0.elapsed().as_secs_f64();
                    slowdown = Some(Slowdown::start(h, slow.share, slow.seconds, at)?);
                }
            }
            std::thread::sleep(POLL);
        }
        let wall = t0.elapsed().as_secs_f64();
        drop(swarm);
        drop(background);
        if let Some(s) = slowdown {
            s.finish()?;
        }
        let samples = sampler.finish()?;
        let cpu_s = crate::baseline::children_cpu() - cpu0;
        for (i, out) in (1..=n).zip(&outs) {
            if let Some(offset) = images::first_difference(original, &out.join(file_name))? {
                return Err(TestnetError::Mismatch {
                    host: format!("node{i}"),
                    image: self.method.to_string(),
                    original: original.to_owned(),
                    offset,
                });
            }
        }
        let times: Vec<(String, f64, u64)> = finished
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("node{}", i + 1), t.unwrap_or(wall), image_len))
            .collect();
        let fetch_s = times.iter().map(|t| t.1).fold(0.0, f64::max);
        let raw_limit_s = image_len as f64 / self.checked.link.min(head.rate);
        let mut row = RunRow {
            scenario: self.checked.scenario.name.clone(),
            case: self.run.case.clone(),
            method: self.method.to_string(),
            n,
            bytes_lacked: image_len * n as u64,
            // Every piece is received once (aria2c's end game may ask one twice).
            bytes_sent: image_len * n as u64,
            seconds: fetch_s,
            fetch_s,
            limit_s: raw_limit_s,
            ratio: fetch_s / raw_limit_s,
            raw_limit_s,
            cpu_s,
            cpu_share: crate::results::cpu_share(cpu_s, wall),
            verified: n,
            ..RunRow::default()
        };
        self.disturbed(&mut row, &times, victim.as_ref())?;
        let file = format!("{}-{}-{}-n{n}", self.checked.scenario.name, self.run.case, self.method);
        crate::write_file(
            &self.reports.join(format!("{file}-links.csv")),
            samples.csv().as_bytes(),
        )?;
        Ok(row)
    }
}

/// The receiving hosts' names as the harness numbers them.
fn names(n: usize) -> Vec<String> {
    std::iter::once("head".to_owned()).chain((1..=n).map(|i| format!("node{i}"))).collect()
}

/// When the hook wrote `marker` (a Unix time), in seconds from `epoch0`; `None` if it
/// has not yet.
fn finished_at(marker: &Path, epoch0: SystemTime) -> Result<Option<f64>, TestnetError> {
    let text = match std::fs::read_to_string(marker) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(TestnetError::Io { op: "read", path: marker.to_owned(), error }),
    };
    // The hook may be caught halfway through writing: try again on the next look.
    let Ok(at) = text.trim().parse::<f64>() else { return Ok(None) };
    let start = epoch0
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| TestnetError::Run(format!("clock before 1970: {e}")))?;
    Ok(Some(at - start.as_secs_f64()))
}

/// The torrent's info hash, as `aria2c --show-files` prints it (hex).
fn info_hash(torrent: &Path) -> Result<String, TestnetError> {
    let shown = crate::net::run("aria2c", &["--show-files", path_str(torrent)?])?;
    parse_info_hash(&shown).ok_or_else(|| {
        TestnetError::Run(format!("{}: aria2c printed no info hash", torrent.display()))
    })
}

fn parse_info_hash(shown: &str) -> Option<String> {
    shown.lines().find_map(|line| {
        let hash = line.trim().strip_prefix("Info Hash:")?.trim();
        (hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hash.to_owned())
    })
}

/// Waits (up to 10 s) until something listens on TCP `port` in namespace `netns`.
fn wait_listening(netns: &str, port: u16) -> Result<(), TestnetError> {
    let t0 = Instant::now();
    let filter = format!("sport = :{port}");
    while t0.elapsed() < Duration::from_secs(10) {
        let out = crate::net::run("ip", &["netns", "exec", netns, "ss", "-Hltn", &filter])?;
        if out.lines().any(|l| !l.trim().is_empty()) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(TestnetError::Run(format!("nothing listens on port {port} in {netns} after 10 s")))
}

fn write_executable(path: &Path, text: &str) -> Result<(), TestnetError> {
    use std::os::unix::fs::PermissionsExt as _;
    crate::write_file(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| TestnetError::Io { op: "chmod", path: path.to_owned(), error })
}

fn path_str(path: &Path) -> Result<&str, TestnetError> {
    path.to_str().ok_or_else(|| TestnetError::Run(format!("{}: not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_hash_is_read_from_aria2cs_listing() {
        let shown = "Printing the contents of file 'x.torrent'...\n\
                     Info Hash: 20d29cfd54b8243ab3f9c8e0d37a02a223610bb6\n\
                     Piece Length: 1.0MiB\n";
        assert_eq!(
            parse_info_hash(shown).as_deref(),
            Some("20d29cfd54b8243ab3f9c8e0d37a02a223610bb6")
        );
        assert_eq!(parse_info_hash("Info Hash: not-hex\n"), None);
    }

    #[test]
    fn a_marker_is_read_once_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("worker.img.done");
        let epoch0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(finished_at(&marker, epoch0).expect("absent"), None);
        std::fs::write(&marker, "").expect("write");
        assert_eq!(finished_at(&marker, epoch0).expect("half-written"), None);
        std::fs::write(&marker, "1012.500000000\n").expect("write");
        assert_eq!(finished_at(&marker, epoch0).expect("read"), Some(12.5));
    }
}
