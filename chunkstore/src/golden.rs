//! Golden bytes of every format the store writes: each RocksDB record family, the pack
//! file, VO key files and seals (`vw_testkit::golden`; the files are in
//! `chunkstore/tests/golden/`, named by format and version). The manifest's own golden
//! test is in `manifest.rs`.

use std::path::PathBuf;

use crate::db::{ChunkRecord, CorruptRecord, NameRecord, PinRecord, UsageRecord};
use crate::pack::{Loc, Packs};
use crate::{record, ChunkId, ImageName, ManifestId, Seal, Visibility, VoKey};

fn dir() -> PathBuf {
    vw_testkit::source_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden(name: &str, bytes: &[u8]) {
    vw_testkit::golden(&dir(), name, bytes);
}

const MS: u64 = 1_800_000_000_123;

fn key() -> VoKey {
    VoKey::from_seed("grid3", [7; 32]).expect("key")
}

fn seal() -> Seal {
    let name: ImageName = "grid3/worker:1".parse().expect("name");
    Seal::sign(&key(), &name, ManifestId::from_bytes([9; 32]), Visibility::Private).expect("seal")
}

/// Each family's value, as `db.rs` writes it (version byte, then postcard).
#[test]
fn store_records() {
    let loc = Loc { pack: 3, offset: 4096, len: 65_536 };
    golden(
        &format!("chunk_record-v{}", crate::db::CHUNK_RECORD_V),
        &record::encode(crate::db::CHUNK_RECORD_V, &ChunkRecord { loc, added_ms: MS }),
    );
    golden(
        &format!("corrupt_record-v{}", crate::db::CORRUPT_RECORD_V),
        &record::encode(crate::db::CORRUPT_RECORD_V, &CorruptRecord { since_ms: MS }),
    );
    let name = NameRecord { manifest: ManifestId::from_bytes([9; 32]), created_ms: MS };
    golden(
        &format!("name_record-v{}", crate::db::NAME_RECORD_V),
        &record::encode(crate::db::NAME_RECORD_V, &name),
    );
    golden(
        &format!("pin_record-v{}", crate::db::PIN_RECORD_V),
        &record::encode(crate::db::PIN_RECORD_V, &PinRecord { since_ms: MS }),
    );
    let usage = UsageRecord { imported_ms: MS, last_used_ms: MS + 1 };
    golden(
        &format!("usage_record-v{}", crate::db::USAGE_RECORD_V),
        &record::encode(crate::db::USAGE_RECORD_V, &usage),
    );
    // The one meta entry: the cache's capacity (none set, then 10 GiB).
    let meta: Vec<u8> = [None, Some(10u64 << 30)]
        .iter()
        .flat_map(|c| record::encode(crate::db::META_V, c))
        .collect();
    golden(&format!("meta_capacity-v{}", crate::db::META_V), &meta);
    golden(
        &format!("seal_record-v{}", crate::db::SEAL_RECORD_V),
        &record::encode(crate::db::SEAL_RECORD_V, &seal().encode()),
    );
}

/// A pack file: its header, then one record (length, id, bytes).
#[test]
fn pack_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let packs = Packs::open(tmp.path()).expect("packs");
    let mut writer = packs.create_writer().expect("writer");
    let data = b"a chunk's bytes";
    writer.append(&ChunkId::of(data), data).expect("append");
    writer.sync().expect("sync");
    let bytes = std::fs::read(crate::pack::pack_path(tmp.path(), writer.number())).expect("read");
    golden(&format!("pack-v{}", crate::pack::VERSION), &bytes);
}

/// A VO key file and a seal.
#[test]
fn vo_key_file_and_seal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("grid3.key");
    key().save(&path).expect("save");
    golden(&format!("vo_key-v{}", crate::vo::KEY_VERSION), &std::fs::read(&path).expect("read"));
    golden(&format!("seal-v{}", crate::vo::SEAL_VERSION), &seal().encode());
}

/// A boot trace (Ed25519 signatures are deterministic: the same key, the same bytes).
#[test]
fn boot_trace() {
    let chunks = vec![ChunkId::from_bytes([4; 32]), ChunkId::from_bytes([2; 32])];
    let trace = crate::BootTrace::sign(&key(), ManifestId::from_bytes([9; 32]), chunks);
    golden(&format!("boot_trace-v{}", crate::trace::VERSION), &trace.expect("trace").encode());
}
