//! Image names and ids come from the command line and from workspace documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_chunkstore::ImageRef;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = s.parse::<ImageRef>() {
            // What parses prints back to something that parses to the same reference.
            assert_eq!(r.to_string().parse::<ImageRef>().ok(), Some(r));
        }
    }
});
