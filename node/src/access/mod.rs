//! Who may deploy what, checked on every host: the rules of multi-VO sharing.
//!
//! - A deployment is made on behalf of a VO: `vw deploy --vo NAME` signs a [`Ticket`]
//!   (the deployment's name and the BLAKE3 of its workspace document) with the VO's key.
//!   The head and every host that stages the deployment check it against the VO's key
//!   in their own cluster config ([`check_ticket`]).
//! - Every image travels with its [`Seal`]: the signature of the VO that published it.
//!   A host stages an image only if the seal verifies with a trusted VO's key, names
//!   the manifest it was sent, and is the deploying VO's own or public
//!   ([`check_seal`]).
//! - A chunk is served only to a host that is staging, for a deployment this host
//!   checked, a manifest that lists the chunk ([`grants`]).
//! - Every operation is written to the host's audit log ([`audit`]).
//!
//! The reasoning, and the side channel global deduplication leaves, are in
//! docs/security.md.

#[cfg(feature = "host")]
pub mod audit;
#[cfg(feature = "host")]
pub mod grants;
#[cfg(feature = "host")]
pub mod replay;
mod ticket;

pub use ticket::{Ticket, TicketTerms, MAX_TICKET, MAX_TICKET_MANIFESTS};

/// What a host checks requests with: the VOs its cluster config trusts, the chunk grants
/// it made, and its audit log.
#[cfg(feature = "host")]
#[derive(Clone, Debug)]
pub struct Gate {
    /// The cluster config (its `[[vo]]` entries).
    pub config: std::sync::Arc<ClusterConfig>,
    /// Who may fetch which chunks from this host.
    pub grants: std::sync::Arc<grants::Grants>,
    /// The audit log.
    pub audit: std::sync::Arc<audit::Audit>,
    /// The tickets this host accepted, until they expire.
    pub tickets: std::sync::Arc<replay::Seen>,
}
use vw_chunkstore::{ImageRef, ManifestId, Seal, Visibility};

use crate::config::ClusterConfig;

/// Why a deployment, an image or a chunk request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No ticket came with the deployment.
    #[error("deployment {deployment} carries no VO ticket; deploy on behalf of a VO with `vw deploy --vo NAME`")]
    NoTicket {
        /// The deployment.
        deployment: String,
    },
    /// The ticket is malformed.
    #[error("deployment {deployment}: its VO ticket is malformed: {reason}")]
    BadTicket {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },
    /// The ticket is for another deployment or document.
    #[error("deployment {deployment}: the VO ticket is for {what}; sign this document again with `vw deploy --vo {vo}`")]
    TicketMismatch {
        /// The deployment.
        deployment: String,
        /// The signer.
        vo: String,
        /// What differs.
        what: String,
    },
    /// The ticket is for another cluster.
    #[error("deployment {deployment}: the VO ticket is for cluster {ticket}, this is cluster {here}; sign one for {here}")]
    OtherCluster {
        /// The deployment.
        deployment: String,
        /// The cluster the ticket names.
        ticket: String,
        /// This cluster's name.
        here: String,
    },
    /// The ticket expired, or would stay valid longer than this cluster allows.
    #[error("deployment {deployment}: the VO ticket {why}; sign a new one")]
    Expiry {
        /// The deployment.
        deployment: String,
        /// What is wrong with its expiry.
        why: String,
    },
    /// The ticket was used already.
    #[error("deployment {deployment}: this VO ticket (VO {vo}) was used already; a ticket deploys once, sign a new one")]
    Replayed {
        /// The deployment.
        deployment: String,
        /// The signer.
        vo: String,
    },
    /// An image resolves to a manifest the ticket does not allow.
    #[error("deployment {deployment}: image {image} is manifest {manifest}, which the VO ticket does not allow (was the tag sealed again since the ticket was signed? sign a new one)")]
    ManifestNotAllowed {
        /// The deployment.
        deployment: String,
        /// The image as referenced.
        image: String,
        /// The manifest it resolves to.
        manifest: ManifestId,
    },
    /// The VO is not in this host's cluster config.
    #[error("{what}: VO {vo} is not trusted by this cluster (no [[vo]] entry named {vo} in the cluster config)")]
    Untrusted {
        /// The deployment or image.
        what: String,
        /// The VO.
        vo: String,
    },
    /// A signature does not verify with the trusted key.
    #[error("{what}: {reason}")]
    BadSignature {
        /// The deployment or image.
        what: String,
        /// Why.
        reason: String,
    },
    /// An image arrived without a seal, or the store has none for it.
    #[error("image {image} is not sealed by any VO; import it with `vw image import --name VO/NAME:TAG` and the VO's key")]
    Unsealed {
        /// The image.
        image: String,
    },
    /// The seal names another manifest or name.
    #[error("image {image}: its seal is for {sealed}, not this {what}")]
    SealMismatch {
        /// The image as referenced.
        image: String,
        /// What the seal names.
        sealed: String,
        /// "manifest" or "name".
        what: &'static str,
    },
    /// The deploying VO may not use the image.
    #[error("image {image} is private to VO {owner}; VO {vo} may not deploy it (the owner can import it as --public)")]
    NotAllowed {
        /// The image.
        image: String,
        /// Its owner.
        owner: String,
        /// The deploying VO.
        vo: String,
    },
    /// A quota would be exceeded.
    #[error("VO {vo} is over its {what} quota: {detail}")]
    Quota {
        /// The VO.
        vo: String,
        /// Which quota (`memory_mib`, `hosts`, `cache_bytes`).
        what: &'static str,
        /// The figures.
        detail: String,
    },
}

