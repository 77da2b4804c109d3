//! The cluster configuration (TOML): the physical subnet, the free segments for private
//! VM addresses, the reserved public pool, the bridges, the Xen driver and this host's
//! capacity. `vw` embeds a default ([`ClusterConfig::EMBEDDED`]) for the demo and for
//! trying things out; a real cluster passes its own with `--cluster FILE`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use vw_planner::address::{Pool, Segment};

/// Why a cluster configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster config {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// Not valid TOML for this schema (the message has the line and column).
    #[error("cluster config {source_name}: {message}")]
    Syntax {
        /// The file, or `(embedded)`.
        source_name: String,
        /// toml's message, with the offending line.
        message: String,
    },
    /// No `[xen] driver` is set and this host is not a Xen control domain.
    #[error(
        "cluster config {source_name} sets no [xen] driver, and this host is not a Xen dom0 \
         ({XEN_CAPABILITIES} {found}): set `driver = \"xl\"` on a Xen host, or \
         `driver = \"simulated\"` to run without a hypervisor (no guest then runs; vw says \
         so in every report)"
    )]
    NoDriver {
        /// The file, or `(embedded)`.
        source_name: String,
        /// What the capabilities file said (`is missing`, `says \"\"`).
        found: String,
    },
    /// A value is wrong.
    #[error("cluster config {source_name}: {key}: {message}")]
    Value {
        /// The file, or `(embedded)`.
        source_name: String,
        /// The key, like `network.private`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's identity and how long a VO's ticket may live.
    #[serde(default)]
    pub cluster: ClusterIdentity,
    /// Networks and address pools.
    pub network: NetworkConfig,
    /// The hypervisor hand-off.
    #[serde(default)]
    pub xen: XenConfig,
    /// This host's capacity (defaults: what the machine has).
    #[serde(default)]
    pub host: HostConfig,
    /// The virtual organisations this cluster trusts: only images they sealed are
    /// staged, and only deployments they signed run (`[[vo]]`, none by default).
    #[serde(default)]
    pub vo: Vec<VoConfig>,
    /// Where it was read from (a path, or `(embedded)`), for messages.
    #[serde(skip)]
    pub source: String,
}

/// `[cluster]`: the name every VO ticket must carry, so that a ticket signed for one
/// cluster cannot be replayed on another.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    /// The cluster's name (default `vw`). Give each cluster that trusts the same VO its
    /// own name: a ticket names the cluster it is for, and every host refuses another
    /// cluster's.
    #[serde(default = "ClusterIdentity::default_name")]
    pub name: String,
    /// The longest a ticket may be valid, in seconds from when a host checks it
    /// (default 86400, a day). A ticket expiring later is refused, which bounds how
    /// long a host must remember the tickets it accepted.
    #[serde(default = "ClusterIdentity::default_lifetime")]
    pub ticket_lifetime_max_s: u64,
}

impl ClusterIdentity {
    fn default_name() -> String {
        "vw".to_owned()
    }

    fn default_lifetime() -> u64 {
        86_400
    }
}

impl Default for ClusterIdentity {
    fn default() -> Self {
        ClusterIdentity {
            name: Self::default_name(),
            ticket_lifetime_max_s: Self::default_lifetime(),
        }
    }
}

/// `[[vo]]`: one trusted virtual organisation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoConfig {
    /// Its name, the first part of its image names (`grid3` in `grid3/worker:1`).
    pub name: String,
    /// Its public key, `ed25519:` and 64 hex digits (`vw vo export NAME` prints it).
    pub key: String,
    /// Never share this VO's chunks with other VOs' deployments: a host counts a chunk
    /// as held for a deployment only if an image the deploying VO may see lists it, so
    /// no other VO can learn from a faster deploy that this VO holds a file (default
    /// false; docs/security.md).
    #[serde(default)]
    pub isolated: bool,
    /// Its limits across the cluster (none: unlimited).
    #[serde(default)]
    pub quota: Quota,
    /// The kernel directories its deployments may use instead of `[xen] kernel_dirs`.
    pub kernel_dirs: Option<Vec<PathBuf>>,
}

