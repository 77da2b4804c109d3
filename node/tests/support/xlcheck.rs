//! Runs Xen's own xl.cfg parser (libxlutil, through `xlcheck.c`) over a
//! generated config, so tests can assert that Xen accepts it.
//!
//! Use from an integration test:
//!
//! ```ignore
//! #[path = "support/xlcheck.rs"]
//! mod xlcheck;
//!
//! let out = xlcheck::check(&cfg_path);
//! assert!(out.contains("disk: vdev=xvda1 format=raw readwrite=1 target=/images/a.img\n"));
//! ```
//!
//! Needs a C compiler and libxen-dev; `scripts/install-deps.sh` installs both.
//! The output format is described at the top of `xlcheck.c`; the quoting
//! rules it enforces are in `XLCFG-NOTES.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The checker's C source, beside this file (so any crate's tests can include it).
const SOURCE: &str = include_str!("xlcheck.c");
const HINT: &str = "run scripts/install-deps.sh, which installs a C compiler and libxen-dev";

/// Compiles the checker once per process. `Err` holds why it could not be built.
fn checker() -> &'static Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let bin = dir.join("xlcheck");
        // Test binaries run in parallel: build under a per-process name, then
        // rename into place (atomic, and harmless to anyone running the old one).
        let tmp = dir.join(format!("xlcheck.{}.tmp", std::process::id()));
        let source = dir.join(format!("xlcheck.{}.c", std::process::id()));
        fs::write(&source, SOURCE).map_err(|e| format!("cannot write {source:?}: {e}"))?;
        let out = Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&source)
            .args(["-lxlutil", "-lxenlight"])
            .output()
            .map_err(|e| format!("cannot run `cc`: {e}; {HINT}"))?;
        let _ = fs::remove_file(&source);
        if !out.status.success() {
            let _ = fs::remove_file(&tmp);
            return Err(format!(
                "compiling xlcheck.c failed; {HINT}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        fs::rename(&tmp, &bin).map_err(|e| format!("cannot move checker to {bin:?}: {e}"))?;
        Ok(bin)
    })
}

/// Checks `cfg` with Xen's parser and returns the checker's stdout (one
/// `key: value`, `disk: ...` or `vif: ...` line per item, values as Xen
/// decoded them).
///
/// Panics, showing the checker's complaint and the config text, if Xen's
/// parser or the checker rejects the file; also panics if the checker
/// cannot be built.
pub fn check(cfg: &Path) -> String {
    let bin = match checker() {
        Ok(bin) => bin,
        Err(why) => panic!("xlcheck unavailable: {why}"),
    };
    let out =
        Command::new(bin).arg(cfg).output().unwrap_or_else(|e| panic!("cannot run {bin:?}: {e}"));
    if !out.status.success() {
        let text = fs::read(cfg).map_or_else(
            |e| format!("<cannot read config: {e}>"),
            |b| String::from_utf8_lossy(&b).into_owned(),
        );
        panic!(
            "Xen's xl.cfg parser rejected {cfg:?} ({}):\n{}--- {cfg:?} ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Paths may hold non-UTF-8 bytes; the checker passes them through raw.
    String::from_utf8_lossy(&out.stdout).into_owned()
}
