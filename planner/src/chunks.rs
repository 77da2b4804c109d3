//! What the planner knows of images: each is an ordered list of chunk sizes (the
//! manifest, minus ids: the caller maps chunk ids to indices), and a host's holdings or
//! needs are [`Ranges`] of chunk indices. Ranges keep plans small: a cold host lacks one
//! range per image, a host with the base OS cached a few dozen.

use serde::{Deserialize, Serialize};

/// One image as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Its name, for messages and output (`grid3/worker:1.0`).
    pub name: String,
    /// Sizes of its non-zero chunks, in manifest order.
    sizes: Vec<u32>,
    /// `offsets[i]` = bytes before chunk `i`; one more entry than `sizes`.
    offsets: Vec<u64>,
}

impl Image {
    /// An image of chunks of `sizes` bytes.
    pub fn new(name: impl Into<String>, sizes: Vec<u32>) -> Self {
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        let mut total = 0u64;
        offsets.push(0);
        for &s in &sizes {
            total += u64::from(s);
            offsets.push(total);
        }
        Image { name: name.into(), sizes, offsets }
    }

    /// Sizes of its chunks, in order.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        self.sizes.len() as u32
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.offsets[self.sizes.len()]
    }

    /// Bytes of `r`.
    pub fn bytes_of(&self, r: &Ranges) -> u64 {
        r.0.iter().map(|&(a, b)| self.offsets[b as usize] - self.offsets[a as usize]).sum()
    }

    /// Mean chunk size (the pipelining granularity), at least 1.
    pub fn mean_chunk(&self) -> u64 {
        (self.bytes() / u64::from(self.chunks().max(1))).max(1)
    }

    /// Every chunk.
    pub fn all(&self) -> Ranges {
        Ranges::span(0, self.chunks())
    }

    /// Splits the image into blocks of about `block` bytes (whole chunks): the units
    /// stripes are dealt out in.
    pub fn blocks(&self, block: u64) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut start = 0u32;
        while start < self.chunks() {
            let limit = self.offsets[start as usize] + block.max(1);
            let mut end = start + 1;
            while end < self.chunks() && self.offsets[end as usize + 1] <= limit {
                end += 1;
            }
            out.push((start, end));
            start = end;
        }
        out
    }
}

/// A set of chunk indices as sorted, disjoint, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    /// No chunks.
    pub fn empty() -> Self {
        Ranges(Vec::new())
    }

    /// Chunks `start..end`.
    pub fn span(start: u32, end: u32) -> Self {
        if start < end {
            Ranges(vec![(start, end)])
        } else {
            Ranges::empty()
        }
    }

    /// From any ranges (sorted and merged here).
    pub fn from_ranges(mut v: Vec<(u32, u32)>) -> Self {
        v.retain(|(a, b)| a < b);
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Ranges(out)
    }

    /// From chunk indices (any order, duplicates allowed).
    pub fn from_indices(indices: impl IntoIterator<Item = u32>) -> Self {
        Self::from_ranges(indices.into_iter().map(|i| (i, i + 1)).collect())
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// Whether there are no chunks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of chunks.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(a, b)| u64::from(b - a)).sum()
    }

    /// Whether chunk `i` is in the set.
    pub fn contains(&self, i: u32) -> bool {
        let at = self.0.partition_point(|&(_, b)| b <= i);
        self.0.get(at).is_some_and(|&(a, _)| a <= i)
    }

    /// Chunks in both.
    pub fn intersect(&self, other: &Ranges) -> Ranges {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = self.0[i];
            let (c, d) = other.0[j];
            let (lo, hi) = (a.max(c), b.min(d));
            if lo < hi {
                out.push((lo, hi));
            }
            if b < d {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges(out)
    }

    /// Chunks in `self` but not in `other`.
    pub fn minus(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.0 {
            let mut start = a;
            while j < other.0.len() && other.0[j].1 <= start {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k].0 < b {
                let (c, d) = other.0[k];
                if c > start {
                    out.push((start, c));
                }
                start = start.max(d);
                k += 1;
            }
            if start < b {
                out.push((start, b));
            }
        }
        Ranges(out)
    }

    /// Chunks in either (a linear merge).
    pub fn union(&self, other: &Ranges) -> Ranges {
        if other.0.is_empty() {
            return self.clone();
        }
        if self.0.is_empty() {
            return other.clone();
        }
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            let next = if j >= other.0.len() || (i < self.0.len() && self.0[i].0 <= other.0[j].0) {
                i += 1;
                self.0[i - 1]
            } else {
                j += 1;
                other.0[j - 1]
            };
            match out.last_mut() {
                Some(last) if next.0 <= last.1 => last.1 = last.1.max(next.1),
                _ => out.push(next),
            }
        }
        Ranges(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(r: &Ranges, n: u32) -> Vec<bool> {
        (0..n).map(|i| r.contains(i)).collect()
    }

    proptest! {
        /// The range operations agree with the same operations on plain bit vectors.
        #[test]
        fn ranges_match_sets(a in proptest::collection::vec(0u32..64, 0..40), b in proptest::collection::vec(0u32..64, 0..40)) {
            let (ra, rb) = (Ranges::from_indices(a.clone()), Ranges::from_indices(b.clone()));
            let (sa, sb) = (set(&ra, 64), set(&rb, 64));
            let both: Vec<bool> = sa.iter().zip(&sb).map(|(x, y)| *x && *y).collect();
            let only: Vec<bool> = sa.iter().zip(&sb).map(|(x, y)| *x && !*y).collect();
            let any: Vec<bool> = sa.iter().zip(&sb).map(|(x, y)| *x || *y).collect();
            prop_assert_eq!(set(&ra.intersect(&rb), 64), both);
            prop_assert_eq!(set(&ra.minus(&rb), 64), only);
            prop_assert_eq!(set(&ra.union(&rb), 64), any);
            prop_assert_eq!(ra.count() as usize, sa.iter().filter(|x| **x).count());
            // Canonical: merging is stable.
            prop_assert_eq!(Ranges::from_ranges(ra.ranges().to_vec()), ra);
        }
    }

    #[test]
    fn images_count_bytes_and_cut_blocks() {
        let img = Image::new("x", vec![10, 20, 30, 40]);
        assert_eq!(img.bytes(), 100);
        assert_eq!(img.bytes_of(&Ranges::span(1, 3)), 50);
        assert_eq!(img.blocks(35), vec![(0, 2), (2, 3), (3, 4)]);
        assert_eq!(img.mean_chunk(), 25);
    }
}
