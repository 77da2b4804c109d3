//! `vwd`'s configuration (TOML, every field documented, unknown keys refused) and its
//! identity key.
//!
//! ```toml
//! role = "host"                       # "head" (drives deployments) or "host"
//! name = "node2"                      # this host in plans and output (default: hostname)
//! data_dir = "/var/lib/vw"            # the store, images, xen configs, vwd.sock
//! key_file = "node.key"               # relative to data_dir; made on first start
//! listen = ["/ip4/0.0.0.0/tcp/7400"]
//! cluster_config = "/etc/vw/cluster.toml"   # subnet, pools, Xen driver; embedded default if absent
//! mdns = false                        # also find listed peers' addresses by mDNS
//! rack = "r1"                        # optional: its switch, for the planner
//! upload_cap = "100Mbit"              # optional rate caps
//! download_cap = "100Mbit"
//! link_rate = "10Gbit"                # optional: else the NIC's speed, else 1 Gbit/s assumed
//! nic = "eth0"                        # optional: the NIC to read (default: the default route's)
//! socket_group = "vw"                 # may use vwd.sock (mode 0660); default vw if it exists
//! compress = "auto"                   # chunks on the wire: auto, always, never
//! metrics = "127.0.0.1:9474"          # optional: a Prometheus scrape endpoint
//!
//! [[peer]]                            # the only peers allowed to connect
//! name = "node1"
//! id = "12D3KooW…"
//! addr = "/ip4/10.0.0.1/tcp/7400"     # optional when mdns = true
//! head = true                         # may send control requests (default false)
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};

use libp2p::{identity, Multiaddr, PeerId};

use crate::peer::ClusterPeer;
use serde::Deserialize;

/// Why the daemon's configuration or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file could not be read or written.
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
    /// Not TOML of this schema (the message has the line and column).
    #[error("vwd config {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// What is wrong, where.
        message: String,
    },
    /// A value is wrong.
    #[error("vwd config {path}: {key}: {message}")]
    Value {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The key file lets other users read it.
    #[error(
        "identity key {path} has mode {mode:o}, which lets other users read it: `chmod 600 {path}` \
         (or, if it may have been read, move it away to make a new one; the peer id changes)"
    )]
    KeyExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a libp2p key.
    #[error("identity key {path} is unreadable ({reason}); move it away to make a new one (the peer id changes)")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the daemon is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Drives deployments: places, plans, sends control operations.
    Head,
    /// Stages and runs what the head sends.
    Host,
}

/// The configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// `head` or `host`.
    pub role: Role,
    /// This host's name in plans and output (default: the machine's hostname).
    pub name: Option<String>,
    /// The data directory (store, images, xen configs).
    pub data_dir: PathBuf,
    /// The identity key, relative to `data_dir` unless absolute (default `node.key`).
    #[serde(default = "default_key")]
    pub key_file: PathBuf,
    /// Multiaddresses to listen on.
    pub listen: Vec<String>,
    /// The cluster configuration (subnet, pools, Xen driver); the embedded default if absent.
    pub cluster_config: Option<PathBuf>,
    /// Also find the listed peers' addresses with mDNS on the local network (a peer
    /// found this way must still be listed to be allowed; others are ignored).
    #[serde(default)]
    pub mdns: bool,
    /// The rack (switch) this host is on, reported to the head for planning; none: the
    /// planner treats all hosts as one rack.
    pub rack: Option<String>,
    /// Upload rate cap (`100Mbit`, `12.5MB`); none: unlimited.
    pub upload_cap: Option<String>,
    /// Download rate cap; none: unlimited.
    pub download_cap: Option<String>,
    /// The link's speed each way (`10Gbit`, `1.25GB`); none: the speed the kernel
    /// reports for `nic`, else 1 Gbit/s, assumed (the inventory says which).
    pub link_rate: Option<String>,
    /// The NIC whose speed is read (default: the one on the IPv4 default route).
    pub nic: Option<String>,
    /// The group whose members may use the local socket (mode 0660), as docker's and
    /// libvirt's sockets do. Default `vw` if that group exists, else none (mode 0600,
    /// root only); a group named here must exist.
    pub socket_group: Option<String>,
    /// Whether chunks are sent zstd-compressed (each only if that saves an eighth):
    /// `auto` (default: when the upload cap is at most 1 Gbit/s), `always`, `never`.
    #[serde(default)]
    pub compress: Compress,
    /// Where to serve Prometheus metrics (`127.0.0.1:9474`): bytes per peer and
    /// deployment, cache hits, store size, stage and phase times, refusals. None: off.
    pub metrics: Option<std::net::SocketAddr>,
    /// The cluster's peers: the only ones allowed to connect.
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
}

