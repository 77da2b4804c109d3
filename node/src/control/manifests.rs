//! Manifests a head sends a host before it names them in an inventory or a stage order
//! (docs/protocol.md, "Manifests"). Each arrives once, in pieces; the whole is checked
//! against its id and decoded with the manifest's own limits before anything uses it,
//! then kept in memory until a stage records it in the store or it goes unused for
//! [`IDLE`]. A manifest the store already records is never sent again.
//!
//! Memory is bounded: what is held, whole or in part, is at most [`BUDGET`] bytes of
//! encoding, reserved when a manifest's first piece comes (least recently used whole
//! manifests make room; a manifest that still does not fit is refused).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vw_chunkstore::{Manifest, ManifestId};

use super::protocol::ManifestPiece;

/// Most bytes of manifests held at once: two of the largest a host takes.
pub const BUDGET: u64 = 2 * vw_chunkstore::MAX_MANIFEST_LEN as u64;
/// A manifest unused this long is dropped (the head sends it again if it names it).
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// Manifests received from the head (see the module docs).
#[derive(Debug)]
pub struct Received {
    entries: Mutex<HashMap<ManifestId, Entry>>,
    budget: u64,
}

#[derive(Debug)]
struct Entry {
    /// Length of its encoding.
    len: u64,
    used: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    /// The bytes so far, in order.
    Partial(Vec<u8>),
    /// Checked against its id and decoded.
    Whole(Arc<Manifest>),
}

impl Default for Received {
    fn default() -> Self {
        Received::with_budget(BUDGET)
    }
}

impl Received {
    /// Holding at most `budget` bytes of manifests.
    pub fn with_budget(budget: u64) -> Self {
        Received { entries: Mutex::default(), budget }
    }

    /// The manifest `id`, if it arrived whole; used at `now`.
    pub fn get(&self, id: &ManifestId, now: Instant) -> Option<Arc<Manifest>> {
        let mut entries = self.entries.lock().expect("received manifests lock");
        let entry = entries.get_mut(id)?;
        match &entry.state {
            State::Whole(m) => {
                entry.used = now;
                Some(Arc::clone(m))
            }
            State::Partial(_) => None,
        }
    }

    /// Whether any of manifest `id` is here.
    pub fn knows(&self, id: &ManifestId) -> bool {
        self.entries.lock().expect("received manifests lock").contains_key(id)
    }

    /// Drops `ids` (a stage recorded them in the store).
    pub fn forget(&self, ids: &[ManifestId]) {
        let mut entries = self.entries.lock().expect("received manifests lock");
        for id in ids {
            entries.remove(id);
        }
    }

    /// Takes `piece` at `now`; returns how many bytes of its manifest are held: its
    /// whole length once the last piece is in, the whole hashes to the id and decodes.
    /// A piece that does not start where the held bytes end is not taken (the answer
    /// says where to go on from); an empty one only asks. A whole that does not hash
    /// to its id, or does not decode, is dropped and refused, naming the manifest.
    pub fn put(&self, piece: ManifestPiece, now: Instant) -> Result<u64, String> {
        let ManifestPiece { id, len, offset, bytes } = piece;
        let mut entries = self.entries.lock().expect("received manifests lock");
        entries.retain(|_, e| now.saturating_duration_since(e.used) < IDLE);
        if !entries.contains_key(&id) {
            if offset != 0 || bytes.is_empty() {
                return Ok(0);
            }
            make_room(&mut entries, self.budget, id, len)?;
            let held = Vec::with_capacity(usize::try_from(len).map_err(|e| e.to_string())?);
            entries.insert(id, Entry { len, used: now, state: State::Partial(held) });
        }
        let entry = entries.get_mut(&id).expect("present");
        entry.used = now;
        if entry.len != len {
            return Err(format!(
                "manifest {id} came as {} bytes, and this piece says {len}",
                entry.len
            ));
        }
        let State::Partial(held) = &mut entry.state else { return Ok(len) };
        if offset != held.len() as u64 {
            return Ok(held.len() as u64);
        }
        held.extend_from_slice(&bytes);
        if (held.len() as u64) < len {
            return Ok(held.len() as u64);
        }
        let whole = std::mem::take(held);
        let hashed = ManifestId::from(blake3::hash(&whole));
        let checked = if hashed != id {
            Err(format!("the {len} bytes sent as manifest {id} hash to {hashed}"))
        } else {
            Manifest::decode(&whole).map_err(|e| format!("manifest {id}: {e}"))
        };
        match checked {
            Ok(m) => {
                entry.state = State::Whole(Arc::new(m));
                Ok(len)
            }
            Err(why) => {
                entries.remove(&id);
                Err(why)
            }
        }
    }
}

