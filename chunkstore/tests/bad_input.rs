//! Every bad input the chunk store must refuse with a clear error, leaving nothing
//! half-registered or half-written.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{noise, write_image, Mounted};
use vw_chunkstore::{Error, ImageName, ImageRef, Manifest, Store};
use vw_testkit::{is_root, root_or_skip};

const MIB: u64 = 1 << 20;

fn name(s: &str) -> ImageName {
    s.parse().expect("valid name")
}

fn import_err(store: &Store, path: &Path) -> Error {
    store.import(path, Some(&name("vo/bad:1")), &()).expect_err("import must fail")
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let path = dir.path().join("nope.img");
    let err = import_err(&store, &path);
    assert_eq!(err.to_string(), format!("image file {} does not exist", path.display()));
    assert!(store.images().expect("ls").is_empty());
}

#[test]
fn directory_and_other_non_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let err = import_err(&store, dir.path());
    assert_eq!(
        err.to_string(),
        format!("{} is a directory, not a regular image file", dir.path().display())
    );
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let err = import_err(&store, &fifo);
    assert!(err.to_string().contains("is a named pipe, not a regular image file"), "{err}");
    let err = import_err(&store, Path::new("/dev/null"));
    assert!(err.to_string().contains("is a character device"), "{err}");
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    // A regular file whose reads fail for everyone, root included: offset 0 of our own
    // address space is never mapped.
    let err = import_err(&store, Path::new("/proc/self/mem"));
    assert!(err.to_string().starts_with("cannot read /proc/self/mem: "), "{err}");
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked.img");
        std::fs::write(&locked, b"x").expect("write");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let err = import_err(&store, &locked);
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }
    assert!(store.images().expect("ls").is_empty());
}

#[test]
fn store_locked_by_another_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let _first = Store::open(&path).expect("open");
    let err = Store::open(&path).expect_err("second open");
    assert!(
        matches!(err, Error::StoreLocked { holder: Some(pid), .. } if pid == std::process::id())
    );
    assert!(err.to_string().contains("is in use by another process (pid"), "{err}");
}

#[test]
fn unknown_names_and_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s")).expect("open");
    let err = store.resolve(&ImageRef::Name(name("vo/ghost:1"))).expect_err("unknown");
    assert!(err.to_string().contains("no image named vo/ghost:1"), "{err}");
    let id = "ab".repeat(32).parse().expect("id");
    let err = store.resolve(&ImageRef::Id(id)).expect_err("unknown");
    assert!(err.to_string().contains(&format!("no manifest {}", "ab".repeat(32))), "{err}");
    assert!("vo/Bad Name".parse::<ImageName>().is_err());
}

#[test]
fn truncated_or_foreign_manifest_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    write_image(&img, 4 * MIB, &[(0, 2_000_000, 5)]);
    let store = Store::open(&dir.path().join("s")).expect("open");
    let r = store.import(&img, None, &()).expect("import");
    let bytes = store.manifest(&r.manifest).expect("manifest").encode();
    for cut in [0, 4, 5, 40, bytes.len() - 1] {
        let err = Manifest::decode(&bytes[..cut]).expect_err("truncated");
        assert!(err.to_string().starts_with("invalid manifest: "), "{err}");
    }
    let err = Manifest::decode(b"\x7fELF\x02\x01\x01\0").expect_err("foreign");
    assert_eq!(err.to_string(), "invalid manifest: not a vw manifest (bad magic)");
}

/// Flips a byte inside the first chunk stored in the first pack.
fn corrupt_first_chunk(store_dir: &Path) {
    let pack = store_dir.join("packs/00000001.pack");
    let f = OpenOptions::new().read(true).write(true).open(&pack).expect("open pack");
    let at = 16 + 36 + 100;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0xff], at).expect("write");
}

#[test]
fn corrupt_chunk_is_found_on_read_and_by_verify_and_repaired_by_reimport() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    write_image(&img, 8 * MIB, &[(0, 3_000_000, 6)]);
    let store_dir = dir.path().join("s");
    let store = Store::open(&store_dir).expect("open");
    let r = store.import(&img, Some(&name("vo/a:1")), &()).expect("import");
    let manifest = store.manifest(&r.manifest).expect("manifest");
    let first = manifest.chunks()[0].id;
    corrupt_first_chunk(&store_dir);

    let err = store.read_chunk(&first).expect_err("corrupt read");
    assert!(matches!(err, Error::CorruptChunk { id, .. } if id == first), "{err}");
    assert!(err.to_string().contains(&first.to_hex()), "the error names the chunk: {err}");

    let out = dir.path().join("out.img");
    let err = store.export(&r.manifest, &out, false, &()).expect_err("corrupt export");
    assert!(matches!(&err, Error::CorruptImage { chunks, .. } if chunks == &vec![first]), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 2, "no temp file left");

    let v = store.verify(None, &()).expect("verify");
    assert_eq!(v.corrupt, vec![first]);
    let missing = store.missing(&manifest).expect("missing");
    assert_eq!(missing.chunks.iter().map(|c| c.id).collect::<Vec<_>>(), vec![first]);

    let again = store.import(&img, None, &()).expect("re-import");
    assert_eq!(again.counts.new_chunks, 1, "the corrupt chunk is written again");
    store.export(&r.manifest, &out, false, &()).expect("export after repair");
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(&img).expect("read"));
    assert!(store.verify(Some(&r.manifest), &()).expect("verify").is_clean());
}

#[test]
fn disk_full_during_import_and_export() {
    if !root_or_skip("disk_full_during_import_and_export", "mount a tmpfs") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let big = work.path().join("big.img");
    std::fs::write(&big, noise(64 << 20, 7)).expect("write big image");

    // Import into a store on a 40 MiB file system.
    let fs = Mounted::tmpfs("40m");
    let store_dir = fs.path.join("store");
    {
        let store = Store::open(&store_dir).expect("open on tmpfs");
        let err = store.import(&big, Some(&name("vo/big:1")), &()).expect_err("disk full");
        assert!(
            err.to_string().contains("no space left") || err.to_string().contains("No space left"),
            "{err}"
        );
        assert!(store.images().expect("ls").is_empty(), "nothing registered");
        assert!(store.resolve(&ImageRef::Name(name("vo/big:1"))).is_err());
    }
    // Reopened, the store is consistent and gc gives the orphaned pack bytes back.
    let store = Store::open(&store_dir).expect("reopen");
    assert!(store.images().expect("ls").is_empty());
    let gc = store.gc().expect("gc");
    assert!(gc.disk_bytes_reclaimed > 0, "{gc:?}");
    let small = work.path().join("small.img");
    write_image(&small, 4 * MIB, &[(0, 2_000_000, 8)]);
    store.import(&small, Some(&name("vo/small:1")), &()).expect("import after gc");
    drop(store);

    // Export onto a 4 MiB file system of an image with 16 MB of data.
    let src = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&src.path().join("s")).expect("open");
    let img = work.path().join("data.img");
    write_image(&img, 24 * MIB, &[(0, 16_000_000, 9)]);
    let r = store.import(&img, None, &()).expect("import");
    let out_fs = Mounted::tmpfs("4m");
    let out = out_fs.path.join("out.img");
    let err = store.export(&r.manifest, &out, false, &()).expect_err("disk full");
    assert_eq!(
        err.to_string(),
        format!("no space left on the device while writing {}; free space or choose another location (nothing was registered and no partial file is left)", out.display())
    );
    assert_eq!(
        std::fs::read_dir(&out_fs.path).expect("ls").count(),
        0,
        "no partial file, not even a temp"
    );
}
