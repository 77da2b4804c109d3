//! The host manager end to end on small real ext4 images: staging, integration, the
//! lifecycle through the simulated driver, persistence and reconciliation, address
//! pools, and the bad inputs the issue lists. Every domain config generated here is
//! also run through Xen's own parser (libxlutil).

#[path = "../../chunkstore/tests/common.rs"]
mod common;
#[path = "support/xlcheck.rs"]
mod xlcheck;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use vw_node::config::ClusterConfig;
use vw_node::machine::Source;
use vw_node::manager::{Manager, ManagerError, Op, Step, VmState};
use vw_node::workspace::{self, WorkspaceSpec};
use vw_node::xen::DomainState;

/// A small ext4 image holding `files` (path → content), made without mounting.
fn ext4_image(path: &Path, files: &[(&str, &str)], size_mib: u64) {
    let tree = path.with_extension("tree");
    for (p, content) in files {
        let f = tree.join(p.trim_start_matches('/'));
        fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        fs::write(&f, content).expect("write");
    }
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(path)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("mkfs.ext4 runs (install e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    fs::remove_dir_all(&tree).expect("clean tree");
}

/// Reads a file out of an ext4 image with debugfs.
fn ext4_cat(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const BASE_FILES: [(&str, &str); 3] = [
    ("/etc/hostname", "debian\n"),
    ("/etc/fstab", "# /etc/fstab\nUUID=x / ext4 defaults 0 1\n"),
    ("/etc/hosts", "127.0.0.1 localhost\n"),
];

/// A store with `vo/head:1` and `vo/worker:1` imported, and the workspace using them.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    images: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A space in the store path: every tool vw runs must get it as one argument.
    let root = tmp.path().join("my store");
    let images = tmp.path().join("in");
    fs::create_dir_all(&images).expect("mkdir");
    ext4_image(&images.join("head.img"), &BASE_FILES, 16);
    ext4_image(&images.join("worker.img"), &BASE_FILES[..2], 12);
    let store = vw_node::chunkstore::Store::open(&root).expect("store");
    for (file, name) in [("head.img", "vo/head:1"), ("worker.img", "vo/worker:1")] {
        store.import(&images.join(file), Some(&name.parse().expect("name")), &()).expect("import");
    }
    Fixture { _tmp: tmp, root, images }
}

const CLUSTER: &str = r#"<virtualWorkspace type="cluster" name="t" nodeNumber="3">
  <headnode name="head">
    <memory>256</memory>
    <vcpus>1</vcpus>
    <kernel type="pvh" path="vmlinuz-6.1.0-vw" ramdisk="initrd.img-6.1.0-vw"/>
    <partition image="vo/head:1" device="xvda1" role="root"/>
    <swap device="xvda2" size="1MB"/>
    <roles><nfsServer export="/home"/><batchServer/></roles>
  </headnode>
  <workernode name="worker" count="2">
    <memory>128</memory>
    <vcpus>1</vcpus>
    <bootloader path="pygrub"/>
    <partition image="vo/worker:1" device="xvda1" role="root"/>
    <integration strategy="edit"/>
    <roles><nfsClient export="/home" mount="/home"/><batchWorker/></roles>
  </workernode>
</virtualWorkspace>"#;

fn spec(text: &str) -> WorkspaceSpec {
    workspace::parse(text, "cluster.xml").expect("valid workspace")
}

/// `text` (a cluster config) with placeholder kernels beside the store `root` allowed.
fn with_kernels(root: &Path, text: &str) -> ClusterConfig {
    let parent = root.parent().expect("a store inside a directory");
    let text = vw_localnet::with_placeholder_kernels(text, parent).expect("kernels");
    ClusterConfig::parse(&text, "cluster.toml").expect("config")
}

fn open(root: &Path) -> Manager {
    let config = with_kernels(root, ClusterConfig::EMBEDDED);
    let (m, reconciled) = Manager::open(root, config).expect("open");
    assert!(reconciled.is_empty(), "{reconciled:?}");
    m
}

/// Runs Xen's own parser (libxlutil) over every domain config staged under `root`.
fn xen_accepts_all(root: &Path) {
    let mut checked = 0;
    for entry in fs::read_dir(root.join("xen")).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "cfg") {
            xlcheck::check(&entry.path());
            checked += 1;
        }
    }
    assert!(checked > 0, "no domain config under {}", root.display());
}

