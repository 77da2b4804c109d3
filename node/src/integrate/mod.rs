//! Fitting a VM's images into the virtual cluster: hostname, addresses, `/etc/hosts`
//! for the whole cluster, NFS exports and mounts, the batch system's server name and
//! node list.
//!
//! [`VmSetup`] is what one VM needs to know (computed by the manager from the
//! deployment), [`files`] turns it into file contents, and two strategies deliver them
//! without ever touching the shared base image:
//! - [`seed`]: a cloud-init NoCloud volume (`CIDATA`, vfat) attached read-only;
//! - [`ext4`]: edits to the VM's own copy of an ext4 root partition with `debugfs`,
//!   each read back, then `e2fsck -fn`.

pub mod ext4;
pub mod files;
pub mod seed;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use vw_planner::address::Mac;

use crate::workspace::{BatchSystem, Network, Roles};

/// Everything one VM's integration needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSetup {
    /// cloud-init's instance id: changes with every deployment so cloud-init reruns.
    pub instance_id: String,
    /// The guest hostname.
    pub hostname: String,
    /// Its NICs in order (`eth0`, `eth1`).
    pub nics: Vec<NicSetup>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Its software roles.
    pub roles: Roles,
    /// vCPUs (the batch system's processor count for this node).
    pub vcpus: u32,
    /// The guest device of its swap partition, if it has one (`xvda2`).
    pub swap: Option<String>,
    /// The rest of the cluster.
    pub cluster: ClusterView,
}

/// One NIC, addressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSetup {
    /// Which network.
    pub network: Network,
    /// Its address and prefix.
    pub address: Ipv4Net,
    /// Its MAC.
    pub mac: Mac,
    /// The gateway, if this NIC carries the default route.
    pub gateway: Option<Ipv4Addr>,
}

/// What every VM knows about the others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The virtual cluster's name (the deployment's).
    pub name: String,
    /// Every VM's hostname and private address, head first.
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// The head node's hostname (NFS server, batch server).
    pub head: String,
    /// The private network (NFS exports are open to it).
    pub private_net: Ipv4Net,
    /// Batch workers and their processor counts.
    pub batch_nodes: Vec<(String, u32)>,
    /// The batch system the head's server runs, if any.
    pub batch_system: Option<BatchSystem>,
    /// Slurm's MUNGE key, the same on every VM of the cluster (with Slurm only).
    pub munge_key: Option<MungeKey>,
}

/// A virtual cluster's MUNGE key, which Slurm's daemons authenticate each other with:
/// 512 random-looking bytes as 1024 lowercase hex digits (munged takes any key file of
/// at least 32 bytes). The head derives it per deployment from a secret of its own, so
/// every host, and every later stage of the same deployment, gets the same one without
/// anything being stored; it travels only in stage orders, on the encrypted control
/// protocol. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MungeKey(String);

impl MungeKey {
    /// Hex digits in a key.
    pub const LEN: usize = 1024;

    /// The key of deployment `name` (created at `created_ms`) under the head's `secret`.
    pub fn derive(secret: &[u8; 32], name: &str, created_ms: u64) -> Self {
        let mut h = blake3::Hasher::new_keyed(secret);
        h.update(b"vw munge key\0");
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&created_ms.to_le_bytes());
        let mut bytes = [0u8; Self::LEN / 2];
        h.finalize_xof().fill(&mut bytes);
        MungeKey(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The key as written to `/etc/munge/munge.key`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MungeKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.len() != Self::LEN || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "a MUNGE key is {} lowercase hex digits; this one has {} characters",
                Self::LEN,
                s.len()
            ));
        }
        Ok(MungeKey(s))
    }
}

impl From<MungeKey> for String {
    fn from(k: MungeKey) -> String {
        k.0
    }
}

impl std::fmt::Debug for MungeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MungeKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key per deployment and head secret, the same every time it is derived;
    /// only well-formed keys decode; `Debug` keeps it out of logs.
    #[test]
    fn a_munge_key_is_derived_per_deployment_and_never_shown() {
        let key = MungeKey::derive(&[9; 32], "grid3", 1000);
        assert_eq!(key, MungeKey::derive(&[9; 32], "grid3", 1000));
        for other in [
            MungeKey::derive(&[8; 32], "grid3", 1000),
            MungeKey::derive(&[9; 32], "grid4", 1000),
            MungeKey::derive(&[9; 32], "grid3", 1001),
        ] {
            assert_ne!(key, other);
        }
        assert_eq!(key.as_str().len(), MungeKey::LEN);
        assert_eq!(MungeKey::try_from(key.as_str().to_owned()), Ok(key.clone()));
        for bad in ["".to_owned(), "A".repeat(MungeKey::LEN), "0".repeat(MungeKey::LEN - 1)] {
            assert!(MungeKey::try_from(bad).is_err());
        }
        assert_eq!(format!("{key:?}"), "MungeKey(..)");
        let wire = postcard::to_allocvec(&Some(key.clone())).expect("encodes");
        let back: Option<MungeKey> = postcard::from_bytes(&wire).expect("decodes");
        assert_eq!(back, Some(key));
    }
}

