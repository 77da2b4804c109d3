//! The chunk store end to end: round trips, dedup, missing sets, names, pins.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{noise, read, write_image};
use proptest::prelude::*;
use vw_chunkstore::{clone_image, CloneMethod, Error, ImageName, ImageRef, Store};

fn name(s: &str) -> ImageName {
    s.parse().expect("valid name")
}

const MIB: u64 = 1 << 20;

#[test]
fn import_export_is_byte_identical_and_sparse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    write_image(
        &img,
        40 * MIB,
        &[(0, 3_000_000, 1), (20 * MIB, 5_000_000, 2), (40 * MIB - 777, 777, 3)],
    );
    let store = Store::open(&dir.path().join("store")).expect("open");
    let r = store.import(&img, Some(&name("vo/a:1")), &()).expect("import");
    assert_eq!(r.len, 40 * MIB);
    assert!(r.counts.zero_bytes > 25 * MIB, "holes are recognised as zero chunks: {r:?}");
    assert!(r.counts.new_bytes < 10 * MIB, "only data is stored: {r:?}");

    let out = dir.path().join("out.img");
    let e = store.export(&r.manifest, &out, false, &()).expect("export");
    assert_eq!(read(&out), read(&img));
    assert_eq!(e.hole_bytes, r.counts.zero_bytes);
    let allocated = std::fs::metadata(&out).expect("stat").blocks() * 512;
    assert!(allocated < 12 * MIB, "zero chunks became holes: {allocated} bytes allocated");
    // Nothing is left behind under a temporary name.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("vw-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Export refuses to replace a file unless asked.
    let again = store.export(&r.manifest, &out, false, &());
    assert!(matches!(again, Err(Error::OutputExists { .. })), "{again:?}");
    store.export(&r.manifest, &out, true, &()).expect("overwrite");
}

/// What `vwd` does with files a client opened and handed over: it imports from an open
/// file (naming the client's path in messages) and exports into an open temporary file
/// the client then commits; a target dropped before its commit leaves nothing.
#[test]
fn imports_and_exports_work_on_files_opened_elsewhere() {
    use vw_chunkstore::{ExportTarget, ImageFile};
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    write_image(&img, 8 * MIB, &[(0, 3_000_000, 4)]);
    let store = Store::open(&dir.path().join("store")).expect("open");
    let file = std::fs::File::open(&img).expect("open image");
    let r = store
        .import_from(ImageFile::from_file(file, &img).expect("a file"), None, &())
        .expect("import");
    let d = std::fs::File::open(dir.path()).expect("open dir");
    let err = ImageFile::from_file(d, dir.path()).expect_err("a directory").to_string();
    assert!(err.contains("directory"), "{err}");

    let out = dir.path().join("out.img");
    let target = ExportTarget::create(&out, false).expect("target");
    let e = store.export_into(&r.manifest, target.file(), &out, &()).expect("export");
    assert_eq!(e.path, out);
    assert!(!out.exists(), "nothing under the final name before the commit");
    target.commit().expect("commit");
    assert_eq!(read(&out), read(&img));

    let other = dir.path().join("other.img");
    drop(ExportTarget::create(&other, false).expect("target"));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("vw-part") && n != "other.img"), "{names:?}");
}

#[test]
fn a_second_image_stores_only_what_it_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let base = [(0, 6_000_000, 10), (10 * MIB, 6_000_000, 11)];
    write_image(&a, 20 * MIB, &base);
    let mut more = base.to_vec();
    more.push((16 * MIB, 2_000_000, 12));
    write_image(&b, 20 * MIB, &more);
    let store = Store::open(&dir.path().join("s")).expect("open");
    let ra = store.import(&a, Some(&name("vo/a:1")), &()).expect("import a");
    let rb = store.import(&b, Some(&name("vo/b:1")), &()).expect("import b");
    assert!(rb.counts.new_bytes < 2_700_000, "b only adds its own 2 MB (plus edges): {rb:?}");
    assert!(rb.counts.cached_bytes > 11_000_000, "{rb:?}");

    let d =
        store.diff(&ImageRef::Name(name("vo/a:1")), &ImageRef::Name(name("vo/b:1"))).expect("diff");
    assert!(d.shared_bytes > 11_000_000 && d.only_a_bytes < 500_000, "{d:?}");
    assert_eq!(d.shared_bytes + d.only_b_bytes, rb.counts.new_bytes + rb.counts.cached_bytes);

    // Re-importing the same file, even from a fresh process, changes nothing, gives the
    // same manifest and opens no new pack file.
    let packs = || std::fs::read_dir(dir.path().join("s/packs")).expect("ls").count();
    let before = packs();
    drop(store);
    let store = Store::open(&dir.path().join("s")).expect("reopen");
    let ra2 = store.import(&a, Some(&name("vo/a:2")), &()).expect("re-import");
    assert_eq!((ra2.manifest, ra2.counts.new_bytes), (ra.manifest, 0));
    assert_eq!(packs(), before);
}

