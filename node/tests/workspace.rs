//! Workspace documents: the shipped examples parse, and every kind of bad input is
//! refused with the line and column of what is wrong.

use std::path::Path;

use vw_node::workspace::{self, BatchRole, Integration, Network, Position, WorkspaceKind};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn grid3_example_is_a_head_and_eight_workers() {
    let spec = workspace::load(&example("grid3-cluster.xml")).expect("the example parses");
    assert_eq!(spec.kind, WorkspaceKind::Cluster);
    assert_eq!(spec.node_number, 9);
    let vms = spec.vms();
    assert_eq!(vms.len(), 9);
    let names: Vec<String> = vms.iter().map(|vm| spec.vm_name(vm)).collect();
    assert_eq!(names[0], "grid3-head");
    assert_eq!(names[8], "grid3-worker8");
    assert_eq!(
        spec.head.nics.iter().map(|n| n.network).collect::<Vec<_>>(),
        [Network::Private, Network::Public]
    );
    let worker = &spec.workers.as_ref().expect("a cluster has workers").template;
    assert_eq!(worker.nics.len(), 1);
    assert_eq!(worker.swap.as_ref().map(|s| s.size), Some(workspace::DEFAULT_SWAP));
    assert_eq!(worker.roles.batch, Some(BatchRole::Worker));
    assert_eq!(spec.head.roles.nfs_exports, ["/home"]);
    assert_eq!(worker.integration, Integration::Seed);
}

#[test]
fn atomic_example_is_one_vm() {
    let spec = workspace::load(&example("atomic.xml")).expect("the example parses");
    assert_eq!(spec.kind, WorkspaceKind::AtomicVm);
    assert_eq!(spec.vms().len(), 1);
    assert_eq!(spec.head.memory_mib, 2048);
    assert_eq!(spec.head.integration, Integration::Edit);
    assert_eq!(spec.head.partitions.len(), 2);
}

const GOOD: &str = r#"<virtualWorkspace type="cluster" name="c" nodeNumber="3">
  <headnode name="head">
    <memory>256</memory>
    <vcpus>1</vcpus>
    <bootloader path="pygrub"/>
    <partition image="vo/head:1" device="xvda1" role="root"/>
  </headnode>
  <workernode name="w" count="2">
    <memory>128M</memory>
    <vcpus>1</vcpus>
    <bootloader path="pygrub"/>
    <partition image="vo/worker:1" device="xvda1" role="root"/>
  </workernode>
</virtualWorkspace>"#;

/// Parses `text` expecting an error; returns (line, column, message).
fn refuse(text: &str) -> (u32, u32, String) {
    match workspace::parse(text, "t.xml") {
        Ok(spec) => panic!("accepted a bad document: {spec:?}\n{text}"),
        Err(e) => {
            let Position { line, column } =
                e.position().unwrap_or_else(|| panic!("no position: {e}"));
            let message = e.to_string();
            assert!(message.starts_with(&format!("t.xml:{line}:{column}: ")), "{message}");
            (line, column, message)
        }
    }
}

#[test]
fn the_base_document_is_good() {
    let spec = workspace::parse(GOOD, "t.xml").expect("good");
    assert_eq!(spec.vms().len(), 3);
    assert_eq!(spec.workers.as_ref().map(|w| w.template.memory_mib), Some(128));
}

#[test]
fn malformed_xml_gives_line_and_column() {
    let text = GOOD.replace(
        "<vcpus>1</vcpus>\n    <bootloader path=\"pygrub\"/>\n    <partition image=\"vo/worker",
        "<vcpus>1</vcpu>\n    <bootloader path=\"pygrub\"/>\n    <partition image=\"vo/worker",
    );
    let (line, _, message) = refuse(&text);
    assert_eq!(line, 10, "{message}");
    assert!(message.contains("malformed XML"), "{message}");
}

#[test]
fn unknown_elements_and_attributes_are_named() {
    let text = GOOD.replace("    <vcpus>1</vcpus>\n    <bootloader path=\"pygrub\"/>\n    <partition image=\"vo/head", "    <vcpus>1</vcpus>\n    <gpu>1</gpu>\n    <bootloader path=\"pygrub\"/>\n    <partition image=\"vo/head");
    let (line, column, message) = refuse(&text);
    assert_eq!((line, column), (5, 5), "{message}");
    assert!(message.contains("unknown element <gpu> in <headnode>"), "{message}");

    let text = GOOD.replace(
        "device=\"xvda1\" role=\"root\"/>\n  </workernode>",
        "device=\"xvda1\" role=\"root\" mode=\"x\"/>\n  </workernode>",
    );
    let (line, column, message) = refuse(&text);
    assert_eq!((line, column), (12, 63), "{message}");
    assert!(message.contains("unknown attribute `mode` on <partition>"), "{message}");
}

#[test]
fn node_count_must_match_the_workers() {
    let (line, column, message) = refuse(&GOOD.replace("count=\"2\"", "count=\"5\""));
    assert_eq!((line, column), (8, 24), "{message}");
    assert!(message.contains("nodeNumber is 3"), "{message}");
    let (line, _, message) = refuse(&GOOD.replace("nodeNumber=\"3\"", "nodeNumber=\"1\""));
    assert_eq!(line, 1, "{message}");
    assert!(message.contains("at least one worker"), "{message}");
}

