//! [`Grants`]: which peers may fetch which chunks from this host.
//!
//! A grant is made when this host has checked a deployment (its VO's ticket and every
//! image's seal): on the head when it deploys, on a host when its stage order arrives.
//! It lets the hosts staging one of the deployment's manifests fetch that manifest's
//! chunks, and nothing else. Knowing a chunk's id is not enough: a request names the
//! deployment and the manifest, and each id must be in the manifest.
//!
//! Grants are keyed by the *stage*: one deploy attempt of a deployment, named by the
//! head as `NAME@NONCE` ([`super::new_stage`]) and carried in every stage order and chunk
//! request. A VO chooses deployment names, so a name alone would let another VO's
//! failed deploy of the same name revoke a running one's grants. A stage's grants end
//! when the head says the stage is over (every host answered, either way), when the
//! deployment is unstaged, or at the latest when the VO's ticket expires.
//!
//! In a cascade a receiver may ask its sender before the sender has checked its own
//! stage order: the head sends every order at once. So a request for a stage this host
//! does not know yet waits a little for its grant ([`Grants::check_within`]) before it
//! is refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use vw_chunkstore::{ChunkId, Manifest, ManifestId};

use super::deployment_of;
use crate::chunks::rate::RateLimit;

/// The grants of one host.
#[derive(Debug, Default)]
pub struct Grants {
    by: Mutex<HashMap<(String, ManifestId), Arc<Grant>>>,
    /// Per stage with a cap of its own (`vw deploy --cap`), the bucket every stream
    /// sending its chunks from here pays into.
    caps: Mutex<HashMap<String, Arc<RateLimit>>>,
    /// Woken whenever a stage is granted.
    granted: tokio::sync::Notify,
}

/// One manifest of one stage.
#[derive(Debug)]
struct Grant {
    vo: String,
    peers: HashSet<PeerId>,
    chunks: HashSet<ChunkId>,
    /// Seconds since the epoch when it lapses (the VO's ticket expires).
    expires_s: u64,
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
    /// Lets the peers listed with each manifest fetch its chunks for `stage` of `vo`,
    /// all at once (replacing earlier grants for the same pairs), until `expires_s`. A
    /// manifest listed more than once (two image names with the same contents) is
    /// granted to the peers of every listing.
    pub fn allow(
        &self,
        stage: &str,
        vo: &str,
        manifests: &[(&Manifest, &[PeerId])],
        expires_s: u64,
    ) {
        let mut grants: HashMap<ManifestId, Grant> = HashMap::new();
        for (manifest, peers) in manifests {
            grants
                .entry(manifest.id())
                .or_insert_with(|| Grant {
                    vo: vo.to_owned(),
                    peers: Default::default(),
                    chunks: manifest
                        .chunks()
                        .iter()
                        .filter(|c| !c.is_zero())
                        .map(|c| c.id)
                        .collect(),
                    expires_s,
                })
                .peers
                .extend(peers.iter().copied());
        }
        let mut by = self.lock();
        for (id, grant) in grants {
            by.insert((stage.to_owned(), id), Arc::new(grant));
        }
        drop(by);
        self.granted.notify_waiters();
    }

    /// Caps what this host sends of `stage`'s chunks, all streams together, at `cap`
    /// (until the stage's grants are withdrawn). A stage capped already keeps its
    /// bucket: streams sending now pay into it.
    pub fn cap(&self, stage: &str, cap: Arc<RateLimit>) {
        self.caps.lock().expect("caps lock").entry(stage.to_owned()).or_insert(cap);
    }

    /// The cap on what this host sends of `stage`'s chunks, if it has one.
    pub fn cap_of(&self, stage: &str) -> Option<Arc<RateLimit>> {
        self.caps.lock().expect("caps lock").get(stage).cloned()
    }

    /// Withdraws every grant of `stage`.
    pub fn revoke_stage(&self, stage: &str) {
        self.lock().retain(|(s, _), _| s != stage);
        self.caps.lock().expect("caps lock").remove(stage);
    }

    /// Withdraws every grant of every stage of `deployment`.
    pub fn revoke(&self, deployment: &str) {
        self.lock().retain(|(s, _), _| deployment_of(s) != Some(deployment));
        self.caps.lock().expect("caps lock").retain(|s, _| deployment_of(s) != Some(deployment));
    }

