//! Cache policy: which manifests and chunks to drop, decided without I/O.
//!
//! The store gives a [`CacheView`] (every chunk with its size and arrival time, every
//! manifest with its distinct chunks, last use and pins) and gets back a [`Plan`] that it
//! applies in one atomic batch. The rules:
//! - a pinned manifest is never dropped, so its chunks are never dropped;
//! - a chunk is dropped only when no manifest that remains lists it;
//! - chunks no manifest lists (left by `image rm`, or fetched for a staging that never
//!   finished) go first, oldest arrival first;
//! - then unpinned manifests, least recently used first; dropping one frees the chunks
//!   that only it listed.
//!
//! "Used" is the bytes of stored chunks (zero chunks are never stored).

use std::collections::HashMap;

use serde::Serialize;

use crate::{ChunkId, ManifestId};

/// A stored chunk as the policy sees it.
#[derive(Clone, Debug)]
pub struct ChunkEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Its size.
    pub len: u32,
    /// When it was stored (ms since the epoch).
    pub added_ms: u64,
}

/// A stored manifest as the policy sees it.
#[derive(Clone, Debug)]
pub struct ManifestEntry {
    /// The manifest.
    pub id: ManifestId,
    /// Its distinct non-zero chunks.
    pub chunks: Vec<ChunkId>,
    /// When it was last imported, exported or staged (ms since the epoch).
    pub last_used_ms: u64,
    /// Whether any pin holds it.
    pub pinned: bool,
}

/// Everything the policy decides from.
#[derive(Clone, Debug, Default)]
pub struct CacheView {
    /// The capacity in bytes of stored chunks, if limited.
    pub capacity: Option<u64>,
    /// Every stored chunk.
    pub chunks: Vec<ChunkEntry>,
    /// Every stored manifest.
    pub manifests: Vec<ManifestEntry>,
}

/// How much to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only what is needed to fit the capacity (after an import).
    FitCapacity,
    /// Every chunk no manifest lists, then what is needed to fit the capacity (`vw gc`).
    Collect,
}

/// What to drop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Manifests to drop, with the names pointing at them.
    pub manifests: Vec<ManifestId>,
    /// Chunks to drop.
    pub chunks: Vec<ChunkId>,
    /// Bytes the dropped chunks held.
    pub freed_bytes: u64,
    /// Bytes stored after the plan.
    pub used_after: u64,
    /// Bytes still over the capacity because everything left is pinned.
    pub over_capacity: u64,
}

impl Plan {
    /// True if the plan drops nothing.
    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty() && self.chunks.is_empty()
    }
}

