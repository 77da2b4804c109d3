//! Cache capacity, pins, eviction and garbage collection on a real store.

mod common;

use common::{read, write_image};
use vw_chunkstore::{ImageName, ImageRef, PinReason, Store};

const MIB: u64 = 1 << 20;

fn name(s: &str) -> ImageRef {
    ImageRef::Name(s.parse::<ImageName>().expect("valid name"))
}

fn import(store: &Store, dir: &std::path::Path, n: &str, seed: u64) -> vw_chunkstore::ImportReport {
    let img = dir.join(format!("{seed}.img"));
    write_image(&img, 8 * MIB, &[(0, 4_000_000, seed)]);
    let ImageRef::Name(image_name) = name(n) else { unreachable!() };
    store.import(&img, Some(&image_name), &()).expect("import")
}

#[test]
fn gc_drops_only_unreferenced_chunks_and_compacts_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let a = import(&store, dir.path(), "vo/a:1", 1);
    let b = import(&store, dir.path(), "vo/b:1", 2);
    store.remove(&name("vo/a:1")).expect("rm");
    let before = store.stats().expect("stats");
    assert_eq!(before.loose_bytes, a.counts.new_bytes);

    let r = store.gc().expect("gc");
    assert_eq!(r.bytes_removed, a.counts.new_bytes);
    let after = store.stats().expect("stats");
    assert_eq!((after.loose_chunks, after.chunk_bytes), (0, b.counts.new_bytes));

    // The remaining image still rebuilds byte-exact after its pack moved.
    let out = dir.path().join("b.out");
    store.export(&b.manifest, &out, false, &()).expect("export");
    assert_eq!(read(&out), read(&dir.path().join("2.img")));
    assert!(store.verify(None, &()).expect("verify").is_clean());
}

#[test]
fn capacity_evicts_least_recently_used_unpinned_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let a = import(&store, dir.path(), "vo/a:1", 11);
    let b = import(&store, dir.path(), "vo/b:1", 12);
    let c = import(&store, dir.path(), "vo/c:1", 13);
    store.pin(&name("vo/a:1"), &PinReason::Base).expect("pin");
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.touch(&b.manifest).expect("touch b"); // b is now more recent than c

    // Room for two images: c (least recently used, unpinned) goes.
    let r =
        store.set_capacity(Some(a.counts.new_bytes + b.counts.new_bytes + 1000)).expect("limit");
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].0, c.manifest);
    assert_eq!(r.evicted[0].1, vec!["vo/c:1".to_string()]);
    assert!(store.resolve(&name("vo/c:1")).is_err());

    // Room for less than the pinned image: b goes, a stays, the store says it is over.
    let r = store.set_capacity(Some(1000)).expect("limit");
    assert_eq!(r.evicted.iter().map(|e| e.0).collect::<Vec<_>>(), vec![b.manifest]);
    assert_eq!(r.over_capacity, a.counts.new_bytes - 1000);
    store.resolve(&name("vo/a:1")).expect("the pinned image stays");
    assert!(store.verify(None, &()).expect("verify").is_clean());

    // An import over capacity evicts unpinned data right after, never itself.
    store.set_capacity(None).expect("unlimited");
    let d = import(&store, dir.path(), "vo/d:1", 14);
    store.set_capacity(Some(a.counts.new_bytes + d.counts.new_bytes)).expect("limit");
    let e = import(&store, dir.path(), "vo/e:1", 15);
    let evicted: Vec<_> = e.eviction.evicted.iter().map(|e| e.0).collect();
    assert_eq!(evicted, vec![d.manifest]);
    // Lowering the limit evicts at once; an import bigger than what is left stays, and
    // the store reports how far over it is.
    let r = store.set_capacity(Some(1000)).expect("limit");
    assert_eq!(r.evicted.iter().map(|x| x.0).collect::<Vec<_>>(), vec![e.manifest]);
    let f = import(&store, dir.path(), "vo/f:1", 16);
    assert!(f.eviction.evicted.is_empty(), "{:?}", f.eviction);
    assert_eq!(f.eviction.over_capacity, a.counts.new_bytes + f.counts.new_bytes - 1000);
    store.resolve(&name("vo/f:1")).expect("the new image stays, even over capacity");
}

/// Eviction under a capacity limit takes an image's seal with its manifest and name:
/// every seal left names a manifest the store still has.
#[test]
fn eviction_takes_the_seal_with_the_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let key = vw_chunkstore::VoKey::generate("vo").expect("key");
    let mut imported = Vec::new();
    for (n, seed) in [("vo/a:1", 21), ("vo/b:1", 22)] {
        let img = dir.path().join(format!("{seed}.img"));
        write_image(&img, 8 * MIB, &[(0, 4_000_000, seed)]);
        let name: ImageName = n.parse().expect("name");
        let r = store
            .import_sealed(&img, &name, &key, vw_chunkstore::Visibility::Private, &())
            .expect("import");
        imported.push(r);
    }
    store.pin(&name("vo/b:1"), &PinReason::Base).expect("pin");
    let r = store.set_capacity(Some(imported[1].counts.new_bytes + 1000)).expect("limit");
    assert_eq!(r.evicted.iter().map(|e| e.0).collect::<Vec<_>>(), vec![imported[0].manifest]);
    let seals = store.seals().expect("seals");
    let names: Vec<String> = seals.iter().map(|s| s.name().to_string()).collect();
    assert_eq!(names, ["vo/b:1"]);
    for seal in &seals {
        store.manifest(&seal.manifest()).expect("a seal's manifest is stored");
    }
    assert!(store.seal(&"vo/a:1".parse().expect("name")).expect("lookup").is_none());
}
