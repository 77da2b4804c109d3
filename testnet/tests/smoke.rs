//! The testnet for real: the `smoke` scenario (3 hosts in network namespaces, shaped
//! links, peers found by mDNS) end to end, and a run interrupted with SIGINT leaving
//! nothing behind. Both need root; without it they are skipped with a line saying so,
//! and fail under `CI=true` (`vw_testkit::root_or_skip`).

use std::path::{Path, PathBuf};
use std::process::Command;

use vw_testnet::runner::{self, RunnerOptions};
use vw_testnet::{metrics, scenario, TestnetError};

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"))
}

/// `target/<profile>/<name>`: test binaries live in `target/<profile>/deps`.
fn binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("test binary");
    let path = me.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

fn root_or_skip(test: &str) -> bool {
    vw_testkit::root_or_skip(test, "make network namespaces, bridges and tc shapes")
}

#[test]
fn the_smoke_scenario_deploys_verifies_and_reports() {
    if !root_or_skip("the_smoke_scenario_deploys_verifies_and_reports") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let checked = scenario::load(&scenario_path("smoke")).expect("scenario");
    let options = RunnerOptions {
        out: dir.path().join("out"),
        work: dir.path().join("work"),
        vwd: binary("vwd"),
        testnet: binary("vw-testnet"),
    };
    let outcome = runner::run(&checked, &options).expect("smoke runs");

    // chain and star, each then the second VO; the lifecycle run; the baselines.
    let cases: Vec<(&str, &str)> =
        outcome.runs.iter().map(|r| (r.case.as_str(), r.method.as_str())).collect();
    assert_eq!(
        cases,
        [
            ("cold", "chain"),
            ("cold+vo2", "chain"),
            ("cold", "star"),
            ("cold+vo2", "star"),
            ("ops", "chain"),
            ("raw", "tcp-chain"),
            ("raw", "tcp-star"),
        ]
    );
    for r in outcome.runs.iter().filter(|r| r.case == "raw") {
        // The baselines copy the whole image, zeros included, to each of the 3 hosts.
        assert_eq!(r.verified, 3, "{r:?}");
        assert_eq!(r.bytes_sent, r.bytes_lacked);
    }
    for r in outcome.runs.iter().filter(|r| r.case != "raw") {
        assert_eq!(r.n, 3);
        // The head and the three hosts each ran a VM and hold its image byte for byte.
        assert_eq!(r.verified, 4, "{r:?}");
        assert!(r.bytes_lacked > 0 && r.limit_s > 0.0 && r.seconds > 0.0, "{r:?}");
        // No compression in this scenario: exactly the lacked bytes cross the links.
        assert_eq!(r.bytes_sent, r.bytes_lacked, "{r:?}");
    }
    // The second VO lacks only what its worker adds to the base the hosts now hold.
    let (first, second) = (&outcome.runs[0], &outcome.runs[1]);
    assert!(second.bytes_lacked < first.bytes_lacked / 2, "{first:?} {second:?}");
    let ops: Vec<&str> = outcome.ops.iter().map(|o| o.op.as_str()).collect();
    assert_eq!(ops, ["stage", "load", "create", "pause", "unpause", "stop", "unstage"]);
    for file in ["runs.csv", "ops.csv", "staging.png", "ops.png", "summary.md"] {
        let path = options.out.join(file);
        assert!(path.metadata().is_ok_and(|m| m.len() > 0), "{} written", path.display());
    }
    // Every vwd's metrics endpoint, scraped in its namespace after the cold chain run's
    // two deployments, agrees with the deploy reports.
    let scrapes: Vec<(String, String)> = ["head", "node1", "node2", "node3"]
        .iter()
        .map(|h| {
            let path = options.out.join(format!("reports/cold-chain-n3-full-logs/{h}.prom"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (h.to_string(), text)
        })
        .collect();
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrapes.iter().map(|(_, t)| metrics::sum(t, name, labels)).sum()
    };
    for (deployment, run) in [("grid", first), ("vo2", second)] {
        let d = [("deployment", deployment)];
        assert_eq!(total("vw_chunk_bytes_received_total", &d), run.bytes_sent as f64, "{run:?}");
        assert_eq!(total("vw_chunk_bytes_sent_total", &d), run.bytes_sent as f64, "{run:?}");
    }
    let lacked = (first.bytes_lacked + second.bytes_lacked) as f64;
    assert_eq!(total("vw_chunk_cache_bytes_total", &[("result", "miss")]), lacked);
    assert!(total("vw_chunk_cache_bytes_total", &[("result", "hit")]) > 0.0, "vo2 shares the base");
    let head = &scrapes[0].1;
    assert_eq!(metrics::sum(head, "vw_deploy_phase_seconds_count", &[("phase", "stage")]), 2.0);
    assert!(metrics::sum(head, "vw_store_chunk_bytes", &[]) > 0.0, "{head}");
    let back: Vec<vw_testnet::results::RunRow> =
        vw_testnet::results::read_csv(&options.out.join("runs.csv")).expect("csv");
    assert_eq!(back.len(), outcome.runs.len());
    assert_no_leftovers(&format!("vwt{:04}", std::process::id() % 10_000));
    let scratch: Vec<_> = std::fs::read_dir(&options.work).expect("work").collect();
    assert!(scratch.is_empty(), "scratch removed: {scratch:?}");
}

#[test]
fn an_interrupted_run_tears_everything_down() {
    if !root_or_skip("an_interrupted_run_tears_everything_down") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary("vw-testnet"))
        .args(["run", &scenario_path("smoke").display().to_string(), "--out"])
        .arg(dir.path().join("out"))
        .arg("--work")
        .arg(dir.path().join("work"))
        .arg("--vwd")
        .arg(binary("vwd"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vw-testnet");
    let tag = format!("vwt{:04}", child.id() % 10_000);
    // Wait until its vwds are up: their data directories have sockets.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let socket = dir.path().join("work/run1/head/vwd.sock");
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the run never started its vwds");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(namespaces().iter().any(|n| n.starts_with(&tag)), "its namespaces exist");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "exits 130 on SIGINT");
    assert_no_leftovers(&tag);
    let vwds = Command::new("pgrep").args(["-f", &dir.path().display().to_string()]).output();
    if let Ok(out) = vwds {
        assert!(out.stdout.is_empty(), "no vwd of the run survives: {out:?}");
    }
}

#[test]
fn a_run_that_fails_tears_everything_down() {
    if !root_or_skip("a_run_that_fails_tears_everything_down") {
        return;
    }
    // The testnet is built, then the Debian images are not where the scenario says.
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("missing.toml");
    std::fs::write(
        &scenario,
        "name = \"missing\"\n[network]\nlink = \"100Mbit\"\n[images]\nsource = \"debian\"\n\
         [[run]]\ncase = \"cold\"\nmethods = [\"chain\"]\nhosts = [2]\n",
    )
    .expect("scenario");
    let child = Command::new(binary("vw-testnet"))
        .args(["run", &scenario.display().to_string(), "--out"])
        .arg(dir.path().join("out"))
        .arg("--work")
        .arg(dir.path().join("work"))
        .arg("--vwd")
        .arg(binary("vwd"))
        .env("VW_IMAGES", dir.path().join("no-images"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vw-testnet");
    let tag = format!("vwt{:04}", child.id() % 10_000);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no-images/guest-base.img is missing")
            && stderr.contains("scripts/xenlab/build.sh guests"),
        "{stderr}"
    );
    assert_no_leftovers(&tag);
}

#[test]
fn without_root_the_harness_refuses_clearly() {
    // Checked as root by dropping to `nobody`; as another user, directly.
    let scenario = scenario_path("smoke").display().to_string();
    let out = if vw_testnet::is_root() {
        if Command::new("runuser").arg("--help").output().is_err() {
            vw_testkit::skip("without_root_the_harness_refuses_clearly", "no runuser");
            return;
        }
        let bin = binary("vw-testnet");
        // `nobody` must be able to reach the binary: copy it somewhere public.
        let public = std::env::temp_dir().join(format!("vw-testnet-{}", std::process::id()));
        std::fs::copy(&bin, &public).expect("copy");
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&public)
            .args(["run", &scenario, "--out", "/nonexistent"])
            .output()
            .expect("runuser");
        std::fs::remove_file(&public).expect("remove");
        out
    } else {
        Command::new(binary("vw-testnet"))
            .args(["run", &scenario, "--out", "/nonexistent"])
            .output()
            .expect("run")
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&TestnetError::NotRoot.to_string()), "{stderr}");
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn assert_no_leftovers(tag: &str) {
    let ns: Vec<String> = namespaces().into_iter().filter(|n| n.starts_with(tag)).collect();
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
    let left: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|n| n.starts_with(tag))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "links left: {left:?}");
}
