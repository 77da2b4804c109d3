//! Baselines over the same links: the raw image copied by plain TCP, as `nc` would.
//!
//! - `tcp-chain`: a pipelined chain: the head sends the image to host 1, each host
//!   writes what it receives to its disk and forwards it to the next as it goes (a plain
//!   `nc` chain).
//! - `tcp-star`: the head sends the whole image to every host at once (an HTTP or
//!   GridFTP star, the paper's method).
//!
//! Both move every byte of the image, zeros included, and verify nothing on the way;
//! the harness compares each host's file with the original afterwards. The processes
//! are this binary's own `pipe` and `send` commands run in the hosts' namespaces.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use std::time::Instant;

use crate::images;
use crate::results::RunRow;
use crate::runner::RunContext;
use crate::TestnetError;

/// The port the baselines listen on.
pub const PORT: u16 = 7500;

const BUFFER: usize = 1 << 20;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TestnetError + 'a {
    move |error| TestnetError::Io { op, path: path.to_owned(), error }
}

/// Listens on `listen`, says `ready` on stdout, then runs [`pipe_on`].
pub fn pipe(listen: SocketAddr, out: &Path, next: Option<SocketAddr>) -> Result<u64, TestnetError> {
    let listener = TcpListener::bind(listen).map_err(io("listen", Path::new("<socket>")))?;
    // Ready: the harness waits for this line before it starts the sender.
    println!("ready");
    std::io::stdout().flush().map_err(io("write", Path::new("<stdout>")))?;
    pipe_on(&listener, out, next)
}

/// Accepts one connection, writes everything it sends to `out` (synced at the end) and
/// forwards it to `next` as it arrives. Returns the bytes received.
pub fn pipe_on(
    listener: &TcpListener,
    out: &Path,
    next: Option<SocketAddr>,
) -> Result<u64, TestnetError> {
    let here = Path::new("<socket>");
    let (mut from, _) = listener.accept().map_err(io("accept", here))?;
    let mut to = next.map(TcpStream::connect).transpose().map_err(io("connect", here))?;
    let mut file = std::fs::File::create(out).map_err(io("create", out))?;
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(io("receive", here))?;
        if n == 0 {
            break;
        }
        if let Some(t) = to.as_mut() {
            t.write_all(&buf[..n]).map_err(io("forward", here))?;
        }
        file.write_all(&buf[..n]).map_err(io("write", out))?;
        total += n as u64;
    }
    file.sync_all().map_err(io("sync", out))?;
    Ok(total)
}

/// Sends `file` to every one of `to` at once, each over its own connection.
pub fn send(file: &Path, to: &[SocketAddr]) -> Result<(), TestnetError> {
    std::thread::scope(|s| {
        let sends: Vec<_> = to
            .iter()
            .map(|addr| {
                s.spawn(move || -> Result<(), TestnetError> {
                    let here = Path::new("<socket>");
                    let mut stream = TcpStream::connect(addr).map_err(io("connect", here))?;
                    let mut f = std::fs::File::open(file).map_err(io("open", file))?;
                    std::io::copy(&mut f, &mut stream).map_err(io("send", file))?;
                    Ok(())
                })
            })
            .collect();
        for s in sends {
            s.join().map_err(|_| TestnetError::Run("a sender thread panicked".into()))??;
        }
        Ok(())
    })
}