/// Wire compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    /// When the upload cap is at most 1 Gbit/s: zstd -1 compresses real images' chunks
    /// at about 326 MB/s per core to a third (docs/experiments.md), so it pays on links
    /// well below that and costs on faster ones.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// One cluster peer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// A name for logs and output.
    pub name: String,
    /// Its peer id (from its key).
    pub id: String,
    /// Where to reach it; may be left out when `mdns` is on.
    pub addr: Option<String>,
    /// Whether it may send control requests (stage, load, …) to this host.
    #[serde(default)]
    pub head: bool,
}

fn default_key() -> PathBuf {
    "node.key".into()
}

/// The configuration with its strings checked and parsed.
#[derive(Clone, Debug)]
pub struct Daemon {
    /// Where it was read from, for messages.
    pub source: String,
    /// The file as written.
    pub config: DaemonConfig,
    /// This host's name: `name`, else the machine's hostname; unique among its peers.
    pub name: String,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// The cluster's peers.
    pub peers: Vec<ClusterPeer>,
    /// The peers that may send control requests.
    pub heads: Vec<PeerId>,
    /// Rate caps in bytes per second (upload, download).
    pub caps: (Option<f64>, Option<f64>),
    /// `link_rate`, in bytes per second.
    pub link_rate: Option<f64>,
}

