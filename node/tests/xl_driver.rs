//! The `xl` driver against a fake `xl` (tests/support/fake-xl) that reproduces the
//! real tool's outputs and quirks: exit 0 from a failed pause, a paused guest that never
//! answers a shutdown, stderr on failures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vw_node::xen::xl::XlDriver;
use vw_node::xen::{DomainState, Driver, StopHow, XenError};

const FAKE_XL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake-xl");
const FAKE_XENSTORE_READ: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake-xenstore-read");

/// A fake `xl` with its own state directory, behind a wrapper script that sets the
/// knobs (the driver passes no environment of its own).
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        Fake { dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A wrapper running fake-xl with `env` (like `FAKE_XL_PAUSE_NOOP=1`).
    fn xl(&self, env: &str) -> PathBuf {
        self.wrapper(&format!("xl{}", env.len()), FAKE_XL, env)
    }

    /// A wrapper running `program` over the fake's state with `env`.
    fn wrapper(&self, name: &str, program: &str, env: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let script = format!(
            "#!/bin/sh\nFAKE_XL_STATE='{}' {env} exec '{program}' \"$@\"\n",
            self.dir.path().join("state").display()
        );
        std::fs::write(&path, script).expect("write wrapper");
        let mut perm = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).expect("chmod");
        path
    }

    fn driver(&self, env: &str, shutdown: Duration) -> XlDriver {
        XlDriver::new(self.xl(env), shutdown, Duration::from_secs(20))
    }

    /// A driver that reads guest reports through fake-xenstore-read and consoles from
    /// `consoles/`.
    fn guest_driver(&self) -> XlDriver {
        self.driver("", Duration::from_secs(10)).with_guest_channel(
            self.wrapper("xenstore-read", FAKE_XENSTORE_READ, ""),
            Some(self.dir.path().join("consoles")),
        )
    }

    /// What the guest of domain `domid` writes to its `data/vw-ready`.
    fn guest_writes(&self, domid: u32, report: &str) {
        let dir = self.dir.path().join(format!("state/xenstore/local/domain/{domid}/data"));
        std::fs::create_dir_all(&dir).expect("xenstore dir");
        std::fs::write(dir.join("vw-ready"), report).expect("report");
    }

    fn config(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.cfg"));
        std::fs::write(&path, format!("name = \"{name}\"\nmemory = 128\nvcpus = 1\n"))
            .expect("cfg");
        path
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/calls.log")).unwrap_or_default()
    }
}

#[test]
fn lifecycle_maps_onto_xl_commands() {
    let fake = Fake::new();
    let xl = fake.driver("", Duration::from_secs(10));
    assert!(!xl.kind().simulated());
    assert_eq!(xl.status("vm1").expect("status"), None);
    xl.load("vm1", &fake.config("vm1")).expect("load");
    assert_eq!(xl.status("vm1").expect("status"), Some(DomainState::Paused));
    xl.unpause("vm1").expect("unpause");
    assert_eq!(xl.status("vm1").expect("status"), Some(DomainState::Running));
    xl.pause("vm1").expect("pause");
    assert_eq!(xl.status("vm1").expect("status"), Some(DomainState::Paused));
    // Stopping a paused guest unpauses it first (it could not answer otherwise).
    assert_eq!(xl.stop("vm1").expect("stop"), StopHow::Shutdown);
    assert_eq!(xl.status("vm1").expect("status"), None);
    assert_eq!(xl.stop("vm1").expect("stop again"), StopHow::Absent);
    // A loaded domain that never ran is destroyed outright.
    xl.load("vm2", &fake.config("vm2")).expect("load");
    assert_eq!(xl.destroy("vm2").expect("destroy"), StopHow::Destroyed);
    assert_eq!(xl.destroy("vm2").expect("destroy again"), StopHow::Absent);
    let calls = fake.calls();
    for expected in ["create -p", "unpause vm1", "pause vm1", "shutdown -w vm1", "list vm1"] {
        assert!(calls.contains(expected), "{expected} missing from:\n{calls}");
    }
}

#[test]
fn a_pause_that_silently_fails_is_caught() {
    let fake = Fake::new();
    let xl = fake.driver("FAKE_XL_PAUSE_NOOP=1", Duration::from_secs(10));
    xl.load("vm1", &fake.config("vm1")).expect("load");
    xl.unpause("vm1").expect("unpause");
    let err = xl.pause("vm1").expect_err("must fail");
    assert!(matches!(err, XenError::Unconfirmed { expected: DomainState::Paused, .. }), "{err}");
    assert!(err.to_string().contains("domain vm1 is running, not paused"), "{err}");
}

#[test]
fn a_shutdown_that_hangs_ends_in_destroy() {
    let fake = Fake::new();
    let xl = fake.driver("FAKE_XL_SHUTDOWN_HANG=1", Duration::from_millis(500));
    xl.load("vm1", &fake.config("vm1")).expect("load");
    xl.unpause("vm1").expect("unpause");
    assert_eq!(xl.stop("vm1").expect("stop"), StopHow::Destroyed);
    assert_eq!(xl.status("vm1").expect("status"), None);
    assert!(fake.calls().contains("destroy vm1"));
}

