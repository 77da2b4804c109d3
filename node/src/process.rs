//! Running an external program (`xl`, debugfs, e2fsck, mkfs.vfat, …) under a deadline
//! and with bounded output: a program fed a hostile input (a VO's file system) may hang
//! or print without end, and neither may hold vw with it.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished program left.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output, up to the limit.
    pub stdout: Vec<u8>,
    /// Its standard error, up to the limit.
    pub stderr: Vec<u8>,
    /// Whether either stream went past the limit (the rest was read and dropped).
    pub truncated: bool,
}

/// Why a program did not finish.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It ran past its deadline and was killed.
    Timeout,
}

/// Runs `command` (stdin closed) until it exits or `timeout` passes, keeping at most
/// `max_output` bytes of each of its output streams.
pub fn run(
    command: &mut Command,
    timeout: Duration,
    max_output: usize,
) -> Result<Finished, RunError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    // Both pipes drain on threads, so a chatty program cannot block on a full pipe.
    let stdout = drain(child.stdout.take(), max_output);
    let stderr = drain(child.stderr.take(), max_output);
    let Some(status) = wait(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RunError::Timeout);
    };
    let (stdout, cut_out) = stdout.join().unwrap_or_default();
    let (stderr, cut_err) = stderr.join().unwrap_or_default();
    Ok(Finished { status, stdout, stderr, truncated: cut_out || cut_err })
}

/// Reads `pipe` to its end, keeping the first `max` bytes; whether there was more.
fn drain<R: Read + Send + 'static>(
    pipe: Option<R>,
    max: usize,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut p) = pipe else { return (kept, false) };
        let _ = p.by_ref().take(max as u64).read_to_end(&mut kept);
        let rest = std::io::copy(&mut p, &mut std::io::sink()).unwrap_or(0);
        (kept, rest > 0)
    })
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(50));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_past_its_deadline_is_killed() {
        let started = Instant::now();
        let r = run(Command::new("sleep").arg("30"), Duration::from_millis(200), 1024);
        assert!(matches!(r, Err(RunError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "it was not killed");
    }

    #[test]
    fn output_past_the_limit_is_dropped_and_said() {
        let mut c = Command::new("head");
        c.args(["-c", "3000000", "/dev/zero"]);
        let f = run(&mut c, Duration::from_secs(30), 1 << 20).expect("runs");
        assert!(f.status.success());
        assert_eq!(f.stdout.len(), 1 << 20);
        assert!(f.truncated);
        let f = run(Command::new("true").arg(""), Duration::from_secs(30), 16).expect("runs");
        assert!(!f.truncated && f.stdout.is_empty());
    }
}
