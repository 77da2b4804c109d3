//! Text and JSON output. Results go to stdout; notes, progress and errors to stderr.

use serde::Serialize;
use vw_node::control::deployment::HostAnswer;
use vw_node::control::protocol::{HostStatus, VmSeen};
use vw_node::control::{Failure, FailureKind};
use vw_node::workspace::VmRole;

/// Where results go and in which form.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a result: `value` as JSON, or `text()`.
    pub fn emit<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("serialisable"));
        } else {
            println!("{}", text());
        }
    }

    /// Prints a side note on stderr (text mode only).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    /// Reports a failure: on stderr, and as `{"error": ...}` on stdout with `--json`.
    pub fn error(&self, e: &anyhow::Error) {
        eprintln!("error: {e:#}");
        if self.json {
            println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
        }
    }
}

pub use vw_node::storecmd::bytes;

/// One VM in `vw status --json`: the same whether it came from this host's records or
/// from a host through the head. The CLI's own form, made from what a host reports
/// ([`VmSeen`]): a change to the records or the wire changes it only on purpose.
#[derive(Debug, Serialize)]
pub struct VmOut {
    pub name: String,
    pub deployment: String,
    pub hostname: String,
    /// `head` or `worker N`.
    pub role: String,
    pub state: String,
    /// The hypervisor's state; `null`: no domain.
    pub domain: Option<String>,
    pub nics: Vec<NicOut>,
    /// Its last steps, oldest first.
    pub last_steps: Vec<StepOut>,
    pub note: Option<String>,
}

/// A VM's NIC.
#[derive(Debug, Serialize)]
pub struct NicOut {
    pub network: String,
    pub ip: String,
    pub mac: String,
}

/// A step a VM took, and how long it took.
#[derive(Debug, Serialize)]
pub struct StepOut {
    pub step: String,
    pub seconds: f64,
}

impl From<&VmSeen> for VmOut {
    fn from(v: &VmSeen) -> Self {
        VmOut {
            name: v.name.clone(),
            deployment: v.deployment.clone(),
            hostname: v.hostname.clone(),
            role: match v.role {
                VmRole::Head => "head".into(),
                VmRole::Worker(n) => format!("worker {n}"),
            },
            state: v.state.to_string(),
            domain: v.domain.map(|d| d.to_string()),
            nics: v
                .nics
                .iter()
                .map(|n| NicOut {
                    network: n.network.to_string(),
                    ip: n.ip.to_string(),
                    mac: n.mac.to_string(),
                })
                .collect(),
            last_steps: v
                .last_steps
                .iter()
                .map(|t| StepOut { step: t.step.to_string(), seconds: t.micros as f64 / 1e6 })
                .collect(),
            note: v.note.clone(),
        }
    }
}

/// One host's answer in `vw status --json` through the head: its driver and VMs, or
/// why it did not answer.
#[derive(Debug, Serialize)]
pub struct HostOut {
    pub host: String,
    pub driver: Option<String>,
    pub simulated: bool,
    pub vms: Vec<VmOut>,
    pub error: Option<FailureOut>,
}

/// A failure: its kind (`refused`, `unreachable`, `disk_full`, `not_found`, `failed`)
/// and message.
#[derive(Debug, Serialize)]
pub struct FailureOut {
    pub kind: FailureKind,
    pub message: String,
}

impl From<&Failure> for FailureOut {
    fn from(f: &Failure) -> Self {
        FailureOut { kind: f.kind, message: f.message.clone() }
    }
}

impl From<&HostAnswer<HostStatus>> for HostOut {
    fn from(h: &HostAnswer<HostStatus>) -> Self {
        match &h.result {
            Ok(st) => HostOut {
                host: h.host.to_string(),
                driver: Some(st.driver.name().to_owned()),
                simulated: st.driver.simulated(),
                vms: st.vms.iter().map(VmOut::from).collect(),
                error: None,
            },
            Err(f) => HostOut {
                host: h.host.to_string(),
                driver: None,
                simulated: false,
                vms: Vec::new(),
                error: Some(f.into()),
            },
        }
    }
}

/// Parses `20G`, `512M`, `1.5T`, `4096` (binary units).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    vw_node::workspace::parse_size(s).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").ok(), Some(20 << 30));
        assert_eq!(parse_size("512m").ok(), Some(512 << 20));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("1.5K").ok(), Some(1536));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