#[test]
fn a_failing_xl_passes_its_stderr_on() {
    let fake = Fake::new();
    let xl = fake.driver("FAKE_XL_FAIL=create", Duration::from_secs(10));
    let err = xl.load("vm1", &fake.config("vm1")).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("create -p"), "{text}");
    assert!(text.contains("libxl: error: injected failure in create"), "{text}");

    // A duplicate domain: xl's own message comes through.
    let xl = fake.driver("", Duration::from_secs(10));
    xl.load("vm1", &fake.config("vm1")).expect("load");
    let text = xl.load("vm1", &fake.config("vm1")).expect_err("must fail").to_string();
    assert!(text.contains("already exists"), "{text}");
    // Operations on an unknown domain.
    let text = xl.unpause("nope").expect_err("must fail").to_string();
    assert!(text.contains("invalid domain identifier"), "{text}");
}

#[test]
fn a_missing_xl_says_where_it_looked() {
    let xl = XlDriver::new(
        Path::new("/nonexistent/xl").to_owned(),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let err = xl.status("vm1").expect_err("must fail");
    assert!(matches!(err, XenError::XlMissing { .. }), "{err}");
    assert!(err.to_string().contains("cannot run /nonexistent/xl"), "{err}");
    assert!(err.to_string().contains("[xen] xl"), "{err}");
}

#[test]
fn a_guest_is_ready_once_it_writes_its_report_to_xenstore() {
    let fake = Fake::new();
    let xl = fake.guest_driver();
    assert!(xl.guest_report("vm1").expect("no domain").is_none());
    xl.load("vm1", &fake.config("vm1")).expect("load");
    xl.unpause("vm1").expect("unpause");
    assert!(xl.guest_report("vm1").expect("not yet").is_none());
    // The first domain fake-xl creates is domain 1, as on a fresh Xen.
    fake.guest_writes(1, "v=1 host=vm1 nics=eth0=00:16:3e:00:00:01=10.77.1.10/16 swap_kib=65532");
    let report = xl.guest_report("vm1").expect("read").expect("ready");
    assert_eq!(report.get("host"), Some("vm1"));
    assert_eq!(report.get("swap_kib"), Some("65532"));
    assert!(!report.simulated);
    let calls = fake.calls();
    assert!(calls.contains("domid vm1"), "{calls}");

    // A hostile guest's report is refused, naming the domain.
    fake.guest_writes(1, "v=1 host=\u{1b}[2J");
    let err = xl.guest_report("vm1").expect_err("unprintable");
    assert!(matches!(err, XenError::BadReport { .. }), "{err}");
    assert!(err.to_string().contains("domain vm1"), "{err}");
}

#[test]
fn a_console_tail_is_the_end_of_the_guest_log() {
    let fake = Fake::new();
    let xl = fake.guest_driver();
    let dir = fake.dir.path().join("consoles");
    std::fs::create_dir_all(&dir).expect("dir");
    let log: String = (1..=100).map(|i| format!("line {i}\r\n")).collect();
    std::fs::write(dir.join("guest-vm1.log"), log).expect("log");
    let tail = xl.console_tail("vm1", 3);
    assert_eq!(tail, vec!["line 98", "line 99", "line 100"]);
    let none = xl.console_tail("vm2", 3);
    assert_eq!(none.len(), 1);
    assert!(none[0].contains("no console log at"), "{none:?}");
}

#[test]
fn a_domain_that_lingers_after_shutdown_is_waited_for_not_destroyed() {
    // Real xl: `shutdown -w` returns while the domain is still listed, dying (`--ps--`),
    // and `xl destroy` of it fails. The stop must wait, and count as a clean shutdown.
    let fake = Fake::new();
    let xl = fake.driver("FAKE_XL_LINGER=2", Duration::from_secs(10));
    xl.load("vm1", &fake.config("vm1")).expect("load");
    xl.unpause("vm1").expect("unpause");
    assert_eq!(xl.stop("vm1").expect("stop"), StopHow::Shutdown);
    assert_eq!(xl.status("vm1").expect("status"), None);
    assert!(!fake.calls().contains("destroy vm1"), "{}", fake.calls());

    // A destroy that meets a dying domain waits for it to go.
    xl.load("vm2", &fake.config("vm2")).expect("load");
    xl.unpause("vm2").expect("unpause");
    std::process::Command::new(fake.xl("FAKE_XL_LINGER=2"))
        .args(["shutdown", "vm2"])
        .status()
        .expect("shutdown");
    assert_eq!(xl.status("vm2").expect("status"), Some(DomainState::Stopping));
    assert_eq!(xl.destroy("vm2").expect("destroy"), StopHow::Destroyed);
    assert!(fake.calls().contains("destroy vm2"), "{}", fake.calls());
}

/// Xen 4.17 takes the XSA-443 restriction of pygrub from `xl`'s environment: every `xl`
/// call carries it, with the configured user.
#[test]
fn xl_runs_with_the_bootloader_restricted() {
    let fake = Fake::new();
    let seen = fake.dir.path().join("env.log");
    let logger = fake.dir.path().join("env-log");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nenv | grep '^LIBXL_BOOTLOADER' | sort >> '{}'\nexec '{FAKE_XL}' \"$@\"\n",
            seen.display()
        ),
    )
    .expect("write");
    let mut perm = std::fs::metadata(&logger).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&logger, perm).expect("chmod");
    let xl = fake.wrapper("xl-env", logger.to_str().expect("utf-8"), "");
    let driver = XlDriver::new(xl, Duration::from_secs(10), Duration::from_secs(20))
        .with_bootloader_user(Some("vw-pygrub".into()));
    driver.load("vm1", &fake.config("vm1")).expect("load");
    let env = std::fs::read_to_string(&seen).expect("env log");
    assert!(
        env.starts_with("LIBXL_BOOTLOADER_RESTRICT=1\nLIBXL_BOOTLOADER_USER=vw-pygrub\n"),
        "{env}"
    );
}
