//! Manifest bytes come from peers and from disk: decoding must never panic, and
//! whatever it accepts must re-encode to exactly the same bytes (one encoding per id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_chunkstore::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
        assert_eq!(m.chunks().iter().map(|c| u64::from(c.len)).sum::<u64>(), m.len());
    }
});