    /// How many (stage, manifest) grants are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// May `peer` fetch `ids` of `manifest` for `stage`?
    pub fn check(
        &self,
        peer: &PeerId,
        stage: &str,
        manifest: &ManifestId,
        ids: &[ChunkId],
    ) -> Verdict {
        let now_s = crate::manager::now_ms() / 1000;
        let grant = {
            let mut by = self.lock();
            // Lapsed grants go as they are met.
            by.retain(|_, g| g.expires_s > now_s);
            by.get(&(stage.to_owned(), *manifest)).cloned()
        };
        let Some(grant) = grant else {
            let known =
                self.lock().iter().find(|((s, _), _)| s == stage).map(|(_, g)| g.vo.clone());
            let reason = match known {
                Some(_) => format!("manifest {manifest} is not part of stage {stage}"),
                None => format!("stage {stage} is not being staged through this host"),
            };
            return Verdict::Refused { vo: known, reason };
        };
        let refuse = |reason: String| Verdict::Refused { vo: Some(grant.vo.clone()), reason };
        if !grant.peers.contains(peer) {
            return refuse(format!(
                "peer {peer} is not staging manifest {manifest} for stage {stage}"
            ));
        }
        if let Some(id) = ids.iter().find(|id| !grant.chunks.contains(id)) {
            return refuse(format!("chunk {id:#} is not in manifest {manifest}"));
        }
        Verdict::Allowed { vo: grant.vo.clone() }
    }

    /// [`Grants::check`], but a request for a stage not known here yet waits up to
    /// `wait` for it to be granted (its stage order may be on its way) before it is
    /// refused. Every other refusal is final at once.
    pub async fn check_within(
        &self,
        peer: &PeerId,
        stage: &str,
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
            let verdict = self.check(peer, stage, manifest, ids);
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
    use crate::access::new_stage;
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
        grants.allow("d", "a", &[(&m, &[staging])], u64::MAX);
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
            .contains("not part of stage d"));
        assert!(refused(grants.check(&staging, "e", &m.id(), &ids))
            .contains("stage e is not being staged"));
        grants.revoke_stage("d");
        assert!(matches!(
            grants.check(&staging, "d", &m.id(), &ids),
            Verdict::Refused { vo: None, .. }
        ));
    }

    /// Two image names with the same contents are one manifest: the peers staging
    /// either may fetch it. Before, the second listing replaced the first, and a host
    /// staging the first name was refused ("is not staging manifest …"; `vw demo
    /// --size-mib 16` lost vo2's head node so).
    #[test]
    fn a_manifest_listed_twice_is_granted_to_the_peers_of_both() {
        let grants = Grants::default();
        let m = manifest(b"m");
        let (first, second) = (PeerId::random(), PeerId::random());
        grants.allow("d", "a", &[(&m, &[first]), (&m, &[second])], u64::MAX);
        let ids = [m.chunks()[0].id];
        for peer in [first, second] {
            assert_eq!(
                grants.check(&peer, "d", &m.id(), &ids),
                Verdict::Allowed { vo: "a".into() }
            );
        }
        assert_eq!(grants.len(), 1);
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
                grants.allow("d", "a", &[(&m, &[staging])], u64::MAX);
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

    /// Two VOs deploy under one name; one stage ends (or fails): only its grants go.
    /// (Keyed by the name, the second VO's failed deploy revoked the first's grants.)
    #[test]
    fn a_stage_s_end_revokes_its_own_grants_only() {
        let grants = Grants::default();
        let (m, n) = (manifest(b"m"), manifest(b"n"));
        let (pa, pb) = (PeerId::random(), PeerId::random());
        let (a, b) = (new_stage("grid"), new_stage("grid"));
        assert_ne!(a, b);
        assert_eq!(deployment_of(&a), Some("grid"));
        grants.allow(&a, "vo1", &[(&m, &[pa])], u64::MAX);
        grants.allow(&b, "vo2", &[(&n, &[pb])], u64::MAX);
        grants.revoke_stage(&b);
        let ids = [m.chunks()[0].id];
        assert_eq!(grants.check(&pa, &a, &m.id(), &ids), Verdict::Allowed { vo: "vo1".into() });
        assert!(matches!(
            grants.check(&pb, &b, &n.id(), &[n.chunks()[0].id]),
            Verdict::Refused { .. }
        ));
        // Unstaging the deployment ends every stage of it.
        grants.revoke("grid");
        assert!(grants.is_empty());
    }

    #[test]
    fn a_grant_lapses_when_its_ticket_expires() {
        let grants = Grants::default();
        let m = manifest(b"m");
        let p = PeerId::random();
        let now_s = crate::manager::now_ms() / 1000;
        grants.allow("d@1", "a", &[(&m, &[p])], now_s - 1);
        let verdict = grants.check(&p, "d@1", &m.id(), &[m.chunks()[0].id]);
        assert!(matches!(verdict, Verdict::Refused { vo: None, .. }), "{verdict:?}");
        assert!(grants.is_empty(), "a lapsed grant is dropped");
    }
}
