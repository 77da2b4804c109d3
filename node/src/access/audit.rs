//! The audit log: one JSON line per operation a host carries out or refuses, with the
//! VO it was on behalf of, the peer that asked, and the time.
//!
//! `<data_dir>/audit.log`, opened for appending; each line goes out in one `write`, so
//! lines from concurrent streams never interleave. Lines are not synced one by one (a
//! power cut may lose the last few); the operations themselves are.
//!
//! ```json
//! {"time_ms":1764000000000,"vo":"grid3","peer":"12D3KooW…","op":"stage","deployment":"grid3","outcome":"ok","detail":"2 images"}
//! ```
//!
//! A peer decides how often it is refused, so what refusals can write is bounded:
//!
//! - **Rotation.** A line that would take `audit.log` past [`Options::max_bytes`] first
//!   moves it to `audit.log.1` (`.1` to `.2`, and so on; the oldest beyond
//!   [`Options::files`] is deleted) and starts a new file. The log never takes more
//!   than `files × max_bytes` (and one line). [`Audit::read`] reads what is left,
//!   oldest first.
//! - **Repeated refusals.** A refusal identical to one written less than
//!   [`Options::repeat_window`] ago (same VO, peer, operation, deployment and reason)
//!   is only counted. When the window ends (at the next line written after it, or
//!   when the log is closed) one summary line follows, with the count in `repeated`:
//!
//!   ```json
//!   {"time_ms":1764000009000,"vo":"-","peer":"12D3KooW…","op":"chunks","deployment":"x","outcome":"refused","detail":"stage x is not being staged through this host (repeated 4182 more times)","repeated":4182}
//!   ```
//!
//!   Up to [`MAX_RUNS`] kinds of refusal are counted at once, so a few peers
//!   interleaving their refusals are each collapsed. Operations carried out (`ok`) or
//!   that failed (`failed`) are always written in full.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file name under the data directory.
pub const FILE: &str = "audit.log";

/// Kinds of refusal counted at once; a new kind past this ends the oldest run (its
/// summary is written). Enough for every peer of a large cluster refusing at once,
/// small enough that the scan on each line costs nothing.
pub const MAX_RUNS: usize = 64;

/// One line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// The VO the operation was for (`-` when not known: a refused request that named
    /// no deployment this host knows).
    pub vo: String,
    /// The peer that asked (`local` for the control socket).
    pub peer: String,
    /// What: `deploy`, `stage`, `load`, …, `chunks`.
    pub op: String,
    /// The deployment.
    pub deployment: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Details: what was refused and why, what was served.
    pub detail: String,
    /// On a summary line: how many identical refusals after the first were counted and
    /// not written (0, and absent, on every other line).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How much the log keeps, and how it collapses repeated refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Largest `audit.log` grows before it is rotated. Default 64 MiB: months of a busy
    /// host's operations, a few seconds' worth of disk bandwidth to rotate.
    pub max_bytes: u64,
    /// Files kept, the live one included (`audit.log`, `audit.log.1`, …). Default 4: at
    /// most 256 MiB with the default size.
    pub files: usize,
    /// How long an identical refusal is counted rather than written. Default 10 s: a
    /// flood costs two lines per kind of refusal each window, and an operator still sees
    /// within seconds that it is going on.
    pub repeat_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_bytes: 64 << 20, files: 4, repeat_window: Duration::from_secs(10) }
    }
}

/// A host's audit log.
#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    options: Options,
    state: Mutex<State>,
}

/// The open file and the refusals being counted.
#[derive(Debug)]
struct State {
    file: std::fs::File,
    /// Bytes in the live file.
    size: u64,
    /// Refusals being counted, by everything a line says but its time.
    runs: HashMap<Key, Run>,
}

/// What makes two refusals identical.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    vo: String,
    peer: String,
    op: String,
    deployment: String,
    detail: String,
}

/// One kind of refusal being counted.
#[derive(Debug)]
struct Run {
    /// When its first line was written.
    since: Instant,
    /// Identical refusals since, not written.
    suppressed: u64,
    /// The time of the last of them.
    last_ms: u64,
}

