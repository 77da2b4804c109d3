//! [`Ticket`]: a VO's signed request to deploy one workspace document.
//!
//! ```text
//! ticket = magic "VWTK" | version:u8 (1) | postcard(vo, deployment, workspace:32) | signature:64
//! ```
//!
//! The signed bytes are everything before the signature; their magic differs from a
//! seal's, so neither can stand for the other.

use serde::{Deserialize, Serialize};
use vw_chunkstore::vo::{envelope, open};
use vw_chunkstore::{VoKey, VoPublic};

/// Largest encoded ticket accepted.
pub const MAX_TICKET: usize = 1024;
const MAGIC: [u8; 4] = *b"VWTK";
const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    vo: String,
    deployment: String,
    workspace: [u8; 32],
}

/// VO `vo` asks to deploy `deployment` from the document whose BLAKE3 is `workspace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    body: Body,
    signature: [u8; 64],
}

impl Ticket {
    /// `key`'s ticket for deploying `workspace` (the document's text) as `deployment`.
    pub fn sign(key: &VoKey, deployment: &str, workspace: &str) -> Self {
        let body = Body {
            vo: key.vo().to_owned(),
            deployment: deployment.to_owned(),
            workspace: *blake3::hash(workspace.as_bytes()).as_bytes(),
        };
        let signature = key.sign(&signed(&body));
        Ticket { body, signature }
    }

    /// The VO it speaks for.
    pub fn vo(&self) -> &str {
        &self.body.vo
    }

    /// The deployment's name.
    pub fn deployment(&self) -> &str {
        &self.body.deployment
    }

    /// The BLAKE3 of the workspace document.
    pub fn workspace(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.body.workspace)
    }

    /// Whether `key` signed it.
    pub fn verify(&self, key: &VoPublic) -> bool {
        key.verifies(&signed(&self.body), &self.signature)
    }

    /// The encoding: the signed bytes, then the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = signed(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes untrusted bytes: bounded, canonical, nothing trailing.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (body, signature) = open(bytes, MAGIC, VERSION, MAX_TICKET, "vw ticket")?;
        Ok(Ticket { body, signature })
    }
}

fn signed(body: &Body) -> Vec<u8> {
    envelope(MAGIC, VERSION, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_verify_with_their_key() {
        let key = VoKey::generate("grid3").expect("key");
        let t = Ticket::sign(&key, "grid3", "<workspace/>");
        let back = Ticket::decode(&t.encode()).expect("decode");
        assert_eq!(back, t);
        assert!(back.verify(&key.public()));
        assert!(!back.verify(&VoKey::generate("grid3").expect("key").public()));
        assert!(Ticket::decode(&t.encode()[..40]).is_err());
        let mut long = t.encode();
        long.push(0);
        assert!(Ticket::decode(&long).is_err());
    }
}