impl VoConfig {
    /// The `[[vo]]` entry that trusts `key` as VO `vo` (`vw vo export` prints it).
    pub fn entry(vo: &str, key: &vw_chunkstore::VoPublic, isolated: bool) -> String {
        let mut entry = format!("[[vo]]\nname = \"{vo}\"\nkey = \"{key}\"\n");
        if isolated {
            entry.push_str("isolated = true\n");
        }
        entry
    }
}

/// `[vo.quota]`: what one VO's deployments may take together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Guest memory in MiB, over every host.
    pub memory_mib: Option<u64>,
    /// Physical hosts running its VMs.
    pub hosts: Option<u32>,
    /// Bytes of distinct chunks its images take in one host's cache.
    pub cache_bytes: Option<u64>,
}

impl VoConfig {
    /// The VO's public key (checked when the config was parsed).
    pub fn public(&self) -> vw_chunkstore::VoPublic {
        self.key.parse().expect("VO keys were checked when the config was parsed")
    }
}

/// `[network]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The physical cluster subnet the private network bridges onto (`10.20.0.0/16`).
    pub subnet: Ipv4Net,
    /// Default gateway of the private network, inside `subnet`; none: no default route.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers written into the guests.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Free segments of `subnet` for private VM addresses, used in order
    /// (`10.20.1.10-10.20.1.250`, `10.20.2.0/24`, `10.20.3.7`).
    pub private: Vec<String>,
    /// The bridge private NICs join (default `xenbr0`).
    #[serde(default = "default_private_bridge")]
    pub private_bridge: String,
    /// The public pool for virtual head nodes.
    pub public: PublicConfig,
}

/// `[network.public]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicConfig {
    /// Reserved public address segments.
    pub pool: Vec<String>,
    /// The public network's prefix length.
    pub prefix: u8,
    /// The public network's gateway (the head's default route when it has one).
    pub gateway: Option<Ipv4Addr>,
    /// The bridge public NICs join (default `xenbr1`).
    #[serde(default = "default_public_bridge")]
    pub bridge: String,
}

/// `[xen]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XenConfig {
    /// `xl` or `simulated`. Left out: `xl` on a host that is a Xen control domain
    /// (dom0), refused on any other: the simulated driver runs no guest, so it is only
    /// ever chosen by name (and says so wherever it reports).
    #[serde(default)]
    pub driver: Option<DriverKind>,
    /// The `xl` program (default `xl`, found on `PATH`).
    #[serde(default = "default_xl")]
    pub xl: PathBuf,
    /// Seconds `stop` waits for a clean shutdown before destroying the domain (default 60).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_s: u64,
    /// Seconds any other `xl` call may take (default 120).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_s: u64,
    /// What Xen does when a guest powers off (default `destroy`).
    #[serde(default = "default_destroy")]
    pub on_poweroff: String,
    /// When it reboots (default `restart`).
    #[serde(default = "default_restart")]
    pub on_reboot: String,
    /// When it crashes (default `destroy`).
    #[serde(default = "default_destroy")]
    pub on_crash: String,
    /// Seconds a deploy waits for every guest to report that it is up (default 300).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_s: u64,
    /// The program that reads a guest's report from xenstore (default `xenstore-read`).
    #[serde(default = "default_xenstore_read")]
    pub xenstore_read: PathBuf,
    /// Where xenconsoled logs guest consoles (`--log=guest --log-dir=DIR`); a guest
    /// that never becomes ready is reported with the end of its log (default
    /// `/var/log/xen/console`; `""`: none).
    #[serde(default = "default_console_dir")]
    pub console_dir: PathBuf,
    /// The directories a workspace's `<kernel path ramdisk>` may name files in (absolute;
    /// none by default, which refuses every kernel boot). A bare file name is looked up
    /// in them in order; any path must resolve, symlinks followed, inside one of them.
    #[serde(default)]
    pub kernel_dirs: Vec<PathBuf>,
    /// The user pygrub runs as (`LIBXL_BOOTLOADER_USER`); vw always runs it restricted
    /// (`LIBXL_BOOTLOADER_RESTRICT=1`), and without a user libxl picks its QEMU
    /// deprivileging users (default: none).
    #[serde(default)]
    pub bootloader_user: Option<String>,
    /// When a lazy stage starts its background fetch (default `at-once`).
    #[serde(default)]
    pub lazy_fetch: LazyFetch,
}