/// A new stage (one deploy attempt) of `deployment`: `deployment@` and 16 random hex
/// digits. Chunk grants and requests are keyed by it (`grants`).
pub fn new_stage(deployment: &str) -> String {
    let mut nonce = [0u8; 8];
    if getrandom::fill(&mut nonce).is_err() {
        // Without randomness the time still tells two stages of one deployment apart.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        nonce = now.map(|d| d.as_nanos() as u64).unwrap_or(0).to_le_bytes();
    }
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{deployment}@{hex}")
}

/// The deployment a stage is of, if `stage` is `NAME@` and 16 lowercase hex digits.
pub fn deployment_of(stage: &str) -> Option<&str> {
    let (name, nonce) = stage.split_once('@')?;
    let hex = nonce.len() == 16
        && nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && !name.is_empty()).then_some(name)
}

/// Checks `ticket` (encoded) for the deployment `deployment` of the document
/// `workspace` at `now_s` (seconds since the epoch): decodable, signed by a VO this
/// cluster trusts, for this cluster, this exact name and document, not expired and not
/// valid for longer than the cluster allows. Returns the ticket; whether it was used
/// before, and the manifests it allows, are for the caller to check
/// ([`replay::Seen`], [`check_manifest`]).
pub fn check_ticket(
    config: &ClusterConfig,
    ticket: &[u8],
    deployment: &str,
    workspace: &str,
    now_s: u64,
) -> Result<Ticket, AccessError> {
    if ticket.is_empty() {
        return Err(AccessError::NoTicket { deployment: deployment.to_owned() });
    }
    let ticket = Ticket::decode(ticket)
        .map_err(|reason| AccessError::BadTicket { deployment: deployment.to_owned(), reason })?;
    let vo = ticket.vo().to_owned();
    let trusted = config.vo(&vo).ok_or_else(|| AccessError::Untrusted {
        what: format!("deployment {deployment}"),
        vo: vo.clone(),
    })?;
    if !ticket.verify(&trusted.public()) {
        return Err(AccessError::BadSignature {
            what: format!("deployment {deployment}"),
            reason: format!("the ticket's signature does not verify with VO {vo}'s key"),
        });
    }
    let here = &config.cluster.name;
    if ticket.cluster() != here {
        return Err(AccessError::OtherCluster {
            deployment: deployment.to_owned(),
            ticket: ticket.cluster().to_owned(),
            here: here.clone(),
        });
    }
    let mismatch = |what: String| AccessError::TicketMismatch {
        deployment: deployment.to_owned(),
        vo: vo.clone(),
        what,
    };
    if ticket.deployment() != deployment {
        return Err(mismatch(format!("deployment {}", ticket.deployment())));
    }
    if ticket.workspace() != blake3::hash(workspace.as_bytes()) {
        return Err(mismatch("another workspace document".into()));
    }
    let expiry = |why: String| AccessError::Expiry { deployment: deployment.to_owned(), why };
    let expires = ticket.expires_s();
    if expires <= now_s {
        return Err(expiry(format!("expired {} s ago", now_s - expires)));
    }
    let max = config.cluster.ticket_lifetime_max_s;
    if expires - now_s > max {
        return Err(expiry(format!(
            "is valid for {} s more; this cluster accepts at most {max} s \
             ([cluster] ticket_lifetime_max_s)",
            expires - now_s
        )));
    }
    Ok(ticket)
}

