//! `vw`: the command line of the virtual-workspace stager.

mod cluster;
mod demo;
mod host;
mod output;
mod planning;
mod progress;
mod vo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vw_node::chunkstore::chunker::ChunkerParams;
use vw_node::chunkstore::Progress as _;
use vw_node::chunkstore::{
    manifest_of_file, ExportTarget, ImageFile, ImageName, ImageRef, Seal, Store, Visibility,
};
use vw_node::local::{self, LocalReply, LocalRequest};
use vw_node::manager::Op;
use vw_node::storecmd::{self, StoreOp};

use crate::output::Out;
use crate::progress::Bar;

/// Stage and deploy virtual clusters: the chunk store (images, cache, gc), workspace
/// documents, and the lifecycle of this host's VMs.
#[derive(Debug, Parser)]
#[command(name = "vw", version, about)]
struct Cli {
    /// The store directory.
    #[arg(long, global = true, env = "VW_STORE", default_value = "/var/lib/vw")]
    store: PathBuf,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The cluster configuration (TOML: subnet, address pools, bridges, Xen driver);
    /// the embedded default (simulated Xen) when absent.
    #[arg(long, global = true, env = "VW_CLUSTER")]
    cluster: Option<PathBuf>,
    /// Where this user's VO keys are (default ~/.config/vw/vo).
    #[arg(long, global = true, env = "VW_VO_DIR")]
    vo_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Partition images: import, export, list, remove, verify, compare.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Virtual organisations: the signing keys this user holds.
    #[command(subcommand)]
    Vo(VoCmd),
    /// The chunk cache: occupancy, pins, capacity.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Drop chunks no image uses, evict to the capacity, compact pack files.
    Gc,
    /// Workspace documents: check one, or show the VMs it describes.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Deploy a workspace across the cluster through the head's vwd: validate, collect
    /// inventories, place, assign addresses, plan, stage on every host at once, load,
    /// create. Ends with the phase timings and the bytes each host lacked and received.
    Deploy {
        /// The workspace document.
        workspace: PathBuf,
        #[command(flatten)]
        how: DeployArgs,
        /// Stage on every host and stop there (pre-staging, as `vw stage FILE`); `vw
        /// create NAME` starts the cluster later.
        #[arg(long)]
        stage_only: bool,
    },
    /// Through the head's vwd, stage a workspace file on every host and stop there
    /// (pre-staging: a deploy's phases up to stage, with its report; `vw create NAME`
    /// starts the cluster later). Without a vwd, rebuild, clone and integrate a
    /// workspace's images on this host.
    Stage {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        how: DeployArgs,
    },
    /// Stage (if needed) and create the domains paused.
    Load(Target),
    /// Stage and load (if needed) and run the domains.
    Create(Target),
    /// Pause running domains.
    Pause(Target),
    /// Resume paused domains.
    Unpause(Target),
    /// Shut the domains down (destroyed after the shutdown timeout).
    Stop(Target),
    /// Release the images, configs and addresses of stopped VMs.
    Unstage(Target),
    /// Place workspaces on a cluster, plan their distribution and predict staging time.
    Plan(planning::PlanArgs),
    /// The VMs, their states and the hypervisor's view: across the cluster when the
    /// head's vwd runs on the store, else this host's.
    Status {
        /// Only this deployment.
        deployment: Option<String>,
        /// Look again every SECONDS (default 2) until interrupted: a live view of the
        /// deployments under way (phase, and per host bytes and rate). Through a head.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Deploy two virtual clusters on a local cluster of vwd peers (loopback, scratch
    /// stores, simulated Xen driver), print timings and bytes, and tear it all down.
    Demo {
        /// Keep the scratch directory and print its path.
        #[arg(long)]
        keep: bool,
        /// Size of each generated image in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Peers in the local cluster (the head is one of them).
        #[arg(long, default_value_t = 8)]
        hosts: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Split an image file into chunks, store what the store lacks, and seal it with
    /// its VO's key.
    Import {
        /// The partition image file.
        file: PathBuf,
        /// The name to give it, VO/NAME:TAG; VO's key (in the VO directory) seals it.
        #[arg(long)]
        name: ImageName,
        /// Let every trusted VO deploy it (a shared base OS); private otherwise.
        #[arg(long, conflicts_with = "seal")]
        public: bool,
        /// A seal the VO made where its key lives (`vw vo seal`): checked against the
        /// VO's key in the cluster config (--cluster), and the file must be the image it
        /// sealed. No VO key is needed here.
        #[arg(long)]
        seal: Option<PathBuf>,
    },
    /// Rebuild an image into a file (holes for zero chunks, verified, atomic).
    Export {
        /// Name or manifest id.
        image: ImageRef,
        /// The file to write.
        out: PathBuf,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List stored images.
    Ls,
    /// Remove an image name (and its manifest when no name is left).
    Rm {
        /// Name or manifest id.
        image: ImageRef,
    },
    /// Re-hash stored chunks (of one image, or all) and report corrupt ones.
    Verify {
        /// Name or manifest id; all images when absent.
        image: Option<ImageRef>,
    },
    /// Compare two images: shared and unique bytes.
    Diff {
        /// First image.
        a: ImageRef,
        /// Second image.
        b: ImageRef,
    },
}

/// What a lifecycle command acts on.
/// On whose behalf and how a deployment is staged across the cluster (`vw deploy`, and
/// `vw stage` through a vwd).
#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The VO deploying it: its key (in the VO directory) signs a ticket for this
    /// document, this cluster and the images' manifests, valid for 15 minutes. Every
    /// image must be the VO's own or public.
    #[arg(long, env = "VW_VO")]
    vo: Option<String>,
    /// A ticket the VO signed elsewhere (`vw vo sign-ticket`): the head needs no VO key.
    #[arg(long)]
    ticket: Option<PathBuf>,
    /// star, chain, treeK, stripedSxK or auto (default auto).
    #[arg(long)]
    strategy: Option<vw_node::planner::Strategy>,
    /// spread or pack (default spread).
    #[arg(long)]
    policy: Option<String>,
    /// Deploy even if the hosts run different Xen drivers (a simulated host among real
    /// ones runs no guest); refused otherwise.
    #[arg(long)]
    mixed_drivers: bool,
    /// Cap what staging may use of each host's link, each way: a share (`50%`) or a
    /// rate (`40Mbit`). The plan is made within it and every sender and receiver keeps
    /// it, so staging can run beside live virtual clusters.
    #[arg(long)]
    cap: Option<vw_node::control::deployment::StageCap>,
    /// Boot the VMs while their images arrive: each host serves its VMs' disks from
    /// what it has and fetches at once whatever a guest reads first, while the
    /// cascade goes on; the deploy ends once every image is whole and verified (also
    /// the workspace's `staging="lazy"`). Needs the `seed` integration.
    #[arg(long)]
    lazy: bool,
}

impl DeployArgs {
    /// Whether any option that only a deployment through a vwd takes was given (the
    /// VO may come from `VW_VO` and is not counted).
    fn any(&self) -> bool {
        self.ticket.is_some()
            || self.strategy.is_some()
            || self.policy.is_some()
            || self.mixed_drivers
            || self.cap.is_some()
            || self.lazy
    }
}

#[derive(Debug, clap::Args)]
struct Target {
    /// A workspace file (recorded as a deployment first) or a deployment name.
    target: String,
    /// Only this VM (its domain name, like grid3-worker1).
    #[arg(long)]
    vm: Option<String>,
}

#[derive(Debug, Subcommand)]
enum WorkspaceCmd {
    /// Parse and check a workspace document; errors give line and column.
    Validate {
        /// The XML file.
        file: PathBuf,
    },
    /// Every VM with its partitions, addresses, MACs and integration strategy.
    Show {
        /// The XML file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum VoCmd {
    /// Make a VO's ed25519 key (NAME.key, mode 0600) and print its cluster-config entry.
    Create {
        /// The VO's name (the first part of its image names).
        name: String,
    },
    /// The VO keys held here, with their public keys.
    Ls,
    /// Print a VO's public key as a `[[vo]]` cluster-config entry.
    Export {
        /// The VO.
        name: String,
    },
    /// Seal an image file where the VO's key lives (no store needed): the head imports
    /// it with `vw image import FILE --seal SEAL`.
    Seal {
        /// The partition image file.
        file: PathBuf,
        /// The name to give it, VO/NAME:TAG.
        #[arg(long)]
        name: ImageName,
        /// Let every trusted VO deploy it; private otherwise.
        #[arg(long)]
        public: bool,
        /// The seal file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Sign a ticket where the VO's key lives, for `vw deploy WORKSPACE --ticket FILE`
    /// on the head: it names the cluster, the document, the manifests its images may
    /// be, and an expiry; each host accepts it once.
    SignTicket {
        /// The workspace document.
        workspace: PathBuf,
        /// The VO.
        #[arg(long, env = "VW_VO")]
        vo: String,
        /// The cluster's name (`[cluster] name` in its config).
        #[arg(long)]
        cluster_name: String,
        /// Seal files (from `vw vo seal`) giving the manifests of the images it names.
        #[arg(long)]
        seal: Vec<PathBuf>,
        /// NAME=MANIFEST-ID for an image without a seal file here (a public base image
        /// of another VO; `vw image ls` on the head shows ids).
        #[arg(long)]
        image: Vec<String>,
        /// How long it stays valid: seconds, or with s, m, h or d (at most the
        /// cluster's `ticket_lifetime_max_s`).
        #[arg(long, default_value = "1h")]
        valid: String,
        /// The ticket file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCmd {
    /// Occupancy: chunks, bytes, pinned, loose, pack files.
    Stats,
    /// Pin an image as a base image: never evicted.
    Pin {
        /// Name or manifest id.
        image: ImageRef,
    },
    /// Remove the base-image pin.
    Unpin {
        /// Name or manifest id.
        image: ImageRef,
    },
    /// Set the capacity (bytes of stored chunks, e.g. 20G) or `none`; evicts at once.
    Limit {
        /// A size with an optional K, M, G or T suffix (powers of 1024), or `none`.
        size: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VW_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let out = Out::new(cli.json);
    match run(cli, &out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            ExitCode::FAILURE
        }
    }
}

fn open(store: &std::path::Path) -> anyhow::Result<Store> {
    Ok(Store::open(store)?)
}

fn run(cli: Cli, out: &Out) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Image(cmd) => {
            image(&cli.store, cli.vo_dir.as_deref(), cli.cluster.as_deref(), cmd, out)
        }
        Command::Vo(cmd) => {
            let dir = vo::dir(cli.vo_dir.as_deref());
            match cmd {
                VoCmd::Create { name } => vo::create(&dir, &name, out),
                VoCmd::Ls => vo::ls(&dir, out),
                VoCmd::Export { name } => vo::export(&dir, &name, out),
                VoCmd::Seal { file, name, public, out: to } => {
                    let visibility = if public { Visibility::Public } else { Visibility::Private };
                    vo::seal(&dir, &file, &name, visibility, &to, out)
                }
                VoCmd::SignTicket { workspace, vo, cluster_name, seal, image, valid, out: to } => {
                    let request = vo::TicketRequest {
                        workspace: &workspace,
                        cluster: &cluster_name,
                        seals: &seal,
                        images: &image,
                        valid_s: vo::parse_duration(&valid)?,
                    };
                    vo::sign_ticket(&dir, &vo, &request, &to, out)
                }
            }
        }
        Command::Cache(cmd) => cache(&cli.store, cmd, out),
        Command::Gc => store_cmd(&cli.store, None, StoreOp::Gc, None, out),
        Command::Demo { keep, size_mib, hosts } => demo::run(out, keep, size_mib, hosts),
        Command::Workspace(WorkspaceCmd::Validate { file }) => host::validate(&file, out),
        Command::Workspace(WorkspaceCmd::Show { file }) => {
            let config = host::cluster_config(cli.cluster.as_deref())?;
            host::show(&file, &cli.store, config, out)
        }
        Command::Plan(args) => {
            let config = host::cluster_config(cli.cluster.as_deref())?;
            let policy = parse_policy(&args.policy)?;
            planning::run(&cli.store, config, policy, &args, out)
        }
        Command::Deploy { workspace, how, stage_only } => {
            deploy(&cli.store, None, cli.vo_dir.as_deref(), &workspace, how, stage_only, out)
        }
        Command::Status { deployment, watch } => match cluster::socket(&cli.store)? {
            Some(socket) => {
                let every = watch
                    .map(|s| {
                        anyhow::ensure!(
                            s.is_finite() && (0.1..=3600.0).contains(&s),
                            "--watch {s}: 0.1 to 3600 seconds"
                        );
                        Ok(std::time::Duration::from_secs_f64(s))
                    })
                    .transpose()?;
                cluster::status(&socket, deployment.as_deref(), every, out)
            }
            None if watch.is_some() => anyhow::bail!(
                "--watch follows deployments through the head's vwd, and none listens at {}",
                cli.store.join(local::SOCKET).display()
            ),
            None => {
                let config = host::cluster_config(cli.cluster.as_deref())?;
                host::status(&cli.store, config, deployment.as_deref(), out)
            }
        },
        Command::Stage { target, how } => match cluster::socket(&cli.store)? {
            Some(socket)
                if target.vm.is_none() && std::path::Path::new(&target.target).is_file() =>
            {
                let file = PathBuf::from(&target.target);
                deploy(&cli.store, Some(socket), cli.vo_dir.as_deref(), &file, how, true, out)
            }
            Some(_) => anyhow::bail!(
                "a vwd owns {}: stage a workspace file on every host with `vw stage FILE --vo \
                 VO` (not a deployment name or one VM)",
                cli.store.display()
            ),
            None if how.any() => anyhow::bail!(
                "--ticket, --strategy, --policy and --mixed-drivers stage across the cluster, \
                 through the head's vwd, and none listens at {}; `vw stage {}` alone stages \
                 on this host",
                cli.store.join(local::SOCKET).display(),
                target.target
            ),
            None => lifecycle(&cli.store, cli.cluster.as_deref(), target, Op::Stage, out),
        },
        Command::Load(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Load, out),
        Command::Create(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Create, out),
        Command::Pause(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Pause, out),
        Command::Unpause(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Unpause, out),
        Command::Stop(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Stop, out),
        Command::Unstage(t) => lifecycle(&cli.store, cli.cluster.as_deref(), t, Op::Unstage, out),
    }
}

/// Deploys `workspace` across the cluster through the vwd that owns `store` (its
/// socket, if already found; with `stage_only`, up to stage), signed by the VO's key in
/// `vo_dir` or by its ticket.
fn deploy(
    store: &std::path::Path,
    socket: Option<PathBuf>,
    vo_dir: Option<&std::path::Path>,
    workspace: &std::path::Path,
    how: DeployArgs,
    stage_only: bool,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let options = vw_node::control::deployment::DeployOptions {
        strategy: how.strategy.unwrap_or(vw_node::planner::Strategy::Auto),
        policy: parse_policy(how.policy.as_deref().unwrap_or("spread"))?,
        mixed_drivers: how.mixed_drivers,
        stage_only,
        cap: how.cap,
        lazy: how.lazy,
    };
    let signer = match (how.vo, how.ticket) {
        (_, Some(path)) => cluster::Signer::Ticket(path),
        (Some(vo), None) => cluster::Signer::Key(Box::new(vo::key(&vo::dir(vo_dir), &vo)?)),
        (None, None) => anyhow::bail!("deploy on behalf of a VO: --vo NAME or --ticket FILE"),
    };
    let socket = match socket {
        Some(s) => s,
        None => cluster::need_socket(store)?,
    };
    cluster::deploy(&socket, workspace, signer, options, out)
}

fn parse_policy(policy: &str) -> anyhow::Result<vw_node::planner::Policy> {
    match policy {
        "spread" => Ok(vw_node::planner::Policy::Spread),
        "pack" => Ok(vw_node::planner::Policy::Pack),
        other => anyhow::bail!("policy `{other}`: use spread or pack"),
    }
}

/// A lifecycle command: cluster-wide through the vwd that owns the store (a deployment
/// name, no `--vm`), else on this host's manager.
fn lifecycle(
    store: &std::path::Path,
    cluster: Option<&std::path::Path>,
    t: Target,
    op: Op,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    if let Some(socket) = cluster::socket(store)? {
        if t.vm.is_some() || std::path::Path::new(&t.target).is_file() {
            anyhow::bail!(
                "a vwd owns {}: act on whole deployments by name (`vw {op} NAME`), and deploy workspace files with `vw deploy` (or stage them with `vw stage FILE`)",
                store.display()
            );
        }
        if op == Op::Create {
            return cluster::create(&socket, &t.target, out);
        }
        return cluster::run(&socket, &t.target, op, out);
    }
    let config = host::cluster_config(cluster)?;
    host::lifecycle(store, config, &t.target, t.vm.as_deref(), op, out)
}

/// Runs a store command: through the socket of the `vwd` that owns `store` if one
/// listens there (the file, if any, handed over as a descriptor), else on the store
/// opened here (seals checked against `cluster`). Same results, same words.
fn store_cmd(
    store: &std::path::Path,
    cluster: Option<&std::path::Path>,
    op: StoreOp,
    file: Option<std::fs::File>,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    store_cmd_at(store, cluster::socket(store)?, cluster, op, file, out)
}

/// [`store_cmd`] with the socket already looked for (`None`: no vwd owns `store`).
fn store_cmd_at(
    store: &std::path::Path,
    socket: Option<PathBuf>,
    cluster: Option<&std::path::Path>,
    op: StoreOp,
    file: Option<std::fs::File>,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(out, op.verb());
    let outcome = match socket {
        Some(socket) => {
            let mut last = None;
            let request = LocalRequest::Store { op };
            let reply = local::call_with(&socket, &request, file.as_ref(), |reply| {
                if let LocalReply::Progress { done, total } = *reply {
                    let before = *last.get_or_insert_with(|| {
                        bar.start(total);
                        0
                    });
                    bar.advance(done.saturating_sub(before));
                    last = Some(done.max(before));
                }
            })?;
            match reply {
                LocalReply::Stored { outcome } => outcome,
                LocalReply::Failed { error } => anyhow::bail!("{error}"),
                other => anyhow::bail!("the vwd answered a store command with {other:?}"),
            }
        }
        None => {
            let config = host::cluster_config(cluster)?;
            storecmd::run(&open(store)?, &config, op, file, &bar)?
        }
    };
    bar.finish();
    out.emit(&outcome.json, || outcome.text.clone());
    if let Some(note) = &outcome.note {
        out.note(note);
    }
    Ok(if outcome.failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn image(
    dir: &std::path::Path,
    vo_dir: Option<&std::path::Path>,
    cluster: Option<&std::path::Path>,
    cmd: ImageCmd,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let op = match cmd {
        ImageCmd::Import { file, name, public, seal } => {
            // Opened here, with this user's permissions; checked to be a regular file.
            let image = ImageFile::open(&file)?;
            let socket = cluster::socket(dir)?;
            let seal = match seal {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("cannot read the seal {}", path.display()))?;
                    let seal = Seal::decode(&bytes)
                        .map_err(|e| anyhow::anyhow!("seal {}: {e}", path.display()))?;
                    if seal.name() != &name {
                        anyhow::bail!("seal {} is for {}, not {name}", path.display(), seal.name());
                    }
                    bytes
                }
                None => {
                    let key = vo::key(&vo::dir(vo_dir), name.vo())?;
                    key.may_sign(&name)?;
                    let visibility = if public { Visibility::Public } else { Visibility::Private };
                    if socket.is_none() {
                        // The store is here: one pass, the key seals what was stored.
                        let bar = Bar::new(out, "import");
                        let r =
                            open(dir)?.import_sealed_from(image, &name, &key, visibility, &bar)?;
                        bar.finish();
                        out.emit(&r, || storecmd::import_text(&r));
                        if !r.eviction.evicted.is_empty() || r.eviction.chunks_removed > 0 {
                            out.note(&storecmd::gc_text(&r.eviction));
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    // A vwd owns the store and never sees the key: seal here, import there.
                    let manifest = manifest_of_file(&file, ChunkerParams::DEFAULT)?;
                    Seal::sign(&key, &name, manifest.id(), visibility)?.encode()
                }
            };
            let op = StoreOp::Import { path: file, seal };
            return store_cmd_at(dir, socket, cluster, op, Some(image.into_file()), out);
        }
        ImageCmd::Export { image, out: path, force } => {
            // Made here, with this user's permissions; renamed into place once verified.
            let target = ExportTarget::create(&path, force)?;
            let file = target.file().try_clone().context("duplicating the export's file")?;
            let op = StoreOp::Export { image: image.to_string(), out: path };
            let code = store_cmd(dir, cluster, op, Some(file), out)?;
            target.commit()?;
            return Ok(code);
        }
        ImageCmd::Ls => StoreOp::Ls,
        ImageCmd::Rm { image } => StoreOp::Rm { image: image.to_string() },
        ImageCmd::Verify { image } => StoreOp::Verify { image: image.map(|i| i.to_string()) },
        ImageCmd::Diff { a, b } => StoreOp::Diff { a: a.to_string(), b: b.to_string() },
    };
    store_cmd(dir, cluster, op, None, out)
}

fn cache(dir: &std::path::Path, cmd: CacheCmd, out: &Out) -> anyhow::Result<ExitCode> {
    let op = match cmd {
        CacheCmd::Stats => StoreOp::Stats,
        CacheCmd::Pin { image } => StoreOp::Pin { image: image.to_string() },
        CacheCmd::Unpin { image } => StoreOp::Unpin { image: image.to_string() },
        CacheCmd::Limit { size } => StoreOp::Limit {
            capacity: if size == "none" {
                None
            } else {
                Some(output::parse_size(&size).with_context(|| format!("cache limit {size}"))?)
            },
        },
    };
    store_cmd(dir, None, op, None, out)
}
