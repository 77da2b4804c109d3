//! The hosts file (TOML): the physical cluster `vw plan` plans for. Documented in
//! `docs/operations.md`; `examples/hosts-paper.toml` is the paper's testbed.
//!
//! ```toml
//! [defaults]                 # applied to every host that does not say otherwise
//! memory_mib = 2048
//! cpus = 2                   # physical cores (pinned VMs get them exclusively)
//! vcpus_per_cpu = 2          # vCPUs it runs per core (default 1); or `vcpus = 4` in all
//! up = "100Mbit"             # link rates: 100Mbit, 1Gbit, 12.5MB, 10MiB (per second)
//! down = "100Mbit"
//! images = []                # whole images every host holds, unless it says otherwise
//!
//! [[host]]
//! name = "head"
//! up = "10MB"
//! down = "10MB"
//! images = ["grid3/head:1.0", "grid3/worker:1.0"]   # whole images it holds
//! source = true              # it must hold something
//!
//! [[host]]
//! name = "node1"
//! rack = "r1"
//! images = ["grid3/base:1.0"]   # the base OS, cached
//! alive = true
//! ```
//!
//! Unknown keys are refused, with their line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vw_chunkstore::ImageRef;
use vw_planner::{Cluster, Host, PlanError};

/// Why a hosts file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file could not be read.
    #[error("cannot read hosts file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// Not TOML of this schema (toml's message has the line and column).
    #[error("hosts file {source_name}: {message}")]
    Syntax {
        /// The file.
        source_name: String,
        /// What is wrong, where.
        message: String,
    },
    /// A value is wrong.
    #[error("hosts file {source_name}: host {host}: {message}")]
    Value {
        /// The file.
        source_name: String,
        /// The host.
        host: String,
        /// What is wrong.
        message: String,
    },
    /// The cluster is inconsistent.
    #[error("hosts file {source_name}: {error}")]
    Cluster {
        /// The file.
        source_name: String,
        /// The planner's complaint.
        error: PlanError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Entry,
    #[serde(default)]
    host: Vec<Entry>,
}

/// One `[[host]]` (or `[defaults]`): every key optional here, required after defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Unique name.
    name: Option<String>,
    /// Memory for guests, MiB.
    memory_mib: Option<u64>,
    /// vCPUs it runs in all (default: `cpus` × `vcpus_per_cpu`).
    vcpus: Option<u32>,
    /// vCPUs per physical core, when `vcpus` is not given (default 1: no overcommit).
    vcpus_per_cpu: Option<u32>,
    /// Physical cores.
    cpus: Option<u32>,
    /// Uplink rate.
    up: Option<String>,
    /// Downlink rate.
    down: Option<String>,
    /// Rack or switch.
    rack: Option<String>,
    /// Whether it is up (default true).
    alive: Option<bool>,
    /// Whole images it holds (names or manifest ids).
    images: Option<Vec<String>>,
    /// Marks a host that must hold images (the head host, where they were imported).
    source: Option<bool>,
}

/// A parsed hosts file: the cluster and which images each host holds.
#[derive(Debug)]
pub struct HostsFile {
    /// The hosts.
    pub cluster: Cluster,
    /// For each host (same order), the images it holds whole.
    pub images: Vec<Vec<ImageRef>>,
}