#[test]
fn memory_and_vcpus_are_bounded() {
    for (bad, expect) in [
        ("<memory>0</memory>", "memory 0 MiB is outside"),
        ("<memory>4T</memory>", "memory 4194304 MiB is outside"),
        ("<memory>lots</memory>", "`lots` has an unknown unit"),
    ] {
        let (line, column, message) = refuse(&GOOD.replacen("<memory>256</memory>", bad, 1));
        assert_eq!((line, column), (3, 5), "{message}");
        assert!(message.contains(expect), "{message}");
    }
    for (bad, expect) in
        [("0", "0 vCPUs is outside"), ("1000", "1000 vCPUs"), ("two", "not a whole number")]
    {
        let (line, _, message) =
            refuse(&GOOD.replacen("<vcpus>1</vcpus>", &format!("<vcpus>{bad}</vcpus>"), 1));
        assert_eq!(line, 4, "{message}");
        assert!(message.contains(expect), "{message}");
    }
}

#[test]
fn duplicate_vm_names_are_refused() {
    let (line, _, message) =
        refuse(&GOOD.replace("<headnode name=\"head\">", "<headnode name=\"w2\">"));
    assert!(message.contains("duplicate VM name c-w2"), "{message}");
    assert_eq!(line, 8, "{message}");
}

#[test]
fn references_between_roles_are_checked() {
    let text =
        GOOD.replace("</workernode>", "<roles><nfsClient export=\"/home\"/></roles></workernode>");
    let (line, _, message) = refuse(&text);
    assert_eq!(line, 13, "{message}");
    assert!(message.contains("does not export it"), "{message}");
    let text = GOOD.replace("</workernode>", "<roles><batchWorker/></roles></workernode>");
    assert!(refuse(&text).2.contains("no <batchServer/>"));
}

#[test]
fn other_bad_values_point_at_their_attribute() {
    for (from, to, expect) in [
        ("type=\"cluster\"", "type=\"grid\"", "type `grid`"),
        ("name=\"c\"", "name=\"C!\"", "hostname label"),
        ("image=\"vo/head:1\"", "image=\"nope\"", "nope"),
        (
            "device=\"xvda1\" role=\"root\"/>\n  </headnode>",
            "device=\"sda1\" role=\"root\"/>\n  </headnode>",
            "not a Xen block device",
        ),
        ("role=\"root\"/>\n  </headnode>", "role=\"boot\"/>\n  </headnode>", "role `boot`"),
    ] {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "{from}");
        let (_, _, message) = refuse(&text);
        assert!(message.contains(expect), "{from}: {message}");
    }
}

#[test]
fn a_missing_part_names_its_element() {
    let (line, column, message) = refuse(&GOOD.replacen("    <vcpus>1</vcpus>\n", "", 1));
    assert_eq!((line, column), (2, 3), "{message}");
    assert!(message.contains("<headnode> needs a <vcpus> element"), "{message}");
}

#[test]
fn doctypes_and_huge_documents_are_refused() {
    let text = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>\n{GOOD}");
    assert!(refuse(&text).2.contains("DOCTYPE"));
    let big = format!("{GOOD}<!--{}-->", "x".repeat(workspace::MAX_DOCUMENT));
    assert!(workspace::parse(&big, "t.xml").is_err());
}

#[test]
fn a_byte_order_mark_is_ignored_and_odd_bytes_do_not_panic() {
    let with_bom = format!("\u{feff}{GOOD}");
    assert!(workspace::parse(&with_bom, "t.xml").is_ok());
    // Found by the workspace_xml fuzz target: a BOM before text that is not XML once
    // panicked on a slice inside the BOM.
    let crash = include_bytes!("data/fuzz-bom-crash.xml");
    assert!(workspace::parse(&String::from_utf8_lossy(crash), "t.xml").is_err());
}

/// The workspace is untrusted on every host: it picks pygrub or nothing as bootloader,
/// only pygrub options that choose inside the guest's disk, and kernel files without
/// `..` (the host then resolves them inside its kernel directories: `xen::boot`).
#[test]
fn boot_fields_cannot_name_host_programs_or_leave_the_kernel_directories() {
    let pygrub = "<bootloader path=\"pygrub\"/>";
    for (bad, expect) in [
        ("<bootloader path=\"/bin/sh\"/>", "bootloader `/bin/sh` is not `pygrub`"),
        ("<bootloader path=\"pygrub\" args=\"--output=/etc/shadow\"/>", "`--output=/etc/shadow`"),
        ("<bootloader path=\"pygrub\" args=\"--runas=0\"/>", "`--runas=0`"),
        ("<bootloader path=\"pygrub\" args=\"/dev/sda\"/>", "`/dev/sda`"),
        ("<kernel path=\"../../var/lib/vw/node.key\"/>", "without `..`"),
        ("<kernel path=\"vmlinuz\" ramdisk=\"/boot/../var/lib/vw/node.key\"/>", "without `..`"),
    ] {
        let (line, _, message) = refuse(&GOOD.replacen(pygrub, bad, 1));
        assert_eq!(line, 5, "{message}");
        assert!(message.contains(expect), "{bad}: {message}");
    }
    let ok = GOOD.replacen(
        pygrub,
        "<bootloader path=\"pygrub\" args=\"--entry=1 --kernel=/boot/vmlinuz\"/>",
        1,
    );
    workspace::parse(&ok, "t.xml").expect("pygrub with options inside the guest disk");
    let ok = GOOD.replacen(
        pygrub,
        "<kernel path=\"vmlinuz-6.1\" ramdisk=\"/var/lib/vw-kernels/initrd\"/>",
        1,
    );
    workspace::parse(&ok, "t.xml").expect("a name, and an absolute path the host checks");
}