fn states(m: &Manager) -> Vec<(String, VmState, Option<DomainState>)> {
    m.status(Some("t"))
        .expect("status")
        .into_iter()
        .map(|s| (s.record.name, s.record.state, s.domain))
        .collect()
}

#[test]
fn create_stages_integrates_and_runs_a_cluster() {
    let fx = fixture();
    let m = open(&fx.root);
    assert!(m.driver().kind().simulated());
    m.submit(&spec(CLUSTER)).expect("submit");
    let reports = m.run("t", None, Op::Create).expect("create");
    assert_eq!(reports.len(), 3);
    for r in &reports {
        let steps: Vec<Step> = r.steps.iter().map(|t| t.step).collect();
        assert_eq!(steps, [Step::Stage, Step::Load, Step::Start], "{}", r.vm);
        assert_eq!(r.state, VmState::Running);
    }
    let s = states(&m);
    assert!(
        s.iter().all(|(_, st, d)| *st == VmState::Running && *d == Some(DomainState::Running)),
        "{s:?}"
    );

    // Every config is accepted by Xen's parser, and by the simulated driver's check.
    for vm in ["t-head", "t-worker1", "t-worker2"] {
        let cfg = fx.root.join("xen").join(format!("{vm}.cfg"));
        let out = xlcheck::check(&cfg);
        assert!(out.contains(&format!("name: {vm}")), "{out}");
        let text = fs::read_to_string(&cfg).expect("cfg");
        vw_node::xen::config::check(&text).expect("the simulated driver's check");
    }
    let head_cfg = fs::read_to_string(fx.root.join("xen/t-head.cfg")).expect("cfg");
    assert!(head_cfg.contains("bridge=xenbr1"), "the head has a public NIC:\n{head_cfg}");
    assert!(
        head_cfg.contains("vdev=xvdb, access=ro"),
        "the seed volume is attached read-only:\n{head_cfg}"
    );

    // The head's seed volume says who it is and who the others are.
    let seed = fx.root.join("images/t/t-head/seed.img");
    assert!(seed.to_string_lossy().contains("my store"));
    let user_data = Command::new("mtype")
        .arg("-i")
        .arg(&seed)
        .arg("::/user-data")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtype");
    let user_data = String::from_utf8_lossy(&user_data.stdout);
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains("worker2 np=1"), "the batch server lists the workers: {user_data}");
    assert!(user_data.contains("/home\\t10.77.0.0/16(rw"), "{user_data}");

    // Workers were edited in their own copies; the shared staged copy is untouched.
    let w1 = fx.root.join("images/t/t-worker1/xvda1.img");
    assert_eq!(ext4_cat(&w1, "/etc/hostname"), "worker1\n");
    let fstab = ext4_cat(&w1, "/etc/fstab");
    assert!(fstab.starts_with("# /etc/fstab\nUUID=x"), "{fstab}");
    assert!(fstab.contains("head:/home\t/home\tnfs"), "{fstab}");
    assert!(ext4_cat(&w1, "/etc/hosts").contains("\thead\n"));
    assert!(ext4_cat(&w1, "/etc/network/interfaces").contains("address 10.77.1.11/16"));
    // The NIC is found by its MAC, whatever the guest's kernel names it.
    let link = ext4_cat(&w1, "/etc/systemd/network/10-vw-eth0.link");
    assert!(link.contains("[Match]\nMACAddress=00:16:3e:") && link.contains("Name=eth0"), "{link}");
    assert_eq!(ext4_cat(&w1, "/var/spool/torque/server_name"), "head\n");
    assert_eq!(
        ext4_cat(&fx.root.join("images/t/t-worker2/xvda1.img"), "/etc/hostname"),
        "worker2\n"
    );
    // The image in the store is untouched by the edits of the VMs' copies.
    let again = fx.images.join("again.img");
    m.store()
        .export(
            &m.store().resolve(&"vo/worker:1".parse().expect("ref")).expect("id"),
            &again,
            false,
            &(),
        )
        .expect("export");
    assert!(
        fs::read(&again).expect("read") == fs::read(fx.images.join("worker.img")).expect("read")
    );

    // Each image was rebuilt once: worker1 cloned the rebuilt copy (worker2 still
    // needed it), worker2 and the head took theirs by rename.
    let status = m.status(Some("t")).expect("status");
    let placed: Vec<(u32, u32, u32)> = status
        .iter()
        .map(|s| s.record.staged.as_ref().expect("staged").phases)
        .map(|p| (p.rebuilt, p.cloned, p.taken))
        .collect();
    assert_eq!(placed, [(1, 0, 1), (1, 1, 0), (0, 0, 1)]);
    assert!(
        fs::read_dir(fx.root.join("images/t/.shared")).expect("shared").next().is_none(),
        "no copy is kept that nobody clones"
    );

    // Durations are recorded for every step.
    let status = m.status(Some("t")).expect("status");
    assert!(status.iter().all(|s| s.record.timings.len() == 3));
}