impl HostsFile {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, HostsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| HostsError::Io { path: path.to_owned(), error })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, HostsError> {
        let file: File = toml::from_str(text).map_err(|e| HostsError::Syntax {
            source_name: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let d = &file.defaults;
        if d.name.is_some() || d.source.is_some() {
            return Err(HostsError::Syntax {
                source_name: source.to_owned(),
                message: "[defaults] may not set name or source".into(),
            });
        }
        let mut hosts = Vec::new();
        let mut images = Vec::new();
        for (i, e) in file.host.iter().enumerate() {
            let name = e.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let bad = |message: String| HostsError::Value {
                source_name: source.to_owned(),
                host: name.clone(),
                message,
            };
            if e.name.is_none() {
                return Err(bad("has no name".into()));
            }
            let need = |v: Option<u64>, key: &str| {
                v.ok_or_else(|| bad(format!("has no {key} (and [defaults] gives none)")))
            };
            let rate = |v: &Option<String>, key: &str| -> Result<f64, HostsError> {
                let text = v
                    .as_ref()
                    .ok_or_else(|| bad(format!("has no {key} rate (and [defaults] gives none)")))?;
                parse_rate(text).map_err(|m| bad(format!("{key}: {m}")))
            };
            let held: Vec<ImageRef> = e
                .images
                .as_ref()
                .or(d.images.as_ref())
                .into_iter()
                .flatten()
                .map(|s| s.parse().map_err(|err| bad(format!("image {s}: {err}"))))
                .collect::<Result<_, _>>()?;
            if e.source == Some(true) && held.is_empty() {
                let error = PlanError::EmptySource { host: name.clone() };
                return Err(HostsError::Cluster { source_name: source.to_owned(), error });
            }
            let memory_mib = need(e.memory_mib.or(d.memory_mib), "memory_mib")?;
            let cpus = need(e.cpus.or(d.cpus).map(u64::from), "cpus")? as u32;
            let per_cpu = e.vcpus_per_cpu.or(d.vcpus_per_cpu).unwrap_or(1);
            if !(1..=crate::config::MAX_VCPUS_PER_CPU).contains(&per_cpu) {
                return Err(bad(format!("vcpus_per_cpu {per_cpu}: 1 (no overcommit) to 16")));
            }
            let vcpus = match e.vcpus.or(d.vcpus) {
                Some(v) => v,
                None => cpus
                    .checked_mul(per_cpu)
                    .ok_or_else(|| bad(format!("{cpus} CPUs × {per_cpu} vCPUs overflows")))?,
            };
            hosts.push(Host {
                name: name.clone(),
                memory_mib,
                vcpus,
                cpus,
                up: rate(if e.up.is_some() { &e.up } else { &d.up }, "up")?,
                down: rate(if e.down.is_some() { &e.down } else { &d.down }, "down")?,
                rack: e.rack.clone().or_else(|| d.rack.clone()),
                alive: e.alive.or(d.alive).unwrap_or(true),
            });
            images.push(held);
        }
        let cluster = Cluster::new(hosts)
            .map_err(|error| HostsError::Cluster { source_name: source.to_owned(), error })?;
        Ok(HostsFile { cluster, images })
    }
}

/// A link rate in bytes per second: `100Mbit` (bits, decimal), `12.5MB` (bytes,
/// decimal), `10MiB` (bytes, binary); an optional `/s` or `ps`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("`{text}` is not a rate like 100Mbit or 12.5MB"))?;
    let factor = match unit.trim() {
        "bit" | "b" => 1.0 / 8.0,
        "kbit" | "Kbit" | "kb" => 1e3 / 8.0,
        "Mbit" | "Mb" => 1e6 / 8.0,
        "Gbit" | "Gb" => 1e9 / 8.0,
        "B" | "" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; use bit, Mbit, Gbit, B, MB, GB, MiB or GiB"
            ))
        }
    };
    Ok(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bits_and_bytes() {
        assert_eq!(parse_rate("100Mbit"), Ok(12.5e6));
        assert_eq!(parse_rate("1Gbit/s"), Ok(125e6));
        assert_eq!(parse_rate("10MB"), Ok(10e6));
        assert_eq!(parse_rate("10MiB"), Ok(10.0 * 1048576.0));
        assert_eq!(parse_rate("100Mbps"), Ok(12.5e6));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10furlongs").expect_err("unit").contains("unknown unit"));
    }

    #[test]
    fn the_paper_testbed_parses() {
        let text = include_str!("../../examples/hosts-paper.toml");
        let f = HostsFile::parse(text, "hosts-paper.toml").expect("parses");
        assert_eq!(f.cluster.len(), 8);
        assert_eq!(f.cluster.hosts()[0].up, 10e6);
        assert_eq!(f.cluster.hosts()[1].up, 12.5e6);
        assert!(!f.images[0].is_empty());
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let err = HostsFile::parse("[[host]]\nname = \"a\"\nspeed = 3\n", "h.toml")
            .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `speed`"), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
        let base = "[defaults]\nmemory_mib = 1024\nvcpus = 2\ncpus = 1\nup = \"1Gbit\"\ndown = \"1Gbit\"\n";
        let err = HostsFile::parse(
            &format!("{base}[[host]]\nname = \"a\"\n[[host]]\nname = \"a\"\n"),
            "h.toml",
        )
        .expect_err("dup");
        assert!(err.to_string().contains("duplicate host name a"), "{err}");
        let err =
            HostsFile::parse(&format!("{base}[[host]]\nname = \"a\"\nup = \"0Mbit\"\n"), "h.toml")
                .expect_err("zero");
        assert!(err.to_string().contains("host a has a zero uplink rate"), "{err}");
        let err =
            HostsFile::parse(&format!("{base}[[host]]\nname = \"a\"\nsource = true\n"), "h.toml")
                .expect_err("empty source");
        assert!(err.to_string().contains("source a holds nothing"), "{err}");
        let err = HostsFile::parse("[[host]]\nname = \"a\"\n", "h.toml").expect_err("no memory");
        assert!(err.to_string().contains("host a: has no memory_mib"), "{err}");
        let err = HostsFile::parse(
            &format!("{base}[[host]]\nname = \"a\"\nvcpus_per_cpu = 0\n"),
            "h.toml",
        )
        .expect_err("zero ratio");
        assert!(err.to_string().contains("host a: vcpus_per_cpu 0"), "{err}");
        // Without vcpus, a host runs cpus × vcpus_per_cpu (default 1).
        let base = base.replace("vcpus = 2\n", "");
        let f = HostsFile::parse(
            &format!("{base}[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\ncpus = 4\nvcpus_per_cpu = 3\n"),
            "h.toml",
        )
        .expect("hosts");
        let vcpus: Vec<u32> = f.cluster.hosts().iter().map(|h| h.vcpus).collect();
        assert_eq!(vcpus, [1, 12]);
    }
}