/// Makes room for `len` more bytes within `budget`, dropping whole manifests least
/// recently used first; refuses manifest `id` if that is not enough.
fn make_room(
    entries: &mut HashMap<ManifestId, Entry>,
    budget: u64,
    id: ManifestId,
    len: u64,
) -> Result<(), String> {
    let held = |entries: &HashMap<ManifestId, Entry>| entries.values().map(|e| e.len).sum::<u64>();
    while held(entries) + len > budget {
        let oldest = entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Whole(_)))
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| *k);
        let Some(oldest) = oldest else {
            return Err(format!(
                "manifest {id} of {len} bytes does not fit: this host holds {} bytes of \
                 manifests still arriving (at most {budget})",
                held(entries)
            ));
        };
        entries.remove(&oldest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vw_chunkstore::chunker::ChunkerParams;
    use vw_chunkstore::{ChunkId, ChunkRef};

    use super::*;

    fn manifest(seed: u8, chunks: u8) -> Manifest {
        let params = ChunkerParams::DEFAULT;
        let refs: Vec<ChunkRef> = (0..chunks)
            .map(|i| ChunkRef { id: ChunkId::of(&[seed, i]), len: params.max })
            .collect();
        let len = u64::from(chunks) * u64::from(params.max);
        Manifest::new(params, len, blake3::hash(&[seed]), refs).expect("manifest")
    }

    fn piece(m: &Manifest, bytes: &[u8], offset: usize, n: usize) -> ManifestPiece {
        ManifestPiece {
            id: m.id(),
            len: bytes.len() as u64,
            offset: offset as u64,
            bytes: bytes[offset..offset + n].to_vec(),
        }
    }

    /// Pieces in order make the manifest; one out of place is not taken, and the
    /// answer says where to go on from; an empty piece only asks.
    #[test]
    fn pieces_in_order_make_a_checked_manifest() {
        let received = Received::default();
        let m = manifest(1, 40);
        let bytes = m.encode();
        let now = Instant::now();
        assert_eq!(received.put(piece(&m, &bytes, 0, 0), now), Ok(0), "a question");
        assert!(!received.knows(&m.id()), "a question reserves nothing");
        assert_eq!(received.put(piece(&m, &bytes, 0, 500), now), Ok(500));
        assert_eq!(received.put(piece(&m, &bytes, 700, 100), now), Ok(500), "out of place");
        assert_eq!(received.get(&m.id(), now), None, "not whole yet");
        let rest = bytes.len() - 500;
        assert_eq!(received.put(piece(&m, &bytes, 500, rest), now), Ok(bytes.len() as u64));
        assert_eq!(received.get(&m.id(), now).as_deref(), Some(&m));
        assert_eq!(received.put(piece(&m, &bytes, 0, 0), now), Ok(bytes.len() as u64));
        received.forget(&[m.id()]);
        assert!(!received.knows(&m.id()));
    }

    /// Bytes that do not hash to the id they came as are refused whole, and nothing of
    /// them is kept; so is a length that changes between pieces.
    #[test]
    fn a_manifest_that_is_not_its_id_is_refused() {
        let received = Received::default();
        let (m, other) = (manifest(1, 4), manifest(2, 4));
        let mut bytes = m.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = received.put(piece(&m, &bytes, 0, bytes.len()), Instant::now());
        let err = err.expect_err("tampered");
        assert!(err.contains(&m.id().to_string()) && err.contains("hash to"), "{err}");
        assert!(!received.knows(&m.id()));

        let good = other.encode();
        received.put(piece(&other, &good, 0, 10), Instant::now()).expect("first piece");
        let mut longer = piece(&other, &good, 10, 10);
        longer.len += 1;
        let err = received.put(longer, Instant::now()).expect_err("length changed");
        assert!(err.contains("came as"), "{err}");
    }

    /// What is held stays within the budget: whole manifests least recently used make
    /// room, one still arriving does not, and an idle one is dropped.
    #[test]
    fn the_budget_holds_and_idle_manifests_go() {
        let (a, b, c) = (manifest(1, 30), manifest(2, 30), manifest(3, 30));
        let len = a.encode().len() as u64;
        let received = Received::with_budget(2 * len);
        let now = Instant::now();
        let whole = |m: &Manifest, at| {
            let bytes = m.encode();
            received.put(piece(m, &bytes, 0, bytes.len()), at)
        };
        whole(&a, now).expect("a");
        whole(&b, now + Duration::from_secs(1)).expect("b");
        received.get(&a.id(), now + Duration::from_secs(2)).expect("a is used after b");
        whole(&c, now + Duration::from_secs(3)).expect("c");
        assert!(received.knows(&a.id()) && !received.knows(&b.id()) && received.knows(&c.id()));

        // Two manifests arriving fill the budget: a third does not fit.
        let received = Received::with_budget(2 * len);
        let first = |m: &Manifest| {
            let bytes = m.encode();
            received.put(piece(m, &bytes, 0, 10), now)
        };
        first(&a).expect("a");
        first(&b).expect("b");
        let err = first(&c).expect_err("no room");
        assert!(err.contains("does not fit") && err.contains(&c.id().to_string()), "{err}");
        // Half an hour later both are idle and dropped: c fits.
        let later = now + IDLE;
        let bytes = c.encode();
        assert_eq!(received.put(piece(&c, &bytes, 0, 10), later), Ok(10));
        assert!(!received.knows(&a.id()) && !received.knows(&b.id()));
    }
}