#[test]
fn lifecycle_is_idempotent_and_refuses_the_impossible() {
    let fx = fixture();
    let m = open(&fx.root);
    m.submit(&spec(CLUSTER)).expect("submit");
    // submit is idempotent for the same document.
    m.submit(&spec(CLUSTER)).expect("submit again");
    let err = m.run("t", None, Op::Pause).expect_err("must fail");
    assert!(err.to_string().contains("cannot pause VM t-head: it is described"), "{err}");

    m.run("t", None, Op::Load).expect("load");
    xen_accepts_all(&fx.root);
    assert!(states(&m)
        .iter()
        .all(|(_, s, d)| *s == VmState::Loaded && *d == Some(DomainState::Paused)));
    m.run("t", None, Op::Create).expect("create");
    let again = m.run("t", None, Op::Create).expect("create again");
    assert!(again.iter().all(|r| r.steps.is_empty()), "nothing to do the second time");

    m.run("t", Some("t-worker1"), Op::Pause).expect("pause one");
    m.run("t", Some("t-worker1"), Op::Pause).expect("pause is idempotent");
    let s = states(&m);
    assert_eq!(s[1], ("t-worker1".into(), VmState::Paused, Some(DomainState::Paused)));
    let err = m.run("t", Some("t-worker1"), Op::Create).expect_err("must fail");
    assert!(err.to_string().contains("use unpause"), "{err}");
    m.run("t", Some("t-worker1"), Op::Unpause).expect("unpause");

    let err = m.run("t", None, Op::Unstage).expect_err("must fail");
    assert!(err.to_string().contains("stop it first"), "{err}");
    m.run("t", None, Op::Stop).expect("stop");
    assert!(states(&m).iter().all(|(_, s, d)| *s == VmState::Stopped && d.is_none()));
    let err = m.run("t", Some("t-head"), Op::Pause).expect_err("must fail");
    assert!(matches!(err, ManagerError::Refused { .. }), "{err}");

    // Unstage releases everything: files, addresses, records, pins.
    m.run("t", None, Op::Unstage).expect("unstage");
    assert!(m.deployments().expect("list").is_empty());
    assert!(!fx.root.join("images/t").exists());
    assert!(!fx.root.join("xen/t-head.cfg").exists());
    assert!(m.store().pins().expect("pins").is_empty());
    // The addresses are free again: a new deployment gets the same ones.
    m.submit(&spec(CLUSTER)).expect("submit after unstage");
    let s = m.status(Some("t")).expect("status");
    assert_eq!(s[0].record.nics[0].ip.to_string(), "10.77.1.10");
}

