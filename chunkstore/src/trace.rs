//! Boot traces (issue 19): the chunks the first boot of an image read, in the order it
//! first read them, signed by a VO. A later stage of the image fetches those chunks
//! first on every host, through the cascade, so a lazily booting guest finds them
//! there.
//!
//! ```text
//! trace = "VWBT" | version (1) | postcard { vo, manifest, chunks } | ed25519 signature
//! ```
//!
//! A trace is untrusted wherever it arrives: decoding bounds it ([`MAX_TRACE_CHUNKS`])
//! and checks its form; [`BootTrace::check`] refuses one that names a chunk the image
//! does not have, names one twice, or is for another manifest; [`BootTrace::verify`]
//! checks the signature against the VO's key.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::vo::{envelope, open, VoKey, VoPublic};
use crate::{ChunkId, Error, Manifest, ManifestId};

const MAGIC: [u8; 4] = *b"VWBT";
pub(crate) const VERSION: u8 = 1;
/// Most chunks a trace lists (a boot that read 4 GiB at the mean chunk size).
pub const MAX_TRACE_CHUNKS: usize = 65_536;
/// Largest encoded trace: the chunks, a VO name, the manifest, the signature.
pub const MAX_TRACE: usize = MAX_TRACE_CHUNKS * 32 + 1024;

#[derive(Serialize, Deserialize)]
struct Statement {
    vo: String,
    manifest: ManifestId,
    chunks: Vec<ChunkId>,
}

/// A VO's signed record of what a boot of image `manifest` read first; see the module
/// doc.
#[derive(Clone, PartialEq, Eq)]
pub struct BootTrace {
    vo: String,
    manifest: ManifestId,
    chunks: Vec<ChunkId>,
    signature: [u8; 64],
}

impl std::fmt::Debug for BootTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootTrace({} by {}, {} chunks)", self.manifest, self.vo, self.chunks.len())
    }
}

impl BootTrace {
    /// `key`'s trace of image `manifest`: `chunks` in the order a boot first read
    /// them, at most [`MAX_TRACE_CHUNKS`]. Whether the image has them is checked where
    /// the manifest is ([`BootTrace::check`]: the head keeping it, every host given it).
    pub fn sign(key: &VoKey, manifest: ManifestId, chunks: Vec<ChunkId>) -> Result<Self, Error> {
        let mut trace = BootTrace { vo: key.vo().to_owned(), manifest, chunks, signature: [0; 64] };
        if trace.chunks.len() > MAX_TRACE_CHUNKS {
            let n = trace.chunks.len();
            return Err(trace.refused(format!("{n} chunks (at most {MAX_TRACE_CHUNKS})")));
        }
        trace.signature = key.sign(&trace.statement());
        Ok(trace)
    }

    /// The VO that signed it.
    pub fn vo(&self) -> &str {
        &self.vo
    }

    /// The image it is a trace of.
    pub fn manifest(&self) -> ManifestId {
        self.manifest
    }

    /// The chunks, in the order the boot first read them.
    pub fn chunks(&self) -> &[ChunkId] {
        &self.chunks
    }

    fn refused(&self, reason: String) -> Error {
        Error::BadTrace { manifest: self.manifest.to_string(), reason }
    }

    /// Checks it against the image it claims to trace: the same manifest, and every
    /// chunk one of the image's non-zero chunks, none twice, at most
    /// [`MAX_TRACE_CHUNKS`].
    pub fn check(&self, manifest: &Manifest) -> Result<(), Error> {
        if manifest.id() != self.manifest {
            return Err(self.refused(format!("it is for another image than {}", manifest.id())));
        }
        if self.chunks.len() > MAX_TRACE_CHUNKS {
            return Err(
                self.refused(format!("{} chunks (at most {MAX_TRACE_CHUNKS})", self.chunks.len()))
            );
        }
        let image: HashSet<ChunkId> =
            manifest.chunks().iter().filter(|c| !c.is_zero()).map(|c| c.id).collect();
        let mut seen = HashSet::with_capacity(self.chunks.len());
        for c in &self.chunks {
            if !image.contains(c) {
                return Err(
                    self.refused(format!("it names chunk {c:#}, which the image does not have"))
                );
            }
            if !seen.insert(*c) {
                return Err(self.refused(format!("it names chunk {c:#} twice")));
            }
        }
        Ok(())
    }

    fn statement(&self) -> Vec<u8> {
        let statement =
            Statement { vo: self.vo.clone(), manifest: self.manifest, chunks: self.chunks.clone() };
        envelope(MAGIC, VERSION, &statement)
    }

    /// Checks the signature against the VO's key.
    pub fn verify(&self, key: &VoPublic) -> Result<(), Error> {
        if key.verifies(&self.statement(), &self.signature) {
            Ok(())
        } else {
            Err(self.refused(format!("its signature does not verify with VO {}'s key", self.vo)))
        }
    }