impl RunContext<'_> {
    /// A baseline: the raw worker image from the head to every host by plain TCP, down
    /// a pipelined chain or as a star; every host's copy compared with the original.
    pub(crate) fn baseline(&self, chain: bool, testnet: &Path) -> Result<RunRow, TestnetError> {
        use std::io::BufRead as _;
        let n = self.hosts.len() - 1;
        let worker = self.images.worker(self.run.image);
        let (file, image_len) = (worker.path, worker.len);
        let addr = |i: usize| format!("{}:{}", self.hosts[i].addr, PORT);
        let command = |i: usize| {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &self.hosts[i].netns]).arg(testnet);
            c
        };
        let cpu0 = children_cpu();
        // The receivers, last first, each ready (listening) before the next starts.
        let mut pipes = Vec::new();
        for i in (1..=n).rev() {
            let mut c = command(i);
            c.args(["pipe", "--listen", &format!("0.0.0.0:{}", PORT), "--out"])
                .arg(self.dir.join(format!("h{i}.img")));
            if chain && i < n {
                c.args(["--next", &addr(i + 1)]);
            }
            let mut child = c
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| TestnetError::Run(format!("starting a pipe: {e}")))?;
            crate::net::register_process(child.id());
            let stdout =
                child.stdout.take().ok_or_else(|| TestnetError::Run("pipe stdout".into()))?;
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(|e| TestnetError::Run(format!("pipe on host {i}: {e}")))?;
            if line.trim() != "ready" {
                return Err(TestnetError::Run(format!("pipe on host {i} did not start: {line:?}")));
            }
            pipes.push(child);
        }
        let t0 = Instant::now();
        let targets: Vec<String> = if chain { vec![addr(1)] } else { (1..=n).map(addr).collect() };
        let mut send = command(0);
        send.args(["send", "--file"])
            .arg(file)
            .args(targets.iter().flat_map(|t| ["--to", t.as_str()]));
        let sent = send.status().map_err(|e| TestnetError::Run(format!("send: {e}")))?;
        let mut failed = (!sent.success()).then(|| format!("send exited {sent}"));
        for mut p in pipes {
            let status = p.wait().map_err(|e| TestnetError::Run(format!("pipe: {e}")))?;
            crate::net::forget_process(p.id());
            if !status.success() {
                failed.get_or_insert(format!("a pipe exited {status}"));
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let cpu_s = children_cpu() - cpu0;
        if let Some(f) = failed {
            return Err(TestnetError::Run(format!("{} baseline: {f}", self.method)));
        }
        for i in 1..=n {
            let copy = self.dir.join(format!("h{i}.img"));
            if let Some(offset) = images::first_difference(file, &copy)? {
                return Err(TestnetError::Mismatch {
                    host: format!("node{i}"),
                    image: self.method.to_string(),
                    original: file.to_owned(),
                    offset,
                });
            }
        }
        let rate = self.checked.link.min(self.hosts[0].rate);
        Ok(RunRow {
            scenario: self.checked.scenario.name.clone(),
            case: self.run.case.clone(),
            method: self.method.to_string(),
            n,
            bytes_lacked: image_len * n as u64,
            bytes_sent: image_len * n as u64,
            seconds,
            fetch_s: seconds,
            // Each host lacks the whole raw image: the limit is the raw-image limit.
            limit_s: image_len as f64 / rate,
            ratio: seconds * rate / image_len as f64,
            raw_limit_s: image_len as f64 / rate,
            cpu_s,
            cpu_share: crate::results::cpu_share(cpu_s, seconds),
            verified: n,
            ..RunRow::default()
        })
    }
}

/// CPU seconds used by this process's waited-for children so far.
pub fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which lives on this stack.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) != 0 {
            return 0.0;
        }
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_of_pipes_delivers_the_file_to_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let original = dir.path().join("image");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&original, &bytes).expect("write");
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind");
        let (la, lb) = (bind(), bind());
        let (a, b) = (la.local_addr().expect("addr"), lb.local_addr().expect("addr"));
        let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
        let tail = std::thread::spawn({
            let out_b = out_b.clone();
            move || pipe_on(&lb, &out_b, None)
        });
        let head = std::thread::spawn({
            let out_a = out_a.clone();
            move || pipe_on(&la, &out_a, Some(b))
        });
        send(&original, &[a]).expect("send");
        assert_eq!(head.join().expect("join").expect("pipe a"), bytes.len() as u64);
        assert_eq!(tail.join().expect("join").expect("pipe b"), bytes.len() as u64);
        assert_eq!(std::fs::read(&out_a).expect("a"), bytes);
        assert_eq!(std::fs::read(&out_b).expect("b"), bytes);
    }
}