#[test]
fn missing_set_is_what_the_other_image_adds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_image(&a, 16 * MIB, &[(0, 8_000_000, 20)]);
    write_image(&b, 16 * MIB, &[(0, 8_000_000, 20), (12 * MIB, 3_000_000, 21)]);
    let host_a = Store::open(&dir.path().join("ha")).expect("open a");
    let rb = host_a.import(&b, None, &()).expect("import b");
    let manifest = host_a.manifest(&rb.manifest).expect("manifest");

    let host_b = Store::open(&dir.path().join("hb")).expect("open b");
    let empty = host_b.missing(&manifest).expect("missing");
    assert_eq!(empty.bytes, rb.counts.new_bytes, "an empty store lacks every stored byte");
    host_b.import(&a, None, &()).expect("import a");
    let m = host_b.missing(&manifest).expect("missing");
    assert!(m.bytes >= 3_000_000 && m.bytes < 3_600_000, "{m:?}");
    assert_eq!(host_a.missing(&manifest).expect("missing").bytes, 0);
}

#[test]
fn names_ls_rm_and_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    write_image(&a, 4 * MIB, &[(0, 1_000_000, 30)]);
    let store = Store::open(&dir.path().join("s")).expect("open");
    let r = store.import(&a, Some(&name("vo/a:1")), &()).expect("import");
    store.tag(&name("vo/a:latest"), &r.manifest).expect("tag");
    let ls = store.images().expect("ls");
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].names, vec!["vo/a:1".to_string(), "vo/a:latest".into()]);

    let by_name = ImageRef::Name(name("vo/a:1"));
    store.pin(&by_name, &vw_chunkstore::PinReason::Base).expect("pin");
    assert!(store.remove(&by_name).expect("drop one of two names").is_none());
    let last = ImageRef::Name(name("vo/a:latest"));
    let err = store.remove(&last).expect_err("pinned");
    assert!(err.to_string().contains("is pinned (base)"), "{err}");
    assert!(store.unpin(&last, &vw_chunkstore::PinReason::Base).expect("unpin"));
    assert_eq!(store.remove(&last).expect("rm"), Some(r.manifest));
    assert!(store.images().expect("ls").is_empty());

    let err = store.resolve(&by_name).expect_err("gone");
    assert_eq!(err.to_string(), "no image named vo/a:1 in the store; `vw image ls` lists them");
}

#[test]
fn a_seal_names_its_manifest_and_goes_with_the_name() {
    use vw_chunkstore::{Seal, Visibility, VoKey};
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    write_image(&a, 2 * MIB, &[(0, 1_000_000, 31)]);
    let store = Store::open(&dir.path().join("s")).expect("open");
    let r = store.import(&a, None, &()).expect("import");
    let key = VoKey::generate("grid3").expect("key");
    let seal =
        Seal::sign(&key, &name("grid3/base:1"), r.manifest, Visibility::Public).expect("sign");
    store.put_seal(&seal).expect("seal");
    assert_eq!(store.resolve(&ImageRef::Name(name("grid3/base:1"))).expect("named"), r.manifest);
    let back = store.seal(&name("grid3/base:1")).expect("read").expect("stored");
    back.verify(&key.public()).expect("still verifies");
    let ls = store.images().expect("ls");
    assert_eq!(ls[0].sealed, vec![("grid3/base:1".to_string(), Visibility::Public)]);

    // A seal on a manifest the store lacks is refused; removing the name drops its seal.
    let absent = vw_chunkstore::ManifestId::from(blake3::hash(b"absent"));
    let other = Seal::sign(&key, &name("grid3/x:1"), absent, Visibility::Private).expect("sign");
    assert!(matches!(store.put_seal(&other), Err(Error::UnknownManifest { .. })));
    store.remove(&ImageRef::Name(name("grid3/base:1"))).expect("rm");
    assert!(store.seal(&name("grid3/base:1")).expect("read").is_none());
}

#[test]
fn clone_keeps_holes_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src.img");
    write_image(&src, 32 * MIB, &[(MIB, 2_000_000, 40), (30 * MIB, 100_000, 41)]);
    let dst = dir.path().join("dst.img");
    let method = clone_image(&src, &dst).expect("clone");
    assert!(matches!(method, CloneMethod::Reflink | CloneMethod::SparseCopy));
    assert_eq!(read(&dst), read(&src));
    let allocated = std::fs::metadata(&dst).expect("stat").blocks() * 512;
    assert!(allocated < 4 * MIB, "holes stay holes: {allocated}");
    let err = clone_image(&src, &dst).expect_err("an existing target is refused");
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
}

