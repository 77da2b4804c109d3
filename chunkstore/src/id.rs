//! Typed content ids: [`ChunkId`] and [`ManifestId`], both BLAKE3 digests.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        /// 32 raw bytes in binary formats (postcard: manifests, records, frames), 64 hex
        /// digits in human-readable ones (JSON output).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }

        /// Ids are uniformly distributed digests: hashing their first 8 bytes is enough
        /// for hash maps and 4× cheaper than all 32 (equality still compares all 32).
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let mut head = [0u8; 8];
                head.copy_from_slice(&self.0[..8]);
                state.write_u64(u64::from_le_bytes(head));
            }
        }

        impl $name {
            /// The id made of these digest bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// All 64 lowercase hex digits (the short form is `Display`).
            pub fn to_hex(&self) -> String {
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(hash: blake3::Hash) -> Self {
                Self(*hash.as_bytes())
            }
        }

        /// The first 8 hex digits; `{:#}` prints all 64.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let hex = self.to_hex();
                if f.alternate() { f.write_str(&hex) } else { f.write_str(&hex[..8]) }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                blake3::Hash::from_hex(s).map(Self::from).map_err(|_| crate::Error::BadId {
                    what: $what,
                    input: s.to_owned(),
                })
            }
        }
    };
}

digest_id!(
    /// BLAKE3 of a chunk's plain bytes. It equals the chunk's bao root, so verified range
    /// streaming can be added later without changing ids.
    ChunkId,
    "chunk id"
);

digest_id!(
    /// BLAKE3 of a manifest's canonical encoding (see [`crate::Manifest::encode`]).
    ManifestId,
    "manifest id"
);

impl ChunkId {
    /// The reserved id of an all-zero chunk, whatever its length: 32 zero bytes. Zero
    /// chunks are never stored or sent, and a compare tells them apart where hashing
    /// `len` zeros per distinct length would not be cheap (docs/decisions.md). BLAKE3
    /// never yields it in practice (probability 2^-256).
    pub const ZERO: ChunkId = ChunkId([0; 32]);

    /// True for [`Self::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        blake3::hash(data).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_short_and_alternate_is_full() {
        let id = ChunkId::of(b"abc");
        assert_eq!(format!("{id}"), "6437b3ac");
        assert_eq!(format!("{id:#}").len(), 64);
        assert_eq!(format!("{id:?}"), "ChunkId(6437b3ac)");
    }

    #[test]
    fn json_is_hex_and_postcard_is_raw() {
        let id = ChunkId::of(b"abc");
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).ok(), Some(id));
        let raw = postcard::to_stdvec(&id).expect("postcard");
        assert_eq!(raw, id.as_bytes().to_vec());
        assert_eq!(postcard::from_bytes::<ChunkId>(&raw).ok(), Some(id));
    }

    #[test]
    fn hex_round_trip_and_bad_input() {
        let id = ManifestId::from(blake3::hash(b"m"));
        assert_eq!(id.to_hex().parse::<ManifestId>().ok(), Some(id));
        let err = "xyz".parse::<ManifestId>().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("`xyz` is not a manifest id (64 hex digits)"));
    }
}
