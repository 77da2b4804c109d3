//! One run's cluster: fresh data directories and configs (a `LocalNet` with one address
//! per host), the head's store copied from the template (and the base OS on every host
//! when cached), one `vwd` per host namespace, CPU accounting, and stopping.

use std::path::{Path, PathBuf};

use vw_localnet::{ChildVwd, LocalNet, LocalNetOptions};

use crate::images::{copy_store, ImageSet};
use crate::net::{forget_process, register_process, HostNet};
use crate::TestnetError;

/// A running cluster of `vwd`s, host 0 the head.
#[derive(Debug)]
pub struct Cluster {
    /// The configs, names and data directories.
    pub net: LocalNet,
    /// Each host's place in the testnet.
    pub hosts: Vec<HostNet>,
    children: Vec<Option<ChildVwd>>,
    /// CPU seconds of hosts that were killed, taken just before.
    killed_cpu: f64,
}

/// How to start one.
#[derive(Debug)]
pub struct ClusterOptions<'a> {
    /// The hosts it uses (the head first).
    pub hosts: &'a [HostNet],
    /// Where its data directories go.
    pub dir: &'a Path,
    /// The images and templates.
    pub images: &'a ImageSet,
    /// The cluster config every vwd reads (the VOs it trusts).
    pub cluster_config: &'a Path,
    /// Whether every host but the head starts with the base OS.
    pub cached: bool,
    /// Wire compression for every vwd.
    pub compress: Option<String>,
    /// Whether peers are found by mDNS.
    pub mdns: bool,
    /// The `vwd` binary.
    pub vwd: &'a Path,
}

impl Cluster {
    /// Writes configs, copies stores and starts every vwd (the hosts, then the head).
    pub fn start(o: &ClusterOptions<'_>) -> Result<Cluster, TestnetError> {
        let rate = |bytes: f64| format!("{}bit", (bytes * 8.0).round() as u64);
        let net = LocalNet::create(
            o.dir,
            o.hosts.len(),
            &LocalNetOptions {
                // vwd reports its link rates to the planner through its caps; tc shapes
                // the links themselves.
                cap: o.hosts.get(1).map(|h| rate(h.rate)),
                head_cap: Some(rate(o.hosts[0].rate)),
                compress: o.compress.clone(),
                addresses: Some(o.hosts.iter().map(|h| h.addr).collect()),
                mdns: o.mdns,
                racks: Some(o.hosts.iter().map(|h| format!("r{}", h.rack)).collect()),
                cluster_config: Some(o.cluster_config.to_owned()),
                metrics: true,
            },
        )?;
        copy_store(&o.images.head_store, &net.data_dirs[0])?;
        if o.cached {
            for d in &net.data_dirs[1..] {
                copy_store(&o.images.cached_store, d)?;
            }
        }
        let mut cluster =
            Cluster { net, hosts: o.hosts.to_vec(), children: Vec::new(), killed_cpu: 0.0 };
        let order: Vec<usize> = (1..o.hosts.len()).chain([0]).collect();
        let mut started: Vec<(usize, ChildVwd)> = Vec::new();
        for i in order {
            let log = cluster.net.data_dirs[i].join("vwd.log");
            // Registered before it listens: a signal in between must still kill it.
            let child =
                cluster.net.spawn_in(i, Some(&o.hosts[i].netns), o.vwd, &log, register_process)?;
            started.push((i, child));
        }
        started.sort_by_key(|(i, _)| *i);
        cluster.children = started.into_iter().map(|(_, c)| Some(c)).collect();
        Ok(cluster)
    }

    /// The head's local socket.
    pub fn socket(&self) -> PathBuf {
        self.net.head_socket()
    }

    /// Host `i`'s Prometheus metrics, scraped from inside its namespace by `testnet`
    /// (this harness's binary).
    pub fn scrape(&self, i: usize, testnet: &Path) -> Result<String, TestnetError> {
        let addr = format!("{}:{}", self.hosts[i].addr, crate::metrics::PORT);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].netns])
            .arg(testnet)
            .args(["scrape", &addr])
            .output();
        let command = format!("ip netns exec {} vw-testnet scrape {addr}", self.hosts[i].netns);
        match out {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(TestnetError::Command {
                command,
                message: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            }),
            Err(e) => Err(TestnetError::Command { command, message: e.to_string() }),
        }
    }

    /// A host's index by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.net.names.iter().position(|n| n == name)
    }

    /// CPU seconds used so far by every vwd of this cluster (killed ones up to their
    /// death).
    pub fn cpu_seconds(&self) -> f64 {
        self.killed_cpu + self.children.iter().flatten().map(|c| cpu_of(c.pid())).sum::<f64>()
    }

    /// Kills host `i` (SIGKILL, as a crash).
    pub fn kill(&mut self, i: usize) -> Result<(), TestnetError> {
        if let Some(child) = self.children[i].take() {
            self.killed_cpu += cpu_of(child.pid());
            child.signal("KILL")?;
            forget_process(child.pid());
        }
        Ok(())
    }

    /// Whether host `i` is still running.
    pub fn alive(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Stops every vwd (SIGTERM) and waits for each; an unclean exit is an error.
    pub fn stop(&mut self) -> Result<(), TestnetError> {
        let mut failed = Vec::new();
        for (i, slot) in self.children.iter_mut().enumerate() {
            if let Some(child) = slot.take() {
                let pid = child.pid();
                match child.terminate() {
                    Ok(status) if status.success() => {}
                    Ok(status) => failed.push(format!("{} exited {status}", self.net.names[i])),
                    Err(e) => failed.push(format!("{}: {e:#}", self.net.names[i])),
                }
                forget_process(pid);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(TestnetError::Run(format!("stopping vwds: {}", failed.join("; "))))
        }
    }
}

/// A process's CPU seconds (user + system) from `/proc/<pid>/stat`; 0 if gone.
fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12].iter().filter_map(|&k| fields.get(k)?.parse::<u64>().ok()).sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_this_process_is_counted() {
        let start = cpu_of(std::process::id());
        let mut x = 0u64;
        for i in 0..200_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(x != 1);
        assert!(cpu_of(std::process::id()) > start, "CPU time grows while working");
        assert_eq!(cpu_of(u32::MAX), 0.0);
    }
}
