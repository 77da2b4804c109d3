//! What vw's test suites share (a dev-dependency only): the rule for tests that need
//! root, and golden files for every format that leaves the process.
//!
//! Some tests need root (a tmpfs or XFS mount, network namespaces, another user) or a
//! tool; on a developer's machine without them they say so and pass. In CI (`CI=true`,
//! as `.ci/run` is run) a skipped test fails instead: a CI without root must not go
//! green having run none of them.

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `CI=true`: skipping is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// For test `test`, which needs root (`why`: for what): whether it may run. If not,
/// it prints a SKIPPED line and the caller returns; in CI it fails instead.
#[track_caller]
pub fn root_or_skip(test: &str, why: &str) -> bool {
    is_root() || skip(test, &format!("needs root to {why}"))
}

/// Test `test` cannot run here (`why`): prints a SKIPPED line and returns false for the
/// caller to return; in CI, panics (a skip fails the run).
#[track_caller]
pub fn skip(test: &str, why: &str) -> bool {
    assert!(!in_ci(), "{test} {why}, and under CI=true a skipped test fails the run");
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// The package's source directory as `cargo test` gives it now (`CARGO_MANIFEST_DIR`
/// at run time), else `compiled` (pass `env!("CARGO_MANIFEST_DIR")`). Checkouts that
/// share a target directory share compiled tests, so the path compiled in may be
/// another checkout's: golden files and fixtures must come from this one.
pub fn source_dir(compiled: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| compiled.into(), Into::into)
}

/// Checks that `bytes`, an encoding that leaves the process (a wire message, a stored
/// record, a file), are exactly those in the golden file `dir/NAME.hex` (hex, 32 bytes
/// a line). NAME carries the format's version (`vm_record-v1`), so changing a format
/// on purpose means bumping its version, which names a new file, and keeping the old
/// one shows what the previous release wrote. A missing file is written when
/// `VW_BLESS=1`, and is otherwise an error; an existing file is never rewritten.
#[track_caller]
pub fn golden(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let path = dir.join(format!("{name}.hex"));
    let hex: String = bytes
        .chunks(32)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    match std::fs::read_to_string(&path) {
        Ok(want) => assert!(
            want == hex,
            "format {name} changed: its bytes differ from {}.\nA stored or wire format \
             changes only with a new version (bump its version constant, which names a new \
             golden file, and read or migrate the old one).\nnow:\n{hex}",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("VW_BLESS").is_ok_and(|v| v == "1"),
                "no golden file {} for format {name}: run the test with VW_BLESS=1 to write \
                 it, and commit it",
                path.display()
            );
            std::fs::create_dir_all(dir).expect("golden directory");
            std::fs::write(&path, hex).expect("golden file");
        }
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The bytes of the golden file `dir/NAME.hex` (what a previous release wrote: the
/// reader of each older version is tested against it).
#[track_caller]
pub fn golden_bytes(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = dir.join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let hex: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    hex.chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(digits, 16)
                .unwrap_or_else(|e| panic!("{}: `{digits}`: {e}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule itself: outside CI a skip is a line and `false`; in CI a panic. (Run
    /// in a child process so the environment of this one is left alone.)
    #[test]
    fn a_skip_fails_under_ci_only() {
        if std::env::var_os("VW_TESTKIT_CHILD").is_some() {
            skip("child", "cannot run here");
            return;
        }
        let me = std::env::current_exe().expect("test binary");
        let run = |ci: &str| {
            std::process::Command::new(&me)
                .args(["--exact", "tests::a_skip_fails_under_ci_only", "--nocapture"])
                .env("VW_TESTKIT_CHILD", "1")
                .env("CI", ci)
                .output()
                .expect("child")
        };
        let outside = run("false");
        assert!(outside.status.success());
        assert!(String::from_utf8_lossy(&outside.stderr).contains("SKIPPED child: cannot run here"));
        let inside = run("true");
        assert!(!inside.status.success(), "a skip under CI=true fails");
        assert!(String::from_utf8_lossy(&inside.stderr).contains("a skipped test fails the run"));
    }
}
