//! `vw-localnet`: a cluster of `vwd`s on loopback, for `vw demo`, the tests and the
//! benchmarks (its own crate: a harness, not part of `vw-node`'s API): one
//! data directory, key and config per host under a scratch directory, each listening on
//! its own 127.0.0.1 port, every host listing every other, host 0 the head. The testnet
//! uses the same configs with one address per host (each in its own network namespace).
//!
//! The configs are ordinary `vwd` configs: [`LocalNet::start`] runs the daemons in
//! this process, and `vwd --config` runs one as a child process.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use libp2p::{identity, PeerId};

use vw_node::daemon::{load_or_create_key, Daemon};
use vw_node::service::Vwd;

/// The configs of a loopback cluster.
#[derive(Clone, Debug)]
pub struct LocalNet {
    /// Each host's vwd config, host 0 the head.
    pub configs: Vec<PathBuf>,
    /// Each host's data directory.
    pub data_dirs: Vec<PathBuf>,
    /// Each host's name.
    pub names: Vec<String>,
    /// Each host's peer id.
    pub ids: Vec<PeerId>,
}

/// How to make one.
#[derive(Clone, Debug, Default)]
pub struct LocalNetOptions {
    /// Upload and download cap for every host (`100Mbit`).
    pub cap: Option<String>,
    /// A cluster config for every host; the embedded one (simulated Xen) if none.
    pub cluster_config: Option<PathBuf>,
    /// `compress` for every host (`auto`, `always`, `never`); the default if none.
    pub compress: Option<String>,
    /// The head's caps, if not `cap`.
    pub head_cap: Option<String>,
    /// One address per host, each listening on port [`PORT`] there (hosts in their own
    /// network namespaces); free ports on 127.0.0.1 if none.
    pub addresses: Option<Vec<std::net::Ipv4Addr>>,
    /// Peers listed without addresses, found by mDNS (needs `addresses`: libp2p's mDNS
    /// ignores loopback).
    pub mdns: bool,
    /// Each host's rack, if any.
    pub racks: Option<Vec<String>>,
    /// Each host serves Prometheus metrics on [`METRICS_PORT`] of its address (needs
    /// `addresses`; one endpoint per process, so for `vwd` child processes only).
    pub metrics: bool,
}

/// The port hosts serve metrics on when [`LocalNetOptions::metrics`] is set.
pub const METRICS_PORT: u16 = 9474;

/// The port hosts listen on when each has its own address.
pub const PORT: u16 = 7400;

impl LocalNet {
    /// Writes keys and configs for `n` hosts under `dir` (`head`, `node1`, …).
    pub fn create(dir: &Path, n: usize, options: &LocalNetOptions) -> anyhow::Result<LocalNet> {
        anyhow::ensure!(n >= 1, "a cluster needs at least one host");
        let names: Vec<String> =
            (0..n).map(|i| if i == 0 { "head".into() } else { format!("node{i}") }).collect();
        let mut keys = Vec::new();
        let mut data_dirs = Vec::new();
        for name in &names {
            let data = dir.join(name);
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            keys.push(load_or_create_key(&data.join("node.key"))?);
            data_dirs.push(data);
        }
        let listen: Vec<String> = match &options.addresses {
            Some(a) => {
                anyhow::ensure!(a.len() == n, "{} addresses for {n} hosts", a.len());
                a.iter().map(|ip| format!("/ip4/{ip}/tcp/{PORT}")).collect()
            }
            None => {
                anyhow::ensure!(!options.mdns, "mDNS needs an address per host (not loopback)");
                anyhow::ensure!(!options.metrics, "metrics need an address per host");
                free_ports(n)?.iter().map(|p| format!("/ip4/127.0.0.1/tcp/{p}")).collect()
            }
        };
        let ids: Vec<PeerId> =
            keys.iter().map(identity::Keypair::public).map(|k| k.to_peer_id()).collect();
        let mut configs = Vec::new();
        for i in 0..n {
            let mut text = format!(
                "role = \"{}\"\nname = \"{}\"\ndata_dir = \"{}\"\nlisten = [\"{}\"]\nmdns = {}\n",
                if i == 0 { "head" } else { "host" },
                names[i],
                data_dirs[i].display(),
                listen[i],
                options.mdns,
            );
            let cap = if i == 0 {
                options.head_cap.as_ref().or(options.cap.as_ref())
            } else {
                options.cap.as_ref()
            };
            if let Some(cap) = cap {
                text.push_str(&format!("upload_cap = \"{cap}\"\ndownload_cap = \"{cap}\"\n"));
            }
            if let Some(c) = &options.compress {
                text.push_str(&format!("compress = \"{c}\"\n"));
            }
            if let (true, Some(addresses)) = (options.metrics, &options.addresses) {
                text.push_str(&format!("metrics = \"{}:{METRICS_PORT}\"\n", addresses[i]));
            }
            if let Some(rack) = options.racks.as_ref().and_then(|r| r.get(i)) {
                text.push_str(&format!("rack = \"{rack}\"\n"));
            }
            if let Some(c) = &options.cluster_config {
                text.push_str(&format!("cluster_config = \"{}\"\n", c.display()));
            }
            for j in (0..n).filter(|&j| j != i) {
                text.push_str(&format!(
                    "\n[[peer]]\nname = \"{}\"\nid = \"{}\"\nhead = {}\n",
                    names[j],
                    ids[j],
                    j == 0
                ));
                if !options.mdns {
                    text.push_str(&format!("addr = \"{}\"\n", listen[j]));
                }
            }
            let path = data_dirs[i].join("vwd.toml");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            configs.push(path);
        }
        Ok(LocalNet { configs, data_dirs, names, ids })
    }

