//! Seals and tickets come from the network, inside stage orders: any bytes must
//! decode within the limits or stop with an error, never panic; whatever decodes must
//! re-encode to exactly the same bytes (one encoding per statement), and no key but
//! the signer's verifies it. The first byte picks the envelope.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vw_node::access::Ticket;
use vw_node::chunkstore::{Seal, VoKey, VoPublic};

/// A key the fuzzer never saw: nothing it builds can verify with it.
fn stranger() -> &'static VoPublic {
    static KEY: OnceLock<VoPublic> = OnceLock::new();
    KEY.get_or_init(|| VoKey::generate("fuzz").expect("key").public())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    if first & 1 == 0 {
        if let Ok(seal) = Seal::decode(bytes) {
            assert_eq!(seal.encode(), bytes);
            assert!(seal.verify(stranger()).is_err());
        }
    } else if let Ok(ticket) = Ticket::decode(bytes) {
        assert_eq!(ticket.encode(), bytes);
        assert!(!ticket.verify(stranger()));
    }
});
