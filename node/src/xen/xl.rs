//! The real toolstack through `xl`.
//!
//! | operation | command | then |
//! |---|---|---|
//! | load | `xl create -p CFG` | `xl list NAME` shows it paused |
//! | unpause (and create) | `xl unpause NAME` | shows it running |
//! | pause | `xl pause NAME` | shows it paused (xl exits 0 even when libxl failed) |
//! | stop | `xl shutdown -w NAME` under the shutdown timeout | `xl destroy NAME` if it did not finish |
//! | destroy (stop of a loaded VM that never ran) | `xl destroy NAME` | gone from `xl list` |
//! | status | `xl list NAME` | an unknown name means no domain |
//! | guest report | `xl domid NAME`, `xenstore-read /local/domain/ID/data/vw-ready` | absent until the guest writes it |
//! | console tail | the end of `CONSOLE_DIR/guest-NAME.log` | xenconsoled `--log=guest` |
//!
//! A paused guest cannot answer a shutdown request, so `stop` unpauses it first. A domain
//! stays listed as dying (`--ps--`) for seconds after `shutdown -w` returns, and `xl
//! destroy` of it fails (its devices are already going): both wait for it to go.
//! Every call runs under a timeout and passes `xl`'s stderr on when it fails.
//!
//! `xl` runs with `LIBXL_BOOTLOADER_RESTRICT=1` (and `LIBXL_BOOTLOADER_USER` when the
//! cluster config names one): Xen 4.17's fix for XSA-443 reads the restriction of
//! pygrub from the environment, where 4.18 and later read it from the domain config,
//! which says the same.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{ready, DomainState, Driver, DriverKind, GuestReport, StopHow, XenError};
use crate::process::RunError;

/// The `xl` driver.
#[derive(Debug, Clone)]
pub struct XlDriver {
    xl: PathBuf,
    shutdown_timeout: Duration,
    command_timeout: Duration,
    xenstore_read: PathBuf,
    console_dir: Option<PathBuf>,
    bootloader_user: Option<String>,
}

/// How long a dying domain may stay listed before it counts as stuck (seen: 1.5–8 s
/// under emulated Xen).
const GONE_WAIT: Duration = Duration::from_secs(30);
/// How often a dying domain is looked for.
const GONE_POLL: Duration = Duration::from_millis(250);

/// Bytes read from the end of a console log for its tail.
const CONSOLE_TAIL_BYTES: u64 = 16 << 10;

