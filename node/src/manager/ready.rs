//! Waiting for guests to say they are up: a VM is `running` when the hypervisor says
//! so, and *ready* when its guest has reported (through the driver's
//! [`Driver::guest_report`](crate::xen::Driver::guest_report)) that it booted with its
//! configuration applied. [`Manager::probe_ready`](super::Manager::probe_ready) asks
//! once; [`ReadyWait`] collects the answers of repeated probes, so that a caller can
//! poll without holding the manager between probes.

use std::collections::BTreeMap;

use crate::report::VmReady;
use crate::xen::GuestReport;

/// Console lines kept for a guest that did not become ready.
pub const CONSOLE_LINES: usize = 20;

/// One probe of one running VM.
#[derive(Debug)]
pub struct Probe {
    /// The VM.
    pub vm: String,
    /// When its `start` (or last `unpause`) step began, ms since the epoch.
    pub started_ms: u64,
    /// What it said: a report, nothing yet, or why it never will.
    pub seen: Seen,
}

/// What a probe found.
#[derive(Debug)]
pub enum Seen {
    /// The guest reported; where it disagrees with what vw gave it.
    Ready(GuestReport, Vec<String>),
    /// Not yet.
    Waiting,
    /// It will not: its domain is gone, or its report cannot be read.
    Failed(String),
}

/// The answers so far, VM by VM.
#[derive(Debug, Default)]
pub struct ReadyWait {
    vms: BTreeMap<String, VmReady>,
}

impl ReadyWait {
    /// Takes one round of probes at `now_ms`; true once no VM is still waiting.
    pub fn absorb(&mut self, probes: Vec<Probe>, now_ms: u64) -> bool {
        for p in probes {
            let entry = self.vms.entry(p.vm.clone()).or_insert_with(|| VmReady {
                vm: p.vm.clone(),
                ready_ms: None,
                report: None,
                problem: None,
                disagreements: Vec::new(),
                console: Vec::new(),
                lazy: None,
            });
            if entry.report.is_some() || entry.problem.is_some() {
                continue;
            }
            match p.seen {
                Seen::Ready(report, disagreements) => {
                    entry.ready_ms = Some(now_ms.saturating_sub(p.started_ms));
                    entry.report = Some(report);
                    entry.disagreements = disagreements;
                }
                Seen::Failed(why) => entry.problem = Some(why),
                Seen::Waiting => {}
            }
        }
        self.waiting().next().is_none()
    }

    /// Notes what each VM's lazy disks did (`lazy`: their counts, and the reads that
    /// failed, if it has any), once: as its answer comes in, or (`end`) when the wait
    /// ends for those still waiting. A VM not ready whose reads failed says so in its
    /// problem: which chunk, and why.
    pub fn note_lazy(
        &mut self,
        end: bool,
        lazy: impl Fn(&str) -> Option<(crate::report::LazyCounts, Vec<String>)>,
    ) {
        for entry in self.vms.values_mut() {
            let answered = entry.report.is_some() || entry.problem.is_some();
            if entry.lazy.is_some() || !(answered || end) {
                continue;
            }
            let Some((counts, failures)) = lazy(&entry.vm) else { continue };
            entry.lazy = Some(counts);
            if entry.report.is_none() && !failures.is_empty() {
                let reads = format!("its guest's disk reads failed: {}", failures.join("; "));
                entry.problem = Some(match entry.problem.take() {
                    Some(p) => format!("{p}; {reads}"),
                    None => reads,
                });
            }
        }
    }

    /// The VMs whose answer is in (ready, or never will be): no need to probe them again.
    pub fn answered(&self) -> Vec<String> {
        self.vms
            .values()
            .filter(|v| v.report.is_some() || v.problem.is_some())
            .map(|v| v.vm.clone())
            .collect()
    }

    /// The VMs still waiting.
    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.vms
            .values()
            .filter(|v| v.report.is_none() && v.problem.is_none())
            .map(|v| v.vm.as_str())
    }

    /// The outcome after `timeout_s`: VMs still waiting are not ready; every VM that is
    /// not ready gets the end of its console from `console`.
    pub fn finish(self, timeout_s: u64, console: impl Fn(&str) -> Vec<String>) -> Vec<VmReady> {
        self.vms
            .into_values()
            .map(|mut v| {
                if v.report.is_none() {
                    v.problem.get_or_insert_with(|| {
                        format!("its guest did not report within {timeout_s} s")
                    });
                    v.console = console(&v.vm);
                }
                v
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(vm: &str, seen: Seen) -> Probe {
        Probe { vm: vm.into(), started_ms: 1_000, seen }
    }

    #[test]
    fn a_vm_is_ready_when_its_guest_reports_and_timed_from_its_start() {
        let mut wait = ReadyWait::default();
        assert!(!wait.absorb(vec![probe("a", Seen::Waiting), probe("b", Seen::Waiting)], 2_000));
        let report = GuestReport::parse("v=1 host=a").expect("report");
        assert!(!wait.absorb(
            vec![probe("a", Seen::Ready(report, Vec::new())), probe("b", Seen::Waiting)],
            4_500
        ));
        assert_eq!(wait.waiting().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(wait.answered(), vec!["a".to_owned()]);
        // A later probe does not change an answer already had.
        assert!(wait.absorb(
            vec![probe("a", Seen::Waiting), probe("b", Seen::Failed("domain gone".into()))],
            9_000
        ));
        let out = wait.finish(60, |vm| vec![format!("console of {vm}")]);
        assert_eq!(out[0].ready_ms, Some(3_500));
        assert!(out[0].console.is_empty());
        assert_eq!(out[1].ready_ms, None);
        assert_eq!(out[1].problem.as_deref(), Some("domain gone"));
        assert_eq!(out[1].console, vec!["console of b".to_owned()]);
    }

    #[test]
    fn a_vm_that_never_reports_is_not_ready_with_its_console() {
        let mut wait = ReadyWait::default();
        assert!(!wait.absorb(vec![probe("a", Seen::Waiting)], 2_000));
        let out = wait.finish(300, |_| vec!["Kernel panic".to_owned()]);
        assert_eq!(out[0].ready_ms, None);
        assert_eq!(out[0].problem.as_deref(), Some("its guest did not report within 300 s"));
        assert_eq!(out[0].console, vec!["Kernel panic".to_owned()]);
    }
}
