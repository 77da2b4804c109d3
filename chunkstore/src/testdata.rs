//! Deterministic test data for tests, benchmarks and `vw demo`.
//!
//! The golden cut points in `chunker` are computed on [`noise`]: changing it means
//! re-pinning them (and checking they still equal fastcdc's own iterator).

/// `len` pseudo-random bytes (xorshift64). Distinct seeds give distinct bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_do_not_collide_and_lengths_are_exact() {
        assert_ne!(super::noise(64, 12), super::noise(64, 13));
        assert_eq!(super::noise(13, 1).len(), 13);
        assert_eq!(super::noise(16, 5)[..8], super::noise(8, 5)[..]);
    }
}
