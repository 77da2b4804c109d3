//! What the head's deployments are doing now, for `vw status` and `vw status --watch`:
//! each deploy (or create) under way, its phase and each host's latest progress, fed
//! by the events the deployment sends its client, and forgotten when it ends.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::deployment::{DeployEvent, DeployPhase};
use super::protocol::Progress;
use crate::names::HostName;

/// One deployment under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveDeployment {
    /// Its name.
    pub deployment: String,
    /// The phase it is in (none before the first).
    pub phase: Option<DeployPhase>,
    /// Milliseconds since it began.
    pub elapsed_ms: u64,
    /// Each host's latest progress, by host name.
    pub hosts: BTreeMap<HostName, Progress>,
    /// Hosts lost so far, with why.
    pub lost: Vec<(HostName, String)>,
}

/// The deployments under way on a head.
#[derive(Debug, Default)]
pub struct Live {
    running: Mutex<BTreeMap<String, (Instant, LiveDeployment)>>,
}

impl Live {
    /// `deployment` begins (again, if it was under way: a second client's attempt).
    pub fn begin(&self, deployment: &str) {
        let fresh = LiveDeployment {
            deployment: deployment.to_owned(),
            phase: None,
            elapsed_ms: 0,
            hosts: BTreeMap::new(),
            lost: Vec::new(),
        };
        self.lock().insert(deployment.to_owned(), (Instant::now(), fresh));
    }

    /// What `event` says of `deployment`.
    pub fn note(&self, deployment: &str, event: &DeployEvent) {
        let mut running = self.lock();
        let Some((_, d)) = running.get_mut(deployment) else { return };
        match event {
            DeployEvent::Phase { phase } => d.phase = Some(*phase),
            DeployEvent::Progress { host, progress } => {
                d.hosts.insert(host.clone(), *progress);
            }
            DeployEvent::Lost { host, reason } => d.lost.push((host.clone(), reason.clone())),
            DeployEvent::Planned { .. } => {}
        }
    }

    /// `deployment` ended, either way.
    pub fn end(&self, deployment: &str) {
        self.lock().remove(deployment);
    }

    /// Every deployment under way, by name.
    pub fn now(&self) -> Vec<LiveDeployment> {
        self.lock()
            .values()
            .map(|(began, d)| LiveDeployment {
                elapsed_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
                ..d.clone()
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Instant, LiveDeployment)>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Phase;

    #[test]
    fn a_deployment_is_seen_from_its_first_event_to_its_end() {
        let live = Live::default();
        live.note("g", &DeployEvent::Phase { phase: DeployPhase::Stage });
        assert!(live.now().is_empty(), "not begun: nothing noted");
        live.begin("g");
        live.note("g", &DeployEvent::Phase { phase: DeployPhase::Stage });
        let p = |bytes| Progress { phase: Phase::Fetch, bytes, total: 100, rate: 10 };
        live.note("g", &DeployEvent::Progress { host: "node1".into(), progress: p(10) });
        live.note("g", &DeployEvent::Progress { host: "node1".into(), progress: p(60) });
        live.note("g", &DeployEvent::Lost { host: "node2".into(), reason: "gone".into() });
        let now = live.now();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].phase, Some(DeployPhase::Stage));
        assert_eq!(now[0].hosts["node1"].bytes, 60, "the latest progress");
        assert_eq!(now[0].lost, [("node2".into(), "gone".to_owned())]);
        live.end("g");
        assert!(live.now().is_empty());
    }
}
