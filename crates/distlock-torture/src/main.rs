//! `distlock-torture`: run, check and campaign (see the library docs).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use distlock_torture::campaign::{self, CampaignConfig, Minimums};
use distlock_torture::checker;
use distlock_torture::client::{self, ClientConfig, Control, SectionConfig};
use distlock_torture::history::JsonLines;
use distlock_torture::orchestrator::{self, RunConfig};
use distlock_torture::store::{BackendKind, ClientStore};
use distlock_torture::variant::{Variant, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "distlock-torture",
    about = "Torture distlock: clients under faults, a fenced register, an offline checker",
    // A repeated option keeps its last value, so scripts can override their defaults.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One run: store, register, clients and nemesis; then the checker.
    /// Exits 1 if the checker found a violation.
    Run(RunArgs),
    /// Re-checks a run directory. Exits 1 on any violation.
    Check {
        /// The run directory.
        dir: PathBuf,
    },
    /// For each backend: a correct run with faults, then every negative
    /// control that applies. Exits 1 unless every correct run passed (with
    /// the minimums) and every control was caught.
    Campaign(CampaignArgs),
    /// One client (started by `run`; not for direct use).
    Client {
        /// The client's configuration, as JSON.
        #[arg(long)]
        config: String,
    },
    /// A CLI client's critical section, run by `distlock run` (not for
    /// direct use).
    Section {
        /// The section's configuration, as JSON.
        #[arg(long)]
        config: String,
    },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Run seed: client RNGs and the fault schedule derive from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Client processes (or tasks, for memory).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Keys they contend for.
    #[arg(long, default_value_t = 4)]
    keys: u32,
    /// Lock TTL in milliseconds.
    #[arg(long, default_value_t = 1000)]
    ttl_ms: u64,
    /// The semaphore workload's permits per key.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
    limit: u32,
    /// Shortest pause between two faults, ms.
    #[arg(long, default_value_t = 1000)]
    fault_min_ms: u64,
    /// Longest pause between two faults, ms.
    #[arg(long, default_value_t = 2500)]
    fault_max_ms: u64,
    /// Allowed lateness of lost() past the validity deadline, ms.
    #[arg(long, default_value_t = 50)]
    lost_tolerance_ms: u64,
    /// The `distlock` binary the CLI clients run (default: $DISTLOCK_BIN,
    /// else `distlock` beside this binary). Build it with
    /// `cargo build -p distlock-cli --features etcd`.
    #[arg(long)]
    cli_bin: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// memory, file, redis, etcd, redis-sentinel or redis-cluster.
    #[arg(long)]
    backend: BackendKind,
    /// lock, semaphore, rwlock or leadership.
    #[arg(long, default_value = "lock")]
    workload: Workload,
    /// correct, or a negative control: release-by-name, ignore-validity,
    /// no-fencing, deadline-from-reply, close-shared-backend (lock);
    /// deadline-from-reply, limit-above-capacity (semaphore);
    /// read-locked-writer (rwlock); ignore-validity (leadership); no-ack
    /// (lock, on redis-sentinel and redis-cluster).
    #[arg(long, default_value = "correct")]
    variant: Variant,
    /// Workload duration, seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Run without the nemesis.
    #[arg(long)]
    no_faults: bool,
    /// Replicated Redis: replicas that acknowledge each grant and extend,
    /// N or `default` (the backend's own count: one while the topology
    /// lists a live replica of the key's master). Default: the variant's
    /// (1; no-ack 0).
    #[arg(long)]
    replicas: Option<String>,
    /// Comma-separated fault kinds (e.g. `sentinel_failover`), instead of
    /// the variant's on the backend.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<distlock_torture::nemesis::FaultKind>>,
    /// The run directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct CampaignArgs {
    /// Comma-separated backends.
    #[arg(long, value_delimiter = ',', default_value = "memory,file,redis,etcd")]
    backends: Vec<BackendKind>,
    /// Comma-separated workloads, run on each backend.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lock,semaphore,rwlock,leadership"
    )]
    workloads: Vec<Workload>,
    /// Duration of each correct run, seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Duration of each negative control, seconds.
    #[arg(long, default_value_t = 8)]
    control_duration_s: u64,
    /// Skip the negative controls.
    #[arg(long)]
    no_controls: bool,
    /// A correct run needs at least this many acquisitions.
    #[arg(long, default_value_t = 0)]
    min_acquisitions: u64,
    /// A correct run needs at least this many faults.
    #[arg(long, default_value_t = 0)]
    min_faults: u64,
    /// A correct run needs every fault kind of its backend (a waiter stop
    /// that caught a client waiting), an acquisition by every client
    /// profile, and Lockers closed both between and during rounds.
    #[arg(long)]
    min_coverage: bool,
    /// The campaign directory (one sub-directory per run).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("the path of this binary")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Client { config } => run_client(&config),
        Cmd::Section { config } => run_section(&config),
        Cmd::Check { dir } => match checker::check(&dir) {
            Ok(report) => verdict(&report),
            Err(e) => {
                eprintln!("distlock-torture: cannot check {}: {e}", dir.display());
                ExitCode::from(2)
            }
        },
        Cmd::Run(args) => {
            let c = &args.common;
            let cfg = RunConfig {
                backend: args.backend,
                workload: args.workload,
                limit: c.limit,
                variant: args.variant,
                seed: c.seed,
                clients: c.clients,
                keys: c.keys,
                ttl: c.ttl(),
                duration: Duration::from_secs(args.duration_s),
                min_acquisitions: 0,
                min_faults: 0,
                min_coverage: false,
                max_duration: Duration::from_secs(args.duration_s),
                faults: !args.no_faults,
                replicas: match args.replicas.as_deref() {
                    None => Some(args.variant.replicas()),
                    Some("default") => None,
                    Some(n) => match n.parse() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            eprintln!("distlock-torture: --replicas takes a count or `default`");
                            return ExitCode::from(64);
                        }
                    },
                },
                fault_kinds: args.faults.clone(),
                fault_interval: c.fault_interval(),
                lost_tolerance: Duration::from_millis(c.lost_tolerance_ms),
                out: args.out.clone(),
                client_exe: exe(),
                cli_bin: c.cli_bin(),
                command: command_line(),
            };
            match runtime().block_on(orchestrator::run(&cfg)) {
                Ok(report) => verdict(&report),
                Err(e) => {
                    eprintln!("distlock-torture: run failed: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Campaign(args) => {
            let c = &args.common;
            let cfg = CampaignConfig {
                backends: args.backends,
                workloads: args.workloads,
                limit: c.limit,
                seed: c.seed,
                clients: c.clients,
                keys: c.keys,
                ttl: c.ttl(),
                duration: Duration::from_secs(args.duration_s),
                control_duration: Duration::from_secs(args.control_duration_s),
                controls: !args.no_controls,
                fault_interval: c.fault_interval(),
                lost_tolerance: Duration::from_millis(c.lost_tolerance_ms),
                minimums: Minimums {
                    acquisitions: args.min_acquisitions,
                    faults: args.min_faults,
                    coverage: args.min_coverage,
                },
                out: args.out,
                client_exe: exe(),
                cli_bin: c.cli_bin(),
                command: command_line(),
            };
            match runtime().block_on(campaign::run(&cfg)) {
                Ok(runs) if runs.iter().all(|r| r.ok) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("distlock-torture: campaign failed: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Prints a checked run's table; exit 0 if it passed, else 1.
fn verdict(report: &checker::Report) -> ExitCode {
    println!("{}", report.table());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

impl Common {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    fn cli_bin(&self) -> Option<PathBuf> {
        let found = self
            .cli_bin
            .clone()
            .or_else(|| std::env::var_os("DISTLOCK_BIN").map(PathBuf::from))
            .unwrap_or_else(|| exe().with_file_name("distlock"));
        found.is_file().then_some(found)
    }

    fn fault_interval(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.fault_min_ms),
            Duration::from_millis(self.fault_max_ms),
        )
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A client process: runs the workload until SIGTERM; exits at once if the
/// orchestrator goes away (its stdin closes).
fn run_client(config: &str) -> ExitCode {
    let cfg: ClientConfig = match serde_json::from_str(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("distlock-torture client: bad --config: {e}");
            return ExitCode::from(2);
        }
    };
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(70);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async move {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("install the SIGTERM handler: {e}"))?;
        tokio::spawn(async move {
            term.recv().await;
            let _ = stop.send(true);
        });
        let hist = JsonLines::create(&cfg.history)
            .map_err(|e| format!("create {}: {e}", cfg.history.display()))?;
        let store = ClientStore::from_url(cfg.backend, &cfg.url);
        let control = Control::new(stop_rx, None);
        client::run(cfg, store, control, hist).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distlock-torture client: {e}");
            ExitCode::from(1)
        }
    }
}

/// A CLI section: runs under `distlock run`, started by a CLI client.
fn run_section(config: &str) -> ExitCode {
    let result = serde_json::from_str::<SectionConfig>(config)
        .map_err(|e| format!("bad --config: {e}"))
        .and_then(|cfg| client::run_section(&cfg));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distlock-torture section: {e}");
            ExitCode::from(1)
        }
    }
}
