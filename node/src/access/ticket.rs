//! [`Ticket`]: a VO's signed request to deploy one workspace document, on one cluster,
//! from named manifests, once, before a deadline.
//!
//! ```text
//! ticket = magic "VWTK" | version:u8 (2)
//!        | postcard(vo, cluster, deployment, workspace:32, manifests:[32], nonce:16, expires_s)
//!        | signature:64
//! ```
//!
//! The signed bytes are everything before the signature; their magic differs from a
//! seal's, so neither can stand for the other. Version 1 (no cluster, manifests, nonce
//! or expiry) is refused: such a ticket could be replayed for ever.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use vw_chunkstore::vo::{envelope, open};
use vw_chunkstore::{ManifestId, VoKey, VoPublic};

/// Most manifests one ticket may allow (a workspace's distinct images).
pub const MAX_TICKET_MANIFESTS: usize = 256;
/// Largest encoded ticket accepted.
pub const MAX_TICKET: usize = 1024 + 33 * MAX_TICKET_MANIFESTS;
const MAGIC: [u8; 4] = *b"VWTK";
pub(crate) const VERSION: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    vo: String,
    cluster: String,
    deployment: String,
    workspace: [u8; 32],
    /// Sorted, without repeats (canonical form).
    manifests: Vec<[u8; 32]>,
    nonce: [u8; 16],
    expires_s: u64,
}

/// What a VO signs: which document it deploys, where, from which manifests, and until
/// when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketTerms {
    /// The cluster's name (`[cluster] name` in its config).
    pub cluster: String,
    /// The deployment's name (the workspace document's).
    pub deployment: String,
    /// The BLAKE3 of the workspace document's text.
    pub workspace: blake3::Hash,
    /// The manifests its images may resolve to.
    pub manifests: BTreeSet<ManifestId>,
    /// Seconds since the epoch after which hosts refuse it.
    pub expires_s: u64,
}

/// VO `vo` asks to deploy `deployment` on `cluster` from the document whose BLAKE3 is
/// `workspace`, whose images are the manifests listed; once (its nonce), until
/// `expires_s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    body: Body,
    signature: [u8; 64],
}

impl Ticket {
    /// `key`'s ticket on `terms`, with a fresh random nonce.
    pub fn sign(key: &VoKey, terms: &TicketTerms) -> Result<Self, String> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a nonce: {e}"))?;
        Self::sign_with_nonce(key, terms, nonce)
    }

    /// `key`'s ticket on `terms` with `nonce` (a fresh one for every ticket: a host
    /// admits a nonce once).
    fn sign_with_nonce(key: &VoKey, terms: &TicketTerms, nonce: [u8; 16]) -> Result<Self, String> {
        if terms.manifests.len() > MAX_TICKET_MANIFESTS {
            return Err(format!(
                "{} manifests; a ticket allows at most {MAX_TICKET_MANIFESTS}",
                terms.manifests.len()
            ));
        }
        let body = Body {
            vo: key.vo().to_owned(),
            cluster: terms.cluster.clone(),
            deployment: terms.deployment.clone(),
            workspace: *terms.workspace.as_bytes(),
            manifests: terms.manifests.iter().map(|m| *m.as_bytes()).collect(),
            nonce,
            expires_s: terms.expires_s,
        };
        let signature = key.sign(&signed(&body));
        Ok(Ticket { body, signature })
    }

    /// The VO it speaks for.
    pub fn vo(&self) -> &str {
        &self.body.vo
    }

    /// The cluster it is for.
    pub fn cluster(&self) -> &str {
        &self.body.cluster
    }

    /// The deployment's name.
    pub fn deployment(&self) -> &str {
        &self.body.deployment
    }

    /// The BLAKE3 of the workspace document.
    pub fn workspace(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.body.workspace)
    }

    /// Whether it allows the manifest `id`.
    pub fn allows(&self, id: &ManifestId) -> bool {
        self.body.manifests.binary_search(id.as_bytes()).is_ok()
    }

    /// The manifests it allows.
    pub fn manifests(&self) -> impl Iterator<Item = ManifestId> + '_ {
        self.body.manifests.iter().map(|m| ManifestId::from_bytes(*m))
    }

    /// Its nonce: a host accepts a ticket once.
    pub fn nonce(&self) -> [u8; 16] {
        self.body.nonce
    }

    /// Seconds since the epoch after which it is refused.
    pub fn expires_s(&self) -> u64 {
        self.body.expires_s
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

    /// Decodes untrusted bytes: bounded, canonical (manifests sorted, none twice),
    /// nothing trailing.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (body, signature): (Body, _) = open(bytes, MAGIC, VERSION, MAX_TICKET, "vw ticket")?;
        if body.manifests.len() > MAX_TICKET_MANIFESTS {
            return Err(format!(
                "it allows {} manifests (at most {MAX_TICKET_MANIFESTS})",
                body.manifests.len()
            ));
        }
        if !body.manifests.windows(2).all(|w| w[0] < w[1]) {
            return Err("its manifests are not sorted and distinct (not canonical)".into());
        }
        Ok(Ticket { body, signature })
    }
}