#[test]
fn clone_uses_reflink_where_the_file_system_has_it() {
    if !vw_testkit::root_or_skip("clone_uses_reflink_where_the_file_system_has_it", "mount XFS") {
        return;
    }
    let fs = common::Mounted::xfs_with_reflink();
    let src = fs.path.join("src.img");
    write_image(&src, 32 * MIB, &[(MIB, 4_000_000, 60)]);
    let dst = fs.path.join("dst.img");
    assert_eq!(clone_image(&src, &dst).expect("clone"), CloneMethod::Reflink);
    assert_eq!(read(&dst), read(&src));
    let leftovers = std::fs::read_dir(&fs.path).expect("ls").count();
    assert_eq!(leftovers, 2, "no temp file left beside the clone");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random data with zero runs and sparse regions round-trips byte for byte.
    #[test]
    fn round_trip(parts in proptest::collection::vec((0u8..3, 1usize..400_000, any::<u64>()), 1..12)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("p.img");
        let mut data = Vec::new();
        for (kind, len, seed) in parts {
            match kind {
                0 => data.extend(noise(len, seed)),
                1 => data.extend(std::iter::repeat_n(0u8, len)),
                _ => data.extend(std::iter::repeat_n(seed as u8, len)),
            }
        }
        std::fs::write(&img, &data).expect("write");
        let store = Store::open(&dir.path().join("s")).expect("open");
        let r = store.import(&img, None, &()).expect("import");
        let out = dir.path().join("o.img");
        store.export(&r.manifest, &out, false, &()).expect("export");
        prop_assert_eq!(read(&out), data);
    }
}

/// The missing set of a manifest the store does not hold stays exact as imports add
/// chunks and garbage collection deletes them.
#[test]
fn missing_set_follows_imports_and_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_image(&a, 8 * MIB, &[(0, 3_000_000, 50)]);
    write_image(&b, 8 * MIB, &[(0, 3_000_000, 50), (5 * MIB, 2_000_000, 51)]);
    // What b looks like to a host that has never seen it: same chunks, not stored.
    let other = Store::open(&dir.path().join("other")).expect("open");
    let b_manifest =
        other.manifest(&other.import(&b, None, &()).expect("import").manifest).expect("m");

    let store = Store::open(&dir.path().join("s")).expect("open");
    let all = store.missing(&b_manifest).expect("missing");
    store.import(&a, Some(&name("vo/a:1")), &()).expect("import a");
    let after_a = store.missing(&b_manifest).expect("missing");
    assert!(after_a.bytes < all.bytes && after_a.bytes >= 2_000_000, "{after_a:?}");
    store.import(&b, Some(&name("vo/b:1")), &()).expect("import b");
    // The stored-manifest shortcut would hide a stale set: ask with a twin manifest.
    let twin = vw_chunkstore::Manifest::new(
        b_manifest.params(),
        b_manifest.len(),
        blake3::hash(b"twin"),
        b_manifest.chunks().to_vec(),
    )
    .expect("twin");
    assert_eq!(store.missing(&twin).expect("missing").bytes, 0);
    store.remove(&ImageRef::Name(name("vo/b:1"))).expect("rm");
    store.gc().expect("gc");
    assert_eq!(store.missing(&twin).expect("missing"), after_a, "gc'd chunks are missing again");
}

/// A VO seals an image where its key lives (no store), and a store without the key
/// imports it under that seal; a different file under the same seal is refused, and
/// leaves nothing behind.
#[test]
fn an_image_sealed_elsewhere_imports_under_its_seal_only() {
    use vw_chunkstore::{manifest_of_file, ImageRef, Seal, Visibility, VoKey};
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, other) = (dir.path().join("w.img"), dir.path().join("x.img"));
    std::fs::write(&img, noise(3 << 20, 1)).expect("write");
    std::fs::write(&other, noise(3 << 20, 2)).expect("write");
    let key = VoKey::generate("vo").expect("key");
    let name = "vo/w:1".parse().expect("name");
    let manifest =
        manifest_of_file(&img, vw_chunkstore::chunker::ChunkerParams::DEFAULT).expect("manifest");
    let seal = Seal::sign(&key, &name, manifest.id(), Visibility::Private).expect("seal");

    let store = Store::open(&dir.path().join("store")).expect("open");
    let err = store.import_presealed(&other, &seal, &()).expect_err("another file");
    assert!(err.to_string().contains("its seal is for manifest"), "{err}");
    assert!(store.manifest_ids().expect("ids").is_empty(), "the refused import left nothing");
    let r = store.import_presealed(&img, &seal, &()).expect("import");
    assert_eq!(r.manifest, manifest.id(), "the store cuts as the VO did");
    assert_eq!(store.resolve(&ImageRef::Name(name.clone())).expect("named"), manifest.id());
    assert_eq!(store.seal(&name).expect("seal"), Some(seal));
}