impl Daemon {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|error| DaemonError::Io {
            op: "read",
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, DaemonError> {
        let config: DaemonConfig = toml::from_str(text).map_err(|e| DaemonError::Syntax {
            path: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let bad = |key: String, message: String| DaemonError::Value {
            path: source.to_owned(),
            key,
            message,
        };
        let listen = config
            .listen
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>().map_err(|e| bad("listen".into(), format!("`{a}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut peers = Vec::new();
        let mut heads = Vec::new();
        for (i, p) in config.peer.iter().enumerate() {
            let key = |k: &str| format!("peer[{i}] ({}).{k}", p.name);
            let id =
                p.id.parse::<PeerId>().map_err(|e| bad(key("id"), format!("`{}`: {e}", p.id)))?;
            let addr = match &p.addr {
                Some(a) => Some(
                    a.parse::<Multiaddr>().map_err(|e| bad(key("addr"), format!("`{a}`: {e}")))?,
                ),
                None if config.mdns => None,
                None => {
                    return Err(bad(
                        key("addr"),
                        "missing: give the peer's address, or set `mdns = true` to find it".into(),
                    ))
                }
            };
            if let Some(q) = peers.iter().find(|q: &&ClusterPeer| q.name == p.name || q.id == id) {
                return Err(bad(
                    key("name"),
                    format!(
                        "peer {} ({}) and peer {} ({}) share a name or an id: each host is \
                         listed once, under a name of its own",
                        q.name, q.id, p.name, p.id
                    ),
                ));
            }
            check_name(&p.name).map_err(|m| bad(key("name"), m))?;
            if p.head {
                heads.push(id);
            }
            peers.push(ClusterPeer { name: p.name.clone(), id, addr });
        }
        let cap = |v: &Option<String>, key: &str| -> Result<Option<f64>, DaemonError> {
            v.as_deref()
                .map(|t| {
                    crate::hosts::parse_rate(t)
                        .and_then(|r| {
                            if r > 0.0 {
                                Ok(r)
                            } else {
                                Err(format!("`{t}` must be more than 0"))
                            }
                        })
                        .map_err(|m| bad(key.into(), m))
                })
                .transpose()
        };
        let caps =
            (cap(&config.upload_cap, "upload_cap")?, cap(&config.download_cap, "download_cap")?);
        let name = match config.name.clone().or_else(hostname) {
            Some(n) => n,
            None => {
                return Err(bad(
                    "name".into(),
                    "not set, and this machine's hostname is unreadable: set `name`".into(),
                ))
            }
        };
        check_name(&name).map_err(|m| bad("name".into(), m))?;
        if let Some(p) = peers.iter().find(|p| p.name == name) {
            return Err(bad(
                "name".into(),
                format!(
                    "this host's name `{name}`{} is also peer {}'s ({}): host names must be \
                     unique in plans and reports; set `name` here or rename the peer",
                    if config.name.is_none() { " (its hostname)" } else { "" },
                    p.name,
                    p.id
                ),
            ));
        }
        let link_rate = cap(&config.link_rate, "link_rate")?;
        if let Some(nic) = &config.nic {
            // It names a file under /sys/class/net: an interface name, nothing more.
            let ok = !nic.is_empty()
                && nic.len() < 16
                && nic != "."
                && nic != ".."
                && !nic.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
            if !ok {
                return Err(bad("nic".into(), format!("`{nic}` is not a network interface name")));
            }
        }
        Ok(Daemon {
            source: source.to_owned(),
            config,
            name,
            listen,
            peers,
            heads,
            caps,
            link_rate,
        })
    }

    /// The key file's path.
    pub fn key_path(&self) -> PathBuf {
        self.config.data_dir.join(&self.config.key_file)
    }

    /// This host's link: `link_rate`, else what the kernel says of `nic` (or the
    /// default route's NIC), else assumed ([`crate::machine::link_rate`]).
    pub fn link(&self) -> crate::machine::LinkRate {
        crate::machine::link_rate(self.link_rate, self.config.nic.as_deref())
    }

    /// Whether this daemon sends chunks compressed, on `link`: `auto` does when what
    /// it may send (its upload cap, or a link speed that was configured or read, not
    /// assumed) is at most 1 Gbit/s.
    pub fn compress(&self, link: &crate::machine::LinkRate) -> bool {
        let known = (link.source != crate::machine::Source::Assumed).then_some(link.bytes_per_s);
        let up = match (self.caps.0, known) {
            (Some(cap), Some(link)) => Some(cap.min(link)),
            (cap, link) => cap.or(link),
        };
        match self.config.compress {
            Compress::Always => true,
            Compress::Never => false,
            Compress::Auto => up.is_some_and(|up| up <= 125e6),
        }
    }

    /// The local socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.config.data_dir.join(crate::local::SOCKET)
    }

    /// The group id that may use the local socket (`None`: root only), from
    /// `/etc/group`: `socket_group`, else `vw` if it exists.
    pub fn socket_group(&self) -> Result<Option<u32>, DaemonError> {
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        match &self.config.socket_group {
            Some(name) => match crate::local::group_id(&groups, name) {
                Some(gid) => Ok(Some(gid)),
                None => Err(DaemonError::Value {
                    path: self.source.clone(),
                    key: "socket_group".into(),
                    message: format!(
                        "no group `{name}` in /etc/group: make it (`addgroup --system {name}`) or leave socket_group out"
                    ),
                }),
            },
            None => Ok(crate::local::group_id(&groups, "vw")),
        }
    }

    /// Refuses a peer listed with this host's own id.
    pub fn check_own_id(&self, me: &PeerId) -> Result<(), DaemonError> {
        match self.peers.iter().find(|p| p.id == *me) {
            Some(p) => Err(DaemonError::Value {
                path: self.source.clone(),
                key: format!("peer ({})", p.name),
                message: format!(
                    "peer {} has this host's own id {me}: list the other hosts, not this one",
                    p.name
                ),
            }),
            None => Ok(()),
        }
    }
}

/// The machine's hostname, if it has one.
fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(h.trim().to_owned()).filter(|h| !h.is_empty())
}

/// A host name as plans and reports show it: 1 to 64 letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}`: 1 to 64 letters, digits, `.`, `_` or `-`"))
    }
}

/// Loads the identity key, making one (ed25519, mode 0600, written atomically) if the
/// file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<identity::Keypair, DaemonError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    match std::fs::File::open(path) {
        Ok(mut file) => {
            let io = |op, error| DaemonError::Io { op, path: path.to_owned(), error };
            let meta = file.metadata().map_err(|e| io("stat", e))?;
            if meta.mode() & 0o077 != 0 {
                return Err(DaemonError::KeyExposed {
                    path: path.to_owned(),
                    mode: meta.mode() & 0o777,
                });
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| io("read", e))?;
            identity::Keypair::from_protobuf_encoding(&bytes)
                .map_err(|e| DaemonError::BadKey { path: path.to_owned(), reason: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().expect("ed25519 keys encode");
            let io = |op, error| DaemonError::Io { op, path: path.to_owned(), error };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
            }
            // A file already at the temp name (a crash's leftover, or planted) is
            // removed, never written through: the key goes into a file made here.
            let tmp = path.with_extension("tmp");
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", e)),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new();
            f.write(true).create_new(true).mode(0o600);
            let mut file = f.open(&tmp).map_err(|e| io("create", e))?;
            file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| io("write", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
            tracing::info!(peer = %key.public().to_peer_id(), "made a new identity key at {}", path.display());
            Ok(key)
        }
        Err(error) => Err(DaemonError::Io { op: "read", path: path.to_owned(), error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example the package ships parses as it stands.
    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../examples/vwd.toml");
        let d = Daemon::parse(text, "examples/vwd.toml").expect("the example parses");
        assert_eq!(d.config.socket_group.as_deref(), Some("vw"));
        assert_eq!(d.config.data_dir, Path::new("/var/lib/vw"));
    }

    const GOOD: &str = r#"role = "host"
data_dir = "/tmp/vw-test"
listen = ["/ip4/127.0.0.1/tcp/0"]
rack = "r2"
upload_cap = "100Mbit"

[[peer]]
name = "head"
id = "12D3KooWDfbXdEiogerEyKenjhbaKnk3Ezvb1EcMxJ8vmhDwSu68"
addr = "/ip4/10.0.0.1/tcp/7400"
"#;

    #[test]
    fn a_good_config_parses() {
        let d = Daemon::parse(GOOD, "vwd.toml").expect("parses");
        assert_eq!(d.config.role, Role::Host);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.caps, (Some(12.5e6), None));
        assert_eq!(d.config.rack.as_deref(), Some("r2"));
        assert_eq!(d.key_path(), PathBuf::from("/tmp/vw-test/node.key"));
    }

    #[test]
    fn bad_configs_say_what_and_where() {
        let err = Daemon::parse(
            &GOOD.replace("mdns", "x").replace("upload_cap", "uplaod_cap"),
            "vwd.toml",
        )
        .expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `uplaod_cap`")
                && err.to_string().contains("line 5"),
            "{err}"
        );
        let err = Daemon::parse(&GOOD.replace("12D3KooW", "nope"), "vwd.toml").expect_err("bad id");
        assert!(err.to_string().contains("peer[0] (head).id"), "{err}");
        let err = Daemon::parse(&GOOD.replace("/ip4/127.0.0.1/tcp/0", "tcp:7400"), "vwd.toml")
            .expect_err("bad addr");
        assert!(err.to_string().contains("listen: `tcp:7400`"), "{err}");
        let twice = format!("{GOOD}\n[[peer]]\nname = \"head\"\nid = \"12D3KooWDfbXdEiogerEyKenjhbaKnk3Ezvb1EcMxJ8vmhDwSu68\"\naddr = \"/ip4/10.0.0.1/tcp/7400\"\n");
        let err = Daemon::parse(&twice, "vwd.toml").expect_err("twice").to_string();
        assert!(err.contains("peer head (12D3KooW") && err.contains("share a name"), "{err}");
    }

    /// Two hosts of one name make plans and reports ambiguous: this host's own name
    /// (given, or its hostname) must differ from every peer's, and the error names both.
    #[test]
    fn a_host_named_like_one_of_its_peers_is_refused() {
        let err = Daemon::parse(&format!("name = \"head\"\n{GOOD}"), "vwd.toml")
            .expect_err("same name")
            .to_string();
        assert!(err.contains("this host's name `head` is also peer head's (12D3KooW"), "{err}");
        if let Some(h) = hostname().filter(|h| check_name(h).is_ok()) {
            let err = Daemon::parse(
                &GOOD.replace("name = \"head\"", &format!("name = \"{h}\"")),
                "vwd.toml",
            )
            .expect_err("hostname")
            .to_string();
            assert!(err.contains("(its hostname)"), "{err}");
        }
        let d = Daemon::parse(&format!("name = \"node7\"\n{GOOD}"), "vwd.toml").expect("unique");
        assert_eq!(d.name, "node7");
        let me: PeerId =
            "12D3KooWDfbXdEiogerEyKenjhbaKnk3Ezvb1EcMxJ8vmhDwSu68".parse().expect("id");
        let err = d.check_own_id(&me).expect_err("own id").to_string();
        assert!(err.contains("peer head has this host's own id"), "{err}");
        let bad = Daemon::parse(&format!("name = \"a b\"\n{GOOD}"), "vwd.toml").expect_err("space");
        assert!(bad.to_string().contains("name: `a b`"), "{bad}");
    }

    #[test]
    fn a_socket_group_named_must_exist() {
        let d = Daemon::parse(&format!("socket_group = \"no-such-group-vw\"\n{GOOD}"), "vwd.toml")
            .expect("parses");
        let err = d.socket_group().expect_err("no such group").to_string();
        assert!(err.contains("vwd.toml: socket_group: no group `no-such-group-vw`"), "{err}");
        let d =
            Daemon::parse(&format!("socket_group = \"root\"\n{GOOD}"), "vwd.toml").expect("parses");
        assert_eq!(d.socket_group().expect("root exists"), Some(0));
    }

    #[test]
    fn a_peer_without_an_address_needs_mdns() {
        let no_addr = GOOD.replace("addr = \"/ip4/10.0.0.1/tcp/7400\"\n", "");
        let err = Daemon::parse(&no_addr, "vwd.toml").expect_err("no addr, no mdns");
        assert!(
            err.to_string().contains("peer[0] (head).addr: missing")
                && err.to_string().contains("mdns = true"),
            "{err}"
        );
        let d = Daemon::parse(&format!("mdns = true\n{no_addr}"), "vwd.toml").expect("mdns");
        assert_eq!(d.peers[0].addr, None);
        assert!(d.config.mdns);
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/node.key");
        let first = load_or_create_key(&path).expect("made");
        let again = load_or_create_key(&path).expect("loaded");
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        let mode = std::fs::metadata(&path).expect("meta");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
        std::fs::write(&path, b"garbage").expect("write");
        let err = load_or_create_key(&path).expect_err("bad key");
        assert!(err.to_string().contains("move it away"), "{err}");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        load_or_create_key(&path).expect("made");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_key(&path).expect_err("readable by others");
        assert!(
            err.to_string().contains("mode 644") && err.to_string().contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn a_new_key_is_never_written_through_a_planted_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        let path = dir.path().join("node.key");
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).expect("plant");
        load_or_create_key(&path).expect("made");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        assert!(!std::fs::symlink_metadata(&path).expect("key").file_type().is_symlink());
    }
}
