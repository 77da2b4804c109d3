//! Packed (zstd) chunk frames, as a receiver takes them: decode, unpack into at most
//! the announced length, verify against the id. The first byte picks the input:
//! - a frame body from the wire (`Frame::decode_body`, the path `wire::read` runs);
//! - a packed frame built from the rest: announced length, then zstd bytes;
//! - a chunk packed by the sender's own `pack`, then some of its bytes changed;
//! - a zip bomb (gigabytes of zeros in a few kilobytes, with or without its size in
//!   the header), some of its bytes changed, announced as at most a chunk.
//!
//! Never a panic; a packed frame is never taken as verified before it is unpacked;
//! unpacking allocates (in Rust) at most the announced length, itself at most a chunk,
//! and gives exactly that many bytes or an error; and what unpacks and verifies is the
//! chunk that was packed. Run with `-malloc_limit_mb` to bound zstd's own (C)
//! allocations too.
#![no_main]

use std::io::Write as _;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vw_node::chunks::protocol::{pack, MAX_CHUNK};
use vw_node::chunks::Frame;
use vw_node::chunkstore::ChunkId;

#[path = "../support/metered.rs"]
mod metered;

#[global_allocator]
static ALLOC: metered::Metered = metered::Metered;

/// What unpacking allocates besides the chunk (error messages).
const SLACK: usize = 4096;

/// Two zip bombs, 1 GiB of zeros each: one announcing its size, one not. Written in
/// small pieces so that no large buffer is ever allocated.
fn bombs() -> &'static [Vec<u8>; 2] {
    static BOMBS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    BOMBS.get_or_init(|| {
        let bomb = |sized: bool| {
            let total: u64 = 1 << 30;
            let mut z = zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
            if sized {
                z.set_pledged_src_size(Some(total)).expect("pledge");
            }
            let zeros = [0u8; 64 << 10];
            for _ in 0..total / zeros.len() as u64 {
                z.write_all(&zeros).expect("write");
            }
            z.finish().expect("finish")
        };
        [bomb(true), bomb(false)]
    })
}

/// What a receiver does with a frame: the chunk's bytes if it takes them.
fn receive(frame: Frame) -> Option<Vec<u8>> {
    let Frame::Packed { id, len, .. } = frame else {
        let verified = frame.verified();
        return match frame {
            Frame::Chunk { data, .. } if verified => Some(data),
            _ => None,
        };
    };
    assert!(!frame.verified(), "a packed frame is not verified before it is unpacked");
    let mark = metered::start();
    let unpacked = frame.unpacked();
    let (largest, _) = mark.since();
    assert!(
        largest <= (len as usize).min(MAX_CHUNK).max(SLACK),
        "unpacking {len} bytes allocated {largest}"
    );
    match unpacked {
        Ok(plain @ Frame::Chunk { .. }) => {
            let verified = plain.verified();
            let Frame::Chunk { id: got, data } = plain else { unreachable!() };
            assert_eq!((got, data.len()), (id, len as usize));
            assert!(data.len() <= MAX_CHUNK);
            verified.then_some(data)
        }
        Ok(other) => panic!("a packed frame unpacked to {other:?}"),
        Err(_) => None,
    }
}

/// Up to four byte changes, three bytes each (position, xor), from the front of `rest`.
fn changes(rest: &[u8]) -> (Vec<(usize, u8)>, &[u8]) {
    let Some((&n, rest)) = rest.split_first() else { return (vec![], rest) };
    let n = usize::from(n % 5).min(rest.len() / 3);
    let (head, rest) = rest.split_at(3 * n);
    let list = head
        .chunks(3)
        .map(|c| (usize::from(u16::from_le_bytes([c[0], c[1]])), c[2]))
        .filter(|&(_, x)| x != 0)
        .collect();
    (list, rest)
}

fn apply(data: &mut [u8], changes: &[(usize, u8)]) {
    if data.is_empty() {
        return;
    }
    for &(at, x) in changes {
        let i = at % data.len();
        data[i] ^= x;
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else { return };
    match first % 4 {
        0 => {
            if let Ok(frame) = Frame::decode_body(rest) {
                let again = frame.encode().expect("a frame read is within its limits");
                assert_eq!(&again[4..], rest, "one encoding per frame");
                receive(frame);
            }
        }
        1 => {
            let Some((len, data)) = rest.split_first_chunk::<4>() else { return };
            // Lengths up to twice a chunk, so refused lengths are tried too.
            let len = u32::from_le_bytes(*len) % (2 * MAX_CHUNK as u32 + 1);
            let id = ChunkId::of(data);
            let frame = Frame::Packed { id, len, data: data.to_vec() };
            // Whether the wire would carry it or not, the receiver must cope.
            if let Ok(bytes) = frame.encode() {
                assert_eq!(Frame::decode_body(&bytes[4..]).as_ref(), Ok(&frame));
            }
            receive(frame);
        }
        2 => {
            let (changes, plain) = changes(rest);
            if plain.is_empty() || plain.len() > MAX_CHUNK {
                return;
            }
            let id = ChunkId::of(plain);
            let mut frame = pack(id, plain.to_vec());
            let bytes = frame.encode().expect("what pack makes is within the limits");
            assert_eq!(Frame::decode_body(&bytes[4..]).as_ref(), Ok(&frame));
            if let Frame::Packed { data, .. } = &mut frame {
                apply(data, &changes);
            }
            let changed = !changes.is_empty() && matches!(frame, Frame::Packed { .. });
            match receive(frame) {
                Some(got) => assert_eq!(got, plain, "what verifies is the chunk packed"),
                None => assert!(changed, "an unchanged packed chunk is taken"),
            }
        }
        _ => {
            let Some((&pick, rest)) = rest.split_first() else { return };
            let Some((len, rest)) = rest.split_first_chunk::<4>() else { return };
            let (changes, _) = changes(rest);
            let mut data = bombs()[usize::from(pick & 1)].clone();
            if pick & 2 != 0 {
                // Cut short: the end of the frame is missing.
                data.truncate(data.len() / 2);
            }
            apply(&mut data, &changes);
            let len = u32::from_le_bytes(*len) % (MAX_CHUNK as u32 + 1);
            let frame = Frame::Packed { id: ChunkId::of(b"bomb"), len, data };
            assert!(receive(frame).is_none(), "a bomb is never taken");
        }
    }
});
