//! [`Grants`]: which peers may fetch which chunks from this host.
//!
//! A grant is made when this host has checked a deployment (its VO's ticket and every
//! image's seal): on the head when it deploys, on a host when its stage order arrives.
//! It lets the hosts staging one of the deployment's manifests fetch that manifest's
//! chunks, and nothing else. Knowing a chunk's id is not enough: a request names the
//! deployment and the manifest, and each id must be in the manifest.
//!
//! In a cascade a receiver may ask its sender before the sender has checked its own
//! stage order: the head sends every order at once. So a request for a deployment this
//! host does not know yet waits a little for its grant ([`Grants::check_within`])
//! before it is refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use vw_chunkstore::{ChunkId, Manifest, ManifestId};

/// The grants of one host.
#[derive(Debug, Default)]
pub struct Grants {
    by: Mutex<HashMap<(String, ManifestId), Arc<Grant>>>,
    /// Woken whenever a deployment is granted.
    granted: tokio::sync::Notify,
}

/// One manifest of one deployment.
#[derive(Debug)]
struct Grant {
    vo: String,
    peers: HashSet<PeerId>,
    chunks: HashSet<ChunkId>,
}

/// What [`Grants::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, on behalf of this VO.
    Allowed {
        /// The deployment's VO.
        vo: String,
    },
    /// Refused, and why (sent to the peer and written to the audit log).
    Refused {
        /// The deployment's VO, if the deployment is known here.
        vo: Option<String>,
        /// Why.
        reason: String,
    },
}

impl Grants {
    /// Lets the peers listed with each manifest fetch its chunks for `deployment` of
    /// `vo`, all at once (replacing earlier grants for the same pairs).
    pub fn allow(&self, deployment: &str, vo: &str, manifests: &[(&Manifest, &[PeerId])]) {
        let mut by = self.lock();
        for (manifest, peers) in manifests {
            let grant = Grant {
                vo: vo.to_owned(),
                peers: peers.iter().copied().collect(),
                chunks: manifest.chunks().iter().filter(|c| !c.is_zero()).map(|c| c.id).collect(),
            };
            by.insert((deployment.to_owned(), manifest.id()), Arc::new(grant));
        }
        drop(by);
        self.granted.notify_waiters();
    }

    /// Withdraws every grant of `deployment`.
    pub fn revoke(&self, deployment: &str) {
        self.lock().retain(|(d, _), _| d != deployment);
    }

    /// May `peer` fetch `ids` of `manifest` for `deployment`?
    pub fn check(
        &self,
        peer: &PeerId,
        deployment: &str,
        manifest: &ManifestId,
        ids: &[ChunkId],
    ) -> Verdict {
        let grant = self.lock().get(&(deployment.to_owned(), *manifest)).cloned();
        let Some(grant) = grant else {
            let known =
                self.lock().iter().find(|((d, _), _)| d == deployment).map(|(_, g)| g.vo.clone());
            let reason = match known {
                Some(_) => format!("manifest {manifest} is not part of deployment {deployment}"),
                None => format!("deployment {deployment} is not being staged through this host"),
            };
            return Verdict::Refused { vo: known, reason };
        };
        let refuse = |reason: String| Verdict::Refused { vo: Some(grant.vo.clone()), reason };
        if !grant.peers.contains(peer) {
            return refuse(format!(
                "peer {peer} is not staging manifest {manifest} for deployment {deployment}"
            ));
        }
        if let Some(id) = ids.iter().find(|id| !grant.chunks.contains(id)) {
            return refuse(format!("chunk {id:#} is not in manifest {manifest}"));
        }
        Verdict::Allowed { vo: grant.vo.clone() }
    }