#[test]
fn a_restarted_manager_reconciles_with_the_hypervisor() {
    let fx = fixture();
    {
        let m = open(&fx.root);
        m.submit(&spec(CLUSTER)).expect("submit");
        m.run("t", None, Op::Create).expect("create");
        xen_accepts_all(&fx.root);
        m.run("t", Some("t-worker2"), Op::Pause).expect("pause");
    }
    // Reopened: the records survive.
    {
        let m = open(&fx.root);
        let s = states(&m);
        assert_eq!(s[2].1, VmState::Paused);
    }
    // The hypervisor "restarts" and loses a domain; another is unpaused behind vw's back.
    let state_file = fx.root.join("xen-sim/domains.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_file).expect("read")).expect("json");
    doc["domains"].as_object_mut().expect("domains").remove("t-worker1");
    doc["domains"]["t-worker2"]["state"] = "running".into();
    fs::write(&state_file, serde_json::to_vec(&doc).expect("json")).expect("write");

    let config = with_kernels(&fx.root, ClusterConfig::EMBEDDED);
    let (m, reconciled) = Manager::open(&fx.root, config).expect("open");
    let mut changes: Vec<(String, VmState, VmState)> =
        reconciled.into_iter().map(|r| (r.vm, r.was, r.now)).collect();
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        changes,
        [
            ("t-worker1".into(), VmState::Running, VmState::Stopped),
            ("t-worker2".into(), VmState::Paused, VmState::Running)
        ]
    );
    // And the lifecycle goes on from there.
    m.run("t", None, Op::Create).expect("create brings worker1 back");
    assert!(states(&m).iter().all(|(_, s, _)| *s == VmState::Running));
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let fx = fixture();
    let m = open(&fx.root);

    // A missing image names the VM and the image.
    let missing = spec(&CLUSTER.replace("vo/worker:1", "vo/worker:2"));
    let err = m.submit(&missing).expect_err("must fail").to_string();
    assert!(err.contains("VM t-worker1: image vo/worker:2 is not in the store"), "{err}");
    assert!(m.deployments().expect("list").is_empty(), "nothing recorded");

    // More memory than the host has.
    let huge = spec(&CLUSTER.replace("<memory>128</memory>", "<memory>1000G</memory>"));
    let err = m.submit(&huge).expect_err("must fail").to_string();
    assert!(err.contains("MiB of guest memory needed"), "{err}");

    // The same name with another document.
    m.submit(&spec(CLUSTER)).expect("submit");
    let other = spec(&CLUSTER.replace("<memory>256</memory>", "<memory>300</memory>"));
    let err = m.submit(&other).expect_err("must fail").to_string();
    assert!(err.contains("already exists with a different workspace document"), "{err}");

    // A VM name another deployment already uses: x-y + z and x + y-z are both x-y-z.
    let first = spec(
        &CLUSTER
            .replace("name=\"t\"", "name=\"x-y\"")
            .replace("<headnode name=\"head\">", "<headnode name=\"z\">"),
    );
    m.submit(&first).expect("x-y");
    let second = spec(
        &CLUSTER
            .replace("name=\"t\"", "name=\"x\"")
            .replace("<headnode name=\"head\">", "<headnode name=\"y-z\">"),
    );
    let err = m.submit(&second).expect_err("must fail").to_string();
    assert!(err.contains("duplicate VM name x-y-z: deployment x-y already has it"), "{err}");
}

#[test]
fn an_exhausted_address_pool_is_a_clear_error() {
    let fx = fixture();
    let config = ClusterConfig::EMBEDDED.replace("10.77.1.10-10.77.1.250", "10.77.1.10-10.77.1.13");
    let config = with_kernels(&fx.root, &config);
    let (m, _) = Manager::open(&fx.root, config).expect("open");
    m.submit(&spec(CLUSTER)).expect("three of four addresses");
    let second = spec(&CLUSTER.replace("name=\"t\"", "name=\"u\""));
    let err = m.submit(&second).expect_err("must fail").to_string();
    assert!(
        err.contains("deployment u: the private address pool is exhausted: 3 needed, 1 free of 4"),
        "{err}"
    );
    assert!(m.status(Some("u")).is_err(), "nothing recorded for u");
}