/// Checks that `ticket` allows the image `image` (as referenced), which resolves to
/// `manifest`, in deployment `deployment`.
pub fn check_manifest(
    ticket: &Ticket,
    deployment: &str,
    image: &ImageRef,
    manifest: ManifestId,
) -> Result<(), AccessError> {
    if ticket.allows(&manifest) {
        return Ok(());
    }
    Err(AccessError::ManifestNotAllowed {
        deployment: deployment.to_owned(),
        image: image.to_string(),
        manifest,
    })
}

/// Checks that `seal` (encoded) lets VO `vo` deploy `manifest`, referenced as
/// `reference`: the seal decodes, its VO is trusted and its signature verifies with
/// that VO's key, it names this manifest (and this name, if the reference is a name),
/// and the image is `vo`'s own or public. Returns the seal.
pub fn check_seal(
    config: &ClusterConfig,
    vo: &str,
    reference: &ImageRef,
    manifest: ManifestId,
    seal: &[u8],
) -> Result<Seal, AccessError> {
    let image = reference.to_string();
    if seal.is_empty() {
        return Err(AccessError::Unsealed { image });
    }
    let seal = Seal::decode(seal).map_err(|e| AccessError::BadSignature {
        what: format!("image {image}"),
        reason: e.to_string(),
    })?;
    let owner = seal.vo().to_owned();
    let trusted = config.vo(&owner).ok_or_else(|| AccessError::Untrusted {
        what: format!("image {image}"),
        vo: owner.clone(),
    })?;
    seal.verify(&trusted.public()).map_err(|e| AccessError::BadSignature {
        what: format!("image {image}"),
        reason: e.to_string(),
    })?;
    if seal.manifest() != manifest {
        return Err(AccessError::SealMismatch {
            image,
            sealed: format!("manifest {}", seal.manifest()),
            what: "manifest",
        });
    }
    if let ImageRef::Name(name) = reference {
        if seal.name() != name {
            return Err(AccessError::SealMismatch {
                image,
                sealed: seal.name().to_string(),
                what: "name",
            });
        }
    }
    if owner != vo && seal.visibility() != Visibility::Public {
        return Err(AccessError::NotAllowed { image, owner, vo: vo.to_owned() });
    }
    Ok(seal)
}

/// Checks the encoded boot trace `bytes` of image `reference` (`manifest`, sealed by
/// `seal`) for a deployment of VO `vo`: it must be signed by `vo` or by the image's own
/// VO, a VO this cluster trusts, and name only chunks the image has (each once).
/// Returns the chunks in the order to fetch them first.
pub fn check_trace(
    config: &ClusterConfig,
    vo: &str,
    reference: &ImageRef,
    seal: &Seal,
    manifest: &vw_chunkstore::Manifest,
    bytes: &[u8],
) -> Result<Vec<vw_chunkstore::ChunkId>, AccessError> {
    let what = format!("the boot trace of image {reference}");
    let bad = |reason: String| AccessError::BadSignature { what: what.clone(), reason };
    let trace = vw_chunkstore::BootTrace::decode(bytes).map_err(|e| bad(e.to_string()))?;
    if trace.vo() != vo && trace.vo() != seal.vo() {
        return Err(bad(format!(
            "it is signed by VO {}, neither the deploying VO {vo} nor the image's {}",
            trace.vo(),
            seal.vo()
        )));
    }
    let trusted = config
        .vo(trace.vo())
        .ok_or_else(|| AccessError::Untrusted { what: what.clone(), vo: trace.vo().to_owned() })?;
    trace.verify(&trusted.public()).map_err(|e| bad(e.to_string()))?;
    trace.check(manifest).map_err(|e| bad(e.to_string()))?;
    Ok(trace.chunks().to_vec())
}