/// What a finished command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl XlDriver {
    /// A driver running `xl` (a path, or a name looked up on `PATH`).
    pub fn new(xl: PathBuf, shutdown_timeout: Duration, command_timeout: Duration) -> Self {
        XlDriver {
            xl,
            shutdown_timeout,
            command_timeout,
            xenstore_read: "xenstore-read".into(),
            console_dir: Some("/var/log/xen/console".into()),
            bootloader_user: None,
        }
    }

    /// Runs pygrub as `user` (`LIBXL_BOOTLOADER_USER`).
    pub fn with_bootloader_user(mut self, user: Option<String>) -> Self {
        self.bootloader_user = user;
        self
    }

    /// Reads guest reports with `xenstore_read` and console logs from `console_dir`
    /// (xenconsoled's `--log-dir`; none: no console tails).
    pub fn with_guest_channel(
        mut self,
        xenstore_read: PathBuf,
        console_dir: Option<PathBuf>,
    ) -> Self {
        self.xenstore_read = xenstore_read;
        self.console_dir = console_dir;
        self
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!("{} {}", self.xl.display(), args.join(" "))
    }

    /// Runs `xl args` to completion or `timeout`, whichever comes first.
    fn run(&self, args: &[&str], timeout: Duration) -> Result<Output, XenError> {
        self.run_program(&self.xl, args, timeout)
    }

    /// Runs `program args` to completion or `timeout`, whichever comes first.
    fn run_program(
        &self,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, XenError> {
        let mut command = Command::new(program);
        command.env("LIBXL_BOOTLOADER_RESTRICT", "1");
        if let Some(user) = &self.bootloader_user {
            command.env("LIBXL_BOOTLOADER_USER", user);
        }
        // Output beyond 1 MiB is dropped: xl never prints that much.
        let done =
            crate::process::run(command.args(args), timeout, 1 << 20).map_err(|e| match e {
                RunError::Spawn(error) => XenError::XlMissing { path: program.to_owned(), error },
                RunError::Timeout => XenError::XlTimeout {
                    command: format!("{} {}", program.display(), args.join(" ")),
                    seconds: timeout.as_secs(),
                },
            })?;
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let (status, stdout, stderr) = (done.status, text(done.stdout), text(done.stderr));
        Ok(Output { status, stdout, stderr })
    }

    /// Runs `xl args` and requires success.
    fn ok(&self, args: &[&str]) -> Result<Output, XenError> {
        let out = self.run(args, self.command_timeout)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(args, &out))
        }
    }

    fn failed(&self, args: &[&str], out: &Output) -> XenError {
        XenError::XlFailed {
            command: self.command_line(args),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_owned(),
        }
    }

    /// Runs `xl args`: its output on success, `None` when it failed saying `absent`
    /// (xl's words for a domain that does not exist), an error otherwise.
    fn unless_absent(&self, args: &[&str], absent: &str) -> Result<Option<Output>, XenError> {
        let out = self.run(args, self.command_timeout)?;
        if out.status.success() {
            Ok(Some(out))
        } else if out.stderr.contains(absent) {
            Ok(None)
        } else {
            Err(self.failed(args, &out))
        }
    }

    /// Whether `domain` leaves `xl list` within `within`.
    fn gone_within(&self, domain: &str, within: Duration) -> Result<bool, XenError> {
        let deadline = Instant::now() + within;
        loop {
            if self.status(domain)?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(GONE_POLL);
        }
    }

    /// Requires the domain to be in `expected` after `command`.
    fn confirm(&self, domain: &str, args: &[&str], expected: DomainState) -> Result<(), XenError> {
        match self.status(domain)? {
            Some(s) if s == expected => Ok(()),
            found => Err(XenError::Unconfirmed {
                command: self.command_line(args),
                domain: domain.to_owned(),
                found: found.map_or("absent".to_owned(), |s| s.to_string()),
                expected,
            }),
        }
    }
}

/// Reads the state column of `xl list NAME` (`r-----`, `--p---`, …).
fn parse_list(domain: &str, stdout: &str) -> Option<DomainState> {
    let row = |name: &str| stdout.lines().find(|l| l.split_whitespace().next() == Some(name));
    let Some(line) = row(domain) else {
        // A dying domain loses its name in xenstore before it goes: `xl list NAME`,
        // which just found it by that name, then prints it as `(null)`.
        return row("(null)").map(|_| DomainState::Stopping);
    };
    // Name ID Mem VCPUs State Time(s)
    let flags = line.split_whitespace().nth(4)?;
    let flag = |i: usize| flags.as_bytes().get(i).is_some_and(|&c| c != b'-');
    Some(if flag(3) || flag(4) || flag(5) {
        DomainState::Stopping
    } else if flag(2) {
        DomainState::Paused
    } else {
        DomainState::Running
    })
}