/// Why integration failed.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    /// A tool it needs is not installed.
    #[error("{tool} is not installed ({error}); run scripts/install-deps.sh or install {package}")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// Its Debian package.
        package: &'static str,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// A tool failed.
    #[error("`{command}` failed ({status}) on {path}: {stderr}")]
    ToolFailed {
        /// The command.
        command: String,
        /// The image or volume.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// A tool ran past its deadline and was killed.
    #[error("`{command}` did not finish within {seconds} s on {path} and was killed")]
    ToolTimeout {
        /// The command.
        command: String,
        /// The image or volume.
        path: PathBuf,
        /// The deadline.
        seconds: u64,
    },
    /// An edit did not read back as written (debugfs exits 0 even when a write fails).
    #[error("{image}: {file} reads back differently from what was written ({detail}); is the file system full or damaged?")]
    Readback {
        /// The image or volume.
        image: PathBuf,
        /// The file inside it.
        file: String,
        /// How it differs.
        detail: String,
    },
    /// A file must belong to a user the image does not have.
    #[error("{image}: no user `{user}` in /etc/passwd for {file}; install the package that makes it in the image ({user} for Slurm's MUNGE key)")]
    UnknownUser {
        /// The image.
        image: PathBuf,
        /// The user.
        user: String,
        /// The file that was to be theirs.
        file: String,
    },
    /// A file read from a guest image is larger than vw ever writes or reads there.
    #[error("{image}: {file} is larger than {max} bytes; vw reads only small configuration files from an image, so this one is refused as hostile or damaged")]
    GuestFileTooLarge {
        /// The image.
        image: PathBuf,
        /// The file inside it.
        file: String,
        /// The limit.
        max: usize,
    },
    /// In-image edits need ext2/3/4.
    #[error("{image} is not an ext4 file system, so it cannot be edited in place; use <integration strategy=\"seed\"/> for this node")]
    NotExt4 {
        /// The partition image.
        image: PathBuf,
    },
    /// A path debugfs cannot be given (a quote, a control character, not UTF-8).
    #[error("cannot pass {path} to debugfs (it has a quote or control character); use a store path without them")]
    Unquotable {
        /// The path.
        path: PathBuf,
    },
    /// The file system check after the edits found problems.
    #[error("e2fsck -fn found problems in {image} after the edits: {output}")]
    Fsck {
        /// The partition image.
        image: PathBuf,
        /// What e2fsck printed.
        output: String,
    },
    /// Local I/O failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
}

impl IntegrationError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        IntegrationError::Io { op, path: path.into(), error }
    }
}

/// Runs a tool, mapping "not installed" and failures to errors; returns stdout.
pub(crate) fn run_tool(
    tool: &'static str,
    package: &'static str,
    args: &[&std::ffi::OsStr],
    path: &std::path::Path,
) -> Result<Vec<u8>, IntegrationError> {
    let out = tool_output(tool, package, std::process::Command::new(tool).args(args), path)?;
    if !out.status.success() {
        return Err(IntegrationError::ToolFailed {
            command: command_line(tool, args),
            path: path.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// How long one run of an integration tool may take: they work on a VO's file system,
/// which may be built to make them hang.
pub(crate) const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Output kept from an integration tool (they print a few lines; a file read back is
/// read from a file, not from here).
const TOOL_OUTPUT: usize = 1 << 20;

/// Runs `command` (the program `tool`, from `package`) on `path` under
/// [`TOOL_TIMEOUT`], keeping at most [`TOOL_OUTPUT`] bytes of each output stream.
pub(crate) fn tool_output(
    tool: &'static str,
    package: &'static str,
    command: &mut std::process::Command,
    path: &std::path::Path,
) -> Result<crate::process::Finished, IntegrationError> {
    tool_output_within(tool, package, command, path, TOOL_OUTPUT)
}

/// [`tool_output`], keeping at most `max_output` bytes of each stream.
pub(crate) fn tool_output_within(
    tool: &'static str,
    package: &'static str,
    command: &mut std::process::Command,
    path: &std::path::Path,
    max_output: usize,
) -> Result<crate::process::Finished, IntegrationError> {
    match crate::process::run(command.env("MTOOLS_SKIP_CHECK", "1"), TOOL_TIMEOUT, max_output) {
        Ok(out) => Ok(out),
        Err(crate::process::RunError::Spawn(error)) => {
            Err(IntegrationError::ToolMissing { tool, package, error })
        }
        Err(crate::process::RunError::Timeout) => Err(IntegrationError::ToolTimeout {
            command: command_line(tool, &command.get_args().collect::<Vec<_>>()),
            path: path.to_owned(),
            seconds: TOOL_TIMEOUT.as_secs(),
        }),
    }
}

fn command_line(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    std::iter::once(tool.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