/// When a lazy stage starts its background fetch (`[xen] lazy_fetch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LazyFetch {
    /// As soon as it has answered the head.
    #[default]
    AtOnce,
    /// Once the head starts the guests (every domain of the deployment created, on
    /// every host); until then only what a read asks for. For a dom0 that cannot
    /// carry a stage's traffic beside domain creation (docs/decisions.md, 89).
    AfterCreate,
}

/// Which driver hands domains to the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The real toolstack through `xl`.
    Xl,
    /// No hypervisor: configs are checked and states tracked in a file.
    Simulated,
}

impl DriverKind {
    /// `xl` or `simulated`.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Xl => "xl",
            DriverKind::Simulated => "simulated",
        }
    }

    /// Whether it only pretends (no hypervisor, no guest runs).
    pub fn simulated(self) -> bool {
        self == DriverKind::Simulated
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the kernel says what Xen made this machine (`control_d` in a dom0).
pub const XEN_CAPABILITIES: &str = "/proc/xen/capabilities";

/// `[host]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Memory for guests in MiB, exactly (default: measured: with the `xl` driver, `xl
    /// info`'s free memory plus what vw's running guests hold; else the machine's
    /// memory; less `reserved_mib` either way).
    pub memory_mib: Option<u64>,
    /// Physical CPUs (default: `xl info`'s `nr_cpus` with the `xl` driver, else what
    /// the machine has).
    pub cpus: Option<u32>,
    /// Memory kept back from guests when it is measured (not when `memory_mib` is
    /// set): dom0's own growth and Xen's per-domain overheads, or without Xen the host's
    /// own programs (default 512).
    #[serde(default = "HostConfig::default_reserved")]
    pub reserved_mib: u64,
    /// vCPUs per physical CPU the planner may place on this host (default 1: no
    /// overcommit; at most 16). Pinned VMs always get whole cores.
    #[serde(default = "HostConfig::default_vcpus_per_cpu")]
    pub vcpus_per_cpu: u32,
}

impl HostConfig {
    fn default_reserved() -> u64 {
        512
    }

    fn default_vcpus_per_cpu() -> u32 {
        1
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            memory_mib: None,
            cpus: None,
            reserved_mib: Self::default_reserved(),
            vcpus_per_cpu: Self::default_vcpus_per_cpu(),
        }
    }
}

/// Most vCPUs per CPU a cluster config may allow.
pub const MAX_VCPUS_PER_CPU: u32 = 16;

fn default_private_bridge() -> String {
    "xenbr0".into()
}
fn default_public_bridge() -> String {
    "xenbr1".into()
}
fn default_xl() -> PathBuf {
    "xl".into()
}
fn default_shutdown_timeout() -> u64 {
    60
}
fn default_command_timeout() -> u64 {
    120
}
fn default_ready_timeout() -> u64 {
    300
}
fn default_xenstore_read() -> PathBuf {
    "xenstore-read".into()
}
fn default_console_dir() -> PathBuf {
    "/var/log/xen/console".into()
}
fn default_destroy() -> String {
    "destroy".into()
}
fn default_restart() -> String {
    "restart".into()
}

impl Default for XenConfig {
    fn default() -> Self {
        XenConfig {
            driver: None,
            xl: default_xl(),
            shutdown_timeout_s: default_shutdown_timeout(),
            command_timeout_s: default_command_timeout(),
            on_poweroff: default_destroy(),
            on_reboot: default_restart(),
            on_crash: default_destroy(),
            ready_timeout_s: default_ready_timeout(),
            xenstore_read: default_xenstore_read(),
            console_dir: default_console_dir(),
            kernel_dirs: Vec::new(),
            bootloader_user: None,
            lazy_fetch: LazyFetch::default(),
        }
    }
}

/// Actions Xen accepts for `on_poweroff`, `on_reboot` and `on_crash`.
const ACTIONS: [&str; 7] = [
    "destroy",
    "restart",
    "rename-restart",
    "preserve",
    "coredump-destroy",
    "coredump-restart",
    "soft-reset",
];

