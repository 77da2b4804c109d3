//! Domain configs: whatever vw renders, Xen's own parser (libxlutil) accepts and reads
//! back as the same values; what cannot be written safely is refused.

#[path = "support/xlcheck.rs"]
mod xlcheck;

use proptest::prelude::*;
use vw_node::workspace::{Access, Boot, GuestType};
use vw_node::xen::config::{check, read, Disk, DomainConfig, Value, Vif};

fn config(name: &str, kernel: &str, extra: &str, target: &str) -> DomainConfig {
    DomainConfig {
        name: name.to_owned(),
        memory_mib: 512,
        vcpus: 2,
        cpus: Some("0-1".into()),
        boot: Boot::Kernel {
            mode: GuestType::Pvh,
            kernel: kernel.to_owned(),
            ramdisk: None,
            root: "/dev/xvda1 ro".into(),
            extra: Some(extra.to_owned()),
        },
        disks: vec![Disk::new("xvda1", Access::Rw, target)],
        vifs: vec![Vif {
            mac: "00:16:3e:01:02:03".parse().expect("mac"),
            ip: "10.0.0.2".parse().expect("ip"),
            bridge: "xenbr0".into(),
        }],
        on_poweroff: "destroy".into(),
        on_reboot: "restart".into(),
        on_crash: "destroy".into(),
        bootloader_user: None,
    }
}

/// Renders, runs libxlutil over it, and returns its report and our reader's view.
fn through_xen(c: &DomainConfig) -> (String, std::collections::BTreeMap<String, Value>) {
    let text = c.render().expect("renders");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.cfg");
    std::fs::write(&path, &text).expect("write");
    (xlcheck::check(&path), read(&text).expect("our reader reads it"))
}

#[test]
fn awkward_values_survive_both_parsers() {
    let target = "/var/lib/vw/images/a b/it's \"q\" \\ #x.img";
    let c = config("grid3-head", "/boot/vmlinuz-ü", "console=hvc0 quiet \"x\"", target);
    let (xen, ours) = through_xen(&c);
    assert!(
        xen.contains(&format!(
            "disk: vdev=xvda1 format=raw readwrite=1 target={}\n",
            target.replace('\\', "\\\\")
        )),
        "{xen}"
    );
    assert_eq!(ours["extra"], Value::Str("console=hvc0 quiet \"x\"".into()));
    assert_eq!(ours["kernel"], Value::Str("/boot/vmlinuz-ü".into()));
    assert!(xen.contains("vif: mac=00:16:3e:01:02:03, ip=10.0.0.2, bridge=xenbr0"), "{xen}");
}

#[test]
fn a_bootloader_is_pygrub_run_restricted_as_the_configured_user() {
    let mut c = config("db", "/k", "", "/x.img");
    c.boot = Boot::Bootloader {
        path: "pygrub".into(),
        args: Some("--kernel=/vmlinuz --entry=1".into()),
    };
    c.bootloader_user = Some("vw-pygrub".into());
    let (xen, _) = through_xen(&c);
    for line in [
        "bootloader: pygrub\n",
        "bootloader_arg: --kernel=/vmlinuz\nbootloader_arg: --entry=1\n",
        "bootloader_restrict: 1\n",
        "bootloader_user: vw-pygrub\n",
    ] {
        assert!(xen.contains(line), "{line:?} in {xen}");
    }
}

/// The workspace chooses a kernel, a ramdisk and a bootloader that xl runs as root:
/// the config writer names nothing but pygrub and resolved absolute files, and the
/// simulated driver's check (which stands in for xl) refuses the rest.
#[test]
fn a_config_never_names_another_bootloader_or_an_unresolved_kernel() {
    let mut shell = config("a", "/k", "", "/x.img");
    shell.boot = Boot::Bootloader { path: "/bin/sh".into(), args: None };
    let err = shell.render().expect_err("a shell as bootloader").to_string();
    assert!(err.contains("`bootloader`") && err.contains("is not `pygrub`"), "{err}");
    let relative = config("a", "vmlinuz", "", "/x.img");
    let err = relative.render().expect_err("an unresolved kernel").to_string();
    assert!(err.contains("`kernel`") && err.contains("was not resolved"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("x.img");
    std::fs::write(&img, b"").expect("write");
    let mut c = config("a", "/k", "", img.to_str().expect("utf-8"));
    c.boot = Boot::Bootloader { path: "pygrub".into(), args: None };
    let good = c.render().expect("render");
    assert_eq!(check(&good).as_deref(), Ok("a"));
    for (from, to, why) in [
        ("\"pygrub\"", "\"/bin/sh\"", "is not pygrub"),
        ("bootloader_restrict = 1\n", "", "without `bootloader_restrict = 1`"),
        ("bootloader = \"pygrub\"", "kernel = \"vmlinuz\"", "not an absolute path"),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good, "{from}");
        assert!(check(&bad).expect_err(from).contains(why), "{from}");
    }
}

#[test]
fn unwritable_values_are_refused() {
    for (c, key) in [
        (config("12345", "/k", "", "/x"), "name"),
        (config("a", "/k\n", "", "/x"), "kernel"),
        (config("a", "/k", "x\u{7}", "/x"), "extra"),
        (config("a", "/k", "", "/x,y.img"), "disk"),
        (config("a", "/k", "", ""), "disk"),
    ] {
        let err = c.render().expect_err("must fail").to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

#[test]
fn the_simulated_check_catches_bad_vifs_and_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("x.img");
    std::fs::write(&img, b"").expect("write");
    let good = config("a", "/k", "", img.to_str().expect("utf-8")).render().expect("render");
    assert_eq!(check(&good).as_deref(), Ok("a"));
    let bad_mac = good.replace("00:16:3e:01:02:03", "02:00:00:01:02:03");
    assert!(check(&bad_mac).expect_err("must fail").contains("not a Xen MAC"));
    let no_bridge = good.replace(", bridge=xenbr0", "");
    assert!(check(&no_bridge).expect_err("must fail").contains("no bridge"));
    let missing = good.replace("x.img", "y.img");
    assert!(check(&missing).expect_err("must fail").contains("is not a file"));
    let reordered =
        good.replace("access=rw, target=", "target=").replace(".img\"", ".img, access=rw\"");
    assert!(check(&reordered).is_err(), "target= must be last");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Printable values (no control characters, no comma in the target) always render,
    /// and Xen reads the target back exactly.
    #[test]
    fn printable_values_round_trip(
        name in "[a-z][a-z0-9-]{0,20}",
        extra in "[ -~]{0,40}",
        target in "/[ -+\\--~]{1,40}",
    ) {
        let target = target.trim_end().to_owned();
        prop_assume!(target.len() > 1);
        let c = config(&name, "/boot/k", &extra, &target);
        let (xen, ours) = through_xen(&c);
        let escaped = target.replace('\\', "\\\\");
        prop_assert!(xen.contains(&format!("target={escaped}\n")), "{}", xen);
        prop_assert_eq!(&ours["extra"], &Value::Str(extra));
        prop_assert_eq!(&ours["name"], &Value::Str(name));
    }
}