impl Driver for XlDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Xl
    }

    fn machine(&self) -> Result<Option<crate::machine::XlInfo>, XenError> {
        let args = ["info"];
        let out = self.ok(&args)?;
        match crate::machine::parse_xl_info(&out.stdout) {
            Some(info) => Ok(Some(info)),
            None => {
                Err(XenError::BadOutput { command: self.command_line(&args), output: out.stdout })
            }
        }
    }

    fn load(&self, domain: &str, cfg: &Path) -> Result<(), XenError> {
        let cfg = cfg.to_string_lossy();
        let args = ["create", "-p", cfg.as_ref()];
        self.ok(&args)?;
        self.confirm(domain, &args, DomainState::Paused)
    }

    fn unpause(&self, domain: &str) -> Result<(), XenError> {
        let args = ["unpause", domain];
        self.ok(&args)?;
        self.confirm(domain, &args, DomainState::Running)
    }

    fn pause(&self, domain: &str) -> Result<(), XenError> {
        let args = ["pause", domain];
        self.ok(&args)?;
        self.confirm(domain, &args, DomainState::Paused)
    }

    fn stop(&self, domain: &str) -> Result<StopHow, XenError> {
        match self.status(domain)? {
            None => return Ok(StopHow::Absent),
            Some(DomainState::Paused) => self.unpause(domain)?,
            Some(_) => {}
        }
        let args = ["shutdown", "-w", domain];
        let clean = match self.run(&args, self.shutdown_timeout) {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                tracing::warn!(domain, stderr = %out.stderr.trim(), "xl shutdown failed; destroying");
                false
            }
            Err(XenError::XlTimeout { .. }) => {
                tracing::warn!(domain, "no clean shutdown within the timeout; destroying");
                false
            }
            Err(e) => return Err(e),
        };
        if clean && self.gone_within(domain, GONE_WAIT)? {
            return Ok(StopHow::Shutdown);
        }
        // Gone in the meantime counts as shut down.
        self.destroy(domain).map(|how| if how == StopHow::Absent { StopHow::Shutdown } else { how })
    }

    fn destroy(&self, domain: &str) -> Result<StopHow, XenError> {
        let Some(before) = self.status(domain)? else {
            return Ok(StopHow::Absent);
        };
        let args = ["destroy", domain];
        let out = self.run(&args, self.command_timeout)?;
        // A dying domain's destroy fails while it goes anyway: wait for it.
        let dying = before == DomainState::Stopping;
        if !out.status.success() && !dying {
            return Err(self.failed(&args, &out));
        }
        if self.gone_within(domain, GONE_WAIT)? {
            return Ok(StopHow::Destroyed);
        }
        if !out.status.success() {
            return Err(self.failed(&args, &out));
        }
        match self.status(domain)? {
            None => Ok(StopHow::Destroyed),
            Some(found) => Err(XenError::NotGone {
                command: self.command_line(&args),
                domain: domain.to_owned(),
                found,
            }),
        }
    }

    fn guest_report(&self, domain: &str) -> Result<Option<GuestReport>, XenError> {
        let args = ["domid", domain];
        // main_domid's words for a name it cannot find: no domain, no report.
        let Some(out) = self.unless_absent(&args, "Can't get domid")? else {
            return Ok(None);
        };
        let domid: u32 = out.stdout.trim().parse().map_err(|_| XenError::BadOutput {
            command: self.command_line(&args),
            output: out.stdout.clone(),
        })?;
        let path = format!("/local/domain/{domid}/{}", ready::KEY);
        let out = self.run_program(&self.xenstore_read, &[&path], self.command_timeout)?;
        if !out.status.success() {
            // Not written yet (xenstore-read: "couldn't read path ...").
            return Ok(None);
        }
        GuestReport::parse(&out.stdout)
            .map(Some)
            .map_err(|error| XenError::BadReport { domain: domain.to_owned(), error })
    }

    fn console_tail(&self, domain: &str, lines: usize) -> Vec<String> {
        let Some(dir) = &self.console_dir else { return Vec::new() };
        let path = dir.join(format!("guest-{domain}.log"));
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            f.take(CONSOLE_TAIL_BYTES).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        match read() {
            Ok(bytes) => ready::tail_lines(&bytes, lines),
            Err(e) => vec![format!("(no console log at {}: {e})", path.display())],
        }
    }

    fn status(&self, domain: &str) -> Result<Option<DomainState>, XenError> {
        let args = ["list", domain];
        // xl's words for "no such domain" (find_domain, libxl_name_to_domid).
        let Some(out) = self.unless_absent(&args, "invalid domain identifier")? else {
            return Ok(None);
        };
        match parse_list(domain, &out.stdout) {
            Some(state) => Ok(Some(state)),
            None => {
                Err(XenError::BadOutput { command: self.command_line(&args), output: out.stdout })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_states() {
        let out = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                   Domain-0                                     0  1024     1     r-----      10.0\n\
                   vm1                                          3   512     1     --p---       0.0\n\
                   vm2                                          4   512     1     -b----       0.2\n\
                   vm3                                          5   512     1     ---s--       0.2\n";
        assert_eq!(parse_list("vm1", out), Some(DomainState::Paused));
        assert_eq!(parse_list("vm2", out), Some(DomainState::Running));
        assert_eq!(parse_list("vm3", out), Some(DomainState::Stopping));
        assert_eq!(parse_list("vm4", out), None);
        // What Xen 4.17's `xl list lab-head` printed while the head was dying.
        let dying = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                     (null)                                       1   512     1     --ps--     129.2\n";
        assert_eq!(parse_list("lab-head", dying), Some(DomainState::Stopping));
    }
}