/// The parsed pools, checked against each other.
#[derive(Clone, Debug)]
pub struct Pools {
    /// Private addresses.
    pub private: Pool,
    /// Public addresses.
    pub public: Pool,
}

impl ClusterConfig {
    /// The embedded default: a made-up private subnet and public pool that exist only
    /// in the generated configs (nothing is ever sent to them), and no driver named
    /// (`xl` on a dom0, refused elsewhere: [`ClusterConfig::driver`]).
    pub const EMBEDDED: &'static str = include_str!("../../examples/cluster.toml");

    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Io { path: path.to_owned(), error })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default.
    pub fn embedded() -> Self {
        Self::parse(Self::EMBEDDED, "(embedded)").expect("the embedded cluster config is valid")
    }

    /// Parses and checks `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        let mut config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            source_name: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = source.to_owned();
        config.pools_from(source)?;
        let zero = |key, message: &str| ConfigError::Value {
            source_name: source.to_owned(),
            key,
            message: message.to_owned(),
        };
        if config.host.memory_mib == Some(0) {
            return Err(zero(
                "host.memory_mib",
                "must be more than 0; leave it out to use the machine's memory",
            ));
        }
        if config.host.cpus == Some(0) {
            return Err(zero(
                "host.cpus",
                "must be more than 0; leave it out to use the machine's CPUs",
            ));
        }
        if !(1..=MAX_VCPUS_PER_CPU).contains(&config.host.vcpus_per_cpu) {
            return Err(zero("host.vcpus_per_cpu", "must be 1 (no overcommit) to 16"));
        }
        if config.xen.shutdown_timeout_s == 0
            || config.xen.command_timeout_s == 0
            || config.xen.ready_timeout_s == 0
        {
            return Err(zero("xen.*_timeout_s", "timeouts must be at least 1 second"));
        }
        for (key, value) in [
            ("xen.on_poweroff", &config.xen.on_poweroff),
            ("xen.on_reboot", &config.xen.on_reboot),
            ("xen.on_crash", &config.xen.on_crash),
        ] {
            if !ACTIONS.contains(&value.as_str()) {
                let message = format!("`{value}` is not one of {}", ACTIONS.join(", "));
                return Err(ConfigError::Value { source_name: source.to_owned(), key, message });
            }
        }
        let name = &config.cluster.name;
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            let message = format!("`{name}`: 1 to 64 letters, digits, `.`, `_` or `-`");
            return Err(ConfigError::Value {
                source_name: source.to_owned(),
                key: "cluster.name",
                message,
            });
        }
        if config.cluster.ticket_lifetime_max_s == 0 {
            return Err(zero("cluster.ticket_lifetime_max_s", "must be at least 1 second"));
        }
        config.check_vos(source)?;
        config.check_boot(source)?;
        Ok(config)
    }

    /// The driver this host runs: the one the config names, else `xl` if this host is a
    /// Xen control domain (dom0); refused otherwise.
    pub fn driver(&self) -> Result<DriverKind, ConfigError> {
        let capabilities = std::fs::read_to_string(XEN_CAPABILITIES);
        self.driver_given(capabilities.as_deref().ok())
    }

    /// [`ClusterConfig::driver`] given what [`XEN_CAPABILITIES`] holds (`None`: no
    /// such file, no Xen).
    pub fn driver_given(&self, capabilities: Option<&str>) -> Result<DriverKind, ConfigError> {
        if let Some(kind) = self.xen.driver {
            return Ok(kind);
        }
        match capabilities {
            Some(c)
                if c.split(|ch: char| ch == ',' || ch.is_whitespace())
                    .any(|w| w == "control_d") =>
            {
                Ok(DriverKind::Xl)
            }
            found => Err(ConfigError::NoDriver {
                source_name: self.source.clone(),
                found: match found {
                    None => "is missing".to_owned(),
                    Some(c) => format!("says {:?}, not control_d", c.trim()),
                },
            }),
        }
    }

    /// The kernel directories `vo`'s deployments may use (`None`: a local deployment).
    pub fn kernel_dirs(&self, vo: Option<&str>) -> &[PathBuf] {
        vo.and_then(|vo| self.vo(vo))
            .and_then(|v| v.kernel_dirs.as_deref())
            .unwrap_or(&self.xen.kernel_dirs)
    }

    fn check_boot(&self, source: &str) -> Result<(), ConfigError> {
        let bad = |key, message: String| ConfigError::Value {
            source_name: source.to_owned(),
            key,
            message,
        };
        let lists = std::iter::once(("xen.kernel_dirs", &self.xen.kernel_dirs)).chain(
            self.vo.iter().filter_map(|v| Some(("vo.kernel_dirs", v.kernel_dirs.as_ref()?))),
        );
        for (key, dirs) in lists {
            if let Some(d) = dirs.iter().find(|d| !d.is_absolute()) {
                return Err(bad(key, format!("`{}` is not an absolute path", d.display())));
            }
        }
        if let Some(user) = &self.xen.bootloader_user {
            let ok = !user.is_empty()
                && user.len() <= 32
                && !user.starts_with('-')
                && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return Err(bad("xen.bootloader_user", format!("`{user}` is not a user name")));
            }
        }
        Ok(())
    }

    /// The trusted VO named `name`.
    pub fn vo(&self, name: &str) -> Option<&VoConfig> {
        self.vo.iter().find(|v| v.name == name)
    }

    /// Whether any trusted VO keeps its chunks to itself.
    pub fn any_isolated(&self) -> bool {
        self.vo.iter().any(|v| v.isolated)
    }

    fn check_vos(&self, source: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Value {
            source_name: source.to_owned(),
            key: "vo",
            message,
        };
        for (i, vo) in self.vo.iter().enumerate() {
            vw_chunkstore::vo::check_vo(&vo.name).map_err(|e| bad(format!("vo[{i}].name: {e}")))?;
            vo.key
                .parse::<vw_chunkstore::VoPublic>()
                .map_err(|e| bad(format!("vo[{i}] ({}).key: {e}", vo.name)))?;
            if self.vo[..i].iter().any(|v| v.name == vo.name) {
                return Err(bad(format!("vo[{i}]: VO {} is listed twice", vo.name)));
            }
            let q = vo.quota;
            if q.memory_mib == Some(0) || q.hosts == Some(0) || q.cache_bytes == Some(0) {
                return Err(bad(format!(
                    "vo[{i}] ({}).quota: a limit of 0 allows nothing; leave it out for no limit",
                    vo.name
                )));
            }
        }
        Ok(())
    }

    /// The address pools.
    pub fn pools(&self) -> Pools {
        self.pools_from("(checked)").expect("pools were checked when the config was parsed")
    }

    fn pools_from(&self, source: &str) -> Result<Pools, ConfigError> {
        let bad =
            |key, message| ConfigError::Value { source_name: source.to_owned(), key, message };
        let net = &self.network;
        let segments = |key, texts: &[String]| -> Result<Pool, ConfigError> {
            let segments: Vec<Segment> = texts
                .iter()
                .map(|t| t.parse())
                .collect::<Result<_, _>>()
                .map_err(|m| bad(key, m))?;
            if segments.is_empty() {
                return Err(bad(key, "needs at least one segment".into()));
            }
            Pool::new(segments).map_err(|m| bad(key, m))
        };
        let private = segments("network.private", &net.private)?;
        let public = segments("network.public.pool", &net.public.pool)?;
        for s in &private.segments {
            if !net.subnet.contains(&s.first) || !net.subnet.contains(&s.last) {
                let message = format!("segment {s} is not inside the subnet {}", net.subnet);
                return Err(bad("network.private", message));
            }
            if let Some(gw) = net.gateway.filter(|gw| s.contains(*gw)) {
                return Err(bad(
                    "network.private",
                    format!("segment {s} contains the gateway {gw}"),
                ));
            }
        }
        if let Some(gw) = net.gateway.filter(|gw| !net.subnet.contains(gw)) {
            return Err(bad(
                "network.gateway",
                format!("{gw} is not inside the subnet {}", net.subnet),
            ));
        }
        if net.public.prefix > 32 || net.public.prefix == 0 {
            return Err(bad(
                "network.public.prefix",
                format!("{} is not 1..=32", net.public.prefix),
            ));
        }
        for p in &public.segments {
            if let Some(s) = private.segments.iter().find(|s| s.overlaps(p)) {
                return Err(bad(
                    "network.public.pool",
                    format!("segment {p} overlaps private segment {s}"),
                ));
            }
        }
        Ok(Pools { private, public })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = ClusterConfig::embedded();
        assert_eq!(c.xen.driver, None);
        assert!(c.pools().private.size() >= 64);
    }

    #[test]
    fn the_simulated_driver_is_only_chosen_by_name() {
        let auto = ClusterConfig::embedded();
        assert_eq!(auto.driver_given(Some("control_d\n")).expect("dom0"), DriverKind::Xl);
        for (capabilities, says) in
            [(None, "is missing"), (Some(""), "says \"\""), (Some("domU\n"), "says \"domU\"")]
        {
            let err = auto.driver_given(capabilities).expect_err("not a dom0").to_string();
            assert!(err.contains("(embedded) sets no [xen] driver"), "{err}");
            assert!(err.contains(&format!("{XEN_CAPABILITIES} {says}")), "{err}");
            assert!(err.contains("driver = \"simulated\""), "{err}");
        }
        for (name, kind) in [("simulated", DriverKind::Simulated), ("xl", DriverKind::Xl)] {
            let text = ClusterConfig::EMBEDDED.replacen(
                "[xen]\n",
                &format!("[xen]\ndriver = \"{name}\"\n"),
                1,
            );
            let c = ClusterConfig::parse(&text, "c.toml").expect("config");
            assert_eq!(c.driver_given(None).expect("named"), kind);
            assert_eq!(c.driver_given(Some("control_d")).expect("named"), kind);
        }
    }

    #[test]
    fn a_vo_may_have_its_own_kernel_directories() {
        let text = format!(
            "{}\n{}kernel_dirs = [\"/srv/vo2-kernels\"]\n{}",
            ClusterConfig::EMBEDDED.replacen("[xen]\n", "[xen]\nkernel_dirs = [\"/boot\"]\n", 1),
            VoConfig::entry(
                "vo2",
                &vw_chunkstore::VoKey::generate("vo2").expect("key").public(),
                false
            ),
            VoConfig::entry(
                "grid3",
                &vw_chunkstore::VoKey::generate("grid3").expect("key").public(),
                false
            ),
        );
        let c = ClusterConfig::parse(&text, "c.toml").expect("config");
        assert_eq!(c.kernel_dirs(Some("vo2")), [PathBuf::from("/srv/vo2-kernels")]);
        assert_eq!(c.kernel_dirs(Some("grid3")), [PathBuf::from("/boot")]);
        assert_eq!(c.kernel_dirs(None), [PathBuf::from("/boot")]);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let base = ClusterConfig::EMBEDDED;
        for (from, to, expect) in [
            (
                "10.77.1.10-10.77.1.250",
                "10.78.1.10-10.78.1.250",
                "network.private: segment 10.78.1.10-10.78.1.250 is not inside",
            ),
            ("on_crash = \"destroy\"", "on_crash = \"explode\"", "xen.on_crash: `explode`"),
            ("[xen]\n", "[xen]\ndriver = \"qemu\"\n", "unknown variant `qemu`"),
            (
                "[xen]\n",
                "[xen]\nkernel_dirs = [\"boot\"]\n",
                "xen.kernel_dirs: `boot` is not an absolute path",
            ),
            (
                "[xen]\n",
                "[xen]\nbootloader_user = \"-u0\"\n",
                "xen.bootloader_user: `-u0` is not a user name",
            ),
        ] {
            let text = base.replacen(from, to, 1);
            assert_ne!(text, base, "{from}");
            let err = ClusterConfig::parse(&text, "c.toml").expect_err("must fail").to_string();
            assert!(err.contains(expect), "{err}");
        }
        let err = ClusterConfig::parse("[network]\nsubnet = 5\n", "c.toml")
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
