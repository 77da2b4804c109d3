//! `/vw/control/1` messages come from the network: any bytes, in any pieces, must decode
//! to requests and replies within the limits or stop with an error, never panic or grow
//! unbounded. The first byte picks the direction and the piece size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_node::control::protocol::{Reply, MAX_MESSAGE};
use vw_node::control::Request;
use vw_node::wire::{encode, Decoder, Message};

fn run<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8], cut: usize) {
    let mut d = Decoder::<M>::default();
    for piece in bytes.chunks(cut) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(m)) => {
                    // Whatever decodes re-encodes to a message that decodes the same.
                    let again = encode(&m).expect("a decoded message is within limits");
                    let mut e = Decoder::<M>::default();
                    e.push(&again);
                    assert_eq!(e.next_frame().expect("re-decodes"), Some(m));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.pending() <= 4 + MAX_MESSAGE + piece.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let cut = usize::from(first >> 1).max(1);
    if first & 1 == 0 {
        run::<Request>(bytes, cut);
    } else {
        run::<Reply>(bytes, cut);
    }
});