    /// [`Grants::check`], but a request for a deployment not known here yet waits up to
    /// `wait` for it to be granted (its stage order may be on its way) before it is
    /// refused. Every other refusal is final at once.
    pub async fn check_within(
        &self,
        peer: &PeerId,
        deployment: &str,
        manifest: &ManifestId,
        ids: &[ChunkId],
        wait: Duration,
    ) -> Verdict {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Listening before checking: a grant made in between still wakes us.
            let granted = self.granted.notified();
            tokio::pin!(granted);
            granted.as_mut().enable();
            let verdict = self.check(peer, deployment, manifest, ids);
            if !matches!(verdict, Verdict::Refused { vo: None, .. }) {
                return verdict;
            }
            if tokio::time::timeout_at(deadline, granted).await.is_err() {
                return verdict;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ManifestId), Arc<Grant>>> {
        self.by.lock().expect("grants lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vw_chunkstore::chunker::ChunkerParams;
    use vw_chunkstore::ChunkRef;

    fn manifest(seed: &[u8]) -> Manifest {
        let chunk = ChunkRef { id: ChunkId::of(seed), len: 64 << 10 };
        Manifest::new(ChunkerParams::default(), 64 << 10, blake3::hash(seed), vec![chunk])
            .expect("manifest")
    }

    #[test]
    fn only_a_staging_peer_gets_only_its_manifest_s_chunks() {
        let grants = Grants::default();
        let (m, other) = (manifest(b"m"), manifest(b"o"));
        let (staging, stranger) = (PeerId::random(), PeerId::random());
        grants.allow("d", "a", &[(&m, &[staging])]);
        let ids = [m.chunks()[0].id];
        assert_eq!(grants.check(&staging, "d", &m.id(), &ids), Verdict::Allowed { vo: "a".into() });
        let refused = |v: Verdict| match v {
            Verdict::Refused { reason, .. } => reason,
            Verdict::Allowed { .. } => panic!("allowed"),
        };
        assert!(refused(grants.check(&stranger, "d", &m.id(), &ids)).contains("is not staging"));
        let theirs = [other.chunks()[0].id];
        assert!(
            refused(grants.check(&staging, "d", &m.id(), &theirs)).contains("is not in manifest")
        );
        assert!(refused(grants.check(&staging, "d", &other.id(), &theirs))
            .contains("not part of deployment d"));
        assert!(refused(grants.check(&staging, "e", &m.id(), &ids))
            .contains("deployment e is not being staged"));
        grants.revoke("d");
        assert!(matches!(
            grants.check(&staging, "d", &m.id(), &ids),
            Verdict::Refused { vo: None, .. }
        ));
    }

    #[tokio::test]
    async fn a_request_waits_for_a_grant_on_its_way_but_not_for_ever() {
        let grants = Arc::new(Grants::default());
        let m = manifest(b"m");
        let (staging, ids) = (PeerId::random(), [m.chunks()[0].id]);
        let later = {
            let (grants, m) = (Arc::clone(&grants), m.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                grants.allow("d", "a", &[(&m, &[staging])]);
            })
        };
        let (id, long) = (m.id(), Duration::from_secs(60));
        let verdict = grants.check_within(&staging, "d", &id, &ids, long);
        assert_eq!(verdict.await, Verdict::Allowed { vo: "a".into() }, "allowed once granted");
        later.await.expect("granted");
        // A refusal of a known deployment is final at once; of an unknown one, after
        // the wait.
        let wait = Duration::from_millis(300);
        let t = tokio::time::Instant::now();
        let stranger = PeerId::random();
        let verdict = grants.check_within(&stranger, "d", &id, &ids, long).await;
        assert!(matches!(verdict, Verdict::Refused { vo: Some(_), .. }), "{verdict:?}");
        assert!(t.elapsed() < long, "no wait for a final refusal");
        let t = tokio::time::Instant::now();
        let verdict = grants.check_within(&staging, "e", &id, &ids, wait).await;
        assert!(matches!(verdict, Verdict::Refused { vo: None, .. }), "{verdict:?}");
        assert!(t.elapsed() >= wait);
    }
}
