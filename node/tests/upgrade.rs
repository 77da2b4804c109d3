//! A store written by an earlier release opens in this one (issue 17): every record is
//! read in the version that release wrote, rewritten in this release's once, and
//! nothing is lost. The fixture `data/store-d975143.tar.gz` was written by release
//! d975143 (`scripts/fixtures/old-store.sh d975143 …`: a one-host cluster deployment
//! through vwd, and a deployment made on the store directly), whose manager records
//! were postcard: deployments version 3, VMs 1, addresses 1, clusters 2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use vw_node::chunkstore::Store;
use vw_node::config::ClusterConfig;
use vw_node::manager::records::FAMILIES;
use vw_node::manager::{Manager, VmState};

/// Each manager family's record versions (the first byte of each value), by family.
fn versions(data: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    let store = Store::open_with_records(data, &FAMILIES).expect("store");
    FAMILIES
        .iter()
        .map(|&f| {
            let records = store.records().scan(f).expect("scan");
            (f, records.iter().map(|(_, v)| v[0]).collect())
        })
        .collect()
}

fn open(data: &Path) -> Manager {
    let text = vw_localnet::with_placeholder_kernels(
        ClusterConfig::EMBEDDED,
        data.parent().expect("parent"),
    )
    .expect("config");
    let config = ClusterConfig::parse(&text, "cluster.toml").expect("config");
    Manager::open(data, config).expect("the old store opens").0
}

#[test]
fn a_store_of_the_previous_release_opens_and_is_migrated_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("dir");
    let fixture =
        vw_testkit::source_dir(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-d975143.tar.gz");
    let untar = Command::new("tar").arg("-C").arg(&data).arg("-xzf").arg(&fixture).status();
    assert!(untar.expect("tar").success(), "unpack {}", fixture.display());

    let before = versions(&data);
    assert!(before["deployments"].len() == 2 && before["deployments"].iter().all(|&v| v == 3));
    assert!(before["vms"].len() == 4 && before["vms"].iter().all(|&v| v == 1), "{before:?}");
    assert!(!before["addresses"].is_empty() && before["addresses"].iter().all(|&v| v == 1));
    assert_eq!(before["clusters"], [2]);

    let m = open(&data);
    let deployments = m.deployments().expect("deployments");
    let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["grid3", "local"]);
    let grid3 = &deployments[0];
    assert_eq!(grid3.vo.as_deref(), Some("grid3"));
    assert_eq!(grid3.share.as_ref().map(|s| s.here.len()), Some(2), "the head's share");
    assert!(deployments[1].share.is_none() && deployments[1].vo.is_none());
    let vms = m.status(None).expect("status");

    assert_eq!(vms.len(), 4);
    assert!(vms.iter().all(|v| v.record.state == VmState::Running), "{vms:?}");
    assert!(vms.iter().all(|v| v.record.staged.is_some() && !v.record.nics.is_empty()));
    let cluster = m.cluster("grid3").expect("read").expect("the head's cluster record");
    assert_eq!(cluster.placement.len(), 2);
    assert!(cluster.placement.iter().all(|p| p.host == "head" && !p.nics.is_empty()));
    let images = m.store().images().expect("images");
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(m.store().seal(&"grid3/base:1".parse().expect("name")).expect("seal").is_some());
    let status: Vec<_> = vms.iter().map(|v| v.record.clone()).collect();
    drop(m);

    // Every record is now of this release's version; opening again changes nothing.
    let after = versions(&data);
    assert!(after["deployments"].iter().all(|&v| v == 4), "{after:?}");
    assert!(after["vms"].iter().all(|&v| v == 2), "{after:?}");
    assert!(after["addresses"].iter().all(|&v| v == 2), "{after:?}");
    assert_eq!(after["clusters"], [3]);
    let count = |v: &BTreeMap<&str, Vec<u8>>| v.values().map(Vec::len).sum::<usize>();
    assert_eq!(count(&after), count(&before), "nothing lost");
    let m = open(&data);
    assert_eq!(m.deployments().expect("deployments"), deployments);
    let again: Vec<_> = m.status(None).expect("status").into_iter().map(|v| v.record).collect();
    assert_eq!(again, status);
    drop(m);
    assert_eq!(versions(&data), after);
}