fn signed(body: &Body) -> Vec<u8> {
    envelope(MAGIC, VERSION, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(manifests: &BTreeSet<ManifestId>) -> TicketTerms {
        TicketTerms {
            cluster: "lab".into(),
            deployment: "grid3".into(),
            workspace: blake3::hash(b"<workspace/>"),
            manifests: manifests.clone(),
            expires_s: 2_000_000_000,
        }
    }

    #[test]
    fn tickets_round_trip_and_verify_with_their_key() {
        let key = VoKey::generate("grid3").expect("key");
        let ids: BTreeSet<_> =
            [b"a", b"b"].iter().map(|b| ManifestId::from(blake3::hash(*b))).collect();
        let t = Ticket::sign(&key, &terms(&ids)).expect("sign");
        let back = Ticket::decode(&t.encode()).expect("decode");
        assert_eq!(back, t);
        assert!(back.verify(&key.public()));
        assert!(ids.iter().all(|id| back.allows(id)));
        assert!(!back.allows(&ManifestId::from(blake3::hash(b"c"))));
        assert_eq!((back.cluster(), back.expires_s()), ("lab", 2_000_000_000));
        assert!(!back.verify(&VoKey::generate("grid3").expect("key").public()));
        assert!(Ticket::decode(&t.encode()[..40]).is_err());
        let mut long = t.encode();
        long.push(0);
        assert!(Ticket::decode(&long).is_err());
    }

    #[test]
    fn every_ticket_has_its_own_nonce() {
        let key = VoKey::generate("grid3").expect("key");
        let ids = BTreeSet::new();
        let a = Ticket::sign(&key, &terms(&ids)).expect("sign");
        let b = Ticket::sign(&key, &terms(&ids)).expect("sign");
        assert_ne!(a.nonce(), b.nonce());
    }

    #[test]
    fn unsorted_manifests_are_not_canonical() {
        let key = VoKey::generate("grid3").expect("key");
        let (x, y) = ([1u8; 32], [2u8; 32]);
        let body = Body {
            vo: "grid3".into(),
            cluster: "lab".into(),
            deployment: "d".into(),
            workspace: [0; 32],
            manifests: vec![y, x],
            nonce: [0; 16],
            expires_s: 1,
        };
        let mut bytes = signed(&body);
        bytes.extend_from_slice(&key.sign(&signed(&body)));
        let err = Ticket::decode(&bytes).expect_err("unsorted");
        assert!(err.contains("not sorted"), "{err}");
    }

    #[test]
    fn a_version_1_ticket_is_refused() {
        let mut bytes = b"VWTK\x01".to_vec();
        bytes.extend_from_slice(&[0; 100]);
        let err = Ticket::decode(&bytes).expect_err("v1");
        assert!(err.contains("version 1, this build reads 2"), "{err}");
    }

    /// The ticket's encoding (`vw_testkit::golden`, `node/tests/golden/`).
    #[test]
    fn golden_bytes() {
        let key = VoKey::from_seed("grid3", [7; 32]).expect("key");
        let terms = TicketTerms {
            cluster: "demo".into(),
            deployment: "g".into(),
            workspace: blake3::hash(b"<virtualWorkspace/>"),
            manifests: [ManifestId::from_bytes([9; 32])].into_iter().collect(),
            expires_s: 1_800_000_000,
        };
        let ticket = Ticket::sign_with_nonce(&key, &terms, [5; 16]).expect("ticket");
        let dir = vw_testkit::source_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        vw_testkit::golden(&dir, &format!("ticket-v{VERSION}"), &ticket.encode());
    }
}
