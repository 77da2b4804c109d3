//! All-zero chunks: never stored or sent, written as holes.
//!
//! A zero chunk keeps its ordinary id (BLAKE3 of its zero bytes) so manifests stay a
//! plain `(ChunkId, len)` list; [`zero_id`] memoises that id per length, so telling a
//! zero chunk from a stored one costs a map lookup, not a hash.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{ChunkId, ChunkRef};

/// Zeros to hash or compare against; as long as the largest chunk fastcdc allows.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

thread_local! {
    static IDS: RefCell<HashMap<u32, ChunkId>> = RefCell::new(HashMap::new());
}

/// The id of `len` zero bytes.
pub fn zero_id(len: u32) -> ChunkId {
    IDS.with(|ids| {
        *ids.borrow_mut().entry(len).or_insert_with(|| {
            let mut h = blake3::Hasher::new();
            let mut left = len as usize;
            while left > 0 {
                let n = left.min(ZEROS.len());
                h.update(&ZEROS[..n]);
                left -= n;
            }
            h.finalize().into()
        })
    })
}

/// True if the chunk is all zeros.
pub fn is_zero_ref(c: &ChunkRef) -> bool {
    c.id == zero_id(c.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_id_is_the_hash_of_zeros() {
        assert_eq!(zero_id(4096), ChunkId::of(&[0u8; 4096]));
        assert!(is_zero_ref(&ChunkRef { id: ChunkId::of(&[0u8; 10]), len: 10 }));
        assert!(!is_zero_ref(&ChunkRef { id: ChunkId::of(&[1u8; 10]), len: 10 }));
    }
}
