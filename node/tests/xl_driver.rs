//! The `xl` driver against a fake `xl` (tests/support/fake-xl) that reproduces the
//! real tool's outputs and quirks: exit 0 from a failed pause, a paused guest that never
//! answers a shutdown, stderr on failures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vw_node::xen::xl::XlDriver;
use vw_node::xen::{DomainState, Driver, StopHow, XenError};

const FAKE_XL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake-xl");

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
        let path = self.dir.path().join(format!("xl{}", env.len()));
        let script = format!(
            "#!/bin/sh\nFAKE_XL_STATE='{}' {env} exec '{FAKE_XL}' \"$@\"\n",
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
    assert!(!xl.simulated());
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
