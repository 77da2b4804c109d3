//! `vw` as an operator runs it: exit codes, text and `--json` output, and errors.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

#[path = "../../node/tests/support/xlcheck.rs"]
mod xlcheck;

/// The VO directory beside a test's store, with keys for the VOs the tests import
/// under (`vo`, `grid3`, `vo2`).
fn vo_dir(store: &Path) -> std::path::PathBuf {
    let dir = store.parent().expect("a store inside the test's directory").join("vo");
    for vo in ["vo", "grid3", "vo2"] {
        if !dir.join(format!("{vo}.key")).exists() {
            let out = Command::new(env!("CARGO_BIN_EXE_vw"))
                .args(["--vo-dir", dir.to_str().expect("utf8"), "vo", "create", vo])
                .output()
                .expect("run vw");
            assert!(out.status.success(), "vw vo create: {}", stderr(&out));
        }
    }
    dir
}

/// A cluster config beside a test's store that names the simulated driver (this
/// machine is no dom0, and vw never simulates unless told to).
fn simulated_cluster(store: &Path) -> std::path::PathBuf {
    let dir = store.parent().expect("a store inside the test's directory");
    let path = dir.join("simulated-cluster.toml");
    if !path.exists() {
        let text =
            vw_localnet::with_placeholder_kernels(vw_node::config::ClusterConfig::EMBEDDED, dir)
                .expect("cluster config");
        std::fs::write(&path, text).expect("write cluster config");
    }
    path
}

fn vw(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vw"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("VW_STORE")
        .env("VW_VO_DIR", vo_dir(store))
        .env("VW_CLUSTER", simulated_cluster(store))
        .output()
        .expect("run vw")
}