impl Audit {
    /// Opens (or creates) the log under `data_dir`, with the default [`Options`].
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_with(data_dir, Options::default())
    }

    /// Opens (or creates) the log under `data_dir`.
    pub fn open_with(data_dir: &Path, options: Options) -> std::io::Result<Self> {
        let path = data_dir.join(FILE);
        let file = append(&path)?;
        let size = file.metadata()?.len();
        let options = Options { files: options.files.max(1), ..options };
        Ok(Audit { path, options, state: Mutex::new(State { file, size, runs: HashMap::new() }) })
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (or counts it, if it repeats a refusal just written); a failed
    /// write is logged, never fatal to the operation.
    pub fn record(
        &self,
        vo: &str,
        peer: &str,
        op: &str,
        deployment: &str,
        outcome: &str,
        detail: &str,
    ) {
        if outcome == "refused" {
            crate::metrics::refused(op);
        }
        let entry = Entry {
            time_ms: crate::manager::now_ms(),
            vo: vo.to_owned(),
            peer: peer.to_owned(),
            op: op.to_owned(),
            deployment: deployment.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
            repeated: 0,
        };
        let now = Instant::now();
        let mut st = self.state.lock().expect("audit lock");
        self.end_runs(&mut st, |run| now.duration_since(run.since) >= self.options.repeat_window);
        if entry.outcome != "refused" {
            self.write(&mut st, &entry);
            return;
        }
        let key = Key {
            vo: entry.vo.clone(),
            peer: entry.peer.clone(),
            op: entry.op.clone(),
            deployment: entry.deployment.clone(),
            detail: entry.detail.clone(),
        };
        if let Some(run) = st.runs.get_mut(&key) {
            run.suppressed += 1;
            run.last_ms = entry.time_ms;
            return;
        }
        if st.runs.len() >= MAX_RUNS {
            let oldest = st.runs.values().map(|r| r.since).min();
            self.end_runs(&mut st, |run| Some(run.since) == oldest);
        }
        self.write(&mut st, &entry);
        st.runs.insert(key, Run { since: now, suppressed: 0, last_ms: entry.time_ms });
    }

    /// Writes the summaries of every refusal being counted (as the end of their window
    /// would). Called when the log is dropped.
    pub fn flush(&self) {
        let mut st = self.state.lock().expect("audit lock");
        self.end_runs(&mut st, |_| true);
    }

    /// Ends the runs `done` picks, writing a summary for each that counted any.
    fn end_runs(&self, st: &mut State, done: impl Fn(&Run) -> bool) {
        let ended: Vec<Key> =
            st.runs.iter().filter(|(_, r)| done(r)).map(|(k, _)| k.clone()).collect();
        for key in ended {
            let Some(run) = st.runs.remove(&key) else { continue };
            if run.suppressed == 0 {
                continue;
            }
            let summary = Entry {
                time_ms: run.last_ms,
                detail: format!("{} (repeated {} more times)", key.detail, run.suppressed),
                vo: key.vo,
                peer: key.peer,
                op: key.op,
                deployment: key.deployment,
                outcome: "refused".to_owned(),
                repeated: run.suppressed,
            };
            self.write(st, &summary);
        }
    }

    /// Writes one line, rotating first if it would take the file past its limit.
    fn write(&self, st: &mut State, entry: &Entry) {
        let mut line = serde_json::to_vec(entry).expect("an entry serialises");
        line.push(b'\n');
        if st.size > 0 && st.size + line.len() as u64 > self.options.max_bytes {
            match self.rotate() {
                Ok(file) => {
                    st.file = file;
                    st.size = 0;
                }
                // Keep writing where we are: an audit line lost is worse than a file
                // past its size.
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "cannot rotate the audit log; check the data directory's permissions"
                ),
            }
        }
        match st.file.write_all(&line) {
            Ok(()) => st.size += line.len() as u64,
            Err(e) => {
                let path = self.path.display();
                tracing::error!(%path, error = %e, "cannot write the audit log");
            }
        }
    }

    /// Shifts `audit.log.N` to `.N+1` (dropping the last kept), `audit.log` to `.1`, and
    /// opens a new `audit.log`.
    fn rotate(&self) -> std::io::Result<std::fs::File> {
        let files = self.options.files;
        let rotated = |n: usize| rotated_path(&self.path, n);
        if files == 1 {
            std::fs::remove_file(&self.path)?;
            return append(&self.path);
        }
        match std::fs::remove_file(rotated(files - 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..files - 1).rev() {
            match std::fs::rename(rotated(n), rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(1))?;
        append(&self.path)
    }

    /// Every entry left, oldest first: the rotated files from the oldest, then the live
    /// one (for `vw` and the tests). Refusals still being counted by a running host are
    /// not there yet.
    pub fn read(data_dir: &Path) -> std::io::Result<Vec<Entry>> {
        let live = data_dir.join(FILE);
        let mut rotated: Vec<usize> = Vec::new();
        let dir = match std::fs::read_dir(data_dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        for dirent in dir {
            let name = dirent?.file_name();
            let n = name.to_str().and_then(|n| n.strip_prefix(FILE)?.strip_prefix('.'));
            if let Some(n) = n.and_then(|n| n.parse().ok()) {
                rotated.push(n);
            }
        }
        rotated.sort_unstable_by(|a, b| b.cmp(a));
        let mut entries = Vec::new();
        for path in rotated.into_iter().map(|n| rotated_path(&live, n)).chain([live.clone()]) {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in text.lines() {
                entries.push(
                    serde_json::from_str(line)
                        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
                );
            }
        }
        Ok(entries)
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            self.end_runs(&mut st, |_| true);
        }
    }
}

/// `audit.log.N`.
fn rotated_path(live: &Path, n: usize) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn old_lines_still_parse() {
        let line = concat!(
            r#"{"time_ms":1,"vo":"v","peer":"p","op":"stage","deployment":"d","#,
            r#""outcome":"ok","detail":"x"}"#
        );
        let e: Entry = serde_json::from_str(line).expect("an old line parses");
        assert_eq!(e.repeated, 0);
        assert_eq!(serde_json::to_string(&e).expect("json"), line, "and is written the same");
    }

    #[test]
    fn rotation_keeps_at_most_the_files_allowed_and_the_newest_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { max_bytes: 1024, files: 3, ..Options::default() };
        let audit = Audit::open_with(dir.path(), options).expect("open");
        let lines = 1000;
        for i in 0..lines {
            audit.record("vo", "p", "stage", &format!("d{i}"), "ok", "served");
        }
        assert_eq!(files(dir.path()), ["audit.log", "audit.log.1", "audit.log.2"]);
        for name in files(dir.path()) {
            let size = std::fs::metadata(dir.path().join(&name)).expect("size").len();
            assert!(size <= 1024, "{name} is {size} bytes, past the limit");
        }
        let entries = Audit::read(dir.path()).expect("read");
        assert!(entries.len() < lines && !entries.is_empty(), "{} lines kept", entries.len());
        // What is left is the newest lines, oldest first, none missing in between.
        let first = lines - entries.len();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.deployment, format!("d{}", first + i));
        }
        // Reopened, it appends to the live file and goes on rotating.
        drop(audit);
        let audit = Audit::open_with(dir.path(), options).expect("reopen");
        audit.record("vo", "p", "stage", "again", "ok", "served");
        let entries = Audit::read(dir.path()).expect("read");
        assert_eq!(entries.last().expect("a line").deployment, "again");
        assert_eq!(files(dir.path()).len(), 3);
    }

    #[test]
    fn a_flood_of_identical_refusals_writes_a_few_lines_that_count_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::open(dir.path()).expect("open");
        let flood = 100_000u64;
        for _ in 0..flood {
            audit.record("-", "attacker", "chunks", "x", "refused", "stage x is not staged here");
        }
        audit.record("vo", "head", "stage", "d", "ok", "1 image");
        drop(audit);
        let entries = Audit::read(dir.path()).expect("read");
        let refusals: Vec<&Entry> = entries.iter().filter(|e| e.outcome == "refused").collect();
        // Each window writes the first refusal and a summary: a slow machine may need a
        // few windows, but never many lines.
        assert!(refusals.len() <= 20, "{} lines for the flood", refusals.len());
        // A first line stands for itself, a summary for the refusals it counted.
        let counted: u64 = refusals.iter().map(|e| e.repeated.max(1)).sum();
        assert_eq!(counted, flood, "every refusal is counted");
        let summary = refusals.iter().find(|e| e.repeated > 0).expect("a summary line");
        assert!(summary.detail.ends_with("more times)"), "{}", summary.detail);
        assert!(summary.detail.starts_with("stage x is not staged here"), "{}", summary.detail);
        assert!(entries.iter().any(|e| e.outcome == "ok"), "the operation is written");
        let size = std::fs::metadata(dir.path().join(FILE)).expect("size").len();
        assert!(size < 8 << 10, "the log is {size} bytes");
    }

    #[test]
    fn different_peers_and_reasons_are_not_merged_and_ok_lines_never_suppressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::open(dir.path()).expect("open");
        // Two peers and two reasons, interleaved.
        for _ in 0..50 {
            audit.record("-", "p1", "chunks", "x", "refused", "reason a");
            audit.record("-", "p2", "chunks", "x", "refused", "reason a");
            audit.record("-", "p1", "chunks", "x", "refused", "reason b");
            audit.record("vo", "p1", "chunks", "x", "ok", "3 chunks sent");
            audit.record("vo", "p1", "chunks", "x", "failed", "stream reset");
        }
        audit.flush();
        let entries = Audit::read(dir.path()).expect("read");
        for (peer, reason) in [("p1", "reason a"), ("p2", "reason a"), ("p1", "reason b")] {
            let lines: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.peer == peer && e.outcome == "refused")
                .filter(|e| e.detail.starts_with(reason))
                .collect();
            assert_eq!(lines.len(), 2, "{peer} {reason}: the first and a summary: {lines:?}");
            assert_eq!(lines[0].detail, reason);
            assert_eq!(lines[1].repeated, 49);
        }
        assert_eq!(entries.iter().filter(|e| e.outcome == "ok").count(), 50);
        assert_eq!(entries.iter().filter(|e| e.outcome == "failed").count(), 50);
    }

    #[test]
    fn after_the_window_a_summary_is_written_and_the_next_refusal_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Long enough that three calls in a row fall within it on any machine.
        let window = Duration::from_secs(1);
        let options = Options { repeat_window: window, ..Options::default() };
        let audit = Audit::open_with(dir.path(), options).expect("open");
        for _ in 0..3 {
            audit.record("-", "p", "chunks", "x", "refused", "no");
        }
        std::thread::sleep(window + Duration::from_millis(100));
        audit.record("-", "p", "chunks", "x", "refused", "no");
        let entries = Audit::read(dir.path()).expect("read");
        let repeated: Vec<u64> = entries.iter().map(|e| e.repeated).collect();
        assert_eq!(repeated, [0, 2, 0], "first, summary of two, the next in full: {entries:?}");
        // Nothing more was counted: closing writes no summary.
        drop(audit);
        assert_eq!(Audit::read(dir.path()).expect("read").len(), 3);
    }

    #[test]
    fn past_max_runs_the_oldest_run_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Audit::open(dir.path()).expect("open");
        for _ in 0..2 {
            for p in 0..=MAX_RUNS {
                audit.record("-", &format!("p{p}"), "chunks", "x", "refused", "no");
            }
        }
        drop(audit);
        let entries = Audit::read(dir.path()).expect("read");
        let counted: u64 = entries.iter().map(|e| e.repeated.max(1)).sum();
        assert_eq!(counted, 2 * (MAX_RUNS as u64 + 1), "nothing is lost when runs are ended early");
    }
}