    /// The canonical encoding: the statement, then the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.statement();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes an encoded trace (untrusted bytes: bounded, canonical, nothing
    /// trailing; the VO name checked).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |reason| Error::BadTrace { manifest: "(undecoded)".into(), reason };
        let (s, signature): (Statement, _) =
            open(bytes, MAGIC, VERSION, MAX_TRACE, "boot trace").map_err(bad)?;
        crate::vo::check_vo(&s.vo)?;
        if s.chunks.len() > MAX_TRACE_CHUNKS {
            return Err(bad(format!("{} chunks (at most {MAX_TRACE_CHUNKS})", s.chunks.len())));
        }
        Ok(BootTrace { vo: s.vo, manifest: s.manifest, chunks: s.chunks, signature })
    }
}

#[cfg(feature = "store")]
impl crate::Store {
    fn trace_path(&self, manifest: &ManifestId) -> std::path::PathBuf {
        self.dir().join("traces").join(format!("{manifest:#}.trace"))
    }

    /// The boot trace kept for `manifest`, if any: decoded and checked against the
    /// manifest (the caller verifies its signature against its VO's key).
    pub fn trace(&self, manifest: &ManifestId) -> Result<Option<BootTrace>, Error> {
        let path = self.trace_path(manifest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let trace = BootTrace::decode(&bytes)?;
        trace.check(&self.manifest(manifest)?)?;
        Ok(Some(trace))
    }

    /// Keeps `trace` for its image (which the store must hold; checked against it),
    /// replacing any kept before: written whole under a temporary name, synced, renamed.
    pub fn put_trace(&self, trace: &BootTrace) -> Result<(), Error> {
        trace.check(&self.manifest(&trace.manifest())?)?;
        let path = self.trace_path(&trace.manifest());
        let dir = path.parent().expect("traces/ has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let tmp = path.with_extension("trace.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&trace.encode())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io("write", &path, e))?;
        crate::pack::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::ChunkRef;

    fn manifest() -> Manifest {
        let r = |b: &[u8]| ChunkRef { id: ChunkId::of(b), len: 4096 };
        let chunks = vec![r(b"a"), r(b"b"), ChunkRef { id: ChunkId::ZERO, len: 4096 }, r(b"c")];
        let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        Manifest::new(params, 4 * 4096, blake3::hash(b"image"), chunks).expect("manifest")
    }

    #[test]
    fn a_signed_trace_round_trips_and_verifies() {
        let key = VoKey::from_seed("lab", [7; 32]).expect("key");
        let m = manifest();
        let t = BootTrace::sign(&key, m.id(), vec![ChunkId::of(b"c"), ChunkId::of(b"a")])
            .expect("sign");
        let back = BootTrace::decode(&t.encode()).expect("decode");
        assert_eq!(back, t);
        back.verify(&key.public()).expect("verifies");
        back.check(&m).expect("checks");
        let other = VoKey::from_seed("lab", [8; 32]).expect("key");
        assert!(back.verify(&other.public()).is_err(), "another key");
        // A flipped bit anywhere is refused.
        let mut bytes = t.encode();
        let at = bytes.len() - 70;
        bytes[at] ^= 1;
        assert!(BootTrace::decode(&bytes).map_or(true, |t| t.verify(&key.public()).is_err()));
    }

    /// A trace that names a chunk the image does not have, a chunk twice, or the zero
    /// chunk is refused, when signed and when checked on arrival.
    #[test]
    fn a_trace_naming_chunks_the_image_lacks_is_refused() {
        let key = VoKey::from_seed("lab", [7; 32]).expect("key");
        let m = manifest();
        for (chunks, why) in [
            (vec![ChunkId::of(b"z")], "which the image does not have"),
            (vec![ChunkId::ZERO], "which the image does not have"),
            (vec![ChunkId::of(b"a"), ChunkId::of(b"a")], "twice"),
        ] {
            // Signed by a trusted VO and intact: the check where the manifest is refuses it.
            let signed = BootTrace::sign(&key, m.id(), chunks).expect("signed");
            let back = BootTrace::decode(&signed.encode()).expect("decodes");
            back.verify(&key.public()).expect("a good signature");
            assert!(back.check(&m).expect_err("refused").to_string().contains(why));
        }
        let t = BootTrace::sign(&key, m.id(), vec![ChunkId::of(b"a")]).expect("sign");
        let r = |b: &[u8]| ChunkRef { id: ChunkId::of(b), len: 4096 };
        let params = ChunkerParams { min: 1024, avg: 4096, max: 16384 };
        let other = Manifest::new(params, 4096, blake3::hash(b"x"), vec![r(b"a")]).expect("m");
        assert!(t.check(&other).expect_err("another image").to_string().contains("another image"));
        assert!(BootTrace::decode(&[0; 10]).is_err());
        assert!(BootTrace::decode(&vec![0; MAX_TRACE + 1]).is_err());
    }
}