fn json(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = vw(store, &all);
    assert!(out.status.success(), "vw {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A 16 MiB image: `data_mib` MiB of xorshift noise from `seed`, then zeros.
fn image(path: &Path, seed: u64, data_mib: usize) {
    let mut v = vw_node::chunkstore::testdata::noise(data_mib << 20, seed);
    v.resize(16 << 20, 0);
    std::fs::write(path, v).expect("write image");
}

#[test]
fn image_and_cache_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    image(&a, 1, 4);
    image(&b, 1, 6); // b = a's data plus 2 MiB more

    let ra = json(&store, &["image", "import", a.to_str().expect("utf8"), "--name", "vo/a:1"]);
    assert_eq!(ra["name"], "vo/a:1");
    assert_eq!(ra["len"], 16 << 20);
    let rb = json(&store, &["image", "import", b.to_str().expect("utf8"), "--name", "vo/b:1"]);
    assert!(rb["cached_bytes"].as_u64().expect("number") > 3 << 20, "{rb}");

    let ls = json(&store, &["image", "ls"]);
    assert_eq!(ls.as_array().expect("list").len(), 2);
    let d = json(&store, &["image", "diff", "vo/a:1", "vo/b:1"]);
    assert!(d["shared_bytes"].as_u64().expect("number") > 3 << 20, "{d}");

    let out = dir.path().join("b.out");
    json(&store, &["image", "export", "vo/b:1", out.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(&b).expect("read"));
    let again = vw(&store, &["image", "export", "vo/b:1", out.to_str().expect("utf8")]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains(
            "already exists; choose another path or replace it (`vw image export --force`)"
        ),
        "{}",
        stderr(&again)
    );

    assert_eq!(json(&store, &["image", "verify"])["corrupt"], serde_json::json!([]));
    json(&store, &["cache", "pin", "vo/a:1"]);
    let rm = vw(&store, &["image", "rm", "vo/a:1"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(
        stderr(&rm).contains("is pinned (base); run `vw cache unpin vo/a:1` first"),
        "{}",
        stderr(&rm)
    );
    json(&store, &["cache", "unpin", "vo/a:1"]);
    json(&store, &["image", "rm", "vo/b:1"]);
    let stats = json(&store, &["cache", "stats"]);
    assert!(stats["loose_bytes"].as_u64().expect("number") > 0, "{stats}");
    let gc = json(&store, &["gc"]);
    assert_eq!(gc["bytes_removed"], stats["loose_bytes"]);
    let limited = json(&store, &["cache", "limit", "1K"]);
    assert_eq!(limited["gc"]["evicted"][0][1][0], "vo/a:1");
    let text = vw(&store, &["cache", "stats"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("capacity:   1.0 KiB"));
}

#[test]
fn errors_are_clear_and_json_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let missing = dir.path().join("nope.img");
    let out = vw(&store, &["image", "import", missing.to_str().expect("utf8"), "--name", "vo/x:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: image file {} does not exist", missing.display())
    );

    let out = vw(&store, &["--json", "image", "export", "vo/ghost:1", "/tmp/x"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert!(v["error"].as_str().expect("text").contains("no image named vo/ghost:1"), "{v}");

    let out = vw(&store, &["image", "import", "/tmp", "--name", "Bad Name"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a malformed name");
    assert!(stderr(&out).contains("invalid image name `Bad Name`"), "{}", stderr(&out));

    let out = vw(&store, &["cache", "limit", "12X"]);
    assert!(stderr(&out).contains("`12X` has an unknown unit"), "{}", stderr(&out));
}

#[test]
fn a_store_held_by_another_process_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let _held = vw_node::chunkstore::Store::open(&store).expect("open");
    let out = vw(&store, &["image", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "is in use by another process (pid {}); wait for it or stop it",
        std::process::id()
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
}

#[test]
fn an_unreadable_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let img = dir.path().join("secret.img");
    image(&img, 3, 1);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let store = dir.path().join("store");
    let root = vw_testkit::is_root();
    let caller = || {
        if root {
            // Root reads everything: run vw as nobody, who cannot read a 0600 root file.
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c.arg(env!("CARGO_BIN_EXE_vw"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_vw"))
        }
    };
    if !root {
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    // The caller's own VO key, so that the import gets as far as the file.
    let vos = dir.path().join("vo");
    let made =
        caller().args(["--vo-dir", vos.to_str().expect("utf8"), "vo", "create", "vo"]).output();
    assert!(made.expect("run vw").status.success(), "vw vo create");
    let out = caller()
        .env("VW_VO_DIR", &vos)
        .arg("--store")
        .arg(&store)
        .args(["image", "import", img.to_str().expect("utf8"), "--name", "vo/s:1"])
        .output()
        .expect("run vw");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: cannot open {}: Permission denied (os error 13)", img.display())
    );
}

/// SIGKILL during an import, at several moments: whatever the moment, the reopened
/// store is consistent (the image is either absent or complete and verifies) and `gc`
/// gives back what the dead import left unindexed.
#[test]
fn a_killed_import_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("big.img");
    std::fs::write(&img, vw_node::chunkstore::testdata::noise(192 << 20, 9)).expect("write");
    for (round, delay_ms) in [20u64, 80, 160, 320].into_iter().enumerate() {
        let store = dir.path().join(format!("store-{round}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_vw"))
            .env("VW_VO_DIR", vo_dir(&store))
            .arg("--store")
            .arg(&store)
            .args(["image", "import", img.to_str().expect("utf8"), "--name", "vo/big:1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn vw");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();

        let ls = json(&store, &["image", "ls"]);
        let images = ls.as_array().expect("list");
        assert!(images.len() <= 1, "{ls}");
        let verify = json(&store, &["image", "verify"]);
        assert_eq!(verify["corrupt"], serde_json::json!([]), "round {round}: {verify}");
        assert_eq!(verify["missing"], serde_json::json!([]), "round {round}: {verify}");
        if images.len() == 1 {
            // Complete, and named unless the kill fell between the manifest and its
            // seal (then unnamed, and `gc` may drop it): exported by id either way.
            let id = images[0]["id"].as_str().expect("id").to_owned();
            let out = dir.path().join(format!("out-{round}.img"));
            json(&store, &["image", "export", &id, out.to_str().expect("utf8")]);
            assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(&img).expect("read"));
        }
        json(&store, &["gc"]);
        let stats = json(&store, &["cache", "stats"]);
        assert_eq!(stats["loose_chunks"], 0, "round {round}: {stats}");
    }
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[test]
fn workspace_validate_and_show() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let grid3 = format!("{EXAMPLES}/grid3-cluster.xml");
    let out = vw(&store, &["workspace", "validate", &grid3]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("valid cluster workspace grid3 (9 VMs: head + 8 workers)"));

    let shown = json(&store, &["workspace", "show", &grid3]);
    let vms = shown["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 9);
    assert_eq!(shown["addresses"], "preview");
    assert_eq!(vms[0]["nics"].as_array().map(Vec::len), Some(2), "the head has a public NIC");
    assert!(vms
        .iter()
        .all(|vm| vm["nics"][0]["mac"].as_str().is_some_and(|m| m.starts_with("00:16:3e:"))));
    assert!(!store.exists(), "show does not create a store");

    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<virtualWorkspace type=\"cluster\" name=\"x\" nodeNumber=\"2\">\n  <headnode name=\"h\">\n    <vcpus>1</vcpus>\n  </headnode>\n  <workernode name=\"w\">\n</virtualWorkspace>\n").expect("write");
    let out = vw(&store, &["workspace", "validate", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.xml:6:1: malformed XML"), "{}", stderr(&out));
}

#[test]
fn local_lifecycle_with_the_simulated_driver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let img = dir.path().join("root.img");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .arg("8M")
        .status()
        .expect("mkfs.ext4");
    assert!(ok.success());
    json(&store, &["image", "import", img.to_str().expect("utf8"), "--name", "vo/root:1"]);
    let ws = dir.path().join("c.xml");
    std::fs::write(
        &ws,
        r#"<virtualWorkspace type="cluster" name="c" nodeNumber="3">
  <headnode name="head"><memory>128</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="vo/root:1" device="xvda1" role="root"/><swap device="xvda2" size="1M"/></headnode>
  <workernode name="w"><memory>128</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="vo/root:1" device="xvda1" role="root"/><integration strategy="edit"/></workernode>
</virtualWorkspace>"#,
    )
    .expect("write workspace");
    let ws = ws.to_str().expect("utf8");

    let out = vw(&store, &["create", ws]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Xen driver: simulated"),
        "the simulation says so: {}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("c-head") && text.contains("stage") && text.contains("start"), "{text}");

    for vm in ["c-head", "c-w1", "c-w2"] {
        xlcheck::check(&store.join("xen").join(format!("{vm}.cfg")));
    }
    let status = json(&store, &["status"]);
    assert_eq!(status["simulated"], true);
    let states: Vec<&str> =
        status["vms"].as_array().expect("vms").iter().filter_map(|v| v["state"].as_str()).collect();
    assert_eq!(states, ["running", "running", "running"]);

    json(&store, &["pause", "c", "--vm", "c-w1"]);
    let out = vw(&store, &["create", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot create VM c-w1: it is paused; use unpause"),
        "{}",
        stderr(&out)
    );
    let stopped = json(&store, &["stop", "c"]);
    assert!(stopped["vms"].as_array().expect("vms").iter().all(|v| v["state"] == "stopped"));
    json(&store, &["unstage", "c"]);
    let status = json(&store, &["status"]);
    assert!(status["vms"].as_array().expect("vms").is_empty());
    let out = vw(&store, &["stop", "nope"]);
    assert!(stderr(&out).contains("no deployment nope on this host"), "{}", stderr(&out));
}

#[test]
fn plan_places_addresses_and_predicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    for (name, seed) in [("grid3/head:1.0", 1), ("grid3/worker:1.0", 2)] {
        let img = dir.path().join(format!("{seed}.img"));
        image(&img, seed, 8);
        json(&store, &["image", "import", img.to_str().expect("utf8"), "--name", name]);
    }
    let ws = format!("{EXAMPLES}/grid3-cluster.xml");
    let hosts = format!("{EXAMPLES}/hosts-paper.toml");
    let star = json(&store, &["plan", &ws, "--hosts", &hosts, "--strategy", "star"])["workspaces"]
        [0]
    .clone();
    let placement = star["placement"].as_array().expect("placement");
    assert_eq!(placement.len(), 9);
    assert!(placement
        .iter()
        .all(|p| p["reason"].as_str().is_some_and(|r| r.starts_with("spread:"))));
    assert_eq!(placement[8]["host"], "head", "the ninth VM goes where its image is cached");
    let worker = &star["images"][1];
    assert_eq!(worker["receivers"], 7);
    // Star: seven copies of the worker's bytes over the head's 10 MB/s link.
    let bytes = worker["bytes"].as_f64().expect("bytes");
    let finish = star["simulation"]["finish"].as_f64().expect("finish");
    let closed = 7.0 * bytes / 10e6;
    assert!((finish - closed).abs() < 0.02 * closed, "{finish} vs {closed}");
    let chain = json(&store, &["plan", &ws, "--hosts", &hosts, "--strategy", "chain"])
        ["workspaces"][0]
        .clone();
    assert!(chain["simulation"]["finish"].as_f64().expect("finish") < finish / 3.0);

    let out = vw(&store, &["plan", &ws, "--hosts", &hosts]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("predicted staging:") && text.contains("physical limit"), "{text}");
    assert!(text.contains("grid3-worker8 → head"), "{text}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[host]]\nname = \"a\"\nbandwidth = 1\n").expect("write");
    let out = vw(&store, &["plan", &ws, "--hosts", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown field `bandwidth`") && stderr(&out).contains("line 3"),
        "{}",
        stderr(&out)
    );

    // Two VOs' clusters on the same hosts: no address twice, no host overcommitted.
    let two =
        json(&store, &["plan", &ws, &format!("{EXAMPLES}/grid3-cluster.xml"), "--hosts", &hosts]);
    let two = two["workspaces"].as_array().expect("two reports");
    assert_eq!(two.len(), 2);
    let ips: std::collections::BTreeSet<String> = two
        .iter()
        .flat_map(|r| r["placement"].as_array().expect("placement").iter())
        .flat_map(|p| p["nics"].as_array().expect("nics").iter())
        .map(|n| n["ip"].as_str().expect("ip").to_owned())
        .collect();
    assert_eq!(ips.len(), 2 * 10, "9 VMs and one public NIC each, never the same address");
    let mut mem: std::collections::BTreeMap<String, u64> = Default::default();
    for r in two {
        for p in r["placement"].as_array().expect("placement") {
            let vm = p["vm"].as_str().expect("vm");
            *mem.entry(p["host"].as_str().expect("host").to_owned()).or_default() +=
                if vm.ends_with("head") { 1024 } else { 512 };
        }
    }
    assert!(mem.values().all(|&m| m <= 2048), "{mem:?}");

    let small = dir.path().join("small.toml");
    std::fs::write(&small, "[[host]]\nname = \"a\"\nmemory_mib = 2048\nvcpus = 4\ncpus = 2\nup = \"1Gbit\"\ndown = \"1Gbit\"\nimages = [\"grid3/head:1.0\", \"grid3/worker:1.0\"]\n").expect("write");
    let out = vw(&store, &["plan", &ws, "--hosts", small.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the workspace does not fit: the workspace needs 5120 MiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn vo_keys_are_private_files_and_their_public_half_is_a_config_entry() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let vos = vo_dir(&store);
    let mode = std::fs::metadata(vos.join("grid3.key")).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let ls = json(&store, &["vo", "ls"]);
    let names: Vec<&str> =
        ls.as_array().expect("list").iter().filter_map(|k| k["vo"].as_str()).collect();
    assert_eq!(names, ["grid3", "vo", "vo2"]);
    let out = vw(&store, &["vo", "export", "grid3"]);
    let entry = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(entry.starts_with("[[vo]]\nname = \"grid3\"\nkey = \"ed25519:"), "{entry}");
    // The entry is what a cluster config takes.
    let text = format!("{}\n{entry}", vw_node::config::ClusterConfig::EMBEDDED);
    let config = vw_node::config::ClusterConfig::parse(&text, "t").expect("trusted");
    assert!(config.vo("grid3").is_some());
    let again = vw(&store, &["vo", "create", "grid3"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("has a key already"), "{}", stderr(&again));
    // An import under a VO without a key here says how to make one, and stores nothing.
    let img = dir.path().join("x.img");
    image(&img, 5, 1);
    let out = vw(&store, &["image", "import", img.to_str().expect("utf8"), "--name", "atlas/x:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no key for VO atlas") && stderr(&out).contains("vw vo create atlas"),
        "{}",
        stderr(&out)
    );
    // A sealed import says so in `image ls`.
    json(
        &store,
        &["image", "import", img.to_str().expect("utf8"), "--name", "grid3/x:1", "--public"],
    );
    let ls = json(&store, &["image", "ls"]);
    assert_eq!(ls[0]["sealed"][0], serde_json::json!(["grid3/x:1", "public"]), "{ls}");
}

#[test]
fn deploy_without_a_head_vwd_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = format!("{EXAMPLES}/grid3-cluster.xml");
    let out = vw(&dir.path().join("store"), &["deploy", "--vo", "grid3", &ws]);
    assert_eq!(out.status.code(), Some(1));
    let socket = dir.path().join("store/vwd.sock");
    assert!(
        stderr(&out).contains(&format!("no vwd is listening at {}", socket.display())),
        "{}",
        stderr(&out)
    );
}

/// A user who may not use vwd's socket is told which socket and what to do, not
/// "store in use" from opening the store behind vwd's back; a stale socket (no vwd)
/// is passed over. Run as an unprivileged user (`setpriv`), since root may use any
/// socket.
#[test]
fn a_socket_this_user_may_not_use_is_named_with_the_remedy() {
    let test = "a_socket_this_user_may_not_use_is_named_with_the_remedy";
    if !vw_testkit::root_or_skip(test, "become another user (setpriv)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let socket = store.join("vwd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    for d in [dir.path(), &store] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_vw")])
        .arg("--store")
        .arg(&store)
        .arg("status")
        .env("VW_CLUSTER", simulated_cluster(&store))
        .output()
        .expect("run setpriv");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to vwd's socket {}", socket.display()))
            && err.contains("Permission denied")
            && err.contains("add yourself"),
        "{err}"
    );
    // No vwd behind the socket any more: status opens the store itself.
    drop(listener);
    let out = vw(&store, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Detached signing: the VO seals and signs where its key lives; the head imports under
/// the seal with no VO key (a store in another directory, with its own empty VO
/// directory), checked against the cluster config, and a file that is not the sealed
/// image is refused.
#[test]
fn a_vo_seals_and_signs_where_its_key_lives_and_the_head_needs_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vo_store = dir.path().join("vo-side/store");
    vo_dir(&vo_store);
    let (img, other) = (dir.path().join("w.img"), dir.path().join("x.img"));
    image(&img, 11, 2);
    image(&other, 12, 2);
    let seal = dir.path().join("w.seal");
    let sealed = json(
        &vo_store,
        &[
            "vo",
            "seal",
            img.to_str().expect("utf8"),
            "--name",
            "grid3/worker:1",
            "-o",
            seal.to_str().expect("utf8"),
        ],
    );
    assert!(!vo_store.exists(), "sealing needs no store");
    // The head trusts grid3's public key, and holds no VO key at all.
    let entry = vw(&vo_store, &["vo", "export", "grid3"]);
    let cluster = dir.path().join("cluster.toml");
    let text = format!(
        "{}\n{}",
        vw_node::config::ClusterConfig::EMBEDDED,
        String::from_utf8_lossy(&entry.stdout)
    );
    std::fs::write(&cluster, text).expect("cluster config");
    let head = dir.path().join("head/store");
    let head_vw = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vw"))
            .args([
                "--store",
                head.to_str().expect("utf8"),
                "--cluster",
                cluster.to_str().expect("utf8"),
            ])
            .args(["--vo-dir", dir.path().join("head/no-keys").to_str().expect("utf8")])
            .args(args)
            .output()
            .expect("run vw")
    };
    let s = seal.to_str().expect("utf8");
    let out = head_vw(&[
        "image",
        "import",
        other.to_str().expect("utf8"),
        "--name",
        "grid3/worker:1",
        "--seal",
        s,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("its seal is for manifest"), "{}", stderr(&out));
    let out = head_vw(&[
        "image",
        "import",
        img.to_str().expect("utf8"),
        "--name",
        "grid3/other:1",
        "--seal",
        s,
    ]);
    assert!(stderr(&out).contains("is for grid3/worker:1, not grid3/other:1"), "{}", stderr(&out));
    let out = head_vw(&[
        "--json",
        "image",
        "import",
        img.to_str().expect("utf8"),
        "--name",
        "grid3/worker:1",
        "--seal",
        s,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ls: Value =
        serde_json::from_slice(&head_vw(&["--json", "image", "ls"]).stdout).expect("json");
    assert_eq!(ls.as_array().expect("list").len(), 1, "the refused import left nothing: {ls}");
    assert_eq!(ls[0]["id"], sealed["manifest"], "{ls}");
    assert_eq!(ls[0]["sealed"][0], serde_json::json!(["grid3/worker:1", "private"]), "{ls}");

    // The ticket: from the seal, for a workspace naming the sealed image.
    let ws = dir.path().join("ws.xml");
    std::fs::write(&ws, vw_localnet::cluster_workspace("g", "grid3/worker:1", "grid3/worker:1", 1))
        .expect("workspace");
    let ticket = dir.path().join("g.ticket");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "vo",
            "sign-ticket",
            ws.to_str().expect("utf8"),
            "--vo",
            "grid3",
            "--cluster-name",
            "demo",
            "--valid",
            "2h",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| vw(&vo_store, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(&["-o", ticket.to_str().expect("utf8")]));
    assert!(
        stderr(&out).contains("image grid3/worker:1: no manifest id for it"),
        "{}",
        stderr(&out)
    );
    let out = run(args(&["--seal", s, "-o", ticket.to_str().expect("utf8")]));
    assert!(out.status.success(), "{}", stderr(&out));
    let t =
        vw_node::access::Ticket::decode(&std::fs::read(&ticket).expect("ticket")).expect("decodes");
    assert_eq!((t.vo(), t.cluster(), t.deployment()), ("grid3", "demo", "g"));
    let id: vw_node::chunkstore::ManifestId =
        sealed["manifest"].as_str().expect("hex").parse().expect("id");
    assert!(t.allows(&id));
}

/// A one-host cluster under `dir` whose `vwd` owns the store at `store`, trusting the
/// VO `vo` whose key the CLI holds.
struct OneHost {
    store: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
    vwd: vw_node::service::Vwd,
}

impl OneHost {
    /// Imports `images` (file, name) with the store opened here, then starts the vwd.
    fn start(dir: &Path, images: &[(&Path, &str)]) -> OneHost {
        let base = dir.join("cluster");
        std::fs::create_dir_all(&base).expect("dir");
        let store = base.join("head");
        let keys = vo_dir(&store);
        for (file, name) in images {
            json(&store, &["image", "import", file.to_str().expect("utf8"), "--name", name]);
        }
        // The cluster config trusts the VO whose key the CLI holds.
        let entry = vw(&store, &["vo", "export", "vo"]);
        let text =
            vw_localnet::with_placeholder_kernels(vw_node::config::ClusterConfig::EMBEDDED, dir)
                .expect("config");
        let cluster = dir.join("cluster.toml");
        std::fs::write(&cluster, format!("{text}\n{}", String::from_utf8_lossy(&entry.stdout)))
            .expect("cluster config");
        let options =
            vw_localnet::LocalNetOptions { cluster_config: Some(cluster), ..Default::default() };
        let net = vw_localnet::LocalNet::create(&base, 1, &options).expect("net");
        assert_eq!(net.data_dirs[0], store);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let vwd = runtime.block_on(net.start_one(0)).expect("start vwd");
        assert!(keys.join("vo.key").exists());
        OneHost { store, runtime, vwd }
    }

    fn stop(self) {
        self.runtime.block_on(self.vwd.shutdown());
    }
}

/// `vw stage FILE` through the head's vwd stages the workspace on every host and stops
/// there, with a deploy's report; `vw create NAME` starts it later. Before, `vw stage`
/// through a vwd was refused (only `vw deploy --stage-only` pre-staged).
#[test]
fn a_workspace_staged_through_the_vwd_is_created_later_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("w.img");
    image(&img, 31, 3);
    let ws = dir.path().join("pre.xml");
    std::fs::write(&ws, vw_localnet::cluster_workspace("pre", "vo/w:1", "vo/w:1", 1))
        .expect("workspace");
    let ws = ws.to_str().expect("utf8");
    // Without a vwd, the cluster's options are refused, naming the socket looked for.
    let alone = vw(&dir.path().join("alone"), &["stage", ws, "--strategy", "chain"]);
    assert_eq!(alone.status.code(), Some(1));
    assert!(stderr(&alone).contains("none listens at"), "{}", stderr(&alone));

    let head = OneHost::start(dir.path(), &[(&img, "vo/w:1")]);
    // The phases a deploy report says it went through.
    let phases = |report: &Value| -> Vec<String> {
        let all = report["phases"].as_array().expect("phases");
        all.iter().filter_map(|p| p["phase"].as_str().map(str::to_owned)).collect()
    };
    let staged = json(&head.store, &["stage", ws, "--vo", "vo"]);
    let went = phases(&staged);
    assert!(went.iter().any(|p| p == "stage") && !went.iter().any(|p| p == "create"), "{staged}");
    assert_eq!(staged["vms"].as_array().map(Vec::len), Some(2), "{staged}");
    assert!(staged["ready"].as_array().is_some_and(Vec::is_empty), "{staged}");
    let by_name = vw(&head.store, &["stage", "pre"]);
    assert!(stderr(&by_name).contains("`vw stage FILE --vo VO`"), "{}", stderr(&by_name));
    let created = json(&head.store, &["create", "pre"]);
    let went = phases(&created);
    assert!(went.iter().any(|p| p == "create") && !went.iter().any(|p| p == "stage"), "{created}");
    head.stop();
}

/// With a `vwd` holding the store's lock, the store commands go through its socket
/// (files handed over as descriptors, progress coming back) and give what they give on
/// the store opened directly: before, each failed with "store in use".
#[test]
fn store_commands_go_through_the_vwd_that_owns_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (dir.path().join("a.img"), dir.path().join("b.img"), dir.path().join("c.img"));
    image(&a, 21, 3);
    image(&b, 22, 3);
    image(&c, 23, 3);
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    let head = OneHost::start(dir.path(), &[(&a, "vo/a:1")]);
    let store = head.store.clone();
    let locked = vw_node::chunkstore::Store::open(&store).expect_err("vwd holds the store");
    assert!(locked.to_string().contains("in use"), "{locked}");

    // The same commands, now through the vwd.
    let imported = json(&store, &["image", "import", &s(&b), "--name", "vo/b:1"]);
    assert_eq!(imported["name"], "vo/b:1");
    let seal = dir.path().join("c.seal");
    json(&store, &["vo", "seal", &s(&c), "--name", "vo/c:1", "-o", &s(&seal)]);
    json(&store, &["image", "import", &s(&c), "--name", "vo/c:1", "--seal", &s(&seal)]);
    let through = json(&store, &["image", "ls"]);
    let names: Vec<&str> =
        through.as_array().expect("list").iter().filter_map(|i| i["names"][0].as_str()).collect();
    assert_eq!(names.len(), 3, "{through}");
    let out = dir.path().join("a.out");
    let exported = json(&store, &["image", "export", "vo/a:1", &s(&out)]);
    assert_eq!(exported["path"], s(&out));
    assert_eq!(std::fs::read(&out).expect("out"), std::fs::read(&a).expect("a"));
    let again = vw(&store, &["image", "export", "vo/a:1", &s(&out)]);
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    assert_eq!(json(&store, &["image", "verify"])["corrupt"].as_array().map(Vec::len), Some(0));
    json(&store, &["cache", "pin", "vo/a:1"]);
    json(&store, &["image", "rm", "vo/b:1"]);
    let gc = json(&store, &["gc"]);
    assert!(gc["chunks_removed"].as_u64().expect("count") > 0, "{gc}");
    let stats = json(&store, &["cache", "stats"]);
    // A file this vwd never saw is named as the client named it.
    let missing =
        vw(&store, &["image", "import", &s(&dir.path().join("nope.img")), "--name", "vo/n:1"]);
    assert!(stderr(&missing).contains("nope.img"), "{}", stderr(&missing));
    let through = json(&store, &["image", "ls"]);

    head.stop();
    // Opened directly again: the same store, the same answers.
    assert_eq!(json(&store, &["image", "ls"]), through);
    assert_eq!(json(&store, &["cache", "stats"]), stats);
}
