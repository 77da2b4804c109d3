//! Assembling an image from chunks as they arrive: placed out of order and from the
//! store, the result is the image byte for byte, with holes; an incomplete or wrong
//! one never appears under its name.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{read, write_image};
use vw_chunkstore::{Assembly, ChunkId, Error, Store};

const MIB: u64 = 1 << 20;

/// A store holding a 24 MiB image with holes and a repeated extent; its manifest id.
fn stored(dir: &Path) -> (Store, vw_chunkstore::ManifestId, std::path::PathBuf) {
    let img = dir.join("a.img");
    write_image(
        &img,
        24 * MIB,
        &[
            (0, 3_000_000, 1),
            (8 * MIB, 2_000_000, 7),
            (16 * MIB, 2_000_000, 7),
            (24 * MIB - 99, 99, 3),
        ],
    );
    let store = Store::open(&dir.join("store")).expect("open");
    let r = store.import(&img, None, &()).expect("import");
    (store, r.manifest, img)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("vw-part"))
        .collect()
}

#[test]
fn chunks_placed_in_any_order_and_the_rest_from_the_store_make_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, id, img) = stored(dir.path());
    let manifest = store.manifest(&id).expect("manifest");
    let out = dir.path().join("out.img");
    let assembly = Assembly::create(&manifest, &out).expect("create");

    // Half of the distinct chunks "from the network", last first; the store fills the
    // rest and leaves those alone.
    let distinct = manifest.distinct();
    let fetched: Vec<_> = distinct.iter().step_by(2).rev().collect();
    let leave: HashSet<ChunkId> = fetched.iter().map(|c| c.id).collect();
    for c in &fetched {
        assert!(assembly.wants(&c.id));
        assembly.place(&c.id, &store.read_chunk(&c.id).expect("chunk")).expect("place");
        assert!(!assembly.wants(&c.id), "placed once, at every offset");
    }
    assert!(!out.exists(), "nothing under the name before it is complete");
    let filled = store.fill(&assembly, &leave).expect("fill");
    let rest: u64 =
        distinct.iter().filter(|c| !leave.contains(&c.id)).map(|c| u64::from(c.len)).sum();
    assert_eq!(filled, rest, "the store wrote exactly what was not fetched");

    let report = store.complete(&assembly).expect("complete");
    assert_eq!(read(&out), read(&img));
    assert_eq!(report.len, 24 * MIB);
    let allocated = std::fs::metadata(&out).expect("stat").blocks() * 512;
    assert!(allocated < 12 * MIB, "zero chunks stayed holes: {allocated} bytes allocated");
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn an_incomplete_image_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, id, _) = stored(dir.path());
    let manifest = store.manifest(&id).expect("manifest");
    let out = dir.path().join("out.img");
    let assembly = Assembly::create(&manifest, &out).expect("create");
    let held_back = manifest.distinct()[1].id;
    store.fill(&assembly, &HashSet::from([held_back])).expect("fill");
    let err = store.complete(&assembly).expect_err("a chunk is missing");
    assert!(matches!(err, Error::MissingChunk { id } if id == held_back), "{err}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    // And one whose target exists already is not started.
    std::fs::write(&out, b"x").expect("write");
    let exists = Assembly::create(&manifest, &out).expect_err("target exists");
    assert!(matches!(exists, Error::OutputExists { .. }), "{exists}");
}

#[test]
fn wrong_bytes_fail_the_whole_image_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, id, _) = stored(dir.path());
    let manifest = store.manifest(&id).expect("manifest");
    let out = dir.path().join("out.img");
    let assembly = Assembly::create(&manifest, &out).expect("create");
    // A caller that skipped the check on a chunk's bytes: the image hash catches it.
    let victim = manifest.distinct()[0];
    let mut bad = store.read_chunk(&victim.id).expect("chunk");
    bad[0] ^= 1;
    assembly.place(&victim.id, &bad).expect("place");
    let short = assembly.place(&manifest.distinct()[1].id, b"short");
    assert!(matches!(short, Err(Error::ChunkMismatch { len: 5, .. })), "{short:?}");
    store.fill(&assembly, &HashSet::new()).expect("fill");
    let err = store.complete(&assembly).expect_err("the image hash does not match");
    assert!(matches!(err, Error::CorruptImage { manifest, .. } if manifest == id), "{err}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty());
}