    /// Starts host `i`'s daemon in this process.
    pub async fn start_one(&self, i: usize) -> anyhow::Result<Vwd> {
        let daemon = Daemon::load(&self.configs[i])?;
        let key = load_or_create_key(&daemon.key_path())?;
        Vwd::start(&daemon, key).await.with_context(|| format!("starting {}", self.names[i]))
    }

    /// Starts every daemon in this process (the head last, so the hosts are up when it
    /// dials them).
    pub async fn start(&self) -> anyhow::Result<Vec<Vwd>> {
        let mut hosts = Vec::new();
        for i in 1..self.configs.len() {
            hosts.push(self.start_one(i).await?);
        }
        let mut all = vec![self.start_one(0).await?];
        all.extend(hosts);
        Ok(all)
    }

    /// The head's local socket.
    pub fn head_socket(&self) -> PathBuf {
        self.data_dirs[0].join(vw_node::local::SOCKET)
    }
}

/// `config` (a cluster config's text, with an `[xen]` table and no driver) set to the
/// simulated Xen driver, by name, and allowing the kernel and ramdisk the example
/// workspaces name (`vmlinuz-6.1.0-vw`, `initrd.img-6.1.0-vw`), made in `dir/kernels`:
/// placeholders, since the simulated driver boots nothing, but real files for the
/// host's kernel-directory check.
pub fn with_placeholder_kernels(config: &str, dir: &Path) -> anyhow::Result<String> {
    let kernels = dir.join("kernels");
    std::fs::create_dir_all(&kernels).with_context(|| format!("creating {}", kernels.display()))?;
    for name in ["vmlinuz-6.1.0-vw", "initrd.img-6.1.0-vw"] {
        let path = kernels.join(name);
        std::fs::write(&path, "not a kernel: a placeholder for vw's simulated Xen driver\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let allowed =
        format!("[xen]\ndriver = \"simulated\"\nkernel_dirs = [{:?}]\n", kernels.display());
    Ok(config.replacen("[xen]\n", &allowed, 1))
}

/// The VOs of a local cluster: a key per VO (in memory: the demo and the tests sign
/// with them directly) and a cluster config that trusts them all, for
/// [`LocalNetOptions::cluster_config`].
#[derive(Debug)]
pub struct LocalVos {
    /// The keys.
    pub keys: Vec<vw_node::chunkstore::VoKey>,
    /// The cluster config: the embedded one, plus `[[vo]]` for each.
    pub cluster_config: PathBuf,
    /// Each key's `isolated` flag and extra `[[vo]]` lines, as created.
    entries: Vec<(bool, String)>,
    /// The manifest each name it sealed stands for (a ticket lists them).
    sealed: std::sync::Mutex<std::collections::BTreeMap<String, vw_node::chunkstore::ManifestId>>,
}

impl LocalVos {
    /// Keys for `vos` (name, isolated) and a cluster config at `path` that trusts them,
    /// with `extra` (more `[[vo]]` keys, like quotas) appended after each VO's entry.
    pub fn create(path: &Path, vos: &[(&str, bool, &str)]) -> anyhow::Result<LocalVos> {
        let keys = vos
            .iter()
            .map(|(vo, _, _)| vw_node::chunkstore::VoKey::generate(vo))
            .collect::<Result<Vec<_>, _>>()?;
        let entries = vos.iter().map(|(_, isolated, extra)| (*isolated, (*extra).to_owned()));
        let vos = LocalVos {
            keys,
            cluster_config: path.to_owned(),
            entries: entries.collect(),
            sealed: Default::default(),
        };
        vos.write_config(path, &[])?;
        Ok(vos)
    }

    /// Writes a cluster config trusting these VOs to `path`, with the VOs in `isolate`
    /// isolated as well as those created so (another cluster with the same VOs).
    pub fn write_config(&self, path: &Path, isolate: &[String]) -> anyhow::Result<()> {
        let mut text = with_placeholder_kernels(
            vw_node::config::ClusterConfig::EMBEDDED,
            path.parent().unwrap_or(Path::new(".")),
        )?;
        for (key, (isolated, extra)) in self.keys.iter().zip(&self.entries) {
            let isolated = *isolated || isolate.iter().any(|v| v == key.vo());
            let entry = vw_node::config::VoConfig::entry(key.vo(), &key.public(), isolated);
            text.push_str(&format!("\n{entry}{extra}"));
        }
        vw_node::config::ClusterConfig::parse(&text, &path.display().to_string())?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The key of `vo`.
    pub fn key(&self, vo: &str) -> &vw_node::chunkstore::VoKey {
        self.keys.iter().find(|k| k.vo() == vo).expect("a VO of this local cluster")
    }

    /// Imports `path` into `store` as `name`, sealed by its VO.
    pub fn import(
        &self,
        store: &vw_node::chunkstore::Store,
        path: &Path,
        name: &str,
        visibility: vw_node::chunkstore::Visibility,
    ) -> anyhow::Result<vw_node::chunkstore::ImportReport> {
        let name: vw_node::chunkstore::ImageName = name.parse()?;
        let report = store.import_sealed(path, &name, self.key(name.vo()), visibility, &())?;
        self.sealed.lock().expect("sealed lock").insert(name.to_string(), report.manifest);
        Ok(report)
    }

    /// `vo`'s ticket for deploying the workspace document `workspace` on the embedded
    /// cluster, valid for an hour. It allows the manifests the document names by id
    /// and those its names stood for when this imported them; a name it never imported
    /// is left out (a deploy that uses it is refused).
    pub fn ticket(&self, vo: &str, workspace: &str) -> anyhow::Result<Vec<u8>> {
        self.ticket_with(vo, workspace, |_| ())
    }

    /// [`LocalVos::ticket`] with its terms changed by `change` before it is signed (a
    /// test's forged or expired ticket).
    pub fn ticket_with(
        &self,
        vo: &str,
        workspace: &str,
        change: impl FnOnce(&mut vw_node::access::TicketTerms),
    ) -> anyhow::Result<Vec<u8>> {
        let spec = vw_node::workspace::parse(workspace, "(ticket)")?;
        let manifests = {
            let sealed = self.sealed.lock().expect("sealed lock");
            spec.image_refs()
                .into_iter()
                .filter_map(|r| match r {
                    vw_node::chunkstore::ImageRef::Id(id) => Some(*id),
                    vw_node::chunkstore::ImageRef::Name(n) => sealed.get(&n.to_string()).copied(),
                })
                .collect()
        };
        let mut terms = vw_node::access::TicketTerms {
            cluster: vw_node::config::ClusterConfig::embedded().cluster.name,
            deployment: spec.name.clone(),
            workspace: blake3::hash(workspace.as_bytes()),
            manifests,
            expires_s: vw_node::chunkstore::now_ms() / 1000 + 3600,
        };
        change(&mut terms);
        Ok(vw_node::access::Ticket::sign(self.key(vo), &terms)
            .map_err(anyhow::Error::msg)?
            .encode())
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (bound, read, released: another process
/// could take one in between, which the daemon then reports).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports on 127.0.0.1")?;
    Ok(listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// Generated images for demos and tests: a "base OS" (40% data in extents, holes
/// elsewhere, like a fresh ext4), a "head" and a "worker" built on it (the base plus
/// their own data in former holes; the worker also a few small edits) and a second VO's
/// worker (the base plus other data).
/// Each extent's bytes come from its seed, so images that place the same extent share
/// its chunks.
#[derive(Clone, Debug)]
pub struct DemoImages {
    /// The base OS.
    pub base: PathBuf,
    /// The first VO's head node.
    pub head: PathBuf,
    /// The first VO's worker.
    pub worker: PathBuf,
    /// The second VO's worker.
    pub other: PathBuf,
}

impl DemoImages {
    /// Writes the three images of `size_mib` MiB each under `dir`.
    pub fn write(dir: &Path, size_mib: u64) -> anyhow::Result<DemoImages> {
        const MIB: u64 = 1 << 20;
        let size = size_mib * MIB;
        let base: Vec<(u64, u64, u64)> =
            (0..size / (10 * MIB)).map(|i| (i * 10 * MIB, 4 * MIB, 1000 + i)).collect();
        let mut worker = base.clone();
        worker.extend((0..size / (20 * MIB)).map(|i| (i * 20 * MIB + 5 * MIB, 3 * MIB, 9000 + i)));
        worker.extend((0..8).map(|i| (i * (size / 8) + 12_288, 4096, 7000 + i)));
        let mut head = base.clone();
        head.extend((0..size / (20 * MIB)).map(|i| (i * 20 * MIB + 12 * MIB, MIB, 3000 + i)));
        let mut other = base.clone();
        other.extend((0..size / (20 * MIB)).map(|i| (i * 20 * MIB + 15 * MIB, 2 * MIB, 5000 + i)));
        let images = DemoImages {
            base: dir.join("base.img"),
            head: dir.join("head.img"),
            worker: dir.join("worker.img"),
            other: dir.join("vo2-worker.img"),
        };
        write_image(&images.base, size, &base)?;
        write_image(&images.head, size, &head)?;
        write_image(&images.worker, size, &worker)?;
        write_image(&images.other, size, &other)?;
        Ok(images)
    }
}

/// Writes a sparse file of `size` bytes: data extents `(offset, len, seed)`, holes
/// elsewhere.
pub fn write_image(path: &Path, size: u64, extents: &[(u64, u64, u64)]) -> anyhow::Result<()> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(size)?;
    for &(offset, len, seed) in extents {
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&vw_node::chunkstore::testdata::noise(usize::try_from(len)?, seed))?;
    }
    f.sync_all()?;
    Ok(())
}

/// A `vwd` child process of a [`LocalNet`], killed when dropped.
#[derive(Debug)]
pub struct ChildVwd {
    child: std::process::Child,
}

impl LocalNet {
    /// Starts host `i` as a `vwd` child process (the binary at `vwd`, its log appended
    /// to `log`) and waits until it listens on its socket.
    pub fn spawn(&self, i: usize, vwd: &Path, log: &Path) -> anyhow::Result<ChildVwd> {
        self.spawn_in(i, None, vwd, log, |_| {})
    }

    /// Like [`LocalNet::spawn`], in network namespace `netns` if given (through
    /// `ip netns exec`, which execs, so the child is `vwd` itself). `started` gets the
    /// process id at once, before it listens (so a caller can kill it on the way out).
    pub fn spawn_in(
        &self,
        i: usize,
        netns: Option<&str>,
        vwd: &Path,
        log: &Path,
        started: impl FnOnce(u32),
    ) -> anyhow::Result<ChildVwd> {
        use std::io::BufRead as _;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(vwd);
                c
            }
            None => std::process::Command::new(vwd),
        };
        let mut child = command
            .arg("--config")
            .arg(&self.configs[i])
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", vwd.display()))?;
        started(child.id());
        let stdout = child.stdout.take().context("vwd's stdout")?;
        let mut child = ChildVwd { child };
        for line in std::io::BufReader::new(stdout).lines() {
            if line?.starts_with("socket ") {
                return Ok(child);
            }
        }
        let status = child.child.wait()?;
        anyhow::bail!("{} exited ({status}) before listening; see its log", self.names[i])
    }
}

impl ChildVwd {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -s {signal} {} failed", self.child.id());
        Ok(())
    }

    /// Stops it the way an operator would (SIGTERM) and waits for it to exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        Ok(self.child.wait()?)
    }

    /// Its peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

impl Drop for ChildVwd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small virtual cluster for tests and benchmarks: a head node from `head_image`
/// (NFS and batch server) and `workers` workers from `worker_image`, on the private
/// network, booted by pygrub.
pub fn cluster_workspace(
    name: &str,
    head_image: &str,
    worker_image: &str,
    workers: usize,
) -> String {
    format!(
        r#"<virtualWorkspace type="cluster" name="{name}" nodeNumber="{n}">
  <headnode name="head">
    <memory>256</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="{head_image}" device="xvda1" role="root"/>
    <nic network="private"/>
    <roles><nfsServer export="/home"/><batchServer/></roles>
  </headnode>
  <workernode name="worker" count="{workers}">
    <memory>128</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="{worker_image}" device="xvda1" role="root"/>
    <nic network="private"/>
    <roles><nfsClient export="/home"/><batchWorker/></roles>
  </workernode>
</virtualWorkspace>"#,
        n = workers + 1
    )
}
