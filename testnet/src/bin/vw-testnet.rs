//! `vw-testnet run SCENARIO.toml --out DIR`: builds the scenario's testnet (network
//! namespaces, bridges, shaped veth links), runs its deployments with one `vwd` per
//! host, verifies every image, and writes `runs.csv`, `ops.csv`, PNG plots and
//! `summary.md` to DIR. Tears everything down on the way out, including on Ctrl-C.
//! `vw-testnet clean` removes what a killed harness left. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vw_testnet::runner::{self, RunnerOptions};
use vw_testnet::{baseline, disturb, net, results, scenario, TestnetError};

#[derive(Parser, Debug)]
#[command(name = "vw-testnet", about = "Multi-host vw experiments in network namespaces (root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a scenario and writes its results.
    Run {
        /// The scenario file (testnet/scenarios/*.toml).
        scenario: PathBuf,
        /// Where the results go.
        #[arg(long)]
        out: PathBuf,
        /// Scratch space for images and data directories (emptied afterwards).
        #[arg(long, default_value = "/var/tmp/vw-testnet")]
        work: PathBuf,
        /// The vwd binary (default: next to this one).
        #[arg(long)]
        vwd: Option<PathBuf>,
    },
    /// Writes the plots and the summary again from a run's CSVs (no root needed).
    Report {
        /// The scenario file the results came from.
        scenario: PathBuf,
        /// The results directory (with runs.csv, and ops.csv if any).
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a scenario file without running it (no root needed).
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
    /// Removes namespaces and links a killed harness left (names starting `vwt`).
    Clean,
    /// Baseline receiver (run by the harness in a host's namespace): accepts one
    /// connection, writes it to a file, forwards it to the next host.
    #[command(hide = true)]
    Pipe {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        next: Option<std::net::SocketAddr>,
    },
    /// Prints a vwd's Prometheus metrics (run by the harness in a host's namespace).
    #[command(hide = true)]
    Scrape { addr: std::net::SocketAddr },
    /// Background flow receiver: accepts connections and discards what they send.
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Background flow sender: zeros to the address as fast as the path takes them.
    #[command(hide = true)]
    Flood {
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// Baseline sender: the file to every address at once.
    #[command(hide = true)]
    Send {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, required = true)]
        to: Vec<std::net::SocketAddr>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| "vw_testnet=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vw-testnet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), TestnetError> {
    match command {
        Command::Check { scenario } => {
            let c = scenario::load(&scenario)?;
            println!(
                "{}: {} runs, up to {} hosts",
                c.scenario.name,
                c.scenario.run.len(),
                c.max_hosts()
            );
            Ok(())
        }
        Command::Report { scenario, out } => {
            let c = scenario::load(&scenario)?;
            let runs = results::read_csv(&out.join("runs.csv"))?;
            let ops_csv = out.join("ops.csv");
            let ops = if ops_csv.exists() { results::read_csv(&ops_csv)? } else { Vec::new() };
            let notes = results::checks(&runs);
            let outcome = runner::Outcome { runs, ops, notes };
            runner::write(&c.scenario.name, &c.scenario.description, &outcome, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Pipe { listen, out, next } => baseline::pipe(listen, &out, next).map(drop),
        Command::Send { file, to } => baseline::send(&file, &to),
        Command::Sink { listen } => disturb::sink(listen),
        Command::Flood { to } => disturb::flood(to),
        Command::Scrape { addr } => {
            print!("{}", vw_testnet::metrics::scrape(addr)?);
            Ok(())
        }
        Command::Clean => {
            if !vw_testnet::is_root() {
                return Err(TestnetError::NotRoot);
            }
            for name in net::clean_leftovers()? {
                println!("removed {name}");
            }
            Ok(())
        }
        Command::Run { scenario, out, work, vwd } => {
            if !vw_testnet::is_root() {
                return Err(TestnetError::NotRoot);
            }
            let checked = scenario::load(&scenario)?;
            let vwd = match vwd {
                Some(v) => v,
                None => beside_me("vwd")?,
            };
            let testnet = std::env::current_exe()
                .map_err(|e| TestnetError::Run(format!("finding this binary: {e}")))?;
            let options = RunnerOptions { out: out.clone(), work, vwd, testnet };
            let outcome = interruptible(move || runner::run(&checked, &options))?;
            for note in &outcome.notes {
                println!("{note}");
            }
            println!("results in {}", out.display());
            Ok(())
        }
    }
}

/// Runs `work` on a thread; on SIGINT or SIGTERM tears the testnet down and exits.
fn interruptible<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TestnetError> + Send + 'static,
) -> Result<T, TestnetError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestnetError::Run(format!("starting the runtime: {e}")))?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = |kind| signal(kind).map_err(|e| TestnetError::Run(format!("signals: {e}")));
        let (mut int, mut term) =
            (signals(SignalKind::interrupt())?, signals(SignalKind::terminate())?);
        let task = tokio::task::spawn_blocking(work);
        tokio::select! {
            done = task => done.map_err(|e| TestnetError::Run(format!("the run panicked: {e}")))?,
            _ = int.recv() => interrupted(),
            _ = term.recv() => interrupted(),
        }
    })
}

fn interrupted<T>() -> Result<T, TestnetError> {
    net::teardown_all();
    eprintln!("vw-testnet: {}", TestnetError::Interrupted);
    std::process::exit(130)
}

/// A binary in the same directory as this one.
fn beside_me(name: &str) -> Result<PathBuf, TestnetError> {
    let me = std::env::current_exe()
        .map_err(|e| TestnetError::Run(format!("finding this binary: {e}")))?;
    let path = me.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(TestnetError::Run(format!(
            "{} not found: build it (cargo build -p vw-node --bin vwd) or pass --vwd",
            path.display()
        )))
    }
}
