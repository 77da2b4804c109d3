//! `/vw/chunks/1` frames come from the network: any bytes, in any pieces, must decode
//! to frames within the limits or stop with an error, never panic or grow unbounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_node::chunks::protocol::{FrameDecoder, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let mut d = FrameDecoder::default();
    for piece in bytes.chunks(usize::from(cut).max(1)) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    // Whatever decodes re-encodes to a frame that decodes the same.
                    let again = frame.encode().expect("a decoded frame is within limits");
                    let mut e = FrameDecoder::default();
                    e.push(&again);
                    assert_eq!(e.next_frame().expect("re-decodes"), Some(frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.pending() <= 4 + MAX_FRAME + piece.len());
    }
});