/// Decides what to drop.
pub fn plan(view: &CacheView, mode: Mode) -> Plan {
    let sizes: HashMap<ChunkId, u32> = view.chunks.iter().map(|c| (c.id, c.len)).collect();
    let mut refs: HashMap<ChunkId, u32> = HashMap::new();
    for m in &view.manifests {
        for id in &m.chunks {
            *refs.entry(*id).or_default() += 1;
        }
    }
    let mut used: u64 = view.chunks.iter().map(|c| u64::from(c.len)).sum();
    let cap = view.capacity.unwrap_or(u64::MAX);
    let mut out = Plan::default();

    let mut loose: Vec<&ChunkEntry> =
        view.chunks.iter().filter(|c| !refs.contains_key(&c.id)).collect();
    loose.sort_by_key(|c| (c.added_ms, c.id));
    for c in loose {
        if mode == Mode::FitCapacity && used <= cap {
            break;
        }
        out.chunks.push(c.id);
        used -= u64::from(c.len);
        out.freed_bytes += u64::from(c.len);
    }

    let mut victims: Vec<&ManifestEntry> = view.manifests.iter().filter(|m| !m.pinned).collect();
    victims.sort_by_key(|m| (m.last_used_ms, m.id));
    for m in victims {
        if used <= cap {
            break;
        }
        out.manifests.push(m.id);
        for id in &m.chunks {
            let count = refs.get_mut(id).expect("counted above");
            *count -= 1;
            if *count == 0 {
                if let Some(&len) = sizes.get(id) {
                    out.chunks.push(*id);
                    used -= u64::from(len);
                    out.freed_bytes += u64::from(len);
                }
            }
        }
    }
    out.used_after = used;
    out.over_capacity = used.saturating_sub(cap);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn cid(i: u8) -> ChunkId {
        ChunkId::of(&[i])
    }

    fn mid(i: u8) -> ManifestId {
        ManifestId::from(blake3::hash(&[i]))
    }

    fn view_strategy() -> impl Strategy<Value = CacheView> {
        let chunks = proptest::collection::vec((1u32..1000, 0u64..100), 1..40);
        (
            chunks,
            proptest::collection::vec(
                (proptest::collection::vec(0usize..40, 0..10), 0u64..100, any::<bool>()),
                0..8,
            ),
            proptest::option::of(0u64..20_000),
        )
            .prop_map(|(chunks, manifests, capacity)| {
                let chunks: Vec<ChunkEntry> = chunks
                    .into_iter()
                    .enumerate()
                    .map(|(i, (len, added_ms))| ChunkEntry { id: cid(i as u8), len, added_ms })
                    .collect();
                let n = chunks.len();
                let manifests = manifests
                    .into_iter()
                    .enumerate()
                    .map(|(i, (picks, last_used_ms, pinned))| {
                        let mut ids: Vec<ChunkId> =
                            picks.into_iter().map(|p| chunks[p % n].id).collect();
                        ids.sort();
                        ids.dedup();
                        ManifestEntry { id: mid(i as u8), chunks: ids, last_used_ms, pinned }
                    })
                    .collect();
                CacheView { capacity, chunks, manifests }
            })
    }

    proptest! {
        #[test]
        fn invariants(view in view_strategy(), collect in any::<bool>()) {
            let mode = if collect { Mode::Collect } else { Mode::FitCapacity };
            let p = plan(&view, mode);
            let dropped_m: HashSet<ManifestId> = p.manifests.iter().copied().collect();
            let dropped_c: HashSet<ChunkId> = p.chunks.iter().copied().collect();
            for m in &view.manifests {
                if m.pinned {
                    prop_assert!(!dropped_m.contains(&m.id), "a pinned manifest was dropped");
                }
                if !dropped_m.contains(&m.id) {
                    for c in &m.chunks {
                        prop_assert!(!dropped_c.contains(c), "a kept manifest lost a chunk");
                    }
                }
            }
            let total: u64 = view.chunks.iter().map(|c| u64::from(c.len)).sum();
            prop_assert_eq!(p.used_after + p.freed_bytes, total);
            if let Some(cap) = view.capacity {
                // Over capacity only if everything unpinned is gone.
                if p.used_after > cap {
                    prop_assert!(view.manifests.iter().all(|m| m.pinned || dropped_m.contains(&m.id)));
                }
            }
            if mode == Mode::Collect {
                let listed: HashSet<ChunkId> = view.manifests.iter().flat_map(|m| m.chunks.clone()).collect();
                for c in &view.chunks {
                    if !listed.contains(&c.id) {
                        prop_assert!(dropped_c.contains(&c.id), "collect left an unlisted chunk");
                    }
                }
            }
        }
    }

    #[test]
    fn least_recently_used_unpinned_manifest_goes_first() {
        let chunks = (0..4).map(|i| ChunkEntry { id: cid(i), len: 100, added_ms: 0 }).collect();
        let m = |i: u8, c: Vec<u8>, used: u64, pinned| ManifestEntry {
            id: mid(i),
            chunks: c.into_iter().map(cid).collect(),
            last_used_ms: used,
            pinned,
        };
        let view = CacheView {
            capacity: Some(300),
            chunks,
            manifests: vec![
                m(0, vec![0, 1], 5, true),
                m(1, vec![1, 2], 1, false),
                m(2, vec![3], 9, false),
            ],
        };
        let p = plan(&view, Mode::FitCapacity);
        assert_eq!(p.manifests, vec![mid(1)]);
        assert_eq!(p.chunks, vec![cid(2)], "chunk 1 is still listed by the pinned manifest");
        assert_eq!(p.used_after, 300);
        // Below 300 the next victim (manifest 2) goes too and frees chunk 3.
        let view2 = CacheView { capacity: Some(250), ..view };
        let p = plan(&view2, Mode::FitCapacity);
        assert_eq!(p.manifests, vec![mid(1), mid(2)]);
        assert_eq!(p.used_after, 200);
    }
}