#[test]
fn in_image_edits_of_a_non_ext4_partition_suggest_the_seed_strategy() {
    let fx = fixture();
    let store = fx.root.clone();
    {
        let m = open(&store);
        let not_ext4 = fx.images.join("raw.img");
        fs::write(&not_ext4, vec![7u8; 1 << 20]).expect("write");
        m.store().import(&not_ext4, Some(&"vo/raw:1".parse().expect("name")), &()).expect("import");
        let text = CLUSTER.replace("vo/worker:1", "vo/raw:1");
        m.submit(&spec(&text)).expect("submit");
        let err = m.run("t", None, Op::Stage).expect_err("must fail").to_string();
        assert!(err.contains("is not an ext4 file system"), "{err}");
        assert!(err.contains("strategy=\"seed\""), "{err}");
        // The head staged; the failing worker did not move.
        let s = states(&m);
        assert_eq!(s[0].1, VmState::Staged);
        assert_eq!(s[1].1, VmState::Described);
        xen_accepts_all(&store);
        let status = m.status(Some("t")).expect("status");
        let note = status[1].record.note.as_deref().unwrap_or_default();
        assert!(note.starts_with("stage failed: VM t-worker1: integration:"), "{note}");
    }
}

#[test]
fn disk_full_while_cloning_leaves_the_vm_described_and_no_partial_file() {
    assert!(vw_testkit::is_root(), "this test mounts a tmpfs: run the tests as root (CI does)");
    let fs_ = common::Mounted::tmpfs("64m");
    let root = fs_.path.join("store");
    let images = tempfile::tempdir().expect("tempdir");
    let rootfs = images.path().join("root.img");
    ext4_image(&rootfs, &BASE_FILES, 8);
    let data = images.path().join("data.img");
    common::write_image(&data, 12 << 20, &[(0, 12 << 20, 7)]);
    let m = open(&root);
    m.store().import(&rootfs, Some(&"vo/root:1".parse().expect("name")), &()).expect("import root");
    m.store().import(&data, Some(&"vo/data:1".parse().expect("name")), &()).expect("import data");
    let text = r#"<virtualWorkspace type="atomicvm" name="full" nodeNumber="1">
  <node name="vm"><memory>64</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="vo/root:1" device="xvda1" role="root"/>
    <partition image="vo/data:1" device="xvdb1" role="data"/>
    <partition image="vo/data:1" device="xvdc1" role="data"/>
  </node></virtualWorkspace>"#;
    m.submit(&spec(text)).expect("submit");
    // Leave room for the rebuilt data image but not for its clone (the second data
    // partition takes the rebuilt copy itself).
    let free = rustix::fs::statvfs(&fs_.path).map(|s| s.f_bavail * s.f_frsize).expect("statvfs");
    let filler = fs::File::create(fs_.path.join("filler")).expect("filler");
    let keep = (12 << 20) + (6 << 20);
    rustix::fs::fallocate(&filler, rustix::fs::FallocateFlags::empty(), 0, free - keep)
        .expect("fallocate");

    let err = m.run("full", None, Op::Stage).expect_err("must fail");
    assert!(
        matches!(
            &err,
            ManagerError::Stage { error, .. } if matches!(**error, vw_node::chunkstore::Error::NoSpace { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("VM full-vm: staging failed: no space left"), "{err}");
    assert_eq!(states_of(&m, "full"), [VmState::Described]);
    let leftovers: Vec<_> = walk(&root.join("images"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("tmp")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // With room again, the same stage succeeds.
    drop(filler);
    fs::remove_file(fs_.path.join("filler")).expect("remove filler");
    m.run("full", None, Op::Stage).expect("stage");
    assert_eq!(states_of(&m, "full"), [VmState::Staged]);
    xen_accepts_all(&root);
}

fn states_of(m: &Manager, dep: &str) -> Vec<VmState> {
    m.status(Some(dep)).expect("status").into_iter().map(|s| s.record.state).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_xl_driver_runs_a_cluster_through_a_fake_xl() {
    let fx = fixture();
    let state = fx.root.with_file_name("xl-state");
    let wrapper = fx.root.with_file_name("xl");
    let fake = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake-xl");
    fs::write(
        &wrapper,
        format!("#!/bin/sh\nFAKE_XL_STATE='{}' exec '{fake}' \"$@\"\n", state.display()),
    )
    .expect("wrapper");
    Command::new("chmod").arg("+x").arg(&wrapper).status().expect("chmod");
    let parent = fx.root.parent().expect("parent");
    let text = vw_localnet::with_placeholder_kernels(ClusterConfig::EMBEDDED, parent)
        .expect("kernels")
        .replace("driver = \"simulated\"", "driver = \"xl\"")
        .replace("xl = \"xl\"", &format!("xl = \"{}\"", wrapper.display()));
    let config = ClusterConfig::parse(&text, "cluster.toml").expect("config");
    let (m, _) = Manager::open(&fx.root, config.clone()).expect("open");
    assert!(!m.driver().kind().simulated());
    // Capacity is Xen's word: fake-xl's machine has 8192 MiB, dom0 holds 1024, and
    // the config keeps 512 back; what vw's own running guests hold counts as theirs.
    let xen = |m: &Manager| {
        let h = m.host().expect("capacity");
        (h.memory_mib, h.memory_from, h.cpus, h.cpus_from, h.vcpus_per_cpu)
    };
    let measured = (8192 - 1024 - 512, Source::Xen, 4, Source::Xen, 1);
    assert_eq!(xen(&m), measured);
    m.submit(&spec(CLUSTER)).expect("submit");
    m.run("t", None, Op::Create).expect("create");
    assert_eq!(xen(&m), measured);
    xen_accepts_all(&fx.root);
    m.run("t", Some("t-worker2"), Op::Pause).expect("pause");
    let s = states(&m);
    assert_eq!(s[2], ("t-worker2".into(), VmState::Paused, Some(DomainState::Paused)));
    drop(m);
    // A domain destroyed behind vw's back is noticed on the next open.
    let out = Command::new(&wrapper).args(["destroy", "t-worker1"]).output().expect("xl destroy");
    assert!(out.status.success());
    let (m, reconciled) = Manager::open(&fx.root, config).expect("reopen");
    assert_eq!(reconciled.len(), 1, "{reconciled:?}");
    assert_eq!(reconciled[0].now, VmState::Stopped);
    m.run("t", None, Op::Stop).expect("stop");
    let calls = fs::read_to_string(state.join("calls.log")).expect("calls");
    assert_eq!(calls.matches("create -p").count(), 3, "{calls}");
}

/// A ramdisk is loaded into the guest, which can read it back: a workspace must not
/// pick the host's key, directly or through a symlink planted in a kernel directory.
/// Refused when the deployment is submitted, before any record or file is written.
#[test]
fn a_kernel_or_ramdisk_outside_the_kernel_directories_is_refused_before_anything_is_written() {
    let fx = fixture();
    let m = open(&fx.root);
    let kernels = fx.root.parent().expect("parent").join("kernels");
    let key = fx.root.join("node.key");
    fs::write(&key, "secret").expect("key");
    std::os::unix::fs::symlink(&key, kernels.join("initrd-link")).expect("symlink");
    let before = files_under(&fx.root);
    for ramdisk in [key.display().to_string(), "initrd-link".into(), "initrd.img-6.1.0".into()] {
        let text =
            CLUSTER.replace("ramdisk=\"initrd.img-6.1.0-vw\"", &format!("ramdisk=\"{ramdisk}\""));
        let err = m.submit(&spec(&text)).expect_err(&ramdisk).to_string();
        assert!(err.contains("node head: ramdisk"), "{ramdisk}: {err}");
        assert!(
            err.contains("outside this host's kernel directories") || err.contains("no such file"),
            "{ramdisk}: {err}"
        );
        assert!(m.deployment("t").expect("db").is_none(), "{ramdisk}: recorded");
        assert_eq!(files_under(&fx.root), before, "{ramdisk}: wrote a file");
    }
    // The domain config names the resolved file, not the document's text.
    m.submit(&spec(CLUSTER)).expect("submit");
    m.run("t", Some("t-head"), Op::Stage).expect("stage");
    let cfg = fs::read_to_string(fx.root.join("xen/t-head.cfg")).expect("config");
    let real = fs::canonicalize(kernels.join("vmlinuz-6.1.0-vw")).expect("real");
    assert!(cfg.contains(&format!("kernel = \"{}\"", real.display())), "{cfg}");
}

/// Every file under `dir` but the store's database, which RocksDB touches on its own.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.components().any(|c| c.as_os_str() == "db") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