/// Whether a host may count a chunk listed by an image sealed with `seal` as held for a
/// deployment of VO `vo`: always, unless the image's VO is isolated, in which case
/// only for its own deployments or if it made the image public.
pub fn shareable(config: &ClusterConfig, seal: &Seal, vo: &str) -> bool {
    seal.vo() == vo
        || seal.visibility() == Visibility::Public
        || config.vo(seal.vo()).is_some_and(|v| !v.isolated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_chunkstore::VoKey;

    fn config(vos: &[(&VoKey, bool)]) -> ClusterConfig {
        let mut text = ClusterConfig::EMBEDDED.to_owned();
        for (key, isolated) in vos {
            text.push('\n');
            text.push_str(&crate::config::VoConfig::entry(key.vo(), &key.public(), *isolated));
        }
        ClusterConfig::parse(&text, "test").expect("config")
    }

    fn id(b: &[u8]) -> ManifestId {
        ManifestId::from(blake3::hash(b))
    }

    const NOW: u64 = 1_800_000_000;

    fn ticket(
        key: &VoKey,
        cluster: &str,
        deployment: &str,
        ids: &[ManifestId],
        expires_s: u64,
    ) -> Vec<u8> {
        let terms = TicketTerms {
            cluster: cluster.into(),
            deployment: deployment.into(),
            workspace: blake3::hash(b"<doc/>"),
            manifests: ids.iter().copied().collect(),
            expires_s,
        };
        Ticket::sign(key, &terms).expect("sign").encode()
    }

    #[test]
    fn a_ticket_holds_for_its_own_cluster_deployment_and_document_only() {
        let a = VoKey::generate("a").expect("key");
        let stranger = VoKey::generate("s").expect("key");
        let c = config(&[(&a, false)]);
        let here = c.cluster.name.clone();
        let t = ticket(&a, &here, "d1", &[], NOW + 60);
        assert_eq!(check_ticket(&c, &t, "d1", "<doc/>", NOW).expect("ok").vo(), "a");
        let err = |r: Result<Ticket, AccessError>| r.expect_err("refused").to_string();
        assert!(
            err(check_ticket(&c, &t, "d2", "<doc/>", NOW)).contains("ticket is for deployment d1")
        );
        assert!(err(check_ticket(&c, &t, "d1", "<other/>", NOW)).contains("another workspace"));
        assert!(err(check_ticket(&c, &[], "d1", "<doc/>", NOW)).contains("--vo NAME"));
        let s = ticket(&stranger, &here, "d1", &[], NOW + 60);
        assert!(err(check_ticket(&c, &s, "d1", "<doc/>", NOW)).contains("VO s is not trusted"));
        let mut forged = t.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(err(check_ticket(&c, &forged, "d1", "<doc/>", NOW)).contains("does not verify"));
        let elsewhere = ticket(&a, "other-cluster", "d1", &[], NOW + 60);
        let e = err(check_ticket(&c, &elsewhere, "d1", "<doc/>", NOW));
        assert!(e.contains("for cluster other-cluster, this is cluster demo"), "{e}");
    }

    #[test]
    fn an_expired_or_overlong_ticket_is_refused() {
        let a = VoKey::generate("a").expect("key");
        let c = config(&[(&a, false)]);
        let here = c.cluster.name.clone();
        let err = |r: Result<Ticket, AccessError>| r.expect_err("refused").to_string();
        let t = ticket(&a, &here, "d1", &[], NOW + 60);
        let e = err(check_ticket(&c, &t, "d1", "<doc/>", NOW + 61));
        assert!(e.contains("expired 1 s ago"), "{e}");
        let max = c.cluster.ticket_lifetime_max_s;
        let long = ticket(&a, &here, "d1", &[], NOW + max + 1);
        let e = err(check_ticket(&c, &long, "d1", "<doc/>", NOW));
        assert!(e.contains("ticket_lifetime_max_s"), "{e}");
        check_ticket(&c, &long, "d1", "<doc/>", NOW + 1).expect("within the limit a second later");
    }

    #[test]
    fn a_ticket_allows_its_manifests_only() {
        let a = VoKey::generate("a").expect("key");
        let c = config(&[(&a, false)]);
        let t = ticket(&a, &c.cluster.name, "d1", &[id(b"w1")], NOW + 60);
        let t = check_ticket(&c, &t, "d1", "<doc/>", NOW).expect("ok");
        let name = ImageRef::Name("a/w:1".parse().expect("name"));
        check_manifest(&t, "d1", &name, id(b"w1")).expect("allowed");
        // The tag re-sealed to another manifest after the ticket was signed.
        let e = check_manifest(&t, "d1", &name, id(b"w2")).expect_err("not allowed").to_string();
        assert!(e.contains("image a/w:1 is manifest") && e.contains("does not allow"), "{e}");
    }

    #[test]
    fn private_images_are_their_vo_s_and_public_ones_everyone_s() {
        let (a, b) = (VoKey::generate("a").expect("key"), VoKey::generate("b").expect("key"));
        let c = config(&[(&a, false), (&b, false)]);
        let name: vw_chunkstore::ImageName = "a/worker:1".parse().expect("name");
        let private = Seal::sign(&a, &name, id(b"w"), Visibility::Private).expect("seal").encode();
        let reference = ImageRef::Name(name.clone());
        check_seal(&c, "a", &reference, id(b"w"), &private).expect("own image");
        let err = check_seal(&c, "b", &reference, id(b"w"), &private).expect_err("private");
        assert!(err.to_string().contains("private to VO a; VO b may not"), "{err}");
        let public = Seal::sign(&a, &name, id(b"w"), Visibility::Public).expect("seal").encode();
        check_seal(&c, "b", &reference, id(b"w"), &public).expect("public");
        // The seal must name the manifest that was sent.
        let err = check_seal(&c, "a", &ImageRef::Id(id(b"x")), id(b"x"), &private)
            .expect_err("other manifest");
        assert!(err.to_string().contains("its seal is for manifest"), "{err}");
        let err = check_seal(&c, "a", &reference, id(b"w"), &[]).expect_err("unsealed");
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn a_seal_by_an_untrusted_vo_is_refused() {
        let a = VoKey::generate("a").expect("key");
        let impostor = VoKey::generate("a").expect("key");
        let c = config(&[(&a, false)]);
        let name: vw_chunkstore::ImageName = "a/worker:1".parse().expect("name");
        let forged = Seal::sign(&impostor, &name, id(b"w"), Visibility::Public).expect("seal");
        let err = check_seal(&c, "a", &ImageRef::Name(name), id(b"w"), &forged.encode())
            .expect_err("wrong key");
        assert!(err.to_string().contains("does not verify with VO a's key"), "{err}");
        let other = VoKey::generate("z").expect("key");
        let zname: vw_chunkstore::ImageName = "z/w:1".parse().expect("name");
        let seal = Seal::sign(&other, &zname, id(b"w"), Visibility::Public).expect("seal");
        let err = check_seal(&c, "a", &ImageRef::Name(zname), id(b"w"), &seal.encode())
            .expect_err("untrusted");
        assert!(err.to_string().contains("VO z is not trusted"), "{err}");
    }

    #[test]
    fn an_isolated_vo_s_private_chunks_count_for_itself_only() {
        let (a, b) = (VoKey::generate("a").expect("key"), VoKey::generate("b").expect("key"));
        let c = config(&[(&a, true), (&b, false)]);
        let seal = |k: &VoKey, n: &str, v| {
            Seal::sign(k, &n.parse().expect("name"), id(n.as_bytes()), v).expect("seal")
        };
        let a_private = seal(&a, "a/w:1", Visibility::Private);
        assert!(shareable(&c, &a_private, "a"));
        assert!(!shareable(&c, &a_private, "b"));
        assert!(shareable(&c, &seal(&a, "a/base:1", Visibility::Public), "b"));
        assert!(shareable(&c, &seal(&b, "b/w:1", Visibility::Private), "a"));
    }
}
